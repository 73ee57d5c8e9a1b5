"""BERT-style encoders: ``BertModel`` and models that hold one as ``.bert`` (sentence-transformers
folders such as all-MiniLM-L6-v2 load as a ``BertModel``).

Post-LayerNorm: each sublayer's output is added to the stream and the sum normalised
(``attention.output.LayerNorm``, then ``output.LayerNorm``); attention reads the stream directly.
The representation pools the last hidden state over tokens: ``"mean"`` over non-padding tokens
(default) or ``"cls"``.  Only the ``"direct"`` convention is defined.  Paths, sizes and norms:
:data:`~.families.BERT`.
"""

from __future__ import annotations

from typing import Mapping

import torch

from .families import BERT
from .generic import TableAdapter
from .text import TextAdapter


class BertAdapter(TableAdapter, TextAdapter):
    family = "bert"
    tables = (BERT,)
    conventions = ("direct",)
    default_convention = "direct"
    extra_inputs = ("token_type_ids",)
    poolings = ("mean", "cls")

    @classmethod
    def model_class(cls, model_type: str, architectures=None):
        import transformers

        return transformers.BertModel if model_type in cls.model_types else None

    reads_sentence_transformers_pooling = True

    def __init__(self, model: torch.nn.Module, pooling: str | None = None):
        pooling = pooling or "mean"
        if pooling not in self.poolings:
            raise ValueError(f"pooling={pooling!r}; a BERT encoder pools with one of {self.poolings}")
        super().__init__(model, pooling)

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
