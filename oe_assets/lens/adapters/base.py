"""The small interface every model family implements, and the one-pass capture built on it.

An adapter says *where* things live in a Hugging Face module tree (module-name patterns for the
MLP output projection and the attention modules, the LayerNorms on each path), hands out weights in
one layout (``[heads, d_head, d_model]`` for value/query/key, ``[heads, d_model, d_head]`` for the
output projection), and knows the family's representation (pooling, projection).  Everything else
(capture, the second-order algebra, the slow path) is family-agnostic and lives outside the adapters.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import torch

from ..hooks import HookRegistry
from ..placement import materialized

__all__ = ["AttentionWeights", "Capture", "ModelAdapter", "LayerNormParams", "HALF_DTYPES", "lens_dtype"]

#: weight dtypes whose lens math runs in float32 unless a compute dtype is given
HALF_DTYPES = (torch.float16, torch.bfloat16)


def lens_dtype(weights_dtype: torch.dtype, requested: torch.dtype | None = None) -> torch.dtype:
    """The dtype the lens computes its factors and path weights in: ``requested`` when given, else
    float32 for half-precision weights (bfloat16 / float16 keep about 3 significant digits: sums
    over thousands of neurons and tokens in that precision lose most of them), else the weights'
    dtype.  The forward pass always runs in the weights' dtype."""
    if requested is not None:
        if not isinstance(requested, torch.dtype) or not requested.is_floating_point:
            raise ValueError(f"compute dtype must be a floating torch dtype, got {requested!r}")
        return requested
    return torch.float32 if weights_dtype in HALF_DTYPES else weights_dtype


@dataclass(frozen=True)
class AttentionWeights:
    """One attention block's weights, split per head.

    ``W_q, W_k, W_v``: ``[heads, d_head, d_model]`` (``q_h = W_q[h] x + b_q[h]``);
    ``b_q, b_k, b_v``: ``[heads, d_head]``; ``W_o``: ``[heads, d_model, d_head]`` so that the block
    writes ``sum_h W_o[h] y_h + b_o``; ``b_o``: ``[d_model]``; ``scale``: the score scale.
    """

    W_q: torch.Tensor
    b_q: torch.Tensor
    W_k: torch.Tensor
    b_k: torch.Tensor
    W_v: torch.Tensor
    b_v: torch.Tensor
    W_o: torch.Tensor
    b_o: torch.Tensor
    scale: float


@dataclass(frozen=True)
class LayerNormParams:
    """``weight`` and ``bias`` (``[d_model]``) of one LayerNorm, and its ``eps``.

    ``centred``: True for a LayerNorm, ``y = weight * (x - mean x) / sqrt(var x + eps) + bias``;
    False for an RMSNorm, ``y = weight * x / sqrt(mean(x^2) + eps)`` (``bias`` zeros): its frozen
    linear part has no centring, and its recorded mean is 0."""

    weight: torch.Tensor
    bias: torch.Tensor
    eps: float
    centred: bool = True


