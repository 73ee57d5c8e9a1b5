"""Resumable materialization: which (asset, partition)s of a ``python -m oe_assets materialize`` are
already up to date on the Dagster instance, and which must run, with the reason.

An (asset, partition) is up to date when the instance holds a materialization of it, its file is in
the :class:`~oe_assets.resources.store.ArtifactStore`, the materialization's code version (the tag
``dagster/code_version`` Dagster records) equals the asset's current code version, the profile
settings that the asset reads are those the run recorded (run tag :data:`SETTINGS_TAG`; runs launched
elsewhere carry none and are not second-guessed), ``text_embeddings`` was computed from the current
vocabulary (its data version, the content hash), the observed source assets it reads (the dataset
files) have the data version its run recorded, and none of its upstream (asset, partition)s was
materialized after it or runs now.  Everything else runs; reasons propagate downstream in
topological order, so a rerun after a failure starts where the failure was.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from dagster._core.definitions.data_version import (
    CODE_VERSION_TAG, DATA_VERSION_TAG, DEFAULT_DATA_VERSION, get_input_data_version_tag,
)

__all__ = ["SETTINGS_TAG", "Plan", "plan_materialization", "settings_tags", "format_partitions", "observe_sources"]

#: run tag with the profile settings a CLI run used (JSON), compared per asset on the next run
SETTINGS_TAG = "oe_assets/settings"

_MODEL = ["model.source", "model.dtype", "model.pooling", "model.max_length"]
_DATA = ["dataset.kind", "dataset.train_path", "dataset.val_path", "dataset.text_column", "dataset.label_column",
         "dataset.class_index", "dataset.offset", "dataset.limit", "dataset.train_key", "dataset.val_key",
         "dataset.train_labels_key", "dataset.val_labels_key"]
_IMAGENET_R = ["dataset.val_r_path", "dataset.imagenet_r_classes", "dataset.val_stride"]
#: the profile settings each asset reads (upstream changes reach it through its upstream assets)
ASSET_SETTINGS: dict[str, list[str]] = {
    "text_embeddings": [*_MODEL, "analysis.vocabulary_path", "analysis.text_embeddings_path"],
    "classifier": [*_MODEL, "analysis.templates_path", "analysis.classifier_path", "dataset.classes_path",
                   "dataset.kind", "dataset.class_index", "dataset.n_classes"],
    "train_representations": [*_MODEL, *_DATA, "dataset.train_stride", "analysis.coefficient"],
    "val_representations": [*_MODEL, *_DATA, "dataset.val_stride", "analysis.coefficient"],
    "second_order_effects": [*_MODEL, *_DATA, "dataset.train_stride", "analysis.coefficient", "analysis.convention",
                             "storage.alpha_dtype"],
    "val_second_order_effects": [*_MODEL, *_DATA, "dataset.val_stride", "analysis.coefficient",
                                 "analysis.convention", "storage.alpha_dtype"],
    "val_r_representations": [*_MODEL, *_DATA, *_IMAGENET_R, "analysis.coefficient"],
    "val_r_second_order_effects": [*_MODEL, *_DATA, *_IMAGENET_R, "analysis.coefficient", "analysis.convention",
                                   "storage.alpha_dtype"],
    "ablation_report": ["analysis.store_logits"],
    "ablation_report_r": ["dataset.imagenet_r_classes", "analysis.store_logits"],
    "first_order_effects": [*_MODEL, *_DATA, "dataset.train_stride", "dataset.val_stride", "analysis.coefficient"],
    "total_effects": [*_MODEL, *_DATA, "dataset.val_stride"],
    "neuron_pcas": ["analysis.top_k"],
    "sparse_codes": ["analysis.components", "analysis.coefficient", "analysis.sparse_dtype"],
    "neuron_report": ["analysis.report_neurons", "dataset.classes_path"],
}


def _settings(defs: dg.Definitions) -> dict[str, Any]:
    """The effective profile settings (resource fields, defaults included), as ``section.key``."""
    out = {}
    for section, resource in (("model", "model"), ("dataset", "dataset"), ("analysis", "analysis"),
                              ("storage", "store")):
        for k, v in defs.resources[resource].model_dump().items():
            out[f"{section}.{k}"] = v
    return out


def settings_tags(defs: dg.Definitions) -> dict[str, str]:
    """The run tag recording the settings of the CLI's runs."""
    keys = sorted({k for ks in ASSET_SETTINGS.values() for k in ks})
    s = _settings(defs)
    return {SETTINGS_TAG: json.dumps({k: s.get(k) for k in keys}, sort_keys=True, default=str)}


