"""The artifact store: the one owner of where artifacts live and how they are written and read.

Layout: ``<base_dir>/<asset key path>/<partition or "all"><suffix>`` (``.h5``, ``.parquet``,
``.html``).  Every write goes to a ``.partial-*`` staging file beside the target and is renamed into
place only when complete (fsynced first), so a killed run never leaves a file that a later load
takes as a finished asset.  The IO managers (:mod:`.io_managers`) are thin adapters over this
resource; assets and checks that need a path, a staging file or a lazy read ask it too.

Integrity: every HDF5 dataset written here carries the ``fletcher32`` checksum and the HDF5
attributes a SHA-256 over all of them (checked at every open), every Parquet and HTML file a SHA-256
over its bytes (:func:`write_parquet`, :func:`write_html`, checked at every read), and a reader holds
one open handle for a whole load (:class:`H5Group`), so a flipped byte is an error naming the file
and the asset (:class:`CorruptFileError`), and a concurrent re-materialization cannot mix two files.
Files written before the checksums read as they are.
A full disk is refused before a streamed write starts (:meth:`ArtifactStore.require_free_space`)
and, when it happens anyway, is a :class:`DiskFullError` naming the file, the free and the needed
space, with the staged files removed.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import dagster as dg
import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..lens.effects_file import (CorruptFileError, H5Dataset, H5Handle, attr_value, checksummed, discard_h5, is_disk_full,
                                 write_attrs)
from ..recovery import is_dead, staging_suffix, staging_writer

__all__ = ["ArtifactStore", "H5Payload", "StagedH5", "HTMLPage", "html_attrs", "html_with_attrs",
           "H5Group", "LazyH5Array", "atomic_path", "staging_path", "write_h5",
           "CorruptFileError", "DiskFullError", "require_free_space",
           "table_attrs", "table_with_attrs", "write_parquet", "read_parquet", "write_html", "read_html"]


class DiskFullError(OSError):
    """Not enough free space for an artifact: refused before writing, or ENOSPC while writing."""


def _size(n: float) -> str:
    """Bytes for people: ``1.23 GB``, ``45.6 MB``."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} bytes"


def require_free_space(folder: Path, needed: int, what: str, advice: str) -> None:
    """Refuse (:class:`DiskFullError`, with both numbers and the folder) writing ``needed`` bytes of
    ``what`` into ``folder`` (created) when its disk has less free space."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DiskFullError(f"{what} needs about {_size(needed)} ({needed} bytes) in {folder}, but its disk has only "
                            f"{_size(free)} ({free} bytes) free; {advice}")


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


@dataclass
class HTMLPage:
    """An HTML report with attributes (its provenance), stored as a comment at the end of the page."""

    html: str
    attrs: dict[str, Any] = field(default_factory=dict)


_HTML_ATTRS = "<!-- oe_assets:attrs "


def html_with_attrs(page: HTMLPage) -> str:
    """The page's text with its attributes as a final comment (JSON; ``--`` escaped, a comment may not hold it)."""
    attrs = {k: v for k, v in page.attrs.items() if v is not None}
    if not attrs:
        return page.html
    encoded = json.dumps(attrs, sort_keys=True, default=str).replace("--", "-\\u002d")
    return f"{page.html}\n{_HTML_ATTRS}{encoded} -->\n"


def html_attrs(text: str) -> dict[str, Any]:
    """The attributes :func:`html_with_attrs` stored in a page ({} for a page without them)."""
    at = text.rfind(_HTML_ATTRS)
    if at < 0:
        return {}
    end = text.find(" -->", at)
    return json.loads(text[at + len(_HTML_ATTRS): end])


class LazyH5Array(H5Dataset):
    """A dataset in an HDF5 file, read through one open handle (:class:`H5Handle`, shared with its
    :class:`H5Group`, or its own when given a path): ``shape``, ``dtype``, ``__getitem__``,
    ``__array__``; picklable (it reopens the same file in the other process, see :class:`H5Handle`),
    and usable by :func:`oe_assets.lens.neuron_pca`."""

    def __init__(self, source: Path | H5Handle, name: str, what: str | None = None):
        super().__init__(source if isinstance(source, H5Handle) else H5Handle(source, what), name)

    def __array__(self, dtype=None, copy=None):
        out = self[()]
        return out if dtype is None else out.astype(dtype)

    def __len__(self):
        return self.shape[0]

    def __repr__(self):
        return f"LazyH5Array({str(self.path)!r}, {self.name!r}, shape={self.shape}, dtype={self.dtype})"


