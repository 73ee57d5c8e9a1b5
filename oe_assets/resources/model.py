"""The one model resource shared by every asset, and the analysis settings."""

from __future__ import annotations

import json
import threading
from typing import Any

import dagster as dg

from ..models.hub import load_config, resolve_source
from ..models.loading import LoadedModel, load_model, map_compute_device, resolve_device

__all__ = ["ModelResource", "AnalysisResource", "model_layers"]

_CACHE: dict[tuple, LoadedModel] = {}
_LOCK = threading.Lock()


def model_layers(source: str) -> list[str]:
    """Layer partition keys of a model (every MLP layer that has a later attention block), read
    from its config alone (no weights); a bad source raises
    :class:`~oe_assets.models.hub.ModelSourceError` naming it (:func:`~oe_assets.models.hub.load_config`)."""
    from ..lens.adapters import ADAPTERS

    config = load_config(source)
    for adapter in ADAPTERS:
        n = adapter.layers_in_config(config)
        if n is not None:
            return [str(i) for i in range(n - 1)]
    raise ValueError(f"model {source!r} ({getattr(config, 'model_type', '?')}) is not a supported family")


class ModelResource(dg.ConfigurableResource):
    """A Hugging Face model id or local folder, loaded once per process (family detected from its
    config).  ``device="auto"`` picks CUDA when available; ``revision``: a hub branch, tag or commit
    (None: the default branch; ignored for a local folder).  ``dtype``: the weights' dtype (the
    forward pass); ``compute_dtype``: the lenses' factors and path weights (None: float32 for
    ``bfloat16`` / ``float16`` weights, else ``dtype``).

    A model larger than one device: ``device_map`` (``"auto"``, ``"balanced"``, ... or a map
    ``{module name: GPU index | "cpu" | "disk"}``, Hugging Face ``accelerate``) with ``max_memory``
    (``{0: "70GiB", "cpu": "200GiB"}``) and ``offload_folder`` (where ``"disk"`` modules live); the
    analysis stages then compute on the device of the model's first piece.  Placement does not change
    the numbers, so these fields are not part of any asset's provenance."""

    source: str
    dtype: str = "float32"
    device: str = "auto"
    batch_size: int = 32
    pooling: str | None = None
    max_length: int = 128
    revision: str | None = None
    compute_dtype: str | None = None
    # str or {module name: device} (Dagster config has no such union; checked by check_device_map)
    device_map: Any = None
    max_memory: Any = None
    offload_folder: str | None = None

    def compute_device(self):
        """The device the model runs on, without loading it (the analysis stages compute there); with
        a ``device_map``: the first GPU when there is one (an explicit map: its first GPU entry), else
        the CPU."""
        if self.device_map is None:
            return resolve_device(self.device)
        return map_compute_device(self.device_map)

    def load(self) -> LoadedModel:
        placement = (json.dumps(self.device_map, sort_keys=True), json.dumps(self.max_memory, sort_keys=True),
                     self.offload_folder)
        key = (resolve_source(self.source), self.dtype, str(resolve_device(self.device)), self.pooling, self.revision,
               self.compute_dtype, placement)
        with _LOCK:
            if key not in _CACHE:
                _CACHE[key] = load_model(self.source, self.dtype, self.device, self.pooling, revision=self.revision,
                                         compute_dtype=self.compute_dtype, device_map=self.device_map,
                                         max_memory=_memory_keys(self.max_memory), offload_folder=self.offload_folder)
            return _CACHE[key]


def _memory_keys(max_memory: dict | None) -> dict | None:
    """``max_memory`` as accelerate reads it: GPU indices as ints (a profile's YAML / JSON keys are strings)."""
    if max_memory is None:
        return None
    return {int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in max_memory.items()}



class AnalysisResource(dg.ConfigurableResource):
    """Settings of the analysis stages.

    ``coefficient``: representation scale; ``convention``: ``"reference"``/``"direct"`` (None: the
    family's default); ``top_k``: samples per neuron for the PCA; ``components``: non-zeros per sparse
    code; ``templates_path``: JSON list of prompt templates (``"imagenet"``: the 80 OpenAI templates);
    ``classifier_path`` / ``text_embeddings_path``: ``file.npz:key`` to use given arrays instead of
    encoding prompts / descriptions; ``vocabulary_path``: the description file (one a line; None: the
    tokenizer's whole words); ``report_neurons``: neurons previewed per layer; ``sparse_dtype``: the
    dtype of the sparse coder's correlations (``"float64"``: scikit-learn's atoms exactly;
    ``"float32"``: about 2x faster on CPU, far more on a GPU); ``store_logits``: keep every val sample's
    logits in ``ablation_report`` (float64 lists; off: accuracies only, a few hundred bytes a layer)."""

    coefficient: float = 100.0
    convention: str | None = None
    top_k: int = 32
    components: int = 8
    templates_path: str | None = "imagenet"
    classifier_path: str | None = None
    text_embeddings_path: str | None = None
    vocabulary_path: str | None = None
    report_neurons: int = 10
    sparse_dtype: str = "float64"
    store_logits: bool = False