def observe_sources(defs: dg.Definitions, instance: dg.DagsterInstance, tags: dict[str, str] | None = None
                    ) -> list[str]:
    """Observe every observable source asset (the vocabulary, the dataset files) on ``instance`` by
    running the observation jobs (:data:`oe_assets.definitions.OBSERVE_JOBS`), as their schedules do.

    Run before the CLI's materializations, so their recorded input data versions are the observed
    ones: the daemon's next observation of unchanged files is then no change, and the automation
    sensor requests nothing.  ``tags``: run tags (the CLI's process tags).  Returns the names of the
    jobs that failed (their runs say why)."""
    from .definitions import OBSERVE_JOBS

    failed = []
    for job in OBSERVE_JOBS:
        result = defs.resolve_job_def(job).execute_in_process(instance=instance, tags=tags or {}, raise_on_error=False)
        if not result.success:
            failed.append(job)
    return failed


def format_partitions(keys: list[str], all_keys: list[str]) -> str:
    """``["0", "1", "2", "4"]`` -> ``"layers 0-2, 4"``."""
    if keys == [None]:
        return ""
    order = {k: i for i, k in enumerate(all_keys)}
    ks = sorted(keys, key=order.__getitem__)
    spans, start = [], 0
    for i in range(1, len(ks) + 1):
        if i == len(ks) or order[ks[i]] != order[ks[i - 1]] + 1:
            spans.append(ks[start] if start == i - 1 else f"{ks[start]}-{ks[i - 1]}")
            start = i
    return ("layer " if len(ks) == 1 else "layers ") + ", ".join(spans)


@dataclass
class Plan:
    """``run[asset][partition] = reason`` and ``skip[asset] = [partitions]`` (partition None:
    unpartitioned), assets in topological order."""

    order: list[dg.AssetKey]
    partitions: dict[dg.AssetKey, list[str | None]]
    run: dict[dg.AssetKey, dict[str | None, str]] = field(default_factory=dict)
    skip: dict[dg.AssetKey, list[str | None]] = field(default_factory=dict)
    code_versions: dict[dg.AssetKey, str | None] = field(default_factory=dict)

    def to_run(self, key: dg.AssetKey) -> list[str | None]:
        return list(self.run.get(key, {}))

    def lines(self) -> list[str]:
        """One line per asset: what is skipped and what runs, and why."""
        out = []
        for key in self.order:
            name, all_keys = key.to_user_string(), self.partitions[key]
            parts = []
            skipped = self.skip.get(key, [])
            if skipped:
                where = format_partitions(skipped, all_keys)
                parts.append(f"{where + ' ' if where else ''}up to date (code version {self.code_versions[key]}), "
                             "skipped")
            by_reason: dict[str, list] = {}
            for p, reason in self.run.get(key, {}).items():
                by_reason.setdefault(reason, []).append(p)
            for reason, ps in by_reason.items():
                where = format_partitions(ps, all_keys)
                parts.append(f"{where + ' ' if where else ''}to run ({reason})")
            out.append(f"{name}: " + "; ".join(parts))
        return out


def plan_materialization(defs: dg.Definitions, instance: dg.DagsterInstance, asset_keys: list[dg.AssetKey],
                         layers: list[str], force: bool = False) -> Plan:
    """Decide, for every asset of ``asset_keys`` (its layer partitions within ``layers``), whether it
    runs; see the module docstring."""
    graph = defs.resolve_asset_graph()
    order = [k for k in graph.toposorted_asset_keys if k in set(asset_keys)]
    store = defs.resources["store"]
    current = settings_tags(defs)[SETTINGS_TAG]
    current_settings = json.loads(current)
    run_settings: dict[str, dict | None] = {}
    records: dict[tuple, Any] = {}

    def latest(key: dg.AssetKey, partition: str | None):
        if (key, partition) not in records:
            flt = dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition is not None else None)
            res = instance.fetch_materializations(flt, limit=1).records
            records[(key, partition)] = res[0] if res else None
        return records[(key, partition)]

    def recorded_settings(record) -> dict | None:
        if record.run_id not in run_settings:
            run = instance.get_run_by_id(record.run_id)
            tag = run.tags.get(SETTINGS_TAG) if run else None
            run_settings[record.run_id] = json.loads(tag) if tag else None
        return run_settings[record.run_id]

    vocabulary_version = _vocabulary_version(defs, instance)
    observed = _observed_versions(graph, instance)
    plan = Plan(order, {})
    for key in order:
        node = graph.get(key)
        parts = node.partitions_def.get_partition_keys() if node.partitions_def else [None]
        plan.partitions[key] = parts
        plan.code_versions[key] = node.code_version
        suffix = defs.resources[defs.resolve_assets_def(key).get_io_manager_key_for_asset_key(key)].suffix
        for p in ([q for q in parts if q in layers] if node.partitions_def else parts):
            reason = _reason(key, p, node, graph, plan, latest, store, suffix, force, current_settings,
                             recorded_settings, vocabulary_version, observed)
            if reason:
                plan.run.setdefault(key, {})[p] = reason
            else:
                plan.skip.setdefault(key, []).append(p)
    return plan