class H5Group:
    """The arrays of one asset file, by name; small arrays via :meth:`read`, large ones lazily.  One
    handle (:class:`H5Handle`) is opened here and held until :meth:`close` (or the end of a ``with``
    block, or garbage collection): every array read through the group comes from the same file.
    ``what`` names the asset in errors (e.g. ``"asset second_order_effects partition 3"``).  ``attrs``:
    the file's attributes, checked against their checksum on opening (:func:`~oe_assets.lens.effects_file.read_attrs`)."""

    def __init__(self, path: Path, what: str | None = None):
        self.path = Path(path)
        self.handle = H5Handle(self.path, what)
        self.names = list(self.handle.file.keys())
        self.attrs = self.handle.attrs

    def __getitem__(self, name: str) -> LazyH5Array:
        if name not in self.names:
            raise KeyError(f"{self.path} has no array {name!r}; it holds {self.names}")
        return LazyH5Array(self.handle, name)

    def read(self, name: str):
        """The whole array (strings decoded to a list of str)."""
        if name not in self.names:
            raise KeyError(f"{self.path} has no array {name!r}; it holds {self.names}")
        data = self.handle.read(name)
        if h5py.check_string_dtype(self.handle.file[name].dtype) is not None:
            return [s.decode("utf-8") if isinstance(s, bytes) else s for s in data]
        return data

    def verify(self, block_bytes: int = 1 << 26) -> None:
        """Read every dataset whole, ``block_bytes`` at a time along its first axis, so that every
        chunk's checksum is checked; a corrupt chunk raises :class:`CorruptFileError`."""
        names: list[str] = []
        self.handle.file.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        for name in names:
            ds = self.handle.file[name]
            if ds.ndim == 0 or ds.shape[0] == 0:
                self.handle.read(name)
                continue
            rows = max(1, block_bytes // max(1, ds.dtype.itemsize * int(np.prod(ds.shape[1:]))))
            for start in range(0, ds.shape[0], rows):
                self.handle.read(name, np.s_[start:start + rows])

    def close(self) -> None:
        self.handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"H5Group({str(self.path)!r}, {self.names})"


def table_with_attrs(table, attrs: dict[str, Any]):
    """A ``pyarrow.Table`` carrying ``attrs`` in its schema metadata (written with the Parquet file),
    encoded as HDF5 attributes are (JSON for non-scalars)."""
    encoded = {k: (v if isinstance(v, str) else "json:" + json.dumps(v)) for k, v in attrs.items() if v is not None}
    return table.replace_schema_metadata({**(table.schema.metadata or {}), **{k.encode(): v.encode()
                                                                              for k, v in encoded.items()}})


def table_attrs(table) -> dict[str, Any]:
    """The attributes :func:`table_with_attrs` stored in a table's schema metadata (pandas' own and the
    file checksum excluded)."""
    meta = table.schema.metadata or {}
    return {k.decode(): attr_value(v) for k, v in meta.items() if k not in (b"pandas", PARQUET_CHECKSUM.encode())}


# ---------------------------------------------------------------- checksummed Parquet and HTML
#: the Parquet key-value metadata entry holding the file's SHA-256 (:func:`write_parquet`)
PARQUET_CHECKSUM = "oe_assets.sha256"
#: the checksum's stand-in while the file is hashed: 64 hex digits, all zero
_UNHASHED = b"0" * 64


def _checksum_span(data: bytes | bytearray, value: bytes) -> tuple[int, int] | None:
    """Where ``value`` of the :data:`PARQUET_CHECKSUM` entry lies in a Parquet file's footer (the
    Thrift key-value pair: the key, a field header and a length, the value); None unless exactly once."""
    footer_len = int.from_bytes(data[-8:-4], "little") if len(data) >= 12 else 0
    start = len(data) - 8 - footer_len
    if footer_len <= 0 or start < 4:
        return None
    pattern = re.compile(re.escape(PARQUET_CHECKSUM.encode()) + rb".{1,4}?(" + re.escape(value) + rb")", re.DOTALL)
    found = [m.span(1) for m in pattern.finditer(data, start, len(data) - 8)]
    return found[0] if len(found) == 1 else None


def write_parquet(path: Path, table: pa.Table) -> None:
    """``table`` as a Parquet file at ``path``, atomically, carrying in its key-value metadata
    (:data:`PARQUET_CHECKSUM`) the SHA-256 of the whole file as written with 64 zeros in place of the
    checksum: every byte (data pages, schema, the attributes of :func:`table_with_attrs`) is covered."""
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, table.schema) as writer:
            writer.write_table(table)
            writer.add_key_value_metadata({PARQUET_CHECKSUM: _UNHASHED.decode()})
        data = tmp.read_bytes()
        span = _checksum_span(data, _UNHASHED)
        if span is None:
            raise RuntimeError(f"{tmp}: the checksum entry {PARQUET_CHECKSUM!r} is not found once in the Parquet footer")
        with open(tmp, "r+b") as fh:
            fh.seek(span[0])
            fh.write(hashlib.sha256(data).hexdigest().encode())


