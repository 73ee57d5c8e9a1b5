"""BERT-style encoders: ``BertModel`` and models that hold one as ``.bert`` (sentence-transformers
folders such as all-MiniLM-L6-v2 load as a ``BertModel``).

Post-LayerNorm: each sublayer's output is added to the stream and the sum normalised
(``attention.output.LayerNorm``, then ``output.LayerNorm``); attention reads the stream directly.
The representation pools the last hidden state over tokens: ``"mean"`` over non-padding tokens
(default) or ``"cls"``.  Only the ``"direct"`` convention is defined.
"""

from __future__ import annotations

from typing import Mapping

import torch

from ...models.hub import sentence_transformers_pooling
from .base import AttentionWeights
from .text import TextAdapter


class BertAdapter(TextAdapter):
    family = "bert"
    layer_norm_style = "post"
    conventions = ("direct",)
    default_convention = "direct"
    extra_inputs = ("token_type_ids",)
    poolings = ("mean", "cls")

    model_types = ("bert",)

    @classmethod
    def model_class(cls, model_type: str, architectures=None):
        import transformers

        return transformers.BertModel if model_type in cls.model_types else None

    @classmethod
    def default_pooling(cls, source: str) -> str | None:
        return sentence_transformers_pooling(source)

    @classmethod
    def layers_in_config(cls, config):
        return config.num_hidden_layers if config.model_type in cls.model_types else None

    @classmethod
    def matches(cls, model: torch.nn.Module) -> bool:
        return getattr(getattr(model, "config", None), "model_type", "") == "bert"

    def __init__(self, model: torch.nn.Module, pooling: str | None = None):
        pooling = pooling or "mean"
        if pooling not in self.poolings:
            raise ValueError(f"pooling={pooling!r}; a BERT encoder pools with one of {self.poolings}")
        super().__init__(model, pooling)
        self.prefix = "bert." if hasattr(model, "bert") else ""
        self.body = model.bert if self.prefix else model
        self.config = model.config
        self.mlp_out_pattern = f"{self.prefix}encoder.layer.*.output.dense"
        self.attention_pattern = f"{self.prefix}encoder.layer.*.attention.self"

    n_layers = property(lambda self: self.config.num_hidden_layers)
    n_heads = property(lambda self: self.config.num_attention_heads)
    d_model = property(lambda self: self.config.hidden_size)
    d_mlp = property(lambda self: self.config.intermediate_size)

    def _layer(self, j: int):
        return self.body.encoder.layer[j]

    def mlp_out_weights(self, layer: int):
        dense = self._layer(layer).output.dense
        return dense.weight, dense.bias

    def attention_weights(self, block: int) -> AttentionWeights:
        att = self._layer(block).attention
        H, D = self.n_heads, self.d_model
        dh = D // H
        split = lambda lin: (lin.weight.view(H, dh, D), lin.bias.view(H, dh))  # noqa: E731
        W_q, b_q = split(att.self.query)
        W_k, b_k = split(att.self.key)
        W_v, b_v = split(att.self.value)
        W_o = att.output.dense.weight.view(D, H, dh).permute(1, 0, 2)
        return AttentionWeights(W_q, b_q, W_k, b_k, W_v, b_v, W_o, att.output.dense.bias, dh ** -0.5)

    def _stream_norms(self, k: int) -> list[str]:
        p = f"{self.prefix}encoder.layer.{k}"
        return [f"{p}.attention.output.LayerNorm", f"{p}.output.LayerNorm"]

    def layer_norms_before_head(self, mlp_layer: int, block: int) -> list[str]:
        names = [f"{self.prefix}encoder.layer.{mlp_layer}.output.LayerNorm"]
        for k in range(mlp_layer + 1, block):
            names += self._stream_norms(k)
        return names

    def layer_norms_after_head(self, block: int) -> list[str]:
        names = []
        for k in range(block, self.n_layers):
            names += self._stream_norms(k)
        return names

    def layer_norms_after_mlp(self, mlp_layer: int) -> list[str]:
        """Post-LN: the MLP's own ``output.LayerNorm``, then both stream norms of every later block."""
        return self.layer_norms_before_head(mlp_layer, mlp_layer + 1) + self.layer_norms_after_head(mlp_layer + 1)

    def attention_bias(self, inputs):
        return self._padding_bias(inputs, causal=False)

    def readout_weights(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        mask = inputs["attention_mask"].to(self.dtype)
        if self.pooling == "mean":
            return mask / mask.sum(1, keepdim=True)
        w = torch.zeros_like(mask)
        w[:, 0] = 1.0
        return w

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        kwargs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        hidden = self.body(**kwargs).last_hidden_state
        return torch.einsum("bt,btd->bd", self.readout_weights(inputs), hidden)

    def readout(self, inputs: Mapping[str, torch.Tensor]):
        return self._all_queries(inputs), self.readout_weights(inputs)
