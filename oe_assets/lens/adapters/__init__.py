"""One adapter per model family; :func:`get_adapter` picks the one that matches a model."""

from __future__ import annotations

import torch

from .base import AttentionWeights, Capture, LayerNormParams, ModelAdapter
from .bert import BertAdapter
from .clip_vision import CLIPVisionAdapter
from .decoder import (
    DecoderLMAdapter,
    Gemma2Adapter,
    Gemma3Adapter,
    Olmo2Adapter,
    Phi3Adapter,
)
from .gpt2 import GPT2Adapter

#: every known family, tried in order
ADAPTERS: list[type[ModelAdapter]] = [
    CLIPVisionAdapter, GPT2Adapter, BertAdapter, DecoderLMAdapter, Phi3Adapter, Olmo2Adapter, Gemma2Adapter,
    Gemma3Adapter,
]


def register_adapter(adapter: type[ModelAdapter]) -> type[ModelAdapter]:
    """Add a model family (usable as a class decorator)."""
    ADAPTERS.append(adapter)
    return adapter


def get_adapter(model: torch.nn.Module | ModelAdapter, pooling: str | None = None) -> ModelAdapter:
    """The adapter for ``model``; raises naming the model class when no family matches."""
    if isinstance(model, ModelAdapter):
        return model
    for adapter in ADAPTERS:
        if adapter.matches(model):
            return adapter(model, pooling=pooling)
    raise TypeError(
        f"no second-order adapter for {type(model).__name__}; supported families: "
        + ", ".join(a.family for a in ADAPTERS)
    )


__all__ = [
    "ADAPTERS",
    "AttentionWeights",
    "BertAdapter",
    "CLIPVisionAdapter",
    "Capture",
    "DecoderLMAdapter",
    "GPT2Adapter",
    "Gemma2Adapter",
    "Gemma3Adapter",
    "LayerNormParams",
    "ModelAdapter",
    "Olmo2Adapter",
    "Phi3Adapter",
    "get_adapter",
    "register_adapter",
]
