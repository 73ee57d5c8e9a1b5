"""Provenance: what every asset file was made from, and the check that a consumer's inputs agree.

A *record* is a flat dict of what one asset (partition) was computed from: its own settings (model id
and weights hash, coefficient, convention, vocabulary version, top_k, components, the dataset split
it read as ``<split>.samples`` / ``<split>.content`` / ``<split>.order``), its ``code_version``, the
time it was made (``made_at``) and a ``data_version``: a hash of those settings and of its inputs'
data versions (a Merkle hash, so equal inputs and settings give an equal version).  A file stores
its *lineage*, ``{entry: record}`` over itself and every asset upstream of it (``entry``: the asset
name, ``name[layer]`` for a layer partition), in the attribute :data:`PROVENANCE_ATTR`.

Before computing, a consumer merges its inputs' lineages with its own record (what it reads now:
the profile settings it uses, the dataset split it loads) and :func:`check` refuses two records that
disagree on a :data:`SHARED_FIELDS` field, or two records of one entry with different data versions,
with a :class:`ProvenanceError` naming both assets, the field, both values and what to
re-materialize.  E.g. ``ablation_report`` refuses ``val_representations`` made with coefficient 50
next to ``val_second_order_effects`` made with 100, or made from a shuffled val file.

Files without a lineage (written before provenance was recorded, or imported from the official
implementation's output files) are accepted: they are checked on the settings their plain attributes
carry (``model``, ``coefficient``, ``convention``, ``top_k``, ``components``,
``vocabulary_version``), their data hashes are unknown and not compared.

No Dagster import: the assets (:mod:`oe_assets.assets`) call this with their loaded inputs' attrs.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .models.identity import file_sha256, weights_cache_dir, weights_hash
from .settings import READS, SECTIONS, asset_of

__all__ = ["PROVENANCE_ATTR", "SHARED_FIELDS", "ProvenanceError", "entry", "split_fingerprint", "weights_hash",
           "file_sha256", "weights_cache_dir",
           "own_record", "lineage_of", "check", "data_version", "stale_entries", "is_setting"]

#: the file attribute (HDF5 attrs, Parquet schema metadata) holding a file's lineage
PROVENANCE_ATTR = "provenance"
SPLITS = ("train", "val", "val_r")
#: fields every record of a consumer's lineage must agree on, wherever they appear, besides every
#: profile setting (``section.field``, :mod:`oe_assets.settings`)
SHARED_FIELDS = ("convention", "vocabulary", *(f"{s}.{f}" for s in SPLITS for f in ("samples", "content", "order")))
#: plain attributes of files without a lineage -> record fields
LEGACY_ATTRS = {"model": "model.source", "coefficient": "analysis.coefficient", "convention": "convention",
                "top_k": "analysis.top_k", "components": "analysis.components", "vocabulary_version": "vocabulary",
                "code_version": "code_version"}
#: record fields of lineages written before the settings were named ``section.field``
OLD_FIELDS = {"model": "model.source", "weights": "model.weights", "dtype": "model.dtype",
              "coefficient": "analysis.coefficient", "top_k": "analysis.top_k", "components": "analysis.components",
              "sparse_dtype": "analysis.sparse_dtype", "alpha_dtype": "storage.alpha_dtype"}
#: record fields that are bookkeeping, not what an asset was made from
BOOKKEEPING = ("made_at", "data_version", "inputs")


class ProvenanceError(ValueError):
    """Inputs of an asset made from different data or settings."""


def entry(asset: str, partition: str | None = None) -> str:
    """The lineage key of an asset (partition): ``"val_representations"``, ``"neuron_pcas[3]"``."""
    return asset if partition is None else f"{asset}[{partition}]"


def _describe(name: str) -> str:
    """``"neuron_pcas[3]"`` -> ``"neuron_pcas layer 3"``."""
    if name.endswith("]") and "[" in name:
        asset, layer = name[:-1].split("[", 1)
        return f"{asset} layer {layer}"
    return name


def _hash(parts: Iterable[bytes], size: int = 16) -> str:
    h = hashlib.blake2b(digest_size=size)
    for p in parts:
        h.update(p)
    return h.hexdigest()


# ---------------------------------------------------------------- what an asset reads
def _sample_items(split) -> Iterable[bytes]:
    """Each sample's identity as bytes: a text, an image's class folder, name and size, or the pixel /
    CIFAR row."""
    if hasattr(split, "texts"):
        return (t.encode("utf-8") for t in split.texts)
    if hasattr(split, "paths"):  # <class folder>/<file>: the same data moved or re-mounted keeps its identity
        return (f"{Path(p).parent.name}/{Path(p).name}\0{os.stat(p).st_size}".encode() for p in split.paths)
    if hasattr(split, "pixel_values"):
        return (np.ascontiguousarray(x).tobytes() for x in split.pixel_values)
    if hasattr(split, "images"):
        return (np.ascontiguousarray(x).tobytes() for x in split.images)
    raise TypeError(f"no sample identity for a {type(split).__name__}")


def split_fingerprint(split) -> dict[str, Any]:
    """``{"samples": n, "content": hash, "order": hash}`` of a loaded dataset split (after subsampling):
    each sample hashed with its label; ``content`` hashes the sorted sample hashes (the same samples in
    any order), ``order`` the sequence (a shuffle changes it, not ``content``)."""
    labels = np.asarray(split.labels).astype(np.int64)
    digests = [hashlib.blake2b(int(y).to_bytes(8, "little", signed=True) + b"\0" + item, digest_size=16).digest()
               for y, item in zip(labels, _sample_items(split))]
    return {"samples": len(digests), "content": _hash(sorted(digests)), "order": _hash(digests)}


def split_record(name: str, split) -> dict[str, Any]:
    """The record fields of a split read as ``name`` (``train``, ``val``, ``val_r``)."""
    return {f"{name}.{k}": v for k, v in split_fingerprint(split).items()}


# ---------------------------------------------------------------- lineages
def data_version(record: dict[str, Any], inputs: Iterable[str | None] = ()) -> str:
    """The hash of a record's settings (not its bookkeeping) and its inputs' versions."""
    own = {k: v for k, v in record.items() if k not in BOOKKEEPING}
    return _hash([json.dumps(own, sort_keys=True, default=str).encode(),
                  *(str(v).encode() for v in sorted(str(i) for i in inputs))])


def lineage_of(attrs: dict[str, Any], name: str) -> dict[str, dict]:
    """The lineage a file's attributes carry; a file without one (see the module docstring): a record
    of ``name`` from its plain attributes.  Fields of older lineages get their current names."""
    stored = attrs.get(PROVENANCE_ATTR)
    if isinstance(stored, str):
        stored = json.loads(stored)
    if isinstance(stored, dict) and stored.get("records"):
        return {n: {OLD_FIELDS.get(k, k): v for k, v in r.items()} for n, r in stored["records"].items()}
    legacy = {field: attrs[a] for a, field in LEGACY_ATTRS.items() if attrs.get(a) is not None}
    return {name: {**legacy, "data_version": None, "made_at": None}}


def own_record(attrs: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The record of the file itself (``name``) in its lineage; None for a file without a lineage."""
    stored = attrs.get(PROVENANCE_ATTR)
    if stored is None:
        return None
    return lineage_of(attrs, name).get(name)