def read_parquet(path: Path, what: str, columns: list[str] | None = None) -> pa.Table:
    """The table of a Parquet artifact (only ``columns`` when given), read from one read of the file
    after checking its checksum (:func:`write_parquet`; a file without one is read as it is).  A
    mismatch, a truncated or an unreadable file raises :class:`CorruptFileError` naming the file and
    ``what`` (the asset)."""
    data = Path(path).read_bytes()
    try:
        meta = pq.read_metadata(pa.BufferReader(data)).metadata or {}
    except (pa.ArrowException, OSError) as e:
        raise _parquet_error(path, what, e) from e
    stored = meta.get(PARQUET_CHECKSUM.encode())
    if stored is not None:
        span = _checksum_span(data, stored)
        unhashed = bytearray(data)
        if span is not None:
            unhashed[span[0]:span[1]] = _UNHASHED
        actual = hashlib.sha256(unhashed).hexdigest()
        if span is None or stored != actual.encode():
            raise CorruptFileError(f"{path}: checksum mismatch (SHA-256 {actual}, stored {stored.decode(errors='replace')}): "
                                   f"the Parquet file is corrupt, re-materialize {what}")
    try:
        table = pq.read_table(pa.BufferReader(data), columns=columns)
    except (pa.ArrowException, OSError) as e:
        raise _parquet_error(path, what, e) from e
    own = table.schema.metadata or {}
    return table.replace_schema_metadata({k: v for k, v in own.items() if k != PARQUET_CHECKSUM.encode()} or None)


def _parquet_error(path: Path, what: str, exc: BaseException) -> CorruptFileError:
    return CorruptFileError(f"{path}: cannot read the Parquet file ({type(exc).__name__}: {exc}): it is truncated "
                            f"or corrupt, re-materialize {what}")


#: the comment closing a checksummed HTML file: the SHA-256 of the UTF-8 bytes before it
_HTML_CHECKSUM = re.compile(rb"\n<!-- oe_assets sha256 ([0-9a-f]{64}) -->\n\Z")


def write_html(path: Path, text: str) -> None:
    """``text`` as an HTML file at ``path``, atomically, closed by a comment carrying the SHA-256 of
    the text's UTF-8 bytes (comments may follow the ``html`` element)."""
    body = text.encode("utf-8")
    with atomic_path(path) as tmp:
        tmp.write_bytes(body + f"\n<!-- oe_assets sha256 {hashlib.sha256(body).hexdigest()} -->\n".encode())


