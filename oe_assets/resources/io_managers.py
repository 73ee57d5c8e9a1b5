"""IO managers: thin adapters over the :class:`~oe_assets.resources.store.ArtifactStore`, HDF5 for
arrays, Parquet for tables, HTML for reports.

Values an asset returns:
- HDF5: a :class:`H5Payload` (named arrays + attributes), or a :class:`StagedH5` (an HDF5 file the
  asset streamed batch by batch to a staging path from :meth:`ArtifactStore.stage`); for a step that
  covers several partitions, a dict ``{partition_key: payload}``.
- Parquet: a ``pyarrow.Table`` (or a dict of them per partition).
Loads return :class:`H5Group` (lazy: datasets are read on indexing) or ``pyarrow.Table``; a
partitioned upstream always loads as a dict ``{partition_key: value}`` over the partitions the step
depends on, and a partitioned asset returns such a dict too: one step may cover a range of layers
(single-run backfills), so the model is loaded once for all of them.  A missing upstream partition is
an error, except for inputs that declare ``allow_missing_partitions`` metadata (``layer_summary``
takes whatever layers exist).
"""


from pathlib import Path
from typing import ClassVar

import dagster as dg
import pyarrow as pa

from .store import (ArtifactStore, CorruptFileError, H5Group, H5Payload, HTMLPage, LazyH5Array, StagedH5,
                    html_attrs, html_with_attrs, open_effects, read_html, read_parquet, table_attrs, write_attrs, write_h5,
                    write_html, write_parquet)

__all__ = ["H5Payload", "StagedH5", "H5Group", "LazyH5Array", "HDF5IOManager", "HTMLIOManager", "ParquetIOManager",
           "open_effects"]


class _BaseIOManager(dg.ConfigurableIOManager):
    store: dg.ResourceDependency[ArtifactStore]
    suffix: ClassVar[str] = ""

    def path_for(self, asset_key: dg.AssetKey | str, partition: str | None = None) -> Path:
        return self.store.path_for(asset_key, partition, self.suffix)

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
                if isinstance(value, StagedH5):
                    self.store.discard(value.path)
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
        metadata = context.definition_metadata or {}
        if not context.has_asset_partitions:
            return self._read(self.store.require(key, None, self.suffix), metadata, self.store.describe(key))
        allow_missing = bool(metadata.get("allow_missing_partitions", False))
        out = {}
        for p in context.asset_partition_keys:
            path = self.path_for(key, p)
            if path.exists():
                out[p] = self._read(path, metadata, self.store.describe(key, p))
            elif not allow_missing:
                self.store.require(key, p, self.suffix)  # raises, naming the asset, partition and file
        return out

    def _write(self, context, path: Path, obj) -> None:
        raise NotImplementedError

    def _read(self, path: Path, metadata: dict, what: str):
        """The stored value; ``metadata``: the input's definition metadata; ``what`` names the asset
        (partition) in errors."""
        raise NotImplementedError

    def verify(self, path: Path, what: str) -> dict:
        """Read the whole file, as every load would, checksums included, and return its attributes;
        a truncated or corrupt file raises naming it and ``what``."""
        raise NotImplementedError


class HDF5IOManager(_BaseIOManager):
    """Arrays in HDF5, one file per asset partition, chunked and compressed, with attributes."""

    suffix: ClassVar[str] = ".h5"

    def _write(self, context, path: Path, obj) -> None:
        if isinstance(obj, StagedH5):
            import h5py

            with h5py.File(obj.path, "a") as f:
                write_attrs(f, obj.attrs)
            self.store.commit(obj.path, path)
        elif isinstance(obj, H5Payload):
            write_h5(path, obj)
        else:
            raise TypeError(f"HDF5IOManager cannot store {type(obj).__name__}; return H5Payload or StagedH5")
        context.log.debug(f"wrote {path}")

    def _read(self, path: Path, metadata: dict, what: str) -> H5Group:
        return H5Group(path, what)

    def verify(self, path: Path, what: str) -> dict:
        with H5Group(path, what) as group:
            group.verify()
            return dict(group.attrs)


class ParquetIOManager(_BaseIOManager):
    """Tables in Parquet (pyarrow), one file per asset partition, checksummed (:func:`write_parquet`)."""

    suffix: ClassVar[str] = ".parquet"

    def _write(self, context, path: Path, obj) -> None:
        if not isinstance(obj, pa.Table):
            raise TypeError(f"ParquetIOManager stores pyarrow.Table, got {type(obj).__name__}")
        write_parquet(path, obj)

    def _read(self, path: Path, metadata: dict, what: str) -> pa.Table:
        """The table, or only the input's ``columns`` (metadata) when it names some; a file failing
        its checksum, truncated or corrupt raises :class:`CorruptFileError` naming it and the asset."""
        return read_parquet(path, what, metadata.get("columns"))

    def verify(self, path: Path, what: str) -> dict:
        return table_attrs(self._read(path, {}, what))


class HTMLIOManager(_BaseIOManager):
    """Static HTML reports (an :class:`HTMLPage` or a ``str`` per partition), written atomically and
    checksummed (:func:`write_html`); a page's attributes (its provenance) are stored in a final comment."""

    suffix: ClassVar[str] = ".html"

    def _write(self, context, path: Path, obj) -> None:
        if isinstance(obj, str):
            obj = HTMLPage(obj)
        if not isinstance(obj, HTMLPage):
            raise TypeError(f"HTMLIOManager stores HTMLPage or HTML text, got {type(obj).__name__}")
        write_html(path, html_with_attrs(obj))

    def _record(self, context, paths: list[Path]) -> None:
        super()._record(context, paths)
        context.add_output_metadata({
            "reports": dg.MetadataValue.md("\n".join(f"- [{p.name}]({p.resolve().as_uri()})" for p in paths)),
        })

    def _read(self, path: Path, metadata: dict, what: str) -> str:
        return read_html(path, what)

    def verify(self, path: Path, what: str) -> dict:
        try:
            return html_attrs(self._read(path, {}, what))
        except ValueError as e:
            raise CorruptFileError(f"{path}: cannot read the report's attributes ({type(e).__name__}: {e}): it is "
                                   f"corrupt, re-materialize {what}") from e