def is_setting(field: str) -> bool:
    """A profile setting (``model.dtype``, ``analysis.top_k``, ...), as opposed to a data field."""
    return field.split(".", 1)[0] in SECTIONS


def _rank(name: str) -> tuple:
    """Dependency order of lineage entries: the declaration order of :data:`oe_assets.settings.READS`,
    then the layer."""
    order = list(READS)
    asset = asset_of(name)
    layer = name[len(asset) + 1:-1] if name != asset else ""
    return (order.index(asset) if asset in order else len(order), int(layer) if layer.isdigit() else -1, name)


def check(consumer: str, inputs: dict[str, dict[str, Any]], own: dict[str, Any], code_version: str | None = None,
          current: dict[str, Any] | None = None, code_versions: dict[str, str | None] | None = None) -> dict[str, Any]:
    """Refuse inputs made from different data or settings; return the consumer's lineage attribute.

    ``consumer``: the consumer's entry (:func:`entry`); ``inputs``: each input's entry -> its file
    attributes (``H5Group.attrs`` or a table's); ``own``: the consumer's record fields (what it reads
    now: settings, dataset splits); ``current``: every profile setting's value now
    (:func:`oe_assets.settings.current_values`); ``code_versions``: each asset's code version now (a
    record made by another is refused as ``code_version``).  Every record of every input's lineage and ``own``
    must agree on each :data:`SHARED_FIELDS` field and each setting, a setting must have its value in
    ``current``, and one entry seen through two inputs must have one data version; otherwise a
    :class:`ProvenanceError` names the assets on each side, the fields and the values, and the
    assets whose files are stale, in dependency order (:func:`stale_entries`).  Returns
    ``{"entry": consumer, "records": ...}`` with the consumer's record (``code_version``,
    ``made_at``, ``inputs``: the direct inputs' data versions, ``data_version``) added."""
    current = current or {}
    seen: list[tuple[str, str | None, dict]] = []  # (entry, the direct input it came through, record)
    merged: dict[str, dict] = {}
    for via, attrs in inputs.items():
        for name, record in lineage_of(attrs, via).items():
            seen.append((name, None if name == via else via, record))
            merged.setdefault(name, record)
    now = {**own, "made_at": None}
    seen.append((consumer, None, now))
    fields = list(dict.fromkeys([*SHARED_FIELDS, *sorted({f for _, _, r in seen for f in r if is_setting(f)})]))
    newest = _newest(seen)
    problems = []  # (field, [occurrences], current value key)
    for field in fields:
        values = [item for item in seen if item[2].get(field) is not None or (field in item[2] and field in current)]
        if not values:
            continue
        want = _current_value(field, values, current, consumer, newest)
        if len({_key(item[2].get(field)) for item in values} | {want}) > 1:
            problems.append((field, values, want))
    code_versions = code_versions or {}
    for name, item in newest.items():  # made by other code than the asset's now
        now_code = code_versions.get(asset_of(name))
        if name != consumer and now_code is not None and item[2].get("code_version") not in (None, now_code):
            problems.append(("code_version", [item], _key(now_code)))
    by_entry: dict[str, tuple] = {}  # one entry through two inputs: the same data version
    for item in seen:
        name, _, record = item
        if record.get("data_version") is None:
            continue
        prior = by_entry.setdefault(name, item)
        if prior[2]["data_version"] != record["data_version"] and not problems:
            differ = [k for k in dict.fromkeys([*prior[2], *record]) if k not in BOOKKEEPING
                      and prior[2].get(k) != record.get(k)] or ["data_version"]
            problems += [(f, [prior, item], _key(newest[name][2].get(f))) for f in differ]
    if problems:
        want = {f: w for f, _, w in problems if f != "code_version"}
        old_code = {items[0][0] for f, items, _ in problems if f == "code_version"}
        stale = stale_entries(seen[:-1], newest, want, old_code)
        raise ProvenanceError(_message(consumer, problems, stale))
    direct = {via: (lineage_of(attrs, via).get(via) or {}).get("data_version") for via, attrs in inputs.items()}
    record = {**own, "code_version": code_version, "made_at": time.time(), "inputs": direct}
    record["data_version"] = data_version(record, (r.get("data_version") for r in merged.values()))
    return {"entry": consumer, "records": {**merged, consumer: record}}


