"""GPT-2-style causal LMs: ``GPT2Model`` and models that hold one as ``.transformer``
(``GPT2LMHeadModel``).

Pre-LayerNorm like CLIP: block ``j`` reads ``ln_1(stream)``; the representation is the stream after
``ln_f`` at the last non-padding token (no projection: ``d_out = d_model``).  Paths, sizes, the
fused ``Conv1D`` projections and norms: :data:`~.families.GPT2`.
"""

from __future__ import annotations

from typing import Mapping

import torch

from .families import GPT2
from .generic import TableAdapter
from .text import CausalLMAdapter


class GPT2Adapter(TableAdapter, CausalLMAdapter):
    family = "gpt2"
    tables = (GPT2,)
    conventions = ("reference", "direct")
    default_convention = "reference"

    @classmethod
    def model_class(cls, model_type: str, architectures=None):
        import transformers

        return transformers.GPT2LMHeadModel if model_type in cls.model_types else None

    def __init__(self, model: torch.nn.Module, pooling: str | None = None):
        if pooling not in (None, "last"):
            raise ValueError(f"pooling={pooling!r}: a causal LM reads its last non-padding token ('last')")
        super().__init__(model, "last")
        if getattr(self.config, "add_cross_attention", False):
            raise ValueError("GPT-2 models with cross-attention are not supported")

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        positions = self.positions(inputs)
        hidden = self.body(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                           position_ids=positions, use_cache=False).last_hidden_state  # after ln_f
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), self.last_positions(inputs)]

    def unembedding(self) -> torch.Tensor:
        """``W_U [vocab, d_model]``: the LM head, or the tied token embedding of a bare ``GPT2Model``."""
        head = getattr(self.model, "lm_head", None)
        return self.body.wte.weight if head is None else head.weight