@dataclass
class Capture:
    """Everything one forward pass records for the second-order algebra of one MLP layer.

    - ``activations``: ``[batch, tokens, neurons]``, post-activation of the chosen MLP layer;
    - ``attention[j]``: ``[batch, heads, queries, tokens]``, attention probabilities of block ``j``
      for the query positions that reach the representation (``query_positions``, ``[queries]``);
    - ``ln_mean[name]``, ``ln_std[name]``: ``[batch, tokens]`` (or ``[batch, 1]`` for a LayerNorm
      that only sees the pooled token, whose representation reads one query: ``[batch, queries]``),
      mean and ``sqrt(var + eps)`` of each recorded LayerNorm's input;
    - ``readout``: ``[batch, queries]``, the pooling weights of the representation over queries;
    - ``representation``: ``[batch, d_out]``, the model's unnormalised representation ``r``;
    - ``token_mask``: ``[batch, tokens]`` bool, the real (not padding) tokens, or None when every
      token is real (images).
    """

    activations: torch.Tensor
    attention: dict[int, torch.Tensor]
    ln_mean: dict[str, torch.Tensor]
    ln_std: dict[str, torch.Tensor]
    query_positions: torch.Tensor
    readout: torch.Tensor
    representation: torch.Tensor
    token_mask: torch.Tensor | None = None

    def to(self, dtype: torch.dtype) -> "Capture":
        """This capture with every floating tensor in ``dtype`` (positions and the mask as they are);
        itself when nothing changes."""
        tensors = [self.activations, self.readout, self.representation, *self.attention.values(),
                   *self.ln_mean.values(), *self.ln_std.values()]
        if all(t.dtype == dtype for t in tensors):
            return self

        def cast(d):
            return {k: v.to(dtype) for k, v in d.items()}

        return Capture(self.activations.to(dtype), cast(self.attention), cast(self.ln_mean), cast(self.ln_std),
                       self.query_positions, self.readout.to(dtype), self.representation.to(dtype), self.token_mask)

    def at_keys(self, stat: torch.Tensor) -> torch.Tensor:
        """A per-token statistic ``stat`` ``[batch, tokens]`` at the key positions (every token):
        ``[batch, tokens]``."""
        if stat.shape[1] != self.activations.shape[1]:
            raise ValueError("a LayerNorm that only saw pooled tokens cannot sit before a head")
        return stat

    def at_queries(self, stat: torch.Tensor) -> torch.Tensor:
        """A per-token statistic ``stat`` ``[batch, tokens]`` at the query positions: ``[batch,
        queries]``; a statistic recorded only at the queries (``[batch, queries]``, a LayerNorm that
        sees the pooled token) is returned as is."""
        t = self.activations.shape[1]
        q = self.query_positions.numel()
        if stat.shape[1] == q and (q != t or torch.equal(self.query_positions.cpu(), torch.arange(t))):
            return stat
        return stat[:, self.query_positions.to(stat.device)]

    def ln_scale_keys(self, names: list[str], device=None) -> torch.Tensor:
        """Product of ``1 / sigma`` over the LayerNorms ``names`` at the keys: ``[batch, tokens]`` on
        ``device`` (default: the activations'; a split model records each norm on its own device)."""
        return self._ln_scale(names, self.at_keys, device)

    def ln_scale_queries(self, names: list[str], device=None) -> torch.Tensor:
        """Product of ``1 / sigma`` over the LayerNorms ``names`` at the queries: ``[batch, queries]``."""
        return self._ln_scale(names, self.at_queries, device)

    def _ln_scale(self, names: list[str], positions, device=None) -> torch.Tensor:
        b, _, q, t = next(iter(self.attention.values())).shape
        n = t if positions == self.at_keys else q
        device = self.activations.device if device is None else device
        out = torch.ones(b, n, dtype=self.activations.dtype, device=device)
        for name in names:
            out = out / positions(self.ln_std[name]).to(device)
        return out