def _newest(seen: list[tuple]) -> dict[str, tuple]:
    """Each entry's record as its file is now: a direct input's own record, else the latest made."""
    newest: dict[str, tuple] = {}
    for item in seen:
        name, via, record = item
        prior = newest.get(name)
        if prior is None or (via is None and prior[1] is not None) or (
                (via is None) == (prior[1] is None) and (record.get("made_at") or 0) > (prior[2].get("made_at") or 0)):
            newest[name] = item
    return newest


def _current_value(field: str, values: list[tuple], current: dict, consumer: str, newest: dict) -> str:
    """The value a field should have: the profile's now, else the consumer's own reading, else that of
    the newest record holding it."""
    if field in current:
        return _key(current[field])
    for name, _, record in values:
        if name == consumer and record.get("made_at") is None:
            return _key(record.get(field))
    latest = max(values, key=lambda item: (newest.get(item[0]) is item, item[2].get("made_at") or 0))
    return _key(latest[2].get(field))


def stale_entries(seen: list[tuple], newest: dict[str, tuple], want: dict[str, str],
                  old_code: set[str] = frozenset()) -> list[str]:
    """The entries whose files must be re-made, in dependency order: a file whose own record holds a
    value other than ``want`` (field -> the current value's key); a direct input whose lineage holds
    another version of an entry than that entry's file now (made from an input since re-made); and,
    transitively, every file made from a stale one (its record's ``inputs``).  ``seen``: (entry, the
    direct input it came through or None, record) of the inputs' lineages; ``newest``: each entry's
    record as its file is now; ``old_code``: entries made by other code than their asset's now."""
    stale: dict[str, None] = dict.fromkeys(old_code)
    for name, (_, _, record) in newest.items():
        if any(f in record and _key(record[f]) != w for f, w in want.items()):
            stale[name] = None
    for item in seen:  # another version of an entry, seen through an input
        name, via, record = item
        if via is None or newest[name] is item:
            continue
        if record.get("data_version") not in (None, newest[name][2].get("data_version")) or any(
                f in record and _key(record[f]) != w for f, w in want.items()):
            stale[via] = None
    grew = True
    while grew:  # made from a stale file
        grew = False
        for name, (_, _, record) in newest.items():
            if name not in stale and any(i in stale for i in (record.get("inputs") or {})):
                stale[name] = None
                grew = True
    return sorted(stale, key=_rank)


