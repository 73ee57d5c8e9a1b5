"""IO managers: HDF5 for arrays (chunked, compressed, streamed, atomic), Parquet for tables.

Layout: ``<base_dir>/<asset key path>/<partition or "all">.h5`` (or ``.parquet``).  Every write goes to
a ``.partial-*`` file beside the target and is renamed into place only when complete, so a killed run
never leaves a file that a later load takes as a finished asset.

Values an asset returns:
- HDF5: a :class:`H5Payload` (named arrays + attributes), or a :class:`StagedH5` (an HDF5 file the
  asset streamed batch by batch through :meth:`HDF5IOManager.stage`); for a step that covers several
  partitions, a dict ``{partition_key: payload}``.
- Parquet: a ``pyarrow.Table`` (or a dict of them per partition).
Loads return :class:`H5Group` (lazy: datasets are read on indexing) or ``pyarrow.Table``; a
partitioned upstream always loads as a dict ``{partition_key: value}`` over the partitions the step
depends on (unmaterialized ones left out), and a partitioned asset returns such a dict too: one step
may cover a range of layers (single-run backfills), so the model is loaded once for all of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import dagster as dg
import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["H5Payload", "StagedH5", "H5Group", "LazyH5Array", "HDF5IOManager", "HTMLIOManager", "ParquetIOManager",
           "atomic_path"]


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it to ``target`` only if the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, target)
        _fsync(target.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _fsync(path: Path) -> None:
    """Flush a file (or a folder's entries) to disk, so a renamed file is never a truncated one."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class H5Payload:
    """Named arrays (numpy; string lists become UTF-8 string datasets) and file attributes."""

    arrays: dict[str, Any]
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class StagedH5:
    """An HDF5 file written by the asset at a staging path from :meth:`HDF5IOManager.stage`."""

    path: Path
    attrs: dict[str, Any] = field(default_factory=dict)


class LazyH5Array:
    """A dataset in an HDF5 file, opened on each read: ``shape``, ``dtype``, ``__getitem__``,
    ``__array__``; safe to pass between processes and to :func:`oe_assets.lens.neuron_pca`."""

    def __init__(self, path: Path, name: str):
        self.path, self.name = Path(path), name
        with h5py.File(self.path, "r") as f:
            ds = f[name]
            self.shape, self.dtype, self.chunks = tuple(ds.shape), ds.dtype, ds.chunks

    def __getitem__(self, index):
        with h5py.File(self.path, "r") as f:
            return f[self.name][index]

    def __array__(self, dtype=None, copy=None):
        out = self[()]
        return out if dtype is None else out.astype(dtype)

    def __len__(self):
        return self.shape[0]

    def __repr__(self):
        return f"LazyH5Array({str(self.path)!r}, {self.name!r}, shape={self.shape}, dtype={self.dtype})"


class H5Group:
    """The arrays of one asset file, by name; small arrays via :meth:`read`, large ones lazily."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with h5py.File(self.path, "r") as f:
            self.names = list(f.keys())
            self.attrs = {k: _attr_value(v) for k, v in f.attrs.items()}

    def __getitem__(self, name: str) -> LazyH5Array:
        if name not in self.names:
            raise KeyError(f"{self.path} has no array {name!r}; it holds {self.names}")
        return LazyH5Array(self.path, name)

    def read(self, name: str):
        """The whole array (strings decoded to a list of str)."""
        with h5py.File(self.path, "r") as f:
            ds = f[name]
            if h5py.check_string_dtype(ds.dtype) is not None:
                return [s.decode("utf-8") if isinstance(s, bytes) else s for s in ds[()]]
            return ds[()]

    def __repr__(self):
        return f"H5Group({str(self.path)!r}, {self.names})"


def _attr_value(v):
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, str) and v.startswith("json:"):
        return json.loads(v[5:])
    return v.item() if isinstance(v, np.generic) else v


def _write_attrs(obj, attrs: dict[str, Any]) -> None:
    for k, v in attrs.items():
        if v is None:
            continue
        obj.attrs[k] = v if isinstance(v, (str, int, float, bool, np.number)) else "json:" + json.dumps(v)


def _chunks(shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """Chunks of about 1 MiB that keep whole neuron blocks together for ``[samples, neurons, d]``."""
    if len(shape) == 0 or int(np.prod(shape)) < 1024:
        return None
    if len(shape) == 3:
        return (min(shape[0], 64), min(shape[1], 64), shape[2])
    return tuple(min(s, 4096 if i == 0 else s) for i, s in enumerate(shape))


def write_h5(path: Path, payload: H5Payload) -> None:
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for name, arr in payload.arrays.items():
                if isinstance(arr, (list, tuple)) and (not arr or isinstance(arr[0], str)):
                    f.create_dataset(name, data=np.array(arr, dtype=object), dtype=h5py.string_dtype("utf-8"))
                    continue
                arr = np.asarray(arr)
                f.create_dataset(name, data=arr, chunks=_chunks(arr.shape),
                                 compression="gzip" if arr.size >= 1024 else None, compression_opts=1 if arr.size >= 1024 else None)
            _write_attrs(f, payload.attrs)


class _BaseIOManager(dg.ConfigurableIOManager):
    base_dir: str = "data/materialized"
    suffix: str = ""

    def path_for(self, asset_key: dg.AssetKey | str, partition: str | None = None) -> Path:
        """Where an asset (partition) lives: ``<base_dir>/<key path>/<partition or 'all'><suffix>``."""
        asset_key = dg.AssetKey(asset_key) if isinstance(asset_key, str) else asset_key
        return Path(self.base_dir).joinpath(*asset_key.path) / f"{partition if partition is not None else 'all'}{self.suffix}"


    @staticmethod
    def _keys(context) -> list[str] | None:
        return list(context.asset_partition_keys) if context.has_asset_partitions else None

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        keys = self._keys(context)
        if keys is None:
            path = self.path_for(context.asset_key, None)
            self._write(context, path, obj)
            self._record(context, [path])
            return
        if not isinstance(obj, dict):
            if len(keys) != 1:
                raise TypeError(f"a step over partitions {keys} must return a dict of values by partition key")
            obj = {keys[0]: obj}
        missing = set(keys) - set(obj)
        if missing:
            raise ValueError(f"no value returned for partitions {sorted(missing)} of {context.asset_key.to_user_string()}")
        paths = [self.path_for(context.asset_key, key) for key in keys]
        try:
            for key, path in zip(keys, paths):
                self._write(context, path, obj[key])
        except BaseException:
            for value in obj.values():  # staged files not moved into place
                if isinstance(value, StagedH5) and Path(value.path).exists():
                    Path(value.path).unlink()
            raise
        self._record(context, paths)

    def _record(self, context, paths: list[Path]) -> None:
        """File path(s) and size in the catalog."""
        context.add_output_metadata({
            "path": dg.MetadataValue.path(str(paths[0].resolve()) if len(paths) == 1 else str(paths[0].parent.resolve())),
            "files": ", ".join(p.name for p in paths),
            "size_bytes": sum(p.stat().st_size for p in paths),
        })

    def load_input(self, context: dg.InputContext):
        key = context.asset_key
        if not context.has_asset_partitions:
            return self._read(self._require(self.path_for(key, None), key))
        # a layer step needs its own layers; an unpartitioned reader (layer_summary) takes what exists
        strict = self._step_is_partitioned(context)
        out = {}
        for p in context.asset_partition_keys:
            path = self.path_for(key, p)
            if path.exists():
                out[p] = self._read(path)
            elif strict:
                raise FileNotFoundError(f"asset {key.to_user_string()} partition {p} has no materialized file at "
                                        f"{path}; materialize it first")
        return out

    @staticmethod
    def _step_is_partitioned(context) -> bool:
        try:
            step = context.step_context
            return bool(step.has_partition_key or step.has_partition_key_range)
        except Exception:  # a context built outside a run (tests): its own partition key
            return context.has_partition_key

    @staticmethod
    def _require(path: Path, key: dg.AssetKey) -> Path:
        if not path.exists():
            raise FileNotFoundError(f"asset {key.to_user_string()} has no materialized file at {path}; materialize it first")
        return path

    def _write(self, context, path: Path, obj) -> None:
        raise NotImplementedError

    def _read(self, path: Path):
        raise NotImplementedError


class HDF5IOManager(_BaseIOManager):
    """Arrays in HDF5, one file per asset partition, chunked and compressed, with attributes.
    ``effects_compression``: filter of the large streamed effect files (``"none"``: the default, as
    path weights barely compress and the filter costs CPU time on the data pass; ``"lzf"``;
    ``"gzip"``).  ``alpha_dtype``: storage dtype of the effects' path weights (``"float32"``;
    ``"float16"`` / ``"bfloat16"`` halve the files, see the README for their error)."""

    suffix: str = ".h5"
    effects_compression: str = "none"
    alpha_dtype: str = "float32"

    def compression(self) -> dict:
        if self.effects_compression in ("none", "", None):
            return {}
        if self.effects_compression == "gzip":
            return {"compression": "gzip", "compression_opts": 1}
        if self.effects_compression == "lzf":
            return {"compression": "lzf"}
        raise ValueError(f"effects_compression={self.effects_compression!r}; choose 'lzf', 'gzip' or 'none'")

    def stage(self, asset_key: dg.AssetKey, partition: str | None) -> Path:
        """A fresh staging path beside the asset's final file, for streaming writes."""
        final = self.path_for(asset_key, partition)
        final.parent.mkdir(parents=True, exist_ok=True)
        return final.with_name(f"{final.name}.partial-{uuid.uuid4().hex[:8]}")

    def _write(self, context, path: Path, obj) -> None:
        if isinstance(obj, StagedH5):
            with h5py.File(obj.path, "a") as f:
                _write_attrs(f, obj.attrs)
            _fsync(obj.path)
            os.replace(obj.path, path)
            _fsync(path.parent)
        elif isinstance(obj, H5Payload):
            write_h5(path, obj)
        else:
            raise TypeError(f"HDF5IOManager cannot store {type(obj).__name__}; return H5Payload or StagedH5")
        context.log.debug(f"wrote {path}")

    def _read(self, path: Path) -> H5Group:
        return H5Group(path)


