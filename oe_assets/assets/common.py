"""Small helpers shared by the asset modules: metadata, markdown, timing."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any

import dagster as dg
import numpy as np

from ..dagster_private import asset_code_versions
from ..provenance import PROVENANCE_ATTR, check, entry
from ..settings import current_values, record

#: bumped when an asset's computation changes meaning; recorded as code_version and in file attrs
CODE_VERSION = "2"


def md_table(rows: list[dict], columns: list[str] | None = None, floatfmt: str = "{:.4g}") -> str:
    """A Markdown table of ``rows`` (list of dicts)."""
    if not rows:
        return "_empty_"
    columns = columns or list(rows[0])
    fmt = lambda v: floatfmt.format(v) if isinstance(v, (float, np.floating)) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")).replace("|", "\\|") for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def array_metadata(name: str, arr) -> dict[str, Any]:
    shape = tuple(int(s) for s in arr.shape)
    return {f"{name}_shape": str(list(shape)), f"{name}_dtype": str(arr.dtype), "rows": shape[0] if shape else 0}


@contextmanager
def timer(metadata: dict):
    t0 = time.perf_counter()
    yield
    metadata["run_time_s"] = dg.MetadataValue.float(round(time.perf_counter() - t0, 3))


#: the observable source assets of the dataset files (data version: the split's order hash)
DATASET_SOURCES = ("train_data", "val_data", "val_r_data")
#: eager, but the external `model` node (never materialized) does not count as a missing dependency,
#: and a changed dataset file only marks its downstream assets stale (they run the model: no
#: automatic GPU work)
EAGER = dg.AutomationCondition.eager().ignore(dg.AssetSelection.keys("model", *DATASET_SOURCES))


def provenance(context, asset: str, inputs: dict[str, dict], resources: dict, extra: dict | None = None,
               partition: str | None = None) -> dict[str, Any]:
    """Check the provenance of an asset's inputs (:func:`oe_assets.provenance.check`: ``inputs``
    maps each input's entry to its file attributes) against each other and against the profile now
    (``resources``: ``{"model", "dataset", "analysis", "store"}``); the asset's own record is the
    value of every setting it declares (:data:`oe_assets.settings.READS`) and ``extra`` (the dataset
    split it reads, the resolved convention) and its code version (the asset definition's).  Records
    the asset's record and its inputs' data versions in the materialization metadata, and returns the
    file attributes that store its lineage."""
    code_version = context.assets_def.code_versions_by_key.get(context.asset_key)
    cache: dict = {}
    own = {**record(asset, resources, cache), **(extra or {})}
    lineage = check(entry(asset, partition), inputs, own, code_version, current_values(resources, cache=cache),
                    asset_code_versions(context))
    own_record = lineage["records"][lineage["entry"]]
    metadata = {"provenance": dg.MetadataValue.json(own_record),
                "made_from": dg.MetadataValue.json({e: r.get("data_version") for e, r in lineage["records"].items()
                                                    if e != lineage["entry"]})}
    if partition is None:
        context.add_output_metadata(metadata)
    else:
        context.add_asset_metadata(metadata, partition_key=partition)
    return {PROVENANCE_ATTR: lineage}


def profile_resources(model, dataset, analysis, store) -> dict:
    """The resources holding the profile's settings, as :func:`provenance` reads them."""
    return {"model": model, "dataset": dataset, "analysis": analysis, "store": store}


def dense_codes(indices: np.ndarray, values: np.ndarray, n_descriptions: int) -> np.ndarray:
    """Stored sparse codes (``indices`` / ``values`` ``[neurons, k]``, ``-1`` padding) as dense
    ``[neurons, n_descriptions]``."""
    out = np.zeros((indices.shape[0], n_descriptions))
    rows, cols = np.nonzero(indices >= 0)
    out[rows, indices[rows, cols]] = values[rows, cols]
    return out


def sparse_reconstructions(codes, dictionary: np.ndarray) -> np.ndarray:
    """Each neuron's sparse reconstruction of its PC ``[neurons, d_out]``: a ``sparse_codes`` file's
    codes times the normalised ``dictionary`` ``[descriptions, d_out]``."""
    return dense_codes(codes.read("indices"), codes.read("values"), dictionary.shape[0]) @ dictionary


def reconstruction_dictionary(text_embeddings, coefficient: float) -> np.ndarray:
    """The normalised text dictionary ``[descriptions, d_out]`` the sparse reconstructions are made of
    (``text_embeddings``' embeddings, :func:`oe_assets.lens.normalize_dictionary`)."""
    from ..lens import normalize_dictionary

    return normalize_dictionary(text_embeddings.read("embeddings"), coefficient)


def same_vocabulary(text_embeddings, codes, key: str) -> None:
    """Sparse-code indices point into the vocabulary they were computed on: refuse a mismatch."""
    a, b = text_embeddings.attrs.get("vocabulary_version"), codes.attrs.get("vocabulary_version")
    if a != b:
        raise ValueError(f"sparse_codes layer {key} was computed on vocabulary {b} but text_embeddings is now "
                         f"{a}; re-materialize sparse_codes (the vocabulary automation does this)")
