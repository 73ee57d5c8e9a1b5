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

__all__ = ["PROVENANCE_ATTR", "SHARED_FIELDS", "ProvenanceError", "entry", "split_fingerprint", "weights_hash",
           "model_record", "lineage_of", "check", "data_version"]

#: the file attribute (HDF5 attrs, Parquet schema metadata) holding a file's lineage
PROVENANCE_ATTR = "provenance"
SPLITS = ("train", "val", "val_r")
#: fields every record of a consumer's lineage must agree on, wherever they appear
SHARED_FIELDS = ("model", "weights", "coefficient", "convention", "vocabulary", "top_k", "components",
                 *(f"{s}.{f}" for s in SPLITS for f in ("samples", "content", "order")))
#: plain attributes of files without a lineage -> record fields
LEGACY_ATTRS = {"model": "model", "coefficient": "coefficient", "convention": "convention", "top_k": "top_k",
                "components": "components", "vocabulary_version": "vocabulary", "code_version": "code_version"}
#: model files whose bytes make the weights hash: weights, configs, tokenizer files
#: the files a model's outputs come from: weights (any format), configs and tokenizers; other files in
#: the folder (notes, files a later step downloads, e.g. a processor config) do not change the hash
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".gguf", ".model")
MODEL_FILE_NAMES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
                    "special_tokens_map.json", "added_tokens.json")


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


_WEIGHTS: dict[tuple, str] = {}