def _vocabulary_version(defs: dg.Definitions, instance: dg.DagsterInstance) -> str | None:
    """The vocabulary's data version now: the content hash of the configured file, else the latest
    observed one (the tokenizer's words are not read: that needs the tokenizer)."""
    path = defs.resources["analysis"].vocabulary_path
    if path:
        from .lens.vocabulary import load_vocabulary, vocabulary_hash

        return vocabulary_hash(load_vocabulary(path))
    obs = instance.fetch_observations(dg.AssetKey("vocabulary"), limit=1).records
    if obs:
        version = obs[0].asset_observation.tags.get("dagster/data_version")
        return version
    return None


def _observed_versions(graph, instance: dg.DagsterInstance) -> dict[dg.AssetKey, str]:
    """The latest observed data version of every observable source asset (the vocabulary, the
    dataset files) that has one on the instance."""
    out = {}
    for key in graph.observable_asset_keys:
        obs = instance.fetch_observations(key, limit=1).records
        version = obs[0].asset_observation.tags.get(DATA_VERSION_TAG) if obs else None
        if version:
            out[key] = version
    return out


def _reason(key, partition, node, graph, plan, latest, store, suffix, force, current_settings, recorded_settings,
            vocabulary_version, observed) -> str | None:
    if force:
        return "--force"
    record = latest(key, partition)
    if record is None:
        return "never materialized"
    path = store.path_for(key, partition, suffix)
    if not path.exists():
        return f"no file at {path}"
    mat = record.asset_materialization
    recorded = (mat.tags or {}).get(CODE_VERSION_TAG)
    if node.code_version is not None and recorded != node.code_version:
        return f"code version {recorded} -> {node.code_version}"
    old = recorded_settings(record)
    if old is not None:
        changed = [k for k in ASSET_SETTINGS.get(key.to_user_string(), [])
                   if json.dumps(old.get(k), default=str) != json.dumps(current_settings.get(k), default=str)]
        if changed:
            return "profile settings changed: " + ", ".join(f"{k} {old.get(k)!r} -> {current_settings.get(k)!r}"
                                                             for k in changed)
    if key.to_user_string() == "text_embeddings" and vocabulary_version is not None:
        md = mat.metadata.get("vocabulary_version")
        recorded_vocabulary = getattr(md, "value", md)
        if recorded_vocabulary is not None and recorded_vocabulary != vocabulary_version:
            return f"vocabulary changed ({str(recorded_vocabulary)[:12]} -> {vocabulary_version[:12]})"
    for parent in sorted(node.parent_keys, key=lambda k: k.to_user_string()):
        pnode = graph.get(parent)
        if not pnode.is_materializable:  # an observed source (a dataset file): its data version then and now
            then = (mat.tags or {}).get(get_input_data_version_tag(parent))
            now = observed.get(parent)
            if then not in (None, DEFAULT_DATA_VERSION.value) and now is not None and then != now:
                return f"{parent.to_user_string()} changed ({then[:12]} -> {now[:12]})"
            continue
        if pnode.partitions_def is None:
            pparts = [None]
        elif node.partitions_def is not None:
            pparts = [partition]
        else:  # an unpartitioned asset over every layer (layer_summary)
            pparts = pnode.partitions_def.get_partition_keys()
        name = parent.to_user_string()
        for pp in pparts:
            where = f" layer {pp}" if pp is not None and node.partitions_def is None else ""
            if pp in plan.run.get(parent, {}):
                return f"upstream {name}{where} runs"
            prec = latest(parent, pp)
            if prec is not None and prec.storage_id > record.storage_id:
                return f"upstream {name}{where} materialized later"
    return None
