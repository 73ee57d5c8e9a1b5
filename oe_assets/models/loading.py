"""Loading models by Hugging Face id or local folder, with the family's adapter and tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..lens.adapters import ADAPTERS, ModelAdapter
from .hub import MINILM_ID, ModelSourceError, load_config, resolve_source, sentence_transformers_pooling

__all__ = ["LoadedModel", "load_model", "resolve_device", "resolve_dtype", "sentence_transformers_pooling",
           "MINILM_ID", "ModelSourceError", "resolve_source"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    """A model in eval mode, its adapter, and its tokenizer / image processor (None when absent)."""

    source: str
    model: torch.nn.Module
    adapter: ModelAdapter
    tokenizer: Any
    image_processor: Any


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r}; choose one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def load_model(
    name_or_path: str, dtype: str | torch.dtype = "float32", device: str = "auto", pooling: str | None = None,
    revision: str | None = None, compute_dtype: str | torch.dtype | None = None,
) -> LoadedModel:
    """Load ``name_or_path`` (hub id or folder), pick its family's adapter by ``config.model_type``
    and load the family's model class, its tokenizer and (CLIP) image processor.

    Decoder LLMs (``llama``, ``mistral``, ``qwen2``, ``qwen3``, ``phi3``, ``olmo2``) load as their
    ``...ForCausalLM`` class, or the base class (``LlamaModel``, ...) for a base-model checkpoint;
    a tokenizer without a pad token pads with its end-of-sequence token.

    ``dtype``: the weights' dtype, in which the forward pass runs; ``compute_dtype``: the dtype the
    lenses compute factors and path weights in (None: float32 for bfloat16 / float16 weights, else
    ``dtype``; see :func:`oe_assets.lens.adapters.base.lens_dtype`).

    A source that is not a model folder, a missing path, or an uncached hub id offline raise
    :class:`~oe_assets.models.hub.ModelSourceError` (a ``ValueError``) naming it, before any download."""
    from transformers import AutoImageProcessor, AutoTokenizer

    source = resolve_source(name_or_path)
    config = load_config(source)
    model_type = getattr(config, "model_type", "")
    for adapter_cls in ADAPTERS:
        model_cls = adapter_cls.model_class(model_type, getattr(config, "architectures", None))
        if model_cls is not None:
            break
    else:
        raise ValueError(
            f"{name_or_path!r} is a {model_type!r} model; supported model types: "
            + ", ".join(t for a in ADAPTERS for t in a.model_types)
        )
    hub = {"revision": revision} if revision and not Path(source).is_dir() else {}  # a folder has one revision
    model = model_cls.from_pretrained(source, dtype=resolve_dtype(dtype), **hub).to(resolve_device(device)).eval()
    if pooling is None and adapter_cls.reads_sentence_transformers_pooling:
        pooling = sentence_transformers_pooling(source)
    adapter = adapter_cls(model, pooling=pooling)
    adapter.compute_dtype = None if compute_dtype is None else resolve_dtype(compute_dtype)

    def optional(loader):
        try:
            return loader.from_pretrained(source, **hub)
        except Exception:
            return None

    tokenizer = optional(AutoTokenizer)
    if tokenizer is not None:
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token  # GPT-2 has none; padded positions are masked anyway
        tokenizer.padding_side = "right"  # the readout and position handling expect right padding
    return LoadedModel(source, model, adapter, tokenizer, optional(AutoImageProcessor))
