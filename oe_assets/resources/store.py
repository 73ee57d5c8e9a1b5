"""The artifact store: the Dagster resource over the storage layout (:mod:`oe_assets.storage`).

The layout (where each asset partition lives, staging files naming their writer, fsync-and-rename
commits, free-space checks) is :class:`oe_assets.storage.layout.Layout`'s; reading and writing HDF5,
Parquet and HTML files with their checksums is :mod:`oe_assets.storage.hdf5` and
:mod:`oe_assets.storage.tables`'s.  This resource adds the profile's storage settings (``base_dir``,
the effects' dtype and compression) and Dagster's asset keys; the IO managers (:mod:`.io_managers`)
are thin adapters over it, and assets and checks that need a path, a staging file or a lazy read ask
it too.  The names below are re-exported for them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg

from ..storage.hdf5 import (
    CorruptFileError, H5Group, H5Handle, H5Payload, LazyH5Array, StagedH5, attr_value, checksummed, is_disk_full,
    write_attrs, write_h5,
)
from ..storage.layout import (
    DiskFullError, Layout, atomic_path, describe, require_free_space, size_text, staging_path, writing_for_run,
)
from ..storage.tables import (
    PARQUET_CHECKSUM, HTMLPage, html_attrs, html_with_attrs, read_html, read_parquet, table_attrs, table_with_attrs,
    write_html, write_parquet,
)

__all__ = ["ArtifactStore", "EFFECTS_MODES", "H5Payload", "StagedH5", "HTMLPage", "html_attrs", "html_with_attrs",
           "H5Group", "H5Handle", "LazyH5Array", "atomic_path", "staging_path", "write_h5",
           "CorruptFileError", "DiskFullError", "require_free_space", "open_effects", "attr_value", "checksummed",
           "write_attrs", "PARQUET_CHECKSUM",
           "table_attrs", "table_with_attrs", "write_parquet", "read_parquet", "write_html", "read_html"]


#: the values of ``storage.effects_mode``
EFFECTS_MODES = ("stored", "topk")


def _key_path(asset_key: dg.AssetKey | str) -> tuple[str, ...]:
    return tuple(dg.AssetKey(asset_key).path if isinstance(asset_key, str) else asset_key.path)


def _name(asset_key: dg.AssetKey | str) -> str:
    return asset_key if isinstance(asset_key, str) else asset_key.to_user_string()


class ArtifactStore(dg.ConfigurableResource):
    """Where every artifact lives, how it is written (staged, fsynced, renamed) and read.

    ``effects_compression``: HDF5 filter of the large streamed effect files (``"none"``: the default,
    as path weights barely compress and the filter costs CPU time on the data pass; ``"lzf"``;
    ``"gzip"``).  ``alpha_dtype``: storage dtype of the effects' path weights (``"float32"``;
    ``"float16"`` / ``"bfloat16"`` halve the files, see the README for their error; ``"float64"``).
    ``effects_mode``: what the train effects asset keeps (:data:`EFFECTS_MODES`): ``"stored"`` every
    sample's factorized effects; ``"topk"`` for models whose effects do not fit a disk, every
    sample's norms and each neuron's ``analysis.top_k`` top samples (:mod:`oe_assets.lens.topk`,
    two data passes), the val effects replaced by their sums (``val_effect_sums``,
    which assets each mode provides: docs/asset_graph.md)."""

    base_dir: str = "data/materialized"
    effects_compression: str = "none"
    alpha_dtype: str = "float32"
    effects_mode: str = "stored"

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """A run's step starts in this process (or the run, in process): the staging files written
        from now on name the run, so that they are removed once it has ended, from any host
        (:func:`oe_assets.recovery.remove_ended_run_staging`)."""
        writing_for_run(context.run_id)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        writing_for_run(None)

    @property
    def layout(self) -> Layout:
        """The storage layout of ``base_dir`` (:class:`oe_assets.storage.layout.Layout`)."""
        return Layout(self.base_dir)

    # ---- where ---------------------------------------------------------------------------
    def path_for(self, asset_key: dg.AssetKey | str, partition: str | None = None, suffix: str = ".h5") -> Path:
        """``<base_dir>/<key path>/<partition or 'all'><suffix>``."""
        return self.layout.path_for(_key_path(asset_key), partition, suffix)

    def plot_path(self, asset_key: dg.AssetKey | str, name: str, partitions: list[str] | None = None) -> Path:
        """Where a plot of an asset lives, beside its files (:meth:`Layout.plot_path`)."""
        return self.layout.plot_path(_key_path(asset_key), name, partitions)

    def write_plot(self, asset_key: dg.AssetKey | str, name: str, png: bytes,
                   partitions: list[str] | None = None) -> Path:
        """Write a plot's PNG bytes to :meth:`plot_path` atomically; returns the path."""
        return self.layout.write_bytes(self.plot_path(asset_key, name, partitions), png)

    def partitions(self, asset_key: dg.AssetKey | str, suffix: str = ".h5") -> list[str]:
        """The partitions of an asset with a complete file (staging files never count)."""
        return self.layout.partitions(_key_path(asset_key), suffix)

    def require(self, asset_key: dg.AssetKey | str, partition: str | None = None, suffix: str = ".h5") -> Path:
        """The file of an asset (partition); raises naming both when it was never materialized."""
        return self.layout.require(_key_path(asset_key), partition, suffix)

    # ---- writing -------------------------------------------------------------------------
    def stage(self, asset_key: dg.AssetKey | str, partition: str | None = None, suffix: str = ".h5") -> Path:
        """A fresh staging path beside the asset's final file, for streaming writes (dead writers'
        staging files of that file are removed)."""
        return self.layout.stage(_key_path(asset_key), partition, suffix)

    def commit(self, staged: Path, target: Path) -> None:
        """Move a complete staging file into place: fsync it, rename, fsync the folder."""
        Layout.commit(staged, target)

    def atomic(self, target: Path):
        """A context manager yielding a staging path that becomes ``target`` if the block succeeds."""
        return atomic_path(target)

    def describe(self, asset_key: dg.AssetKey | str, partitions: list[str] | str | None = None) -> str:
        """``asset <key>`` with its partition(s), for errors."""
        return describe(_name(asset_key), partitions)

    def require_free_space(self, asset_key: dg.AssetKey | str, partitions: list[str] | None, needed: int) -> None:
        """Refuse (:class:`DiskFullError`, with both numbers and the folder) a write of ``needed`` bytes
        into the asset's folder when its disk has less free space; called before a long streamed write."""
        require_free_space(self.path_for(asset_key, (partitions or [None])[0]).parent, needed,
                           self.describe(asset_key, partitions),
                           "nothing was computed. Free some space (or set the store's base_dir to a larger disk), "
                           "then materialize again")

    def write_error(self, asset_key: dg.AssetKey | str, partitions: list[str] | None, path: Path,
                    exc: BaseException, needed: int | None = None) -> OSError:
        """The error to raise for a streamed write of ``path`` that failed with ``exc`` (after the
        caller closed its handles and discarded the staged files): :class:`DiskFullError` naming the
        file, the free and the ``needed`` space when the disk is full; an ``OSError`` naming the file
        otherwise."""
        what = self.describe(asset_key, partitions)
        if is_disk_full(exc):
            free = shutil.disk_usage(Path(path).parent).free if Path(path).parent.exists() else 0
            need = f", the step's files need about {size_text(needed)}" if needed else ""
            return DiskFullError(
                f"{path}: the disk is full while writing {what} ({size_text(free)} free after removing the staged "
                f"files{need}); the staged files were removed. Free some space (or set the store's base_dir to a "
                f"larger disk), then materialize again. ({exc})")
        return OSError(f"{path}: writing {what} failed ({exc}); the staged files were removed")

    @staticmethod
    def discard(path: Path) -> None:
        """Remove a staging file left by a failed step (best effort)."""
        Layout.discard(path)

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
        return H5Group(self.require(asset_key, partition, ".h5"), self.describe(asset_key, partition))

    def open_effects(self, asset_key: dg.AssetKey | str, partition: str, dtype=None, device=None):
        """The factorized effects of an effects asset partition
        (:func:`oe_assets.lens.effects_file.open_factorized`; refuses the earlier dense layout)."""
        return open_effects(self.open_h5(asset_key, partition), dtype, device)


def open_effects(group: H5Handle, dtype=None, device=None):
    """The effects of a loaded effects file (an :class:`H5Handle`), read through its one open file:
    :class:`~oe_assets.lens.factorized.FactorizedEffects` of a stored file, or
    :class:`~oe_assets.lens.topk.TopKEffects` of a top-k one (``storage.effects_mode: topk``)."""
    import torch

    from ..lens.effects_file import open_factorized
    from ..lens.topk import TOPK_LAYOUT, open_topk

    if group.attrs.get("layout") == TOPK_LAYOUT:
        return open_topk(group)
    return open_factorized(group, dtype=dtype or torch.float64, device=device)
