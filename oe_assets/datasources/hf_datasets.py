"""Hugging Face ``datasets`` and Arrow / Parquet folders as labelled text splits, read in blocks.

No Dagster import; :class:`oe_assets.resources.datasets.DatasetResource` (``kind="hf"``) wraps it.

A split comes from one of:

* a folder written by ``Dataset.save_to_disk`` (``state.json``), or by ``DatasetDict.save_to_disk``
  (``dataset_dict.json``: the split named by ``split_name``), opened with ``datasets.load_from_disk``
  (memory-mapped Arrow);
* ``hf:<name>`` or ``hf:<name>:<config>``: a dataset already in the local ``datasets`` cache, loaded
  offline (``HF_DATASETS_OFFLINE``: never the network), split ``split_name``;
* a ``.parquet`` file or a folder of them (read by row group with :mod:`pyarrow.parquet`);
* an ``.arrow`` file or a folder of them (Arrow IPC stream or file format, memory-mapped).

Nothing is loaded whole: rows are read by contiguous ranges (a memory-mapped slice, or the Parquet
row groups that hold them).  Subsampling is the rule of every dataset kind
(:func:`~oe_assets.datasources.text_datasets.subsample`).  Labels: integer columns (also ``ClassLabel``) are
used as they are; string labels map through the class names.  Texts must be non-empty strings.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .text_datasets import subsample

__all__ = ["CACHE_PREFIX", "EXTRA", "ArrowRows", "ArrowTexts", "hf_class_names", "open_rows", "hf_text_split",
           "split_name", "count_rows"]

#: a dataset named by its name in the local ``datasets`` cache: ``hf:<name>[:<config>]``
CACHE_PREFIX = "hf:"
#: the optional dependency group that installs ``datasets``
EXTRA = "llm"
#: the split of a DatasetDict / cached name read as ``train`` / ``val`` when ``dataset.train_key`` /
#: ``dataset.val_key`` keep their defaults (those of the npz kind)
DEFAULT_SPLITS = {"train": ("train_images", "train"), "val": ("val_images", "validation")}
#: kept rows read at a time (texts, labels, fingerprints)
BLOCK = 1024


class ArrowRows:
    """The rows of one split: ``num_rows``, ``schema``, ``read(start, stop, column)`` (a contiguous
    range of one column as an Arrow array) and ``where`` (what the errors name)."""

    def __init__(self, where: str, schema: pa.Schema, num_rows: int, table: pa.Table | None = None,
                 parquet_files: Sequence[Path] = (), features=None):
        self.where, self.schema, self.num_rows, self.features = where, schema, num_rows, features
        self._table = table
        self._groups: list[tuple[int, int, Path, int]] = []  # (first row, rows, file, row group)
        self._files: dict[Path, object] = {}
        self._cached: tuple[tuple[Path, int, str], pa.Array] | None = None
        if table is None:
            import pyarrow.parquet as pq

            start = 0
            for f in parquet_files:
                meta = pq.ParquetFile(f).metadata
                for g in range(meta.num_row_groups):
                    self._groups.append((start, meta.row_group(g).num_rows, f, g))
                    start += meta.row_group(g).num_rows

    @property
    def column_names(self) -> list[str]:
        return list(self.schema.names)

    def read(self, start: int, stop: int, column: str) -> pa.Array:
        """Rows ``start:stop`` of ``column``."""
        if self._table is not None:
            return self._table.column(column).slice(start, stop - start).combine_chunks()
        parts = []
        for first, n, f, g in self._groups:
            if first + n <= start or first >= stop:
                continue
            group = self._group(f, g, column)
            parts.append(group.slice(max(start - first, 0), min(stop, first + n) - max(start, first)))
        return pa.concat_arrays(parts) if parts else pa.array([], type=self.schema.field(column).type)

    def _group(self, f: Path, g: int, column: str) -> pa.Array:
        """One Parquet row group's column; the last one read is kept (blocks often share one)."""
        key = (f, g, column)
        if self._cached is None or self._cached[0] != key:
            import pyarrow.parquet as pq

            if f not in self._files:
                self._files[f] = pq.ParquetFile(f)
            self._cached = (key, self._files[f].read_row_group(g, columns=[column]).column(0).combine_chunks())
        return self._cached[1]

    def take(self, rows: np.ndarray, column: str) -> pa.Array:
        """Rows ``rows`` (increasing) of ``column``, read as one contiguous range."""
        if len(rows) == 0:
            return pa.array([], type=self.schema.field(column).type)
        first = int(rows[0])
        return pc.take(self.read(first, int(rows[-1]) + 1, column), pa.array(rows - first))


