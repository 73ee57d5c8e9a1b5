"""Resumable materialization: which (asset, partition)s of a ``python -m oe_assets materialize`` are
already up to date, and which must run, with the reason.

The files are the truth, not the instance: an (asset, partition) is up to date when its file in the
:class:`~oe_assets.resources.store.ArtifactStore` reads whole (every checksum verified, by the same
IO manager that loads it), its own provenance record (:mod:`oe_assets.provenance`) carries the
asset's current code version and, for every setting the asset declares
(:data:`oe_assets.settings.READS`), the profile's value now; ``text_embeddings`` records the current
vocabulary; the dataset splits it read have the data version observed now (the order hash of
``<split>_data``); and for each upstream (asset, partition) its lineage holds the data version of the
upstream file as it is now, and none of them runs now.  So a file written by another instance (the
UI's, a ``dagster asset materialize`` with another ``DAGSTER_HOME``) is accepted when its provenance
matches the profile and its inputs, and rerun when it does not; a truncated or corrupt file is rerun.
Everything else runs; reasons propagate downstream in topological order, so a rerun after a failure
starts where the failure was.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from .dagster_private import DATA_VERSION_TAG
from .provenance import SPLITS, _key, entry, lineage_of, own_record
from .settings import SECTIONS, asset_of, current_values, declared, recorded

__all__ = ["SETTINGS_TAG", "Plan", "plan_materialization", "plan_layer_spans", "observe_and_plan", "settings_tags",
           "format_partitions", "observe_sources"]

#: run tag with the profile settings a CLI run used (JSON): what the run was made with, for the run's page
SETTINGS_TAG = "oe_assets/settings"


def profile_resources(defs: dg.Definitions) -> dict[str, Any]:
    """The resources holding the profile's settings (:data:`oe_assets.settings.SECTIONS`)."""
    return {name: defs.resources[name] for name in SECTIONS.values()}


def settings_tags(defs: dg.Definitions, cache: dict | None = None) -> dict[str, str]:
    """The run tag recording every declared setting's value."""
    return {SETTINGS_TAG: json.dumps(current_values(profile_resources(defs), cache=cache), sort_keys=True,
                                     default=str)}


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
    #: skipped partitions whose file this instance did not record (made by another instance): accepted
    adopted: dict[dg.AssetKey, list[str | None]] = field(default_factory=dict)
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
            adopted = self.adopted.get(key, [])
            if adopted:
                where = format_partitions(adopted, all_keys)
                parts.append(f"{where + ' ' if where else ''}made outside this instance's runs, accepted: its "
                             "provenance matches the profile and its inputs")
            by_reason: dict[str, list] = {}
            for p, reason in self.run.get(key, {}).items():
                by_reason.setdefault(reason, []).append(p)
            for reason, ps in by_reason.items():
                where = format_partitions(ps, all_keys)
                parts.append(f"{where + ' ' if where else ''}to run ({reason})")
            out.append(f"{name}: " + "; ".join(parts))
        return out


def observe_and_plan(defs: dg.Definitions, instance: dg.DagsterInstance, in_range: list[str], force: bool,
                     out=print) -> tuple[dict[str, list[dg.AssetKey]], Plan] | None:
    """What ``python -m oe_assets materialize`` does before its runs, in process or on workers: observe
    the source assets (the runs then record their current data versions), plan every asset of the
    materialize jobs over the layers ``in_range`` and print the plan, one line per asset.  Returns
    ``(assets of each job in topological order, plan)``, or None after saying that observing failed."""
    from .definitions import MATERIALIZE_JOBS
    from .recovery import process_tags

    failed = observe_sources(defs, instance, process_tags())
    if failed:
        out(f"error: observing the source assets failed ({', '.join(failed)}); see the Dagster run log",
            file=sys.stderr)
        return None
    graph = defs.resolve_asset_graph()
    jobs = {job.name: [k for k in graph.toposorted_asset_keys
                       if k in defs.resolve_job_def(job.name).asset_layer.selected_asset_keys] for job in MATERIALIZE_JOBS}
    plan = plan_materialization(defs, instance, [k for ks in jobs.values() for k in ks], in_range, force=force)
    for line in plan.lines():
        out(line, flush=True)
    return jobs, plan


