"""GPT-2-style causal LMs: ``GPT2Model`` and models that hold one as ``.transformer``
(``GPT2LMHeadModel``).

Pre-LayerNorm like CLIP: block ``j`` reads ``ln_1(stream)``; the representation is the stream after
``ln_f`` at the last non-padding token (no projection: ``d_out = d_model``).
"""

from __future__ import annotations

from typing import Mapping

import torch

from .base import AttentionWeights
from .text import CausalLMAdapter


class GPT2Adapter(CausalLMAdapter):
    family = "gpt2"
    layer_norm_style = "pre"
    conventions = ("reference", "direct")
    default_convention = "reference"

    model_types = ("gpt2",)

    @classmethod
    def model_class(cls, model_type: str, architectures=None):
        import transformers

        return transformers.GPT2LMHeadModel if model_type in cls.model_types else None

    @classmethod
    def layers_in_config(cls, config):
        return config.n_layer if config.model_type in cls.model_types else None

    @classmethod
    def matches(cls, model: torch.nn.Module) -> bool:
        return getattr(getattr(model, "config", None), "model_type", "") == "gpt2"

    def __init__(self, model: torch.nn.Module, pooling: str | None = None):
        if pooling not in (None, "last"):
            raise ValueError(f"pooling={pooling!r}: a causal LM reads its last non-padding token ('last')")
        super().__init__(model, "last")
        self.prefix = "transformer." if hasattr(model, "transformer") else ""
        self.body = model.get_submodule(self.prefix.rstrip(".")) if self.prefix else model
        self.config = model.config
        if getattr(self.config, "add_cross_attention", False):
            raise ValueError("GPT-2 models with cross-attention are not supported")
        self.mlp_out_pattern = f"{self.prefix}h.*.mlp.c_proj"
        self.attention_pattern = f"{self.prefix}h.*.attn"

    n_layers = property(lambda self: self.config.n_layer)
    n_heads = property(lambda self: self.config.n_head)
    d_model = property(lambda self: self.config.n_embd)
    d_mlp = property(lambda self: self.config.n_inner or 4 * self.config.n_embd)

    def mlp_out_weights(self, layer: int):
        c_proj = self.body.h[layer].mlp.c_proj  # Conv1D: y = x @ weight + bias, weight [N, D]
        return c_proj.weight.T, c_proj.bias

    def attention_weights(self, block: int) -> AttentionWeights:
        attn = self.body.h[block].attn
        H, D = self.n_heads, self.d_model
        dh = D // H
        W, b = attn.c_attn.weight, attn.c_attn.bias  # [D, 3D], [3D]: q | k | v
        split = lambda i: (W[:, i * D:(i + 1) * D].T.reshape(H, dh, D), b[i * D:(i + 1) * D].view(H, dh))  # noqa: E731
        (W_q, b_q), (W_k, b_k), (W_v, b_v) = split(0), split(1), split(2)
        W_o = attn.c_proj.weight.view(H, dh, D).permute(0, 2, 1)  # [H, D, dh]
        return AttentionWeights(W_q, b_q, W_k, b_k, W_v, b_v, W_o, attn.c_proj.bias, float(attn.scaling))

    def layer_norms_before_head(self, mlp_layer: int, block: int) -> list[str]:
        return [f"{self.prefix}h.{block}.ln_1"]

    def layer_norms_after_head(self, block: int) -> list[str]:
        return [f"{self.prefix}ln_f"]

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        positions = self.positions(inputs)
        hidden = self.body(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                           position_ids=positions, use_cache=False).last_hidden_state  # after ln_f
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), self.last_positions(inputs)]

    def unembedding(self) -> torch.Tensor:
        """``W_U [vocab, d_model]``: the LM head, or the tied token embedding of a bare ``GPT2Model``."""
        head = getattr(self.model, "lm_head", None)
        return self.body.wte.weight if head is None else head.weight