def split_name(split: str, key: str | None) -> str:
    """The DatasetDict split read as ``split`` (``train``, ``val``): ``key`` (``dataset.train_key`` /
    ``dataset.val_key``), or ``train`` / ``validation`` when it keeps its default."""
    default, name = DEFAULT_SPLITS[split]
    return name if key in (None, default) else key


def count_rows(source: str, split: str, text_column: str, label_column: str) -> int:
    """A split's rows from its Arrow / Parquet metadata (no data read); raises naming a missing column."""
    rows = open_rows(source, split)
    missing = [c for c in (text_column, label_column) if c not in rows.column_names]
    if missing:
        raise ValueError(f"{rows.where}: missing column(s) {missing} (dataset.text_column / dataset.label_column); "
                         f"columns present: {rows.column_names}")
    return rows.num_rows


def _datasets():
    try:
        import datasets
    except ImportError as e:
        raise ImportError(f"dataset.kind 'hf' with a save_to_disk folder or a cached dataset name needs the "
                          f"'datasets' package: pip install 'oe_assets[{EXTRA}]' (or pip install datasets)") from e
    return datasets


def _from_datasets(ds, where: str) -> ArrowRows:
    """A ``datasets.Dataset`` (memory-mapped): its Arrow table (a zero-copy slice of the whole)."""
    table = ds.with_format("arrow")[0:len(ds)] if len(ds) else ds.data.table
    return ArrowRows(where, table.schema, table.num_rows, table=table, features=ds.features)