def plan_layer_spans(plan: Plan, keys: list[dg.AssetKey], in_range: list[str], layers: list[str]
                ) -> list[tuple[list[str], tuple[dg.AssetKey, ...]]]:
    """The contiguous spans of ``in_range`` whose layers need the same assets of ``keys`` to run
    (``layers``: every layer, in order): each span is one run, one data pass over its layers."""
    spans: list[tuple[list[str], tuple]] = []
    for layer in in_range:
        need = tuple(k for k in keys if layer in plan.run.get(k, {}))
        if not need:
            continue
        if spans and spans[-1][1] == need and layers.index(spans[-1][0][-1]) == layers.index(layer) - 1:
            spans[-1][0].append(layer)
        else:
            spans.append(([layer], need))
    return spans


def plan_materialization(defs: dg.Definitions, instance: dg.DagsterInstance, asset_keys: list[dg.AssetKey],
                         layers: list[str], force: bool = False) -> Plan:
    """Decide, for every asset of ``asset_keys`` (its layer partitions within ``layers``), whether it
    runs; see the module docstring."""
    graph = defs.resolve_asset_graph()
    order = [k for k in graph.toposorted_asset_keys if k in set(asset_keys)]
    cache: dict = {}
    current = current_values(profile_resources(defs), cache=cache)
    files = _Files(defs)
    observed = _observed_versions(graph, instance)
    context = {"current": current, "vocabulary": _vocabulary_version(defs, instance), "observed": observed,
               "files": files, "instance": instance}
    plan = Plan(order, {})
    for key in order:
        node = graph.get(key)
        parts = node.partitions_def.get_partition_keys() if node.partitions_def else [None]
        plan.partitions[key] = parts
        plan.code_versions[key] = node.code_version
        for p in ([q for q in parts if q in layers] if node.partitions_def else parts):
            reason = "--force" if force else _reason(key, p, node, graph, plan, context)
            if reason:
                plan.run.setdefault(key, {})[p] = reason
            else:
                plan.skip.setdefault(key, []).append(p)
                if not force and not _recorded_by(instance, key, p, files.read(key, p)):
                    plan.adopted.setdefault(key, []).append(p)
    return plan


class _Files:
    """Each (asset, partition)'s file: its path, and its attributes read whole through its IO manager
    (checksums verified), once per plan."""

    def __init__(self, defs: dg.Definitions):
        self.defs, self.attrs = defs, {}

    def io_manager(self, key: dg.AssetKey):
        return self.defs.resources[self.defs.resolve_assets_def(key).get_io_manager_key_for_asset_key(key)]

    def path(self, key: dg.AssetKey, partition: str | None):
        return self.io_manager(key).path_for(key, partition)

    def read(self, key: dg.AssetKey, partition: str | None) -> dict | Exception | None:
        """The file's attributes; None without a file; the error of a file that does not read."""
        if (key, partition) not in self.attrs:
            path = self.path(key, partition)
            if not path.exists():
                self.attrs[(key, partition)] = None
            else:
                store = self.defs.resources["store"]
                try:
                    self.attrs[(key, partition)] = self.io_manager(key).verify(path, store.describe(key, partition))
                except Exception as e:  # noqa: BLE001 - any unreadable file is rerun, saying why
                    self.attrs[(key, partition)] = e
        return self.attrs[(key, partition)]


def _recorded_by(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None, attrs: dict) -> bool:
    """Whether the instance's latest materialization of (asset, partition) recorded this very file (its
    data version and the time it was made)."""
    flt = dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition is not None else None)
    records = instance.fetch_materializations(flt, limit=1).records
    if not records:
        return False
    md = records[0].asset_materialization.metadata.get("provenance")
    recorded = getattr(md, "value", None) or {}
    mine = own_record(attrs, entry(key.to_user_string(), partition)) or {}
    return all(recorded.get(k) == mine.get(k) for k in ("data_version", "made_at"))


