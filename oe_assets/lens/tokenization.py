"""Text to token batches: the one place every text batch of the project is tokenized (the adapters,
the zero-shot classifiers, the dataset readers import it from here)."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

__all__ = ["tokenize"]


def tokenize(tokenizer, texts: Sequence[str], max_length: int | None) -> Mapping[str, torch.Tensor]:
    """The tokenizer's PyTorch output for ``texts``: right-padded to the longest, truncated to
    ``max_length``."""
    return tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