def _key(value) -> str:
    return json.dumps(_plain_numbers(value), sort_keys=True, default=str)


def _plain_numbers(value):
    """Whole floats as ints (``100.0`` and ``100`` are one coefficient), in nested lists and dicts."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (list, tuple)):
        return [_plain_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain_numbers(v) for k, v in value.items()}
    return value


def _message(consumer: str, problems: list[tuple], stale: list[str]) -> str:
    """One line per field: the current value and who has it, then each other value and who has it;
    then what to re-materialize: the stale files (:func:`stale_entries`), in dependency order, then the
    consumer."""
    def name(item) -> str:
        n, via, record = item
        if n == consumer and record.get("made_at") is None:
            return f"{_describe(consumer)} (the profile and data it reads now)"
        return _describe(n) + (f" (as {_describe(via)} was made from it)" if via else "")

    lines = [f"{_describe(consumer)}: its inputs were made from different data or settings; refusing to "
             "compute on them:"]
    for field, items, want in problems:
        groups: dict[str, list] = {want: []}
        for item in sorted(items, key=lambda it: -(it[2].get("made_at") or 0)):
            groups.setdefault(_key(item[2].get(field)), []).append(item)
        parts = []
        for value, members in groups.items():
            if not members:
                now = "the code now" if field == "code_version" else "the profile"
                parts.append(f"{now} has {json.loads(value)!r}")
                continue
            who = ", ".join(dict.fromkeys(name(m) for m in members))
            parts.append(f"{who} {'has' if len(set(m[0] for m in members)) == 1 else 'have'} "
                         f"{members[0][2].get(field)!r}")
        lines.append(f"- {field}: " + "; ".join(parts))
    stale_names = [_describe(n) for n in stale]
    if stale_names:
        lines.append(f"Re-materialize {', '.join(stale_names)} (the stale "
                     f"{'file' if len(stale) == 1 else 'files, in dependency order'}), then {_describe(consumer)}, so "
                     "that every input is made from the current data and profile.")
    else:
        lines.append(f"Re-materialize the inputs of {_describe(consumer)} from the current data and profile.")
    return "\n".join(lines)
