"""Tables and reports: Parquet files and HTML pages with their attributes and a checksum over the
whole file, checked on every read.  Files appear atomically (:mod:`.layout`).  No Dagster import.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .hdf5 import CorruptFileError, attr_value
from .layout import atomic_path

__all__ = ["HTMLPage", "html_with_attrs", "html_attrs", "table_with_attrs", "table_attrs", "write_parquet",
           "read_parquet", "write_html", "read_html", "PARQUET_CHECKSUM"]


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
