"""Loading models by Hugging Face id or local folder, with the family's adapter and tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..lens.adapters import ADAPTERS, ModelAdapter
from .hub import MINILM_ID, ModelSourceError, load_config, resolve_source, sentence_transformers_pooling

__all__ = ["LoadedModel", "load_model", "check_device_map", "map_compute_device", "DEVICE_MAP_KINDS", "resolve_device",
           "resolve_dtype", "sentence_transformers_pooling", "MINILM_ID", "ModelSourceError", "resolve_source"]

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


DEVICE_MAP_KINDS = ("auto", "balanced", "balanced_low_0", "sequential")


def check_device_map(device_map, max_memory=None) -> None:
    """A ``device_map`` is one of :data:`DEVICE_MAP_KINDS` or ``{module name: device}`` (a GPU index,
    ``"cuda:N"``, ``"cpu"`` or ``"disk"``); ``max_memory`` ``{device: size}`` (``"70GiB"`` or bytes)
    goes with a named kind only."""
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAP_KINDS:
            raise ValueError(f"model.device_map={device_map!r}; choose one of {DEVICE_MAP_KINDS} or give a map "
                             "{module name: device}")
    elif isinstance(device_map, dict):
        if not device_map:
            raise ValueError("model.device_map is an empty map")
        for name, device in device_map.items():
            if not isinstance(name, str) or not (isinstance(device, int) or isinstance(device, str)):
                raise ValueError(f"model.device_map entry {name!r}: {device!r}; expected a module name and a "
                                 "device (GPU index, 'cuda:N', 'cpu' or 'disk')")
        if max_memory:
            raise ValueError("model.max_memory sizes an automatic device_map ('auto', 'balanced', ...); "
                             "an explicit map places every module itself")
    else:
        raise ValueError(f"model.device_map={device_map!r}; expected one of {DEVICE_MAP_KINDS} or a map")
    if max_memory is not None and not isinstance(max_memory, dict):
        raise ValueError(f"model.max_memory={max_memory!r}; expected a map {{device: size}}, e.g. "
                         "{0: '70GiB', 1: '70GiB', 'cpu': '200GiB'}")


def map_compute_device(device_map) -> torch.device:
    """The device of a ``device_map``'s first GPU (the analysis stages compute there), else the CPU."""
    check_device_map(device_map)
    if isinstance(device_map, dict):
        for device in device_map.values():
            if isinstance(device, int) or device.isdigit():
                return torch.device("cuda", int(device))
            if device.startswith("cuda"):
                return torch.device(device)
        return torch.device("cpu")
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def load_model(
    name_or_path: str, dtype: str | torch.dtype = "float32", device: str = "auto", pooling: str | None = None,
    revision: str | None = None, compute_dtype: str | torch.dtype | None = None,
    device_map: str | dict | None = None, max_memory: dict | None = None, offload_folder: str | None = None,
) -> LoadedModel:
    """Load ``name_or_path`` (hub id or folder), pick its family's adapter by ``config.model_type``
    and load the family's model class, its tokenizer and (CLIP) image processor.

    Decoder LLMs (``llama``, ``mistral``, ``qwen2``, ``qwen3``, ``phi3``, ``olmo2``) load as their
    ``...ForCausalLM`` class, or the base class (``LlamaModel``, ...) for a base-model checkpoint;
    a tokenizer without a pad token pads with its end-of-sequence token.

    ``dtype``: the weights' dtype, in which the forward pass runs; ``compute_dtype``: the dtype the
    lenses compute factors and path weights in (None: float32 for bfloat16 / float16 weights, else
    ``dtype``; see :func:`oe_assets.lens.adapters.base.lens_dtype`).

    ``device_map`` (None: the whole model on ``device``) splits the model over several devices
    through Hugging Face ``accelerate`` (the ``llm`` extra): ``"auto"`` / ``"balanced"`` / ... fill
    the GPUs within ``max_memory`` ``{device: size}``, then the CPU, then ``offload_folder`` on disk;
    a map ``{module name: device}`` places the modules as given.  The lens then keeps each block's
    factors on its device (:mod:`oe_assets.lens.placement`); placement does not change the numbers.

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
    if device_map is None:
        if max_memory is not None or offload_folder is not None:
            raise ValueError("model.max_memory and model.offload_folder go with model.device_map; it is not set")
        model = model_cls.from_pretrained(source, dtype=resolve_dtype(dtype), **hub).to(resolve_device(device))
    else:
        check_device_map(device_map, max_memory)
        gpus = torch.cuda.device_count()
        named = [k for k in (max_memory or {}) if isinstance(k, int)]
        named += [d for d in (device_map.values() if isinstance(device_map, dict) else ()) if isinstance(d, int)]
        if any(i >= gpus for i in named):
            raise ValueError(f"model.device_map / model.max_memory name GPU {max(named)}, but this machine has "
                             f"{gpus} GPU(s)")
        try:
            import accelerate  # noqa: F401  (transformers dispatches through it)
        except ImportError as exc:
            raise ImportError("model.device_map needs Hugging Face accelerate: pip install 'oe_assets[llm]'") from exc
        placement = {"device_map": device_map, "max_memory": max_memory}
        if offload_folder is not None:
            placement["offload_folder"] = str(offload_folder)
        model = model_cls.from_pretrained(source, dtype=resolve_dtype(dtype), **placement, **hub)
    model = model.eval()
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