class ModelAdapter(ABC):
    """Where one model family keeps its pieces.  Subclasses set the class attributes and implement
    the abstract methods; :func:`oe_assets.lens.adapters.get_adapter` picks the adapter by
    :meth:`matches`."""

    family: ClassVar[str]
    #: where the norms sit: "pre", "post_residual", "post_sublayer" or "pre_and_post_sublayer" (defined
    #: in :mod:`.families`; the table adapters take it from their family table)
    layer_norm_style: ClassVar[str]
    conventions: ClassVar[tuple[str, ...]]
    default_convention: ClassVar[str]
    #: module-name patterns ('*' = layer index) relative to ``self.model``
    mlp_out_pattern: ClassVar[str]
    attention_pattern: ClassVar[str]

    #: whether :meth:`zero_shot_classifier` returns unit columns (prompt embeddings) or raw directions
    unit_classifier: ClassVar[bool] = True
    #: ``config.model_type`` values this family loads (see :func:`oe_assets.models.loading.load_model`)
    model_types: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: torch.nn.Module, pooling: str | None = None):
        self.model = model
        self.pooling = pooling

    @classmethod
    def model_class(cls, model_type: str, architectures=None):
        """The ``transformers`` class to load a checkpoint of ``model_type`` with, or None."""
        return None

    #: whether a sentence-transformers folder's pooling setting (``1_Pooling/config.json``) picks this
    #: family's pooling by default (read by :func:`oe_assets.models.loading.load_model`)
    reads_sentence_transformers_pooling: bool = False

    @classmethod
    def layers_in_config(cls, config) -> int | None:
        """The number of blocks of a ``transformers`` config of this family, or None."""
        return None

    # ---- identification -------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def matches(cls, model: torch.nn.Module) -> bool: ...

    # ---- sizes ----------------------------------------------------------------------------
    @property
    @abstractmethod
    def n_layers(self) -> int: ...

    @property
    @abstractmethod
    def n_heads(self) -> int: ...

    @property
    @abstractmethod
    def d_model(self) -> int: ...

    @property
    @abstractmethod
    def d_mlp(self) -> int: ...

    @property
    def d_out(self) -> int:
        P = self.projection()
        return self.d_model if P is None else P.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    #: the dtype the lenses compute in (None: :func:`lens_dtype`'s default for the weights' dtype);
    #: set by :func:`oe_assets.models.loading.load_model` from ``compute_dtype``
    compute_dtype: torch.dtype | None = None

    @property
    def lens_dtype(self) -> torch.dtype:
        """The lenses' compute dtype for this model (see :func:`lens_dtype`)."""
        return lens_dtype(self.dtype, self.compute_dtype)

    # ---- weights --------------------------------------------------------------------------
    @abstractmethod
    def mlp_out_weights(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W_out, b_out)``: ``W_out`` ``[d_model, neurons]``, ``b_out`` ``[d_model]``; neuron ``n``
        writes ``a_n W_out[:, n]``."""

    @abstractmethod
    def attention_weights(self, block: int) -> AttentionWeights:
        """Block ``block``'s weights per head (shapes: :class:`AttentionWeights`)."""

    def layer_norm(self, name: str) -> LayerNormParams:
        """Weight, bias and eps of the LayerNorm module ``name`` (a name the adapter listed)."""
        ln = self.model.get_submodule(name)
        return LayerNormParams(ln.weight, ln.bias, ln.eps)

    def attention_probabilities(
        self, x: torch.Tensor, block: int, query_positions: torch.Tensor, bias: torch.Tensor | None,
        inputs: Mapping[str, torch.Tensor],
    ) -> torch.Tensor:
        """Block ``block``'s attention probabilities ``[batch, heads, queries, tokens]`` recomputed from
        its input ``x`` ``[batch, tokens, d_model]`` at ``query_positions`` ``[queries]``; ``bias`` is
        :meth:`attention_bias` at the query rows, ``[batch, queries, tokens]`` (or None).  Families
        with rotary positions, q/k norms or per-layer windows override this."""
        return attention_probabilities(x, self.attention_weights(block), query_positions, bias)

    def projection(self) -> torch.Tensor | None:
        """``P`` ``[d_model, d_out]`` applied after the final LayerNorm and pooling, or None."""
        return None

    # ---- paths ----------------------------------------------------------------------------
    @abstractmethod
    def layer_norms_before_head(self, mlp_layer: int, block: int) -> list[str]:
        """LayerNorm module names between MLP ``mlp_layer``'s output and block ``block``'s
        attention input, in order."""

    @abstractmethod
    def layer_norms_after_head(self, block: int) -> list[str]:
        """LayerNorm module names between block ``block``'s attention output and the
        representation, in order."""

    def layer_norms_after_mlp(self, mlp_layer: int) -> list[str]:
        """LayerNorm module names on the direct path from MLP ``mlp_layer``'s output to the
        representation (the residual stream, no later sublayer), in order.  Default (pre-LN): the
        final norm only, the last name of :meth:`layer_norms_after_head` of the last block; families
        with norms on the stream or after the MLP branch override this."""
        return self.layer_norms_after_head(self.n_layers - 1)[-1:]

    def block_name(self, block: int) -> str:
        """The module name of block ``block`` (the module holding its attention), the unit a
        ``device_map`` places on one device."""
        return self.attention_pattern.split("*")[0] + str(block)

    def later_blocks(self, mlp_layer: int) -> list[int]:
        self.check_layer(mlp_layer)
        return list(range(mlp_layer + 1, self.n_layers))

    def check_layer(self, mlp_layer: int) -> None:
        if not isinstance(mlp_layer, int) or not 0 <= mlp_layer < self.n_layers - 1:
            raise ValueError(
                f"mlp_layer={mlp_layer!r} is out of range: {self.family} has {self.n_layers} layers, "
                f"and only layers 0..{self.n_layers - 2} have a later attention block"
            )

    # ---- running --------------------------------------------------------------------------
    @abstractmethod
    def prepare_inputs(self, inputs: Any) -> dict[str, torch.Tensor]:
        """Validate the caller's inputs and move them to the model's device/dtype: ``{name: tensor}``
        (``input_ids`` / ``attention_mask`` ``[batch, tokens]`` for text, ``pixel_values``
        ``[batch, channels, height, width]`` for images)."""

    @abstractmethod
    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Run the model once on :meth:`prepare_inputs`' output; return the unnormalised
        representation ``r`` ``[batch, d_out]``."""

    @abstractmethod
    def n_tokens(self, inputs: Mapping[str, torch.Tensor]) -> int: ...

    @property
    def fixed_tokens(self) -> int | None:
        """The token count of every input when the family has one (images), else None (text)."""
        return None

    @abstractmethod
    def readout(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(query_positions, weights)``: ``query_positions`` ``[queries]``, ``weights``
        ``[batch, queries]``; the representation pools the final stream as
        ``sum_q weights[b, q] x[b, query_positions[q]]`` (before the projection)."""

    def attention_bias(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """Additive score mask ``[batch, tokens, tokens]`` (query rows, key columns; ``-inf`` where
        masked), or None."""
        return None

    # ---- the text side ---------------------------------------------------------------------
    def text_encoder(self, tokenizer, max_length: int | None = None):
        """A :data:`oe_assets.lens.zero_shot.TextEncoder` into this model's output space: texts ->
        ``[len(texts), d_out]``."""
        raise TypeError(f"this {self.family} model ({type(self.model).__name__}) has no text encoder")

    def zero_shot_classifier(self, tokenizer, classnames, templates) -> torch.Tensor:
        """``[d_out, classes]``: class prompts encoded by :meth:`text_encoder` (normalised, averaged
        per class, unit columns)."""
        from ..zero_shot import zero_shot_classifier

        return zero_shot_classifier(self.text_encoder(tokenizer), classnames, templates)

    # ---- capture --------------------------------------------------------------------------
    def capture(self, inputs: Any, mlp_layer: int) -> Capture:
        """One forward pass with hooks; see :class:`Capture`."""
        return self.capture_layers(inputs, [mlp_layer])[mlp_layer]

    def capture_layers(self, inputs: Any, mlp_layers: Sequence[int]) -> dict[int, Capture]:
        """One forward pass with hooks for several MLP layers at once: ``{layer: Capture}``.  The
        captures share the attention probabilities and LayerNorm statistics (of every block and
        LayerNorm on any of the layers' paths); each has its own layer's activations."""
        layers = sorted(set(mlp_layers))
        if not layers:
            raise ValueError("mlp_layers is empty")
        for layer in layers:
            self.check_layer(layer)
        blocks = self.later_blocks(layers[0])  # a superset of every other layer's later blocks
        inputs = self.prepare_inputs(inputs)
        layer_norms = sorted(
            {n for layer in layers for j in self.later_blocks(layer) for n in self.layer_norms_before_head(layer, j)}
            | {n for j in blocks for n in self.layer_norms_after_head(j)}
            | {n for layer in layers for n in self.layer_norms_after_mlp(layer)}
        )
        query_positions, readout = self.readout(inputs)
        bias = self.attention_bias(inputs)
        if bias is not None:
            bias = bias[:, query_positions, :]
        store: dict[str, Any] = {"activations": {}, "attention": {}, "mean": {}, "std": {}}

        def record_activation(name, index, module, args, kwargs):
            store["activations"][index[0]] = args[0] if args else kwargs["input"]

        def record_attention(name, index, module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            # a model split over devices runs block j on its own device: the probabilities stay there;
            # weights accelerate offloads are loaded by each submodule's own forward, so load them here
            with materialized(self.model, [name]):
                store["attention"][index[0]] = self.attention_probabilities(
                    x, index[0], query_positions.to(x.device), None if bias is None else bias.to(x.device), inputs)

        norm_params = {name: self.layer_norm(name) for name in layer_norms}

        def record_layer_norm(name, index, module, args, kwargs):
            x = args[0] if args else kwargs.get("input", kwargs.get("hidden_states"))
            if x.dtype in HALF_DTYPES:  # statistics of half-precision streams in float32
                x = x.float()
            p = norm_params[name]
            if p.centred:
                mean = x.mean(-1)
                std = torch.sqrt(x.var(-1, unbiased=False) + p.eps)
            else:  # RMSNorm: no centring, sigma is the root mean square
                mean = torch.zeros_like(x[..., 0])
                std = torch.sqrt(x.pow(2).mean(-1) + p.eps)
            if x.dim() == 2:  # a LayerNorm applied to the pooled token only
                mean, std = mean[:, None], std[:, None]
            store["mean"][name], store["std"][name] = mean, std

        with torch.no_grad(), HookRegistry(self.model) as hooks:
            hooks.add_pre(self.mlp_out_pattern, record_activation, indices=layers)
            hooks.add_pre(self.attention_pattern, record_attention, indices=blocks)
            for name in layer_norms:
                hooks.add_pre(name, record_layer_norm)
            representation = self.forward(inputs)
            hooks.check_all_fired()
        readout = readout.to(representation.dtype)
        query_positions = query_positions.to(representation.device)
        return {
            layer: Capture(
                activations=store["activations"][layer],
                attention=store["attention"],
                ln_mean=store["mean"],
                ln_std=store["std"],
                query_positions=query_positions,
                readout=readout,
                representation=representation,
                token_mask=None if inputs.get("attention_mask") is None else inputs["attention_mask"].bool(),
            )
            for layer in layers
        }


def attention_probabilities(
    x: torch.Tensor, w: AttentionWeights, query_positions: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``softmax_t(scale * q_h(x[:, q]) . k_h(x[:, t]) + bias)``: ``[batch, heads, queries, tokens]``
    for ``x`` ``[batch, tokens, d_model]``, ``query_positions`` ``[queries]`` and ``bias``
    ``[batch, queries, tokens]`` (or None).

    Recomputed from the attention input so that capture works whatever attention implementation
    the model runs (``sdpa`` and flash kernels never return probabilities).  Softmax runs in the
    model's dtype, or float32 for half-precision models (and returned in float32 there: the lens
    computes in float32 for half-precision weights)."""
    q = torch.einsum("bqd,hed->bhqe", x[:, query_positions], w.W_q) + w.b_q[None, :, None, :]
    heads, _, d_model = w.W_k.shape
    if query_positions.numel() * heads < d_model:
        # few query rows (CLIP's CLS): fold W_k into the queries, q.(W_k x + b_k) = (W_k^T q).x + q.b_k,
        # instead of projecting every key (12x fewer operations at ViT-B/32)
        u = torch.einsum("bhqe,hed->bhqd", q, w.W_k)
        scores = torch.einsum("bhqd,btd->bhqt", u, x) + torch.einsum("bhqe,he->bhq", q, w.b_k)[..., None]
    else:
        k = torch.einsum("btd,hed->bhte", x, w.W_k) + w.b_k[None, :, None, :]
        scores = torch.einsum("bhqe,bhte->bhqt", q, k)
    scores = scores * w.scale
    if bias is not None:
        scores = scores + bias[:, None]
    soft_dtype = torch.float32 if x.dtype in HALF_DTYPES else x.dtype
    return torch.softmax(scores.to(soft_dtype), dim=-1)