def read_html(path: Path, what: str) -> str:
    """The text :func:`write_html` wrote (its checksum comment removed) after checking it; a file
    without the comment is read as it is.  A mismatch or text that is not UTF-8 raises
    :class:`CorruptFileError` naming the file and ``what`` (the asset)."""
    data = Path(path).read_bytes()
    found = _HTML_CHECKSUM.search(data)
    if found is not None:
        data = data[:found.start()]
        actual = hashlib.sha256(data).hexdigest()
        if actual != found.group(1).decode():
            raise CorruptFileError(f"{path}: checksum mismatch (SHA-256 {actual}, stored {found.group(1).decode()}): "
                                   f"the HTML file is corrupt, re-materialize {what}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorruptFileError(f"{path}: the HTML file is not UTF-8 ({e}): it is corrupt, re-materialize {what}") from e


def _chunks(shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """Chunks of small arrays: up to 64 samples x 64 neurons of ``[samples, neurons, d]`` (8 MiB of
    float32 at d = 512), 4096 rows of 2-d arrays; None (one chunk of the whole array, for the
    checksum, see :func:`checksummed`) under 1024 elements."""
    if len(shape) == 0 or int(np.prod(shape)) < 1024:
        return None
    if len(shape) == 3:
        return (min(shape[0], 64), min(shape[1], 64), shape[2])
    return tuple(min(s, 4096 if i == 0 else s) for i, s in enumerate(shape))


#: bytes of one chunk of a string dataset (rows of the longest string's width)
STRING_CHUNK_BYTES = 1 << 20


def _write_strings(f: h5py.File, name: str, values) -> None:
    """A list of str as fixed-length UTF-8 (filters, the checksum among them, need fixed-size items),
    written a chunk at a time: chunks of at most :data:`STRING_CHUNK_BYTES` whatever the longest
    string, so one long text among many short ones costs neither a huge chunk nor its padding in
    memory (gzip takes the padding off the disk)."""
    raw = [v.encode("utf-8") for v in values]
    width = max(1, max(len(b) for b in raw))
    rows = max(1, min(len(raw), STRING_CHUNK_BYTES // width))
    ds = f.create_dataset(name, shape=(len(raw),), dtype=h5py.string_dtype("utf-8", width),
                          **checksummed((len(raw),), (rows,)),
                          **({"compression": "gzip", "compression_opts": 1} if width * len(raw) >= 4096 else {}))
    for r0 in range(0, len(raw), rows):  # the bytes as they are, one chunk's rows at a time
        block = np.array(raw[r0:r0 + rows], dtype=f"S{width}")
        file_space = ds.id.get_space()
        file_space.select_hyperslab((r0,), (len(block),))
        ds.id.write(h5py.h5s.create_simple((len(block),)), file_space, block, mtype=ds.id.get_type())


def write_h5(path: Path, payload: H5Payload) -> None:
    """``payload`` as an HDF5 file at ``path``, atomically; every dataset with the ``fletcher32``
    checksum.  A failed write (a full disk) closes the file before the staging file goes."""
    with atomic_path(path) as tmp:
        f = h5py.File(tmp, "w")
        try:
            for name, arr in payload.arrays.items():
                if isinstance(arr, (list, tuple)) and (not arr or isinstance(arr[0], str)):
                    if not arr:
                        f.create_dataset(name, shape=(0,), dtype=h5py.string_dtype("utf-8"))
                        continue
                    _write_strings(f, name, arr)
                    continue
                arr = np.asarray(arr)
                f.create_dataset(name, data=arr, **checksummed(arr.shape, _chunks(arr.shape)),
                                 **({"compression": "gzip", "compression_opts": 1} if arr.size >= 1024 else {}))
            write_attrs(f, payload.attrs)
            f.flush()  # a full disk fails here, while the file can still be closed cleanly
            f.close()
        except BaseException:
            discard_h5(f, tmp)
            raise


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

    def plot_path(self, asset_key: dg.AssetKey | str, name: str, partitions: list[str] | None = None) -> Path:
        """Where a plot of an asset lives, beside its files: ``<base_dir>/<key path>/<name>.png``, or for
        the partitions a run covered ``<name>.<partition>.png`` / ``<name>.<first>-<last>.png``."""
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"plot name {name!r} of {self.describe(asset_key)}: not a plain file name")
        span = "" if not partitions else f".{partitions[0]}" if len(partitions) == 1 else \
            f".{partitions[0]}-{partitions[-1]}"
        return self.path_for(asset_key, None, "").parent / f"{name}{span}.png"

    def write_plot(self, asset_key: dg.AssetKey | str, name: str, png: bytes,
                   partitions: list[str] | None = None) -> Path:
        """Write a plot's PNG bytes to :meth:`plot_path` atomically; returns the path."""
        path = self.plot_path(asset_key, name, partitions)
        with atomic_path(path) as tmp:
            tmp.write_bytes(png)
        return path

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

    def describe(self, asset_key: dg.AssetKey | str, partitions: list[str] | str | None = None) -> str:
        """``asset <key>`` with its partition(s), for errors."""
        key = asset_key if isinstance(asset_key, str) else asset_key.to_user_string()
        if partitions is None:
            return f"asset {key}"
        parts = [partitions] if isinstance(partitions, str) else list(partitions)
        return f"asset {key} partition{'s' if len(parts) > 1 else ''} {', '.join(parts)}"

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
            need = f", the step's files need about {_size(needed)}" if needed else ""
            return DiskFullError(
                f"{path}: the disk is full while writing {what} ({_size(free)} free after removing the staged "
                f"files{need}); the staged files were removed. Free some space (or set the store's base_dir to a "
                f"larger disk), then materialize again. ({exc})")
        return OSError(f"{path}: writing {what} failed ({exc}); the staged files were removed")

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
        return H5Group(self.require(asset_key, partition, ".h5"), self.describe(asset_key, partition))

    def open_effects(self, asset_key: dg.AssetKey | str, partition: str, dtype=None, device=None):
        """The factorized effects of an effects asset partition
        (:func:`oe_assets.lens.effects_file.open_factorized`; refuses the earlier dense layout)."""
        return open_effects(self.open_h5(asset_key, partition), dtype, device)


def open_effects(group: H5Group, dtype=None, device=None):
    """The factorized effects of a loaded effects file (an :class:`H5Group`), read through the
    group's one open handle."""
    import torch

    from ..lens.effects_file import open_factorized

    return open_factorized(group.handle, dtype=dtype or torch.float64, device=device)
