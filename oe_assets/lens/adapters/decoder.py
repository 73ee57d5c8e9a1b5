"""Today's open decoder LLMs with the Llama layout: ``LlamaForCausalLM`` / ``LlamaModel``,
``MistralForCausalLM``, ``Qwen2ForCausalLM``, ``Qwen3ForCausalLM`` (and their base models), plus
layouts that differ in few places: Phi-3 (fused ``qkv_proj`` and ``gate_up_proj``), OLMo 2
(RMSNorms after the sublayers instead of before), Gemma 2 and Gemma 3 text models (``1 + weight``
RMSNorms before and after the sublayers).

Llama layout, per block ``j`` (``model.layers[j]``)::

    x   = x + self_attn(input_layernorm(x))          rotary positions, grouped-query attention
    x   = x + mlp(post_attention_layernorm(x))       mlp(z) = down_proj(act(gate_proj z) * up_proj z)
    r   = norm(x)[last non-padding token]            d_out = d_model; classifier = unembedding rows

- A neuron is one input channel of ``down_proj``: ``a[b, t, n] = act(gate)[n] * up[n]``.
- Every norm is an RMSNorm, ``v -> gamma * v / sqrt(mean(v^2) + eps)``: frozen, it is
  ``diag(gamma) / rms[b, t]`` (no centring, no bias), see :class:`~.base.LayerNormParams`.
- Grouped-query attention: query head ``h`` reads key/value head ``g(h) = h // (H / H_kv)``.
  :meth:`DecoderLMAdapter.attention_weights` hands out ``W_k``, ``W_v`` per *query* head (key/value
  head ``g(h)`` repeated), so the family-agnostic algebra sees ``H`` ordinary heads.
- Attention probabilities are recomputed from the captured attention input with the model's own
  rotary embedding module and ``apply_rotary_pos_emb``, q/k norms (Qwen3 per head, OLMo 2 over all
  heads), q/k biases (Qwen2), the causal and padding masks and a sliding window where the block has
  one (Mistral, Qwen2/3 sliding layers): ``sdpa``, ``eager`` and flash runs give the same effects.
  Positions count real tokens, so right and left padding give the same effects.

Conventions:

- ``"direct"`` (default): each frozen RMSNorm acts as ``v -> gamma * v / rms_token``, the head as
  ``W_O[h] A_h W_V[g(h)]`` with no biases.
- ``"reference"`` (Llama layout and Phi-3, whose norms sit before the sublayers as in CLIP): the
  published shares with ``c_j = (1 + 2j) N`` and ``c_fj = (1 + 2j)(1 + 2L) H N``::

      u = a[b,t,n] W_out[:, n] + b_out / N             (down_proj has no bias in these models: 0)
      z = g_j * u / rms_j[b,t]                          (an RMSNorm has no mean and no beta to share)
      v = W_V[g(h)] z + b_V[g(h)] / c_j                 (Qwen2's value bias; 0 elsewhere)
      o = W_O[h] sum_t A_h[b,q,t] v + b_O / (c_j H)     (o_proj bias: Llama with attention_bias only)
      e = sum_q w[b,q] g_f * o / rms_f[b,q]

  so for bias-free models (Llama, Mistral, Qwen3) it equals ``"direct"``.  OLMo 2 normalises each
  sublayer's output before it joins the stream (Gemma too); the published shares have no meaning
  there and asking for ``"reference"`` is an error.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import ClassVar

import torch

from .families import GEMMA2, GEMMA3, LLAMA, MISTRAL, OLMO2, PHI3, QWEN2, QWEN3
from .generic import TableAdapter
from .text import CausalLMAdapter

__all__ = ["DecoderLMAdapter", "Gemma2Adapter", "Gemma3Adapter", "Olmo2Adapter", "Phi3Adapter"]


class DecoderLMAdapter(TableAdapter, CausalLMAdapter):
    """The Llama layout and its variants; paths, sizes, norms and attention details come from the
    family tables (:mod:`.families`), one per ``config.model_type``."""

    family = "decoder_lm"
    tables = (LLAMA, MISTRAL, QWEN2, QWEN3)
    conventions = ("direct", "reference")
    default_convention = "direct"
    #: ``config.model_type`` -> the ``transformers`` classes :func:`~oe_assets.models.loading.load_model`
    #: uses: (causal LM, base model for a base-model checkpoint)
    causal_lm_classes: ClassVar[dict[str, tuple[str, str]]] = {
        "llama": ("LlamaForCausalLM", "LlamaModel"), "mistral": ("MistralForCausalLM", "MistralModel"),
        "qwen2": ("Qwen2ForCausalLM", "Qwen2Model"), "qwen3": ("Qwen3ForCausalLM", "Qwen3Model"),
    }

    @classmethod
    def model_class(cls, model_type: str, architectures=None):
        import transformers

        names = cls.causal_lm_classes.get(model_type)
        if names is None:
            return None
        base = bool(architectures) and all(a.endswith("Model") for a in architectures)
        return getattr(transformers, names[base])  # a base-model checkpoint has no LM head to load

    def __init__(self, model: torch.nn.Module, pooling: str | None = None):
        if pooling not in (None, "last"):
            raise ValueError(f"pooling={pooling!r}: a causal LM reads its last non-padding token ('last')")
        super().__init__(model, "last")

    # ---- attention ------------------------------------------------------------------------
    def sliding_window(self, block: int) -> int | None:
        """The block's window (a query sees keys less than ``window`` positions back), or None:
        Qwen2/3 set it per layer on the attention module, Mistral and Phi-3 in the config."""
        details = self.table.attention_details
        if details.window_per_layer:
            return self.module(self.table.attention, block).sliding_window
        return self._config(details.sliding_window)

    def rotary(self, attn, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)`` ``[batch, tokens, rotary dims]`` from the model's own rotary module (given the
        attention's layer type where the table says the rotary base depends on it: Gemma 3)."""
        if self.table.attention_details.rotary_per_layer_type:
            return self.body.rotary_emb(x, positions, attn.layer_type)
        return self.body.rotary_emb(x, positions)

    def _qk_norms(self, attn, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's own q/k norms on ``q [B, H, T, dh]``, ``k [B, H_kv, T, dh]`` as the table's
        ``qk_norm`` says: per head (Qwen3, Gemma 3), over all heads of the projection (OLMo 2), or none."""
        layout = self.table.attention_details.qk_norm
        if layout is None:
            return q, k

        def norm(module, x):
            if layout == "per_head":
                return module(x)
            B, n, T, dh = x.shape
            flat = module(x.transpose(1, 2).reshape(B, T, n * dh))
            return flat.view(B, T, n, dh).transpose(1, 2)

        return norm(attn.q_norm, q), norm(attn.k_norm, k)

    def attention_probabilities(self, x, block, query_positions, bias, inputs) -> torch.Tensor:
        """``softmax_t(scale * rot(n_q(W_q[h] x_q + b_q)) . rot(n_k(W_k[g(h)] x_t + b_k)) + mask)``:
        ``[batch, heads, queries, tokens]``, with the model's own rotary module and function, its
        q/k norms ``n_q``, ``n_k``, causal, padding and sliding-window masks."""
        attn = self.module(self.table.attention, block)
        W_q, b_q, W_k, b_k, _, _ = self.projections(block)
        q = torch.einsum("btd,hed->bhte", x, W_q) + b_q[None, :, None, :]  # [B, H, T, dh]
        k = torch.einsum("btd,hed->bhte", x, W_k) + b_k[None, :, None, :]  # [B, H_kv, T, dh]
        q, k = self._qk_norms(attn, q, k)
        positions = self.positions(inputs).to(x.device)
        cos, sin = self.rotary(attn, x, positions)
        # the function the model itself calls (Phi-3's rotates only part of each head)
        rotate = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        q, k = rotate(q, k, cos, sin)
        k = k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
        scores = torch.einsum("bhqe,bhte->bhqt", q[:, :, query_positions], k) * self.score_scale(block)
        cap = self._config(self.table.attention_details.logit_softcapping)
        if cap is not None:  # Gemma 2: scores -> cap * tanh(scores / cap) before the mask
            scores = torch.tanh(scores / cap) * cap
        if bias is not None:
            scores = scores + bias[:, None]
        window = self.sliding_window(block)
        if window is not None and window < x.shape[1]:
            # distances between real tokens are the same in index and position; positions keep
            # padding rows (never read out) from losing their last key
            far = positions[:, query_positions, None] - positions[:, None, :] >= window  # [B, Q, T]
            scores = scores.masked_fill(far[:, None], float("-inf"))
        soft_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        return torch.softmax(scores.to(soft_dtype), dim=-1)  # float32 for half precision, as the lens computes

    # ---- running --------------------------------------------------------------------------
    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.body(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                           position_ids=self.positions(inputs), use_cache=False).last_hidden_state  # after norm
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), self.last_positions(inputs)]

    def unembedding(self) -> torch.Tensor:
        """``W_U [vocab, d_model]``: the LM head, or the token embedding of a bare base model."""
        head = getattr(self.model, "lm_head", None)
        return self.body.embed_tokens.weight if head is None else head.weight


class Phi3Adapter(DecoderLMAdapter):
    """Phi-3: the Llama layout with fused projections, ``qkv_proj = [q | k | v]`` rows and
    ``gate_up_proj = [gate | up]`` (a neuron is still ``act(gate) * up``, one input of ``down_proj``),
    and rotary positions on part of each head (the model's own rotary function handles it)."""

    family = "phi3"
    tables = (PHI3,)
    causal_lm_classes: ClassVar[dict[str, tuple[str, str]]] = {"phi3": ("Phi3ForCausalLM", "Phi3Model")}


class Olmo2Adapter(DecoderLMAdapter):
    """OLMo 2: RMSNorms on the sublayers' *outputs*, attention reads the raw stream::

        x = x + post_attention_layernorm(self_attn(x))
        x = x + post_feedforward_layernorm(mlp(x))

    so the path of MLP ``l`` to block ``j``'s head crosses ``layers[l].post_feedforward_layernorm``
    (at the key token) and, after the head, ``layers[j].post_attention_layernorm`` and ``norm`` (at
    the query token).  q/k norms span all heads of the projection.  Only ``"direct"``."""

    family = "olmo2"
    tables = (OLMO2,)
    conventions = ("direct",)
    causal_lm_classes: ClassVar[dict[str, tuple[str, str]]] = {"olmo2": ("Olmo2ForCausalLM", "Olmo2Model")}


class Gemma2Adapter(DecoderLMAdapter):
    """Gemma 2: RMSNorms before *and* after each sublayer, each scaling by ``1 + weight``::

        x = x + post_attention_layernorm(self_attn(input_layernorm(x)))
        x = x + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(x)))

    so the path of MLP ``l`` to block ``j``'s head crosses ``layers[l].post_feedforward_layernorm``
    and ``layers[j].input_layernorm`` (key token), then ``layers[j].post_attention_layernorm`` and
    ``norm`` (query token).  Attention scores are soft-capped (``cap * tanh(s / cap)``) and every
    other layer has a sliding window; both only shape the probabilities, which the lens freezes.  The
    classifier reads the logits before Gemma 2's final soft-capping (a monotone map of them).
    Only ``"direct"``."""

    family = "gemma2"
    tables = (GEMMA2,)
    conventions = ("direct",)
    causal_lm_classes: ClassVar[dict[str, tuple[str, str]]] = {"gemma2": ("Gemma2ForCausalLM", "Gemma2Model")}


class Gemma3Adapter(Gemma2Adapter):
    """Gemma 3 text models (``gemma3_text``: Gemma 3 1B and the text tower layout): Gemma 2's layout
    with per-head q/k norms and a rotary base per layer type (local sliding layers, global layers)."""

    family = "gemma3"
    tables = (GEMMA3,)
    causal_lm_classes: ClassVar[dict[str, tuple[str, str]]] = {
        "gemma3_text": ("Gemma3ForCausalLM", "Gemma3TextModel"),
    }