@contextlib.contextmanager
def _offline():
    """The ``datasets`` cache without the network, whatever the environment says."""
    saved = {v: os.environ.get(v) for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    os.environ.update({v: "1" for v in saved})
    datasets = _datasets()
    flag = getattr(datasets.config, "HF_HUB_OFFLINE", None)
    datasets.config.HF_HUB_OFFLINE = True
    try:
        yield datasets
    finally:
        datasets.config.HF_HUB_OFFLINE = flag
        for v, value in saved.items():
            if value is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = value


def open_rows(source: str, split_name: str) -> ArrowRows:
    """The rows of split ``split_name`` of ``source`` (see the module docstring); errors name the
    source and what is wrong."""
    if source.startswith(CACHE_PREFIX):
        name, _, config = source.removeprefix(CACHE_PREFIX).partition(":")
        with _offline() as datasets:
            try:
                ds = datasets.load_dataset(name, config or None, split=split_name)
            except Exception as e:  # noqa: BLE001 - not cached, unknown split: say which and why
                raise ValueError(f"dataset {source!r} split {split_name!r} is not in the local datasets cache "
                                 f"(read offline, HF_DATASETS_OFFLINE): {e}") from e
        return _from_datasets(ds, f"{source} [{split_name}]")
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"Hugging Face dataset {path} does not exist")
    if path.is_dir() and (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        if split_name not in splits:
            raise ValueError(f"{path}: a DatasetDict without split {split_name!r}; it holds {splits} (set "
                             "dataset.train_key / dataset.val_key to the split's name, or give the split's folder)")
        return _from_datasets(_datasets().load_from_disk(str(path / split_name)), f"{path / split_name}")
    if path.is_dir() and (path / "state.json").is_file():
        return _from_datasets(_datasets().load_from_disk(str(path)), str(path))
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    parquet = [p for p in files if p.suffix in (".parquet", ".pq")]
    arrow = [p for p in files if p.suffix == ".arrow"]
    if parquet and not arrow:
        import pyarrow.parquet as pq

        schemas = {str(pq.read_schema(p)) for p in parquet}
        if len(schemas) > 1:
            raise ValueError(f"{path}: Parquet files with different columns")
        return ArrowRows(str(path), pq.read_schema(parquet[0]), sum(pq.ParquetFile(p).metadata.num_rows for p in parquet),
                         parquet_files=parquet)
    if arrow and not parquet:
        table = pa.concat_tables([_read_arrow(p) for p in arrow])
        return ArrowRows(str(path), table.schema, table.num_rows, table=table)
    raise ValueError(f"{path}: not a Hugging Face dataset: expected a save_to_disk folder (state.json or "
                     "dataset_dict.json), .parquet or .arrow files (not both), or hf:<name> for the local cache")


def _read_arrow(path: Path) -> pa.Table:
    """A memory-mapped Arrow IPC file (stream format, as ``datasets`` writes, or file format)."""
    source = pa.memory_map(str(path))
    try:
        return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        source.seek(0)
        return pa.ipc.open_file(source).read_all()


def hf_class_names(rows: ArrowRows, label_column: str) -> list[str] | None:
    """The class names a ``ClassLabel`` label column carries, else None."""
    feature = (rows.features or {}).get(label_column)
    names = getattr(feature, "names", None)
    return list(names) if names else None


class ArrowTexts(Sequence[str]):
    """The texts of a split's kept rows, read by blocks of :data:`BLOCK` (the last block read is kept):
    iterating streams them; ``texts[i]`` reads the block of ``i``."""

    def __init__(self, rows: ArrowRows, column: str, kept: np.ndarray):
        self.rows, self.column, self.kept = rows, column, kept
        self._block: tuple[int, list[str]] | None = None

    def __len__(self) -> int:
        return len(self.kept)

    def block(self, b: int) -> list[str]:
        if self._block is None or self._block[0] != b:
            kept = self.kept[b * BLOCK:(b + 1) * BLOCK]
            texts = self.rows.take(kept, self.column).to_pylist()
            for row, text in zip(kept, texts):
                if not isinstance(text, str) or not text.strip():
                    raise ValueError(f"{self.rows.where}: row {int(row)} has empty or non-string text in column "
                                     f"{self.column!r}: {text!r}")
            self._block = (b, texts)
        return self._block[1]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.block(i // BLOCK)[i % BLOCK]

    def __iter__(self) -> Iterator[str]:
        for b in range(-(-len(self) // BLOCK)):
            yield from self.block(b)


def _labels(rows: ArrowRows, column: str, kept: np.ndarray, classes: Sequence[str] | None) -> np.ndarray:
    """The kept rows' labels as int64: integers as they are, strings through ``classes``."""
    out = np.empty(len(kept), dtype=np.int64)
    index = None if classes is None else {c: i for i, c in enumerate(classes)}
    for s in range(0, len(kept), BLOCK):
        block = kept[s:s + BLOCK]
        values = rows.take(block, column)
        if values.null_count:
            row = int(block[np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0]])
            raise ValueError(f"{rows.where}: row {row}: label is missing (null) in column {column!r}")
        if pa.types.is_integer(values.type):
            labels = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.int64)
        elif pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            if index is None:
                raise ValueError(f"{rows.where}: column {column!r} holds string labels ({values[0].as_py()!r}); "
                                 "give dataset.classes_path (a JSON list of class names) to map them to indices")
            names = values.to_pylist()
            unknown = [(int(r), n) for r, n in zip(block, names) if n not in index]
            if unknown:
                raise ValueError(f"{rows.where}: row {unknown[0][0]}: label {unknown[0][1]!r} is not one of the "
                                 f"{len(index)} classes")
            labels = np.asarray([index[n] for n in names], dtype=np.int64)
        else:
            raise ValueError(f"{rows.where}: column {column!r} has type {values.type}; labels must be integers or "
                             "class names (strings)")
        bad = np.flatnonzero((labels < 0) | (labels >= len(classes) if classes is not None else labels < 0))
        if len(bad):
            raise ValueError(f"{rows.where}: row {int(block[bad[0]])}: label {int(labels[bad[0]])} is out of range"
                             + (f" for {len(classes)} classes" if classes is not None else " (negative)"))
        out[s:s + len(block)] = labels
    return out


def hf_text_split(source: str, split_name: str, text_column: str, label_column: str, stride: int = 1,
                  offset: int = 0, limit: int | None = None,
                  classes: Sequence[str] | None = None) -> tuple[ArrowTexts, np.ndarray]:
    """The kept rows' texts (read lazily by blocks) and labels ``[n]`` int64 of one split."""
    count_rows(source, split_name, text_column, label_column)
    rows = open_rows(source, split_name)
    if offset >= rows.num_rows:
        raise ValueError(f"{rows.where}: offset {offset} is beyond the {rows.num_rows} rows")
    kept = subsample(np.arange(rows.num_rows, dtype=np.int64), offset, stride, limit)
    if classes is None:
        classes = hf_class_names(rows, label_column)
    return ArrowTexts(rows, text_column, kept), _labels(rows, label_column, kept, classes)