def weights_hash(source: str) -> str | None:
    """A hash of the bytes of a model's weight, config and tokenizer files (:data:`MODEL_FILE_SUFFIXES`,
    :data:`MODEL_FILE_NAMES`),
    once per process and file set; ``source`` a local folder or a hub id (its local snapshot folder,
    never the network).  None when no local folder is found."""
    folder = _model_folder(source)
    if folder is None:
        return None
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and (p.suffix in MODEL_FILE_SUFFIXES or p.name in MODEL_FILE_NAMES))
    stats = tuple((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    key = (str(folder), stats)
    if key not in _WEIGHTS:
        h = hashlib.blake2b(digest_size=16)
        for p, (rel, size, _) in zip(files, stats):
            h.update(f"{rel}\0{size}\0".encode())
            with open(p, "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
        _WEIGHTS[key] = h.hexdigest()
    return _WEIGHTS[key]


def _model_folder(source: str) -> Path | None:
    from .lens.hub import resolve_source

    resolved = resolve_source(source)
    if Path(resolved).is_dir():
        return Path(resolved)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(resolved, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the local cache: the weights are unknown, not compared
        return None


def model_record(source: str) -> dict[str, Any]:
    """``{"model": source, "weights": hash}`` of the model an asset runs."""
    return {"model": source, "weights": weights_hash(source)}


# ---------------------------------------------------------------- lineages
def data_version(record: dict[str, Any], inputs: Iterable[str | None] = ()) -> str:
    """The hash of a record's settings (not ``made_at`` / ``data_version``) and its inputs' versions."""
    own = {k: v for k, v in record.items() if k not in ("made_at", "data_version")}
    return _hash([json.dumps(own, sort_keys=True, default=str).encode(),
                  *(str(v).encode() for v in sorted(str(i) for i in inputs))])


def lineage_of(attrs: dict[str, Any], name: str) -> dict[str, dict]:
    """The lineage a file's attributes carry; a file without one (see the module docstring): a record
    of ``name`` from its plain attributes."""
    stored = attrs.get(PROVENANCE_ATTR)
    if isinstance(stored, str):
        stored = json.loads(stored)
    if isinstance(stored, dict) and stored.get("records"):
        return stored["records"]
    legacy = {field: attrs[a] for a, field in LEGACY_ATTRS.items() if attrs.get(a) is not None}
    return {name: {**legacy, "data_version": None, "made_at": None}}


def check(consumer: str, inputs: dict[str, dict[str, Any]], own: dict[str, Any], code_version: str | None = None
          ) -> dict[str, Any]:
    """Refuse inputs made from different data or settings; return the consumer's lineage attribute.

    ``consumer``: the consumer's entry (:func:`entry`); ``inputs``: each input's entry -> its file
    attributes (``H5Group.attrs`` or a table's); ``own``: the consumer's record fields (what it reads
    now: settings, dataset splits).  Every record of every input's lineage and ``own`` must agree on
    each :data:`SHARED_FIELDS` field, and one entry seen through two inputs must have one data
    version; otherwise a :class:`ProvenanceError` names the assets on each side, the fields and the
    values, and asks to re-materialize every asset holding another value than the current one (that
    of the consumer's own reading now, else of the newest record).  Returns ``{"entry": consumer, "records": ...}``
    with the consumer's record (``code_version``, ``made_at``, ``data_version``) added."""
    seen: list[tuple[str, str | None, dict]] = []  # (entry, the direct input it came through, record)
    merged: dict[str, dict] = {}
    for via, attrs in inputs.items():
        for name, record in lineage_of(attrs, via).items():
            seen.append((name, None if name == via else via, record))
            merged.setdefault(name, record)
    now = {**own, "made_at": None}
    seen.append((consumer, None, now))
    problems = []  # (field, [occurrences])
    for field in SHARED_FIELDS:
        values = [item for item in seen if item[2].get(field) is not None]
        if len({_key(item[2][field]) for item in values}) > 1:
            problems.append((field, values))
    if not problems:  # one entry through two inputs: the same data version
        by_entry: dict[str, tuple] = {}
        for item in seen:
            name, _, record = item
            if record.get("data_version") is None:
                continue
            prior = by_entry.setdefault(name, item)
            if prior[2]["data_version"] != record["data_version"]:  # name the settings that differ, if any
                fields = [k for k in dict.fromkeys([*prior[2], *record]) if k not in ("made_at", "data_version")
                          and prior[2].get(k) != record.get(k)] or ["data_version"]
                problems += [(f, [prior, item]) for f in fields]
                break
    if problems:
        raise ProvenanceError(_message(consumer, problems))
    record = {**own, "code_version": code_version, "made_at": time.time()}
    record["data_version"] = data_version(record, (r.get("data_version") for r in merged.values()))
    return {"entry": consumer, "records": {**merged, consumer: record}}


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


def _message(consumer: str, problems: list[tuple[str, list[tuple]]]) -> str:
    """One line per field: the current value and who has it, then each other value and who has it;
    then what to re-materialize: every record holding an other value.  The current value is that of
    the consumer's own reading now (profile, data files) where it has the field, else that of the
    record made last."""
    def name(item) -> str:
        n, via, record = item
        if n == consumer and record.get("made_at") is None:
            return f"{_describe(consumer)} (the profile and data it reads now)"
        return _describe(n) + (f" (as {_describe(via)} was made from it)" if via else "")

    def rank(item):  # the consumer's reading now first, then the newest record
        n, _, record = item
        now = n == consumer and record.get("made_at") is None
        return (not now, -(record.get("made_at") or 0))

    lines = [f"{_describe(consumer)}: its inputs were made from different data or settings; refusing to "
             "compute on them:"]
    stale: dict[str, None] = {}
    for field, items in problems:
        groups: dict[str, list] = {}
        for item in sorted(items, key=rank):
            groups.setdefault(_key(item[2].get(field)), []).append(item)
        parts = []
        for i, members in enumerate(groups.values()):
            who = ", ".join(dict.fromkeys(name(m) for m in members))
            parts.append(f"{who} {'has' if len(set(m[0] for m in members)) == 1 else 'have'} "
                         f"{members[0][2].get(field)!r}")
            if i:
                stale.update((_describe(m[0]), None) for m in members)
        lines.append(f"- {field}: " + "; ".join(parts))
    lines.append(f"Re-materialize {', '.join(stale)} (made from other data or settings than the newest inputs) and "
                 f"the assets downstream of {'it' if len(stale) == 1 else 'them'}, then {_describe(consumer)}, so "
                 "that every input is made from the current data and profile.")
    return "\n".join(lines)
