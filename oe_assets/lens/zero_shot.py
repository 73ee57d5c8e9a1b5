"""Representations, the zero-shot classifier and text-set projections."""

from __future__ import annotations

import json
from importlib import resources
from typing import Callable, Sequence

import numpy as np
import torch

from .tokenization import tokenize

__all__ = [
    "representations", "zero_shot_classifier", "project_texts", "clip_text_encoder",
    "imagenet_classes", "imagenet_templates", "imagenet_wnids", "imagenet_r_wnids", "TextEncoder",
]

#: maps a list of strings to their embeddings ``[len(texts), d]``
TextEncoder = Callable[[Sequence[str]], torch.Tensor]


def _package_json(name: str):
    return json.loads(resources.files("oe_assets.package_data").joinpath(name).read_text())


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names, in class-index order."""
    return _package_json("imagenet_classes.json")


def imagenet_templates() -> list[str]:
    """The 80 OpenAI ImageNet prompt templates (``{}`` stands for the class name)."""
    return _package_json("openai_imagenet_templates.json")


def imagenet_wnids() -> list[str]:
    """The 1000 WordNet ids in class-index order (folder names of ImageNet and ImageNet-R)."""
    return _package_json("imagenet_wnids.json")


def imagenet_r_wnids() -> list[str]:
    """The 200 WordNet ids of ImageNet-R (its folder names), in ImageNet class-index order."""
    return _package_json("imagenet_r_wnids.json")


def representations(embeddings: torch.Tensor | np.ndarray, coefficient: float = 100.0):
    """``coefficient * e / |e|`` row-wise, for ``embeddings`` ``[samples, d]``: ``[samples, d]``
    (same type as ``embeddings``)."""
    norm = embeddings.norm(dim=-1, keepdim=True) if isinstance(embeddings, torch.Tensor) else \
        np.linalg.norm(embeddings, axis=-1, keepdims=True)
    return coefficient * embeddings / norm


@torch.no_grad()
def zero_shot_classifier(encode: TextEncoder, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """``[d, classes]``: for class ``c``, encode ``template.format(c)`` for every template, normalise
    each prompt embedding, average them and normalise the mean (unit columns)."""
    if not classnames:
        raise ValueError("classnames is empty")
    if not templates or any("{}" not in t for t in templates):
        raise ValueError("templates must be a non-empty list of strings that each contain '{}'")
    columns = []
    for name in classnames:
        emb = encode([t.format(name) for t in templates])
        emb = emb / emb.norm(dim=-1, keepdim=True)
        mean = emb.mean(dim=0)
        columns.append(mean / mean.norm())
    return torch.stack(columns, dim=1)


@torch.no_grad()
def project_texts(encode: TextEncoder, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Embed ``texts`` (descriptions, one per row) in batches: ``[len(texts), d]``."""
    if len(texts) == 0:
        raise ValueError("texts is empty")
    return torch.cat([encode(list(texts[i:i + batch_size])) for i in range(0, len(texts), batch_size)])


def clip_text_encoder(model: torch.nn.Module, tokenizer, max_length: int | None = None) -> TextEncoder:
    """The text tower of a ``CLIPModel`` as a :data:`TextEncoder`: ``text_projection(pooled)``,
    ``[len(texts), d_out]``."""
    if not hasattr(model, "text_model") or not hasattr(model, "text_projection"):
        raise TypeError(f"{type(model).__name__} has no CLIP text tower (text_model + text_projection)")
    device = next(model.parameters()).device
    max_length = max_length or model.text_model.config.max_position_embeddings

    @torch.no_grad()
    def encode(texts: Sequence[str]) -> torch.Tensor:
        batch = tokenize(tokenizer, texts, max_length)
        batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        pooled = model.text_model(**batch).pooler_output
        return model.text_projection(pooled)

    return encode
