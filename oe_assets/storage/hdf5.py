"""HDF5 artifacts: one handle class for reading (:class:`H5Handle`, also known as ``H5Group``), the
writer of whole payloads (:func:`write_h5`), checked attributes and checksummed datasets.

Every dataset written here carries HDF5's ``fletcher32`` checksum (:func:`checksummed`) and every
file's attributes a SHA-256 over all of them (:func:`write_attrs` / :func:`read_attrs`), so a flipped
byte is a :class:`CorruptFileError` naming the file and the asset, never a wrong number.  A reader
holds one open file for a whole load, so a concurrent re-materialization cannot mix two files.  Where
files live and how they appear atomically is :mod:`.layout`'s.  No Dagster import.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .layout import atomic_path

__all__ = ["CorruptFileError", "H5Handle", "H5Group", "H5Dataset", "LazyH5Array", "H5Payload", "StagedH5", "write_h5",
           "checksummed", "write_attrs", "read_attrs", "attr_value", "attrs_digest", "ATTRS_CHECKSUM", "is_disk_full",
           "discard_h5"]


class CorruptFileError(OSError):
    """An artifact that cannot be read: truncated, or failing a checksum (an HDF5 chunk, the HDF5
    attributes, a whole Parquet or HTML file)."""


# ---------------------------------------------------------------------------- checked HDF5 IO
#: elements per chunk of the small datasets that get a chunk only for their checksum
CHECKSUM_CHUNK = 1 << 20


def checksummed(shape: tuple[int, ...], chunks: tuple[int, ...] | None = None) -> dict:
    """``h5py.create_dataset`` keywords adding the ``fletcher32`` checksum filter, which needs chunks:
    ``chunks`` if given, else whole rows up to :data:`CHECKSUM_CHUNK` elements.  Scalars and empty
    arrays (nothing to chunk) get no filter."""
    shape = tuple(int(s) for s in shape)
    if not shape or 0 in shape:
        return {}
    if chunks is None:
        row = int(np.prod(shape[1:], dtype=np.int64))
        chunks = (max(1, min(shape[0], CHECKSUM_CHUNK // max(1, row))), *shape[1:])
    return {"chunks": tuple(chunks), "fletcher32": True}


#: the file attribute holding the SHA-256 (hex) of every other attribute (:func:`attrs_digest`)
ATTRS_CHECKSUM = "attrs_sha256"


def _canonical(value) -> list:
    """An attribute value as HDF5 hands it back, in a form that changes with any of its bits: the
    text of strings, the dtype, shape and raw bytes of numbers and arrays."""
    if isinstance(value, str):
        return ["str", value]
    if isinstance(value, bytes):
        return ["bytes", value.hex()]
    a = np.asarray(value)
    if a.dtype.kind in "OSU":
        return ["strings", list(a.shape), [_canonical(v) for v in a.ravel().tolist()]]
    return [a.dtype.str, list(a.shape), np.ascontiguousarray(a).tobytes().hex()]


def attrs_digest(raw: dict[str, Any]) -> str:
    """The SHA-256 (hex) of attributes as stored (``h5py`` values), the checksum's own excluded, in
    name order."""
    items = [[k, _canonical(v)] for k, v in sorted(raw.items()) if k != ATTRS_CHECKSUM]
    return hashlib.sha256(json.dumps(items, ensure_ascii=True).encode()).hexdigest()


def write_attrs(obj: h5py.File | h5py.Group, attrs: dict[str, Any]) -> None:
    """Set ``attrs`` on an HDF5 file (or group): strings and numbers as they are, anything else as
    ``"json:" + JSON``, None skipped; then the checksum :data:`ATTRS_CHECKSUM` over all the object's
    attributes as read back (the ones set earlier included).  Every attribute write goes through
    here, every read through :func:`read_attrs`."""
    for k, v in attrs.items():
        if v is None:
            continue
        obj.attrs[k] = v if isinstance(v, (str, int, float, bool, np.number)) else "json:" + json.dumps(v)
    obj.attrs[ATTRS_CHECKSUM] = attrs_digest(dict(obj.attrs.items()))


def attr_value(v):
    """A stored attribute value for Python: bytes decoded, ``json:`` text parsed, numpy scalars as
    Python numbers."""
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, str) and v.startswith("json:"):
        return json.loads(v[5:])
    return v.item() if isinstance(v, np.generic) else v


def read_attrs(obj: h5py.File | h5py.Group, path: str | Path, what: str | None = None) -> dict[str, Any]:
    """The attributes :func:`write_attrs` set (decoded, :func:`attr_value`; the checksum left out),
    after checking them against :data:`ATTRS_CHECKSUM`: a mismatch (or unreadable attributes) raises
    :class:`CorruptFileError` naming the file and ``what`` (the asset).  Attributes without a checksum
    (files written before it) are read as they are."""
    path = Path(path)
    try:
        raw = dict(obj.attrs.items())
    except OSError as e:
        raise _read_error(path, what, e, attributes=True) from e
    stored = raw.pop(ATTRS_CHECKSUM, None)
    if stored is not None:
        stored = stored.decode(errors="replace") if isinstance(stored, bytes) else str(stored)
        actual = attrs_digest(raw)
        if stored != actual:
            raise CorruptFileError(
                f"{path}: checksum mismatch in the file's attributes (SHA-256 {actual}, stored {stored}): the file is "
                f"corrupt, re-materialize {what or f'the asset stored at {path}'}")
    return {k: attr_value(v) for k, v in raw.items()}


def is_disk_full(exc: BaseException) -> bool:
    """Whether an error of a write is the disk (or quota) being full."""
    return isinstance(exc, OSError) and (exc.errno in (errno.ENOSPC, errno.EDQUOT)
                                         or "No space left on device" in str(exc))


#: h5py objects of files whose close failed even so: kept, never deallocated (HDF5 crashes on them)
_UNCLOSED: list = []


def discard_h5(file: h5py.File | None, path: str | Path) -> bool:
    """Close an HDF5 file opened for writing whose content is discarded (a failed or aborted write),
    deterministically and without raising: the file is truncated to 0 bytes first, so the flush that
    closing does finds room even when the disk is full (a close that fails there leaves the handle
    open, and HDF5 crashes later on it); then every object of the file is closed.  Returns whether
    the file is closed; when not, the caller keeps its objects (:data:`_UNCLOSED`)."""
    with contextlib.suppress(OSError):
        os.truncate(path, 0)
    if file is None:
        return True
    for _ in range(2):  # a second try after a close that failed half-way
        with contextlib.suppress(Exception):
            if file.id.valid:
                file.close()
    return not file.id.valid


def _read_error(path: Path, what: str | None, exc: OSError, name: str | None = None,
                attributes: bool = False) -> CorruptFileError:
    asset = what or f"the asset stored at {path}"
    where = f"dataset {name!r} of " if name else "the attributes of " if attributes else ""
    if "filter returned failure" in str(exc) or "checksum" in str(exc).lower():
        return CorruptFileError(f"{path}: checksum mismatch in {where}the file (HDF5: {exc}): the file is corrupt, "
                                f"re-materialize {asset}")
    return CorruptFileError(f"{path}: cannot read {where}the file (HDF5: {exc}): it is truncated or corrupt, "
                            f"re-materialize {asset}")


class H5Handle:
    """An HDF5 artifact opened for reading, the one handle class: its arrays by name (:meth:`read`
    whole, ``handle[name]`` lazily), its checked attributes, one open file held for a whole read: every dataset read through it
    comes from the same file, even when another run replaces the path meanwhile (POSIX keeps a
    replaced file's data while it is open).  ``what`` names the asset in errors.  ``close()`` or a
    ``with`` block closes it (garbage collection does otherwise).  Pickled, it reopens the path in the
    other process and refuses a file replaced since it was first opened (``(device, inode)``).
    ``attrs``: the file's attributes, checked against their checksum at every open (:func:`read_attrs`)."""

    def __init__(self, path: str | Path, what: str | None = None):
        self.path, self.what = Path(path), what
        self.file = self._open()
        self.identity = self._identity()

    def _open(self) -> h5py.File:
        try:
            f = h5py.File(self.path, "r")
        except (FileNotFoundError, PermissionError, IsADirectoryError):
            raise
        except OSError as e:
            raise _read_error(self.path, self.what, e) from e
        try:
            self.attrs = read_attrs(f, self.path, self.what)
        except BaseException:
            f.close()
            raise
        return f

    def _identity(self) -> tuple[int, int]:
        st = os.fstat(self.file.id.get_vfd_handle())
        return (st.st_dev, st.st_ino)

    @property
    def names(self) -> list[str]:
        """The top-level datasets and groups of the file."""
        return list(self.file.keys())

    @property
    def handle(self) -> "H5Handle":
        return self

    def __getitem__(self, name: str) -> "LazyH5Array":
        """A dataset, read lazily through this handle."""
        if name not in self.file:
            raise KeyError(f"{self.path} has no array {name!r}; it holds {self.names}")
        return LazyH5Array(self, name)

    def read(self, name: str, index=()):
        """``file[name][index]`` (a whole string dataset as a list of str); a missing dataset raises
        ``KeyError`` naming the file, a failing checksum or an unreadable chunk
        :class:`CorruptFileError` naming the file, the dataset and the asset."""
        if name not in self.file:
            raise KeyError(f"{self.path} has no array {name!r}; it holds {self.names}")
        try:
            data = self.file[name][index]
        except OSError as e:
            raise _read_error(self.path, self.what, e, name) from e
        if index == () and h5py.check_string_dtype(self.file[name].dtype) is not None:
            return [s.decode("utf-8") if isinstance(s, bytes) else s for s in data]
        return data

    def verify(self, block_bytes: int = 1 << 26) -> None:
        """Read every dataset whole, ``block_bytes`` at a time along its first axis, so that every
        chunk's checksum is checked; a corrupt chunk raises :class:`CorruptFileError`."""
        names: list[str] = []
        self.file.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        for name in names:
            ds = self.file[name]
            if ds.ndim == 0 or ds.shape[0] == 0:
                self.read(name)
                continue
            rows = max(1, block_bytes // max(1, ds.dtype.itemsize * int(np.prod(ds.shape[1:]))))
            for start in range(0, ds.shape[0], rows):
                self.read(name, np.s_[start:start + rows])

    def close(self) -> None:
        if self.file is not None and self.file.id.valid:
            self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):
        return {"path": self.path, "what": self.what, "identity": self.identity}

    def __setstate__(self, state):
        self.path, self.what, self.identity = state["path"], state["what"], state["identity"]
        self.file = self._open()
        if self._identity() != self.identity:
            self.file.close()
            raise CorruptFileError(f"{self.path} was replaced since it was opened (another run re-materialized "
                                   f"{self.what or 'it'}); load the input again")

    def __repr__(self):
        return f"H5Handle({str(self.path)!r}, {self.names if self.file.id.valid else 'closed'})"


class H5Dataset:
    """One dataset read through an :class:`H5Handle`: ``shape``, ``dtype``, ``chunks``, indexing."""

    def __init__(self, handle: H5Handle, name: str):
        self.handle, self.name = handle, name
        ds = handle.file[name]
        self.shape, self.chunks, self.dtype = tuple(ds.shape), ds.chunks, ds.dtype

    @property
    def path(self) -> Path:
        return self.handle.path

    def __getitem__(self, index):
        return self.handle.read(self.name, index)


class LazyH5Array(H5Dataset):
    """A dataset in an HDF5 file, read through one open handle (an :class:`H5Handle` shared with
    other reads, or its own when given a path): ``shape``, ``dtype``, ``__getitem__``,
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


#: the one handle class, under the name the IO managers' loads have had
H5Group = H5Handle


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