def _vocabulary_version(defs: dg.Definitions, instance: dg.DagsterInstance) -> str | None:
    """The vocabulary's data version now: the content hash of the configured file, else the latest
    observed one (the tokenizer's words are not read: that needs the tokenizer)."""
    path = defs.resources["analysis"].vocabulary_path
    if path:
        from .datasources.vocabulary import load_vocabulary, vocabulary_hash

        return vocabulary_hash(load_vocabulary(path))
    obs = instance.fetch_observations(dg.AssetKey("vocabulary"), limit=1).records
    if obs:
        version = obs[0].asset_observation.tags.get(DATA_VERSION_TAG)
        return version
    return None


def _observed_versions(graph, instance: dg.DagsterInstance) -> dict[str, str]:
    """The latest observed data version of every observable source asset (the vocabulary, the
    dataset files) that has one on the instance, by asset name."""
    out = {}
    for key in graph.observable_asset_keys:
        obs = instance.fetch_observations(key, limit=1).records
        version = obs[0].asset_observation.tags.get(DATA_VERSION_TAG) if obs else None
        if version:
            out[key.to_user_string()] = version
    return out


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:13] + "..."


def _first_line(error: Exception) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0]


def _reason(key, partition, node, graph, plan, context) -> str | None:
    files: _Files = context["files"]
    name = key.to_user_string()
    attrs = files.read(key, partition)
    if attrs is None:
        flt = dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition is not None else None)
        if not context["instance"].fetch_materializations(flt, limit=1).records:
            return "never materialized"
        return f"no file at {files.path(key, partition)}"
    if isinstance(attrs, Exception):
        return f"its file does not read: {_first_line(attrs)}"
    me = entry(name, partition)
    record = own_record(attrs, me)
    if record is None:
        return f"no provenance recorded in {files.path(key, partition)}"
    code_version = record.get("code_version")
    if node.code_version is not None and code_version != node.code_version:
        return f"code version {code_version} -> {node.code_version}"
    current = context["current"]
    missing = object()
    then = {s: recorded(record, s, missing) for s in declared(name)}
    changed = [s for s, value in then.items() if value is missing or _key(value) != _key(current[s])]
    if changed:
        return "profile settings changed: " + ", ".join(
            f"{s} {'(not recorded)' if then[s] is missing else _short(then[s])} -> {_short(current[s])}" for s in changed)
    vocabulary = context["vocabulary"]
    if name == "text_embeddings" and vocabulary is not None and record.get("vocabulary") != vocabulary:
        return f"vocabulary changed ({str(record.get('vocabulary'))[:12]} -> {vocabulary[:12]})"
    for split in SPLITS:
        then, now = record.get(f"{split}.order"), context["observed"].get(f"{split}_data")
        if then is not None and now is not None and then != now:
            return f"{split}_data changed ({then[:12]} -> {now[:12]})"
    lineage = lineage_of(attrs, me)
    for parent in sorted(node.parent_keys, key=lambda k: k.to_user_string()):
        pnode = graph.get(parent)
        if not pnode.is_materializable:  # the model, the observed dataset files: compared above
            continue
        if pnode.partitions_def is None:
            pparts = [None]
        elif node.partitions_def is not None:
            pparts = [partition]
        else:  # an unpartitioned asset over every layer (layer_summary)
            pparts = pnode.partitions_def.get_partition_keys()
        pname = parent.to_user_string()
        for pp in pparts:
            where = f" layer {pp}" if pp is not None and node.partitions_def is None else ""
            if pp in plan.run.get(parent, {}):
                return f"upstream {pname}{where} runs"
            pattrs = files.read(parent, pp)
            if pattrs is None or isinstance(pattrs, Exception):
                continue  # not materialized (layer_summary takes the layers that exist) or not in this plan
            precord = own_record(pattrs, entry(pname, pp)) or {}
            made_from = lineage.get(entry(pname, pp))
            if made_from is None:
                if any(asset_of(e) == pname for e in lineage):  # an input it read, but not this layer of it
                    return f"upstream {pname}{where} is not among what it was made from"
                continue  # an ordering dependency it does not read (the effects recompute the representations)
            if precord.get("data_version") != made_from.get("data_version"):
                return f"upstream {pname}{where} was re-made since"
    return None