def open_effects(group: H5Group, dtype=None, device=None):
    """The factorized effects of a loaded effects asset partition (:func:`open_factorized`; refuses
    a file of the earlier dense layout, naming it)."""
    import torch

    from ..lens.effects_file import open_factorized

    return open_factorized(group.path, dtype=dtype or torch.float64, device=device)


class ParquetIOManager(_BaseIOManager):
    """Tables in Parquet (pyarrow), one file per asset partition."""

    suffix: str = ".parquet"

    def _write(self, context, path: Path, obj) -> None:
        if not isinstance(obj, pa.Table):
            raise TypeError(f"ParquetIOManager stores pyarrow.Table, got {type(obj).__name__}")
        with atomic_path(path) as tmp:
            pq.write_table(obj, tmp)

    def _read(self, path: Path) -> pa.Table:
        return pq.read_table(path)


class HTMLIOManager(_BaseIOManager):
    """Static HTML reports (a ``str`` per partition), written atomically."""

    suffix: str = ".html"

    def _write(self, context, path: Path, obj) -> None:
        if not isinstance(obj, str):
            raise TypeError(f"HTMLIOManager stores HTML text, got {type(obj).__name__}")
        with atomic_path(path) as tmp:
            tmp.write_text(obj, encoding="utf-8")

    def _record(self, context, paths: list[Path]) -> None:
        super()._record(context, paths)
        context.add_output_metadata({
            "reports": dg.MetadataValue.md("\n".join(f"- [{p.name}]({p.resolve().as_uri()})" for p in paths)),
        })

    def _read(self, path: Path) -> str:
        return path.read_text(encoding="utf-8")
