"""Small helpers shared by the asset modules: metadata, markdown, timing."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any

import dagster as dg
import numpy as np

#: bumped when an asset's computation changes meaning; recorded as code_version and in file attrs
CODE_VERSION = "2"  # 2: effects stored factorized (earlier dense files must be re-materialized)


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


#: eager, but the external `model` node (never materialized) does not count as a missing dependency
EAGER = dg.AutomationCondition.eager().ignore(dg.AssetSelection.keys("model"))
