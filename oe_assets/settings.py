"""Which profile settings each asset reads: the one declaration that resume and provenance derive from.

:data:`READS` maps every asset that computes something to the settings (``section.field`` of the
profile, i.e. of the resource configuring that section) whose value changes its numbers, in the
graph's dependency order.  Four settings are derived rather than configured: the identity of the
model's files (``model.weights``), and the content of the prompt-template and class-name files
(``analysis.templates``, ``dataset.classes``), so that a file changed in place counts as a changed
setting; and the samples per neuron a top-k effects file keeps (``storage.topk_samples``:
``analysis.top_k`` when ``storage.effects_mode`` is ``topk``, None when every sample is stored, so
``top_k`` reruns the effects only where they depend on it).  Dataset files and the vocabulary are
identified by their content elsewhere (the split fingerprints and the vocabulary hash of
:mod:`oe_assets.provenance`), so their paths are not listed: moving the data does not rerun anything.

From this table:

- every asset records the current value of each setting it reads in its provenance record
  (:func:`record`), and a consumer refuses inputs whose lineage holds another value than the profile's
  (:func:`oe_assets.provenance.check`);
- resume (:mod:`oe_assets.resume`) reruns an asset whose file records another value than the
  profile's, and everything downstream of it;
- the defaults are the resource fields' (:func:`default`), never restated.

Settings that do not change a number (``model.device``, ``model.device_map``, ``model.max_memory``,
``model.offload_folder``, ``model.batch_size``,
``dataset.num_workers``, ``storage.base_dir``, ``storage.effects_compression``,
``analysis.report_neurons`` for the numeric assets) are not declared by the assets they do not
affect.  No Dagster import: the resources are read as plain objects.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Mapping

__all__ = ["READS", "SECTIONS", "DERIVED", "IMPLIED_WHEN_UNRECORDED", "declared", "all_settings", "current_values",
           "record", "recorded", "default", "asset_of"]

#: profile section -> the resource name configuring it
SECTIONS = {"model": "model", "dataset": "dataset", "analysis": "analysis", "storage": "store"}

_MODEL = ("model.source", "model.revision", "model.weights", "model.dtype", "model.compute_dtype", "model.pooling",
          "model.max_length")
_DATA = ("dataset.kind", "dataset.text_column", "dataset.label_column", "dataset.class_index", "dataset.offset",
         "dataset.limit", "dataset.classes")  # text labels are indices into the class names
_TRAIN = (*_DATA, "dataset.train_stride", "dataset.train_key", "dataset.train_labels_key")
_VAL = (*_DATA, "dataset.val_stride", "dataset.val_key", "dataset.val_labels_key")
_VAL_R = (*_DATA, "dataset.val_stride", "dataset.imagenet_r_classes")
_EFFECTS = ("analysis.coefficient", "analysis.convention", "storage.alpha_dtype", "storage.effects_mode")

#: asset -> the settings it reads, in dependency order (an asset after everything it reads from)
READS: dict[str, tuple[str, ...]] = {
    "text_embeddings": (*_MODEL, "analysis.text_embeddings_path"),
    "classifier": (*_MODEL, "analysis.templates", "analysis.classifier_path", "dataset.classes", "dataset.kind",
                   "dataset.class_index", "dataset.n_classes"),
    "train_representations": (*_MODEL, *_TRAIN, "analysis.coefficient"),
    "val_representations": (*_MODEL, *_VAL, "analysis.coefficient"),
    "val_r_representations": (*_MODEL, *_VAL_R, "analysis.coefficient"),
    "second_order_effects": (*_MODEL, *_TRAIN, *_EFFECTS, "storage.topk_samples"),
    "val_second_order_effects": (*_MODEL, *_VAL, *_EFFECTS),
    "val_r_second_order_effects": (*_MODEL, *_VAL_R, *_EFFECTS),
    "first_order_effects": (*_MODEL, *_TRAIN, "dataset.val_stride", "dataset.val_key", "dataset.val_labels_key",
                            "analysis.coefficient"),
    "total_effects": (*_MODEL, *_VAL, "analysis.coefficient"),
    "neuron_pcas": ("analysis.top_k",),
    "sparse_codes": ("analysis.components", "analysis.coefficient", "analysis.sparse_dtype"),
    # top-k mode: the val pass after the PCA and the sparse codes, keeping only the ablations' sums
    "val_effect_sums": (*_MODEL, *_VAL, *_EFFECTS),
    "ablation_report": ("analysis.store_logits",),
    "ablation_report_r": ("dataset.imagenet_r_classes", "analysis.store_logits"),
    "neuron_report": (*_TRAIN, "analysis.report_neurons"),
    "layer_summary": (),
}


def _digest(items: list[str]) -> str:
    return hashlib.blake2b(json.dumps(items).encode(), digest_size=16).hexdigest()


def _templates(resources: Mapping[str, Any]) -> str | None:
    from .datasources.text_datasets import load_string_list
    from .lens.zero_shot import imagenet_templates

    analysis = resources["analysis"]
    if analysis.classifier_path:  # a given classifier: no prompts are encoded
        return None
    path = analysis.templates_path
    return _digest(imagenet_templates() if path in (None, "imagenet") else
                   load_string_list(path, "prompt template", "{}"))


def _classes(resources: Mapping[str, Any]) -> str:
    return _digest(list(resources["dataset"].classes()))


#: settings declared after files were first written, with the value a record without them implies
#: (what every file was before the setting existed): an upgrade does not rerun what they cannot have changed
IMPLIED_WHEN_UNRECORDED: dict[str, Any] = {"storage.effects_mode": "stored", "storage.topk_samples": None}


def recorded(record: Mapping[str, Any], setting: str, missing: Any = None) -> Any:
    """The value of ``setting`` in a file's own record; when absent, the value it implies
    (:data:`IMPLIED_WHEN_UNRECORDED`), else ``missing``."""
    if setting in record:
        return record[setting]
    return IMPLIED_WHEN_UNRECORDED.get(setting, missing)


def _weights(resources: Mapping[str, Any]) -> str | None:
    from .models.identity import weights_hash

    model = resources["model"]
    return weights_hash(model.source, getattr(model, "revision", None))


def _topk_samples(resources: Mapping[str, Any]) -> int | None:
    return resources["analysis"].top_k if resources["store"].effects_mode == "topk" else None


#: settings computed from the files a setting names (the content is the setting), or from other settings
DERIVED: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "model.weights": _weights, "analysis.templates": _templates, "dataset.classes": _classes,
    "storage.topk_samples": _topk_samples,
}


def declared(asset: str) -> tuple[str, ...]:
    """The settings ``asset`` reads (:data:`READS`); an asset not in the table is an error, so a new
    asset cannot be added without declaring them."""
    try:
        return READS[asset]
    except KeyError:
        raise KeyError(f"asset {asset!r} does not declare the settings it reads: add it to "
                       "oe_assets.settings.READS") from None


def all_settings() -> list[str]:
    """Every declared setting, sorted."""
    return sorted({s for ss in READS.values() for s in ss})


def asset_of(name: str) -> str:
    """``"neuron_pcas[3]"`` -> ``"neuron_pcas"``."""
    return name.split("[", 1)[0]


def default(setting: str):
    """The default of a configured setting: the field default of the resource of its section."""
    from .resources.datasets import DatasetResource
    from .resources.model import AnalysisResource, ModelResource
    from .resources.store import ArtifactStore

    section, name = setting.split(".", 1)
    cls = {"model": ModelResource, "dataset": DatasetResource, "analysis": AnalysisResource,
           "storage": ArtifactStore}[section]
    return cls.model_fields[name].get_default()


def current_values(resources: Mapping[str, Any], settings: list[str] | tuple[str, ...] | None = None,
                   cache: dict | None = None) -> dict[str, Any]:
    """The current value of each of ``settings`` (default: all declared) from the resources
    (``{"model": ModelResource, "dataset": ..., "analysis": ..., "store": ...}``); derived settings
    are computed once per ``cache``."""
    cache = {} if cache is None else cache
    out = {}
    for setting in (all_settings() if settings is None else settings):
        if setting not in cache:
            section, name = setting.split(".", 1)
            cache[setting] = DERIVED[setting](resources) if setting in DERIVED \
                else _plain(getattr(resources[SECTIONS[section]], name))
        out[setting] = cache[setting]
    return out


def _plain(value):
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def record(asset: str, resources: Mapping[str, Any], cache: dict | None = None) -> dict[str, Any]:
    """The provenance fields of ``asset``'s own record: each setting it reads, with its value now."""
    return current_values(resources, declared(asset), cache)
