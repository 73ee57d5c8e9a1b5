"""Where each model family keeps its pieces, as data: one :class:`FamilyTable` per family.

A table names, for one Hugging Face module layout, the module paths the lens reads (templates with a
``{layer}`` placeholder, relative to the family's *body*: the module that holds the blocks), the
config keys of its sizes, its head layout, where its norms sit and the attention details that shape
the probabilities.  :class:`~.generic.TableAdapter` reads a table; the adapter classes keep only what
differs in the math (rotary positions, q/k norms, masks, pooling, the text side).

The body: a model that wraps its body (``LlamaForCausalLM.model``, ``GPT2LMHeadModel.transformer``,
``CLIPModel.vision_model``) is read through the first attribute of :attr:`FamilyTable.wrappers` that
holds the blocks; a bare body (``LlamaModel``, ``GPT2Model``, ``BertModel``) is read as is.

``layer_norm_style`` (:data:`LAYER_NORM_STYLES`), per block, with ``A`` the attention and ``M`` the
MLP sublayer and the norm roles of :class:`Norms` in brackets:

- ``"pre"`` (CLIP, GPT-2, Llama, Mistral, Qwen2/3, Phi-3): norms on the branches, before each
  sublayer; a final norm on the stream::

      x = x + A([attention_in](x));  x = x + M([mlp_in](x));  r = [final](x)

- ``"post_residual"`` (BERT): norms on the stream, after each residual add; no final norm::

      x = [attention_out](x + A(x));  x = [mlp_out](x + M(x));  r = x

- ``"post_sublayer"`` (OLMo 2): norms on each sublayer's output, before it joins the stream;
  sublayers read the raw stream; a final norm::

      x = x + [attention_out](A(x));  x = x + [mlp_out](M(x));  r = [final](x)

- ``"pre_and_post_sublayer"`` (Gemma 2, Gemma 3): both, a norm before and after each sublayer::

      x = x + [attention_out](A([attention_in](x)));  x = x + [mlp_out](M([mlp_in](x)));  r = [final](x)

Older names: ``"pre+post"`` is ``"pre_and_post_sublayer"`` (:data:`LAYER_NORM_STYLE_ALIASES`);
``"post"`` named both ``"post_residual"`` (BERT) and ``"post_sublayer"`` (OLMo 2), two different
layouts, and is refused with a message naming them.

``norm_kind``: ``"layer_norm"`` (centred, affine, ``eps``), ``"rms_norm"`` (``weight * x / rms``, eps
in ``variance_epsilon`` or ``eps``), ``"rms_norm_offset"`` (Gemma: ``(1 + weight) * x / rms``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Mapping

__all__ = [
    "Attention", "FAMILIES", "FamilyTable", "Heads", "LAYER_NORM_STYLES", "LAYER_NORM_STYLE_ALIASES", "Norms",
    "layer_norm_style",
]

#: every ``layer_norm_style`` (module docstring)
LAYER_NORM_STYLES = ("pre", "post_residual", "post_sublayer", "pre_and_post_sublayer")
#: older names still accepted by :func:`layer_norm_style`
LAYER_NORM_STYLE_ALIASES = MappingProxyType({"pre+post": "pre_and_post_sublayer"})
NORM_KINDS = ("layer_norm", "rms_norm", "rms_norm_offset")
#: norm roles each style places (the others are None)
_NORM_ROLES = {
    "pre": ("attention_in", "mlp_in", "final"),
    "post_residual": ("attention_out", "mlp_out"),
    "post_sublayer": ("attention_out", "mlp_out", "final"),
    "pre_and_post_sublayer": ("attention_in", "mlp_in", "attention_out", "mlp_out", "final"),
}


def layer_norm_style(name: str) -> str:
    """The documented style for ``name``, accepting the older aliases; raises naming the choices."""
    if name == "post":
        raise ValueError("layer_norm_style='post' is ambiguous: 'post_residual' (norm after the residual add, BERT) "
                         "or 'post_sublayer' (norm on the sublayer output before the add, OLMo 2)")
    name = LAYER_NORM_STYLE_ALIASES.get(name, name)
    if name not in LAYER_NORM_STYLES:
        raise ValueError(f"layer_norm_style={name!r}; choose one of {LAYER_NORM_STYLES}")
    return name


@dataclass(frozen=True)
class Norms:
    """Where the norms sit (module docstring): path templates relative to the body, None where the
    style has no norm in that role."""

    style: str
    kind: str
    attention_in: str | None = None
    mlp_in: str | None = None
    attention_out: str | None = None
    mlp_out: str | None = None
    final: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "style", layer_norm_style(self.style))
        if self.kind not in NORM_KINDS:
            raise ValueError(f"norm kind={self.kind!r}; choose one of {NORM_KINDS}")
        placed = _NORM_ROLES[self.style]
        for role in ("attention_in", "mlp_in", "attention_out", "mlp_out", "final"):
            if (getattr(self, role) is not None) != (role in placed):
                raise ValueError(f"a {self.style!r} layout has {'a' if role in placed else 'no'} {role} norm")


@dataclass(frozen=True)
class Heads:
    """The head layout.  Sizes are config keys; ``n_kv_heads`` and ``head_dim`` may be absent from a
    config or hold None (then every head has its own keys and values; ``head_dim = d_model // n_heads``).

    Projections are path templates relative to the body: ``q``, ``k``, ``v`` separate, or ``qkv``
    fused (outputs ``[q | k | v]``, keys and values with ``n_kv_heads`` heads); ``o`` the output
    projection.  ``orientation``: ``"linear"`` (``weight [out, in]``, ``torch.nn.Linear``) or
    ``"conv1d"`` (``weight [in, out]``, GPT-2's ``Conv1D``).  ``scale``: the attention module's
    attribute holding the score scale (which includes Gemma's query pre-attention scalar), or None
    for ``head_dim ** -0.5``."""

    n_heads: str
    o: str
    q: str | None = None
    k: str | None = None
    v: str | None = None
    qkv: str | None = None
    n_kv_heads: str | None = None
    head_dim: str | None = None
    orientation: str = "linear"
    scale: str | None = "scaling"

    def __post_init__(self):
        named = sum(p is not None for p in (self.q, self.k, self.v))
        if (self.qkv is None and named != 3) or (self.qkv is not None and named != 0):
            raise ValueError("a head layout names either q, k and v or one fused qkv")
        if self.orientation not in ("linear", "conv1d"):
            raise ValueError(f"orientation={self.orientation!r}; choose 'linear' or 'conv1d'")


@dataclass(frozen=True)
class Attention:
    """What shapes a decoder's attention probabilities besides ``q . k`` (config keys, or None where
    the family has no such feature):

    - ``rotary``: rotary positions from the body's ``rotary_emb``; ``partial_rotary_factor``: the key
      of the fraction of each head that rotates (Phi-3; the model's own rotary function applies it);
      ``rotary_per_layer_type``: the rotary module takes the attention module's ``layer_type`` (Gemma 3);
    - ``qk_norm``: ``"per_head"`` (norm width ``head_dim``: Qwen3, Gemma 3), ``"all_heads"`` (width
      ``n_heads * head_dim``: OLMo 2) or None; the modules are the attention's ``q_norm``, ``k_norm``;
    - ``logit_softcapping``: scores -> ``cap * tanh(scores / cap)`` before the mask (Gemma 2);
    - ``query_pre_attn_scalar``: the score scale is ``value ** -0.5`` (Gemma), held by the module;
    - ``sliding_window``: the config key of a window every layer has (Mistral, Phi-3);
      ``window_per_layer``: the attention module holds its layer's window, or None (Qwen2/3, Gemma)."""

    rotary: bool = False
    partial_rotary_factor: str | None = None
    rotary_per_layer_type: bool = False
    qk_norm: str | None = None
    logit_softcapping: str | None = None
    query_pre_attn_scalar: str | None = None
    sliding_window: str | None = None
    window_per_layer: bool = False

    def __post_init__(self):
        if self.qk_norm not in (None, "per_head", "all_heads"):
            raise ValueError(f"qk_norm={self.qk_norm!r}; choose None, 'per_head' or 'all_heads'")


@dataclass(frozen=True)
class FamilyTable:
    """One module layout: the model types it covers, where the body sits, module path templates
    (``{layer}`` = block index; relative to the body), size config keys, norms, heads, attention.

    ``mlp_out``: the MLP output projection (its input holds the neurons); ``attention``: the module
    whose input is the attention sublayer's input (hooked to recompute the probabilities).
    ``d_mlp_multiple``: where ``d_mlp`` may hold None (GPT-2's ``n_inner``), ``d_mlp`` is this
    multiple of ``d_model``."""

    family: str
    model_types: tuple[str, ...]
    wrappers: tuple[str, ...]
    blocks: str
    mlp_out: str
    attention: str
    n_layers: str
    d_model: str
    d_mlp: str
    norms: Norms
    heads: Heads
    attention_details: Attention = field(default_factory=Attention)
    d_mlp_multiple: int | None = None

    def paths(self) -> dict[str, str]:
        """Every module path template the table names: ``{role: template}``."""
        named = {"blocks": self.blocks, "mlp_out": self.mlp_out, "attention": self.attention}
        for group, obj in (("norm", self.norms), ("heads", self.heads)):
            for role in ("attention_in", "mlp_in", "attention_out", "mlp_out", "final", "q", "k", "v", "qkv", "o"):
                value = getattr(obj, role, None)
                if value is not None:
                    named[f"{group}.{role}"] = value
        return named

    def config_keys(self) -> dict[str, str]:
        """Every config key the table names: ``{role: key}`` (``heads.n_kv_heads`` and
        ``heads.head_dim`` may be absent from a config, see :class:`Heads`)."""
        keys = {"n_layers": self.n_layers, "d_model": self.d_model, "d_mlp": self.d_mlp,
                "heads.n_heads": self.heads.n_heads}
        for role in ("n_kv_heads", "head_dim"):
            if getattr(self.heads, role) is not None:
                keys[f"heads.{role}"] = getattr(self.heads, role)
        for role in ("partial_rotary_factor", "logit_softcapping", "query_pre_attn_scalar", "sliding_window"):
            if getattr(self.attention_details, role) is not None:
                keys[f"attention.{role}"] = getattr(self.attention_details, role)
        return keys


CLIP_VISION = FamilyTable(
    family="clip_vision", model_types=("clip", "clip_vision_model"), wrappers=("vision_model",),
    blocks="encoder.layers", mlp_out="encoder.layers.{layer}.mlp.fc2", attention="encoder.layers.{layer}.self_attn",
    n_layers="num_hidden_layers", d_model="hidden_size", d_mlp="intermediate_size",
    norms=Norms("pre", "layer_norm", attention_in="encoder.layers.{layer}.layer_norm1",
                mlp_in="encoder.layers.{layer}.layer_norm2", final="post_layernorm"),
    heads=Heads("num_attention_heads", q="encoder.layers.{layer}.self_attn.q_proj",
                k="encoder.layers.{layer}.self_attn.k_proj", v="encoder.layers.{layer}.self_attn.v_proj",
                o="encoder.layers.{layer}.self_attn.out_proj", scale="scale"),
)

GPT2 = FamilyTable(
    family="gpt2", model_types=("gpt2",), wrappers=("transformer",),
    blocks="h", mlp_out="h.{layer}.mlp.c_proj", attention="h.{layer}.attn",
    n_layers="n_layer", d_model="n_embd", d_mlp="n_inner", d_mlp_multiple=4,
    norms=Norms("pre", "layer_norm", attention_in="h.{layer}.ln_1", mlp_in="h.{layer}.ln_2", final="ln_f"),
    heads=Heads("n_head", qkv="h.{layer}.attn.c_attn", o="h.{layer}.attn.c_proj", orientation="conv1d"),
)

BERT = FamilyTable(
    family="bert", model_types=("bert",), wrappers=("bert",),
    blocks="encoder.layer", mlp_out="encoder.layer.{layer}.output.dense",
    attention="encoder.layer.{layer}.attention.self",
    n_layers="num_hidden_layers", d_model="hidden_size", d_mlp="intermediate_size",
    norms=Norms("post_residual", "layer_norm", attention_out="encoder.layer.{layer}.attention.output.LayerNorm",
                mlp_out="encoder.layer.{layer}.output.LayerNorm"),
    heads=Heads("num_attention_heads", q="encoder.layer.{layer}.attention.self.query",
                k="encoder.layer.{layer}.attention.self.key", v="encoder.layer.{layer}.attention.self.value",
                o="encoder.layer.{layer}.attention.output.dense", scale=None),
)

#: the Llama layout (module docstring of :mod:`.decoder`)
LLAMA = FamilyTable(
    family="llama", model_types=("llama",), wrappers=("model",),
    blocks="layers", mlp_out="layers.{layer}.mlp.down_proj", attention="layers.{layer}.self_attn",
    n_layers="num_hidden_layers", d_model="hidden_size", d_mlp="intermediate_size",
    norms=Norms("pre", "rms_norm", attention_in="layers.{layer}.input_layernorm",
                mlp_in="layers.{layer}.post_attention_layernorm", final="norm"),
    heads=Heads("num_attention_heads", n_kv_heads="num_key_value_heads", head_dim="head_dim",
                q="layers.{layer}.self_attn.q_proj", k="layers.{layer}.self_attn.k_proj",
                v="layers.{layer}.self_attn.v_proj", o="layers.{layer}.self_attn.o_proj"),
    attention_details=Attention(rotary=True),
)

MISTRAL = replace(LLAMA, family="mistral", model_types=("mistral",),
                  attention_details=Attention(rotary=True, sliding_window="sliding_window"))
QWEN2 = replace(LLAMA, family="qwen2", model_types=("qwen2",),
                attention_details=Attention(rotary=True, window_per_layer=True))
QWEN3 = replace(LLAMA, family="qwen3", model_types=("qwen3",),
                attention_details=Attention(rotary=True, qk_norm="per_head", window_per_layer=True))

PHI3 = replace(
    LLAMA, family="phi3", model_types=("phi3",),
    heads=Heads("num_attention_heads", n_kv_heads="num_key_value_heads", head_dim="head_dim",
                qkv="layers.{layer}.self_attn.qkv_proj", o="layers.{layer}.self_attn.o_proj"),
    attention_details=Attention(rotary=True, partial_rotary_factor="partial_rotary_factor",
                                sliding_window="sliding_window"),
)

OLMO2 = replace(
    LLAMA, family="olmo2", model_types=("olmo2",),
    norms=Norms("post_sublayer", "rms_norm", attention_out="layers.{layer}.post_attention_layernorm",
                mlp_out="layers.{layer}.post_feedforward_layernorm", final="norm"),
    attention_details=Attention(rotary=True, qk_norm="all_heads"),
)

GEMMA2 = replace(
    LLAMA, family="gemma2", model_types=("gemma2",),
    norms=Norms("pre_and_post_sublayer", "rms_norm_offset", attention_in="layers.{layer}.input_layernorm",
                mlp_in="layers.{layer}.pre_feedforward_layernorm",
                attention_out="layers.{layer}.post_attention_layernorm",
                mlp_out="layers.{layer}.post_feedforward_layernorm", final="norm"),
    attention_details=Attention(rotary=True, logit_softcapping="attn_logit_softcapping",
                                query_pre_attn_scalar="query_pre_attn_scalar", window_per_layer=True),
)

GEMMA3 = replace(
    GEMMA2, family="gemma3", model_types=("gemma3_text",),
    attention_details=Attention(rotary=True, rotary_per_layer_type=True, qk_norm="per_head",
                                query_pre_attn_scalar="query_pre_attn_scalar", window_per_layer=True),
)

#: every family table, by name
FAMILIES: Mapping[str, FamilyTable] = MappingProxyType({
    t.family: t for t in (CLIP_VISION, GPT2, BERT, LLAMA, MISTRAL, QWEN2, QWEN3, PHI3, OLMO2, GEMMA2, GEMMA3)
})
