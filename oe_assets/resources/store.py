"""The artifact store: the one owner of where artifacts live and how they are written and read.

Layout: ``<base_dir>/<asset key path>/<partition or "all"><suffix>`` (``.h5``, ``.parquet``,
``.html``).  Every write goes to a ``.partial-*`` staging file beside the target and is renamed into
place only when complete (fsynced first), so a killed run never leaves a file that a later load
takes as a finished asset.  The IO managers (:mod:`.io_managers`) are thin adapters over this
resource; assets and checks that need a path, a staging file or a lazy read ask it too.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import dagster as dg
import h5py
import numpy as np

from ..recovery import is_dead, staging_suffix, staging_writer

__all__ = ["ArtifactStore", "H5Payload", "StagedH5", "H5Group", "LazyH5Array", "atomic_path", "staging_path", "write_h5"]


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it to ``target`` only if the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_path(target)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, target)
        _fsync(target.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def staging_path(target: Path) -> Path:
    """A fresh staging path beside ``target`` that names its writer (this process:
    ``<target name>.partial-<random>-<pid>-<start tick>@<host>``).  Staging files of the same target
    left by a writer that is dead (a killed run) are removed first; a live writer's are kept."""
    for sibling in target.parent.glob(f"{glob.escape(target.name)}.partial-*"):
        writer = staging_writer(sibling.name)
        if writer is not None and is_dead(writer):
            with contextlib.suppress(FileNotFoundError):
                sibling.unlink()
    return target.with_name(target.name + staging_suffix(uuid.uuid4().hex[:8]))


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
    """Chunks of small arrays: up to 64 samples x 64 neurons of ``[samples, neurons, d]`` (8 MiB of
    float32 at d = 512), 4096 rows of 2-d arrays; None (contiguous) under 1024 elements."""
    if len(shape) == 0 or int(np.prod(shape)) < 1024:
        return None
    if len(shape) == 3:
        return (min(shape[0], 64), min(shape[1], 64), shape[2])
    return tuple(min(s, 4096 if i == 0 else s) for i, s in enumerate(shape))


def write_h5(path: Path, payload: H5Payload) -> None:
    """``payload`` as an HDF5 file at ``path``, atomically."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for name, arr in payload.arrays.items():
                if isinstance(arr, (list, tuple)) and (not arr or isinstance(arr[0], str)):
                    f.create_dataset(name, data=np.array(arr, dtype=object), dtype=h5py.string_dtype("utf-8"))
                    continue
                arr = np.asarray(arr)
                f.create_dataset(name, data=arr, chunks=_chunks(arr.shape),
                                 **({"compression": "gzip", "compression_opts": 1} if arr.size >= 1024 else {}))
            _write_attrs(f, payload.attrs)




class ArtifactStore(dg.ConfigurableResource):
    """Where every artifact lives, how it is written (staged, fsynced, renamed) and read.

    ``effects_compression``: HDF5 filter of the large streamed effect files (``"none"``: the default,
    as path weights barely compress and the filter costs CPU time on the data pass; ``"lzf"``;
    ``"gzip"``).  ``alpha_dtype``: storage dtype of the effects' path weights (``"float32"``;
    ``"float16"`` / ``"bfloat16"`` halve the files, see the README for their error; ``"float64"``)."""

    base_dir: str = "data/materialized"
    effects_compression: str = "none"
    alpha_dtype: str = "float32"

    # ---- where ---------------------------------------------------------------------------
    def path_for(self, asset_key: dg.AssetKey | str, partition: str | None = None, suffix: str = ".h5") -> Path:
        """``<base_dir>/<key path>/<partition or 'all'><suffix>``."""
        asset_key = dg.AssetKey(asset_key) if isinstance(asset_key, str) else asset_key
        name = f"{partition if partition is not None else 'all'}{suffix}"
        return Path(self.base_dir).joinpath(*asset_key.path) / name

    def partitions(self, asset_key: dg.AssetKey | str, suffix: str = ".h5") -> list[str]:
        """The partitions of an asset with a complete file (staging files never count)."""
        folder = self.path_for(asset_key, "x", suffix).parent
        keys = [p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}")] if folder.exists() else []
        return sorted(keys, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))

    def require(self, asset_key: dg.AssetKey | str, partition: str | None = None, suffix: str = ".h5") -> Path:
        """The file of an asset (partition); raises naming both when it was never materialized."""
        path = self.path_for(asset_key, partition, suffix)
        if not path.exists():
            key = asset_key if isinstance(asset_key, str) else asset_key.to_user_string()
            what = f"asset {key}" + (f" partition {partition}" if partition is not None else "")
            raise FileNotFoundError(f"{what} has no materialized file at {path}; materialize it first")
        return path

    # ---- writing -------------------------------------------------------------------------
    def stage(self, asset_key: dg.AssetKey | str, partition: str | None = None, suffix: str = ".h5") -> Path:
        """A fresh staging path beside the asset's final file, for streaming writes
        (:func:`staging_path`: dead writers' staging files of that file are removed)."""
        final = self.path_for(asset_key, partition, suffix)
        final.parent.mkdir(parents=True, exist_ok=True)
        return staging_path(final)

    def commit(self, staged: Path, target: Path) -> None:
        """Move a complete staging file into place: fsync it, rename, fsync the folder."""
        _fsync(staged)
        os.replace(staged, target)
        _fsync(target.parent)

    def atomic(self, target: Path):
        """A context manager yielding a staging path that becomes ``target`` if the block succeeds."""
        return atomic_path(target)

    @staticmethod
    def discard(path: Path) -> None:
        """Remove a staging file left by a failed step (best effort)."""
        with contextlib.suppress(FileNotFoundError):
            Path(path).unlink()

    def compression(self) -> dict:
        """``h5py.create_dataset`` keywords of the effects files' filter."""
        if self.effects_compression in ("none", "", None):
            return {}
        if self.effects_compression == "gzip":
            return {"compression": "gzip", "compression_opts": 1}
        if self.effects_compression == "lzf":
            return {"compression": "lzf"}
        raise ValueError(f"effects_compression={self.effects_compression!r}; choose 'lzf', 'gzip' or 'none'")

    # ---- reading -------------------------------------------------------------------------
    def open_h5(self, asset_key: dg.AssetKey | str, partition: str | None = None) -> H5Group:
        return H5Group(self.require(asset_key, partition, ".h5"))

    def open_effects(self, asset_key: dg.AssetKey | str, partition: str, dtype=None, device=None):
        """The factorized effects of an effects asset partition
        (:func:`oe_assets.lens.effects_file.open_factorized`; refuses the earlier dense layout)."""
        return open_effects(self.open_h5(asset_key, partition), dtype, device)


def open_effects(group: H5Group, dtype=None, device=None):
    """The factorized effects of a loaded effects file (an :class:`H5Group`)."""
    import torch

    from ..lens.effects_file import open_factorized

    return open_factorized(group.path, dtype=dtype or torch.float64, device=device)
