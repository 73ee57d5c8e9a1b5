"""Labelled text datasets (CSV, JSONL, Parquet) and the bundled demo corpus.

This module deliberately has no Dagster dependency; the asset layer wraps it.

A dataset file holds one example per row with a text column and an integer
label column (names configurable).  Files are read by extension:

* ``.csv``                      -- stdlib :mod:`csv`, header row required
* ``.jsonl`` / ``.ndjson``      -- one JSON object per line (blank lines skipped)
* ``.parquet`` / ``.pq``        -- :mod:`pyarrow.parquet`

Labels must be integers (integer-valued floats such as ``2.0`` and integer
strings such as ``"2"`` -- which is what CSV gives -- are accepted).  String
labels can be mapped to indices by passing ``classes``; without it they are an
error.  Subsampling is deterministic: rows ``offset, offset + stride,
offset + 2 * stride, ...`` are kept, then the result is truncated to ``limit``
(the same scheme as taking every k-th image of ImageNet).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = [
    "read_text",
    "read_json",
    "load_string_list",
    "DEMO_CORPUS_DIR",
    "DEMO_SPLITS",
    "SUPPORTED_EXTENSIONS",
    "TextDataset",
    "demo_classes",
    "demo_templates",
    "load_demo_corpus",
    "load_text_dataset",
    "subsample",
]

#: Folder holding the shipped demo corpus (package data: ``oe_assets/package_data/demo_corpus``).
DEMO_CORPUS_DIR: Path = Path(__file__).resolve().parents[1] / "package_data" / "demo_corpus"
DEMO_SPLITS: tuple[str, ...] = ("train", "val")

_FORMATS: dict[str, str] = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
SUPPORTED_EXTENSIONS: tuple[str, ...] = tuple(_FORMATS)

_INT_RE = re.compile(r"^[+-]?\d+$")


@dataclass(frozen=True)
class TextDataset:
    """Texts with integer labels ``labels`` ``[samples]`` (``labels[i]`` is the label of ``texts[i]``).

    ``classes``, when known, lists the class names in label order, so
    ``classes[labels[i]]`` is the name of example ``i``'s class.
    """

    texts: list[str]
    labels: np.ndarray
    classes: list[str] | None = None

    def __post_init__(self) -> None:
        texts = list(self.texts)
        labels = np.asarray(self.labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
        labels = labels.astype(np.int64, copy=False)
        if len(texts) != len(labels):
            raise ValueError(f"got {len(texts)} texts but {len(labels)} labels")
        classes = None if self.classes is None else [str(c) for c in self.classes]
        if labels.size and labels.min() < 0:
            raise ValueError(f"labels must be non-negative, got {int(labels.min())}")
        if classes is not None and labels.size and labels.max() >= len(classes):
            raise ValueError(
                f"label {int(labels.max())} is out of range for {len(classes)} classes"
            )
        object.__setattr__(self, "texts", texts)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "classes", classes)

    def __len__(self) -> int:
        return len(self.texts)

    def __eq__(self, other: object) -> bool:  # ndarray fields need an explicit __eq__
        if not isinstance(other, TextDataset):
            return NotImplemented
        return (
            self.texts == other.texts
            and self.classes == other.classes
            and np.array_equal(self.labels, other.labels)
        )

    @property
    def num_classes(self) -> int:
        """``len(classes)`` if known, else ``max(label) + 1`` (0 when empty)."""
        if self.classes is not None:
            return len(self.classes)
        return int(self.labels.max()) + 1 if len(self.labels) else 0


def subsample(rows, offset: int = 0, stride: int = 1, limit: int | None = None):
    """``len(rows) // stride`` rows at ``offset + i * stride`` (fewer when ``offset`` runs past the
    end), at most ``limit`` of them (``None``: all), along the first axis (``[rows, ...]`` ->
    ``[kept, ...]``): the one subsampling rule of every dataset kind (lists, arrays, memory maps).
    As the published subsampled datasets do, a split keeps ``len // stride`` samples (5,124 of
    ImageNet's 1,281,167 train images at stride 250), never a last, partial stride."""
    count = max(0, min(len(rows) // stride, -(-(len(rows) - offset) // stride)))
    return rows[offset:offset + count * stride:stride][:limit]


# --------------------------------------------------------------------------- readers


def read_text(path: str | os.PathLike[str], encoding: str = "utf-8") -> str:
    """A text file's content; bytes that are not valid UTF-8 raise a ``ValueError`` naming the file,
    the line and the byte: ``<file> line 3: not valid UTF-8 (byte 0xe9 at column 7)`` (1-based line
    and byte column), where Python's own error gives only an offset into the whole file."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        raw = e.object  # the bytes the position refers to (utf-8-sig: after the byte-order mark)
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise ValueError(f"{path} line {line}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {column})") from None


def read_json(path: str | os.PathLike[str]) -> Any:
    """A JSON file's value; invalid UTF-8 or JSON raise a ``ValueError`` naming the file and line."""
    path = Path(path)
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} line {e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None


def load_string_list(path: str | os.PathLike[str], what: str, placeholder: str | None = None) -> list[str]:
    """A JSON file holding a non-empty list of strings (class names; prompt templates, each holding
    ``placeholder``); anything else raises a ``ValueError`` naming the file and the first bad entry."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    value = read_json(path)
    if not isinstance(value, list) or not value:
        raise ValueError(f"{path}: expected a non-empty JSON list of {what} strings, got "
                         f"{type(value).__name__ if value else value!r}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ValueError(f"{path}: entry {i} (0-based) of the {what} list is {item!r}, not a string")
        if placeholder is not None and placeholder not in item:
            raise ValueError(f"{path}: entry {i} (0-based) of the {what} list, {item!r}, has no {placeholder!r}")
    return value


#: what a reader returns: column names, rows, each row's 1-based file line (None: Parquet), and
#: where a missing column is reported (the header line of a CSV)
_Read = tuple[list[str], list[dict[str, Any]], "list[int] | None", str]


def _read_csv(path: Path) -> _Read:
    """Rows as ``csv.DictReader`` gives them (blank rows skipped, short rows padded with None),
    each with the file line it starts on."""
    reader = csv.reader(io.StringIO(read_text(path, "utf-8-sig"), newline=""))
    columns = next(reader, [])
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    start = reader.line_num + 1
    for values in reader:
        if values:
            row: dict[Any, Any] = dict(zip(columns, values))
            row.update({c: None for c in columns[len(values):]})
            if len(values) > len(columns):
                row[None] = values[len(columns):]
            rows.append(row)
            lines.append(start)
        start = reader.line_num + 1
    return list(columns), rows, lines, f"{path} line 1 (the header)"


def _read_jsonl(path: Path) -> _Read:
    columns: dict[str, None] = {}  # ordered set
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    for lineno, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise ValueError(
                f"{path} line {lineno}: must be a JSON object, got {type(obj).__name__}"
            )
        columns.update(dict.fromkeys(obj))
        rows.append(obj)
        lines.append(lineno)
    return list(columns), rows, lines, str(path)


def _read_parquet(path: Path, text_column: str, label_column: str) -> _Read:
    import pyarrow.parquet as pq

    try:
        columns = list(pq.read_schema(path).names)
    except Exception as e:  # pyarrow raises ArrowInvalid & friends on corrupt files
        raise ValueError(f"{path}: cannot read Parquet file ({e})") from e
    if text_column not in columns or label_column not in columns:
        return columns, [], None, str(path)  # the caller reports the missing column(s)
    table = pq.read_table(path, columns=[text_column, label_column])
    texts = table.column(text_column).to_pylist()
    labels = table.column(label_column).to_pylist()
    return columns, [{text_column: t, label_column: y} for t, y in zip(texts, labels)], None, str(path)


# --------------------------------------------------------------------------- parsing


def _parse_label(value: Any, where: str, class_index: dict[str, int] | None) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{where}: label {value!r} is a boolean, expected an integer")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if math.isfinite(value) and float(value).is_integer():
            return int(value)
        raise ValueError(f"{where}: label {value!r} is not an integer")
    if isinstance(value, str):
        if class_index is not None and value in class_index:
            return class_index[value]
        stripped = value.strip()
        if _INT_RE.match(stripped):
            return int(stripped)
        if class_index is not None:
            raise ValueError(
                f"{where}: label {value!r} is not an integer and not one of the "
                f"{len(class_index)} given classes"
            )
        raise ValueError(
            f"{where}: label {value!r} is not an integer; pass classes=[...] to map "
            "string labels to indices"
        )
    if value is None:
        raise ValueError(f"{where}: label is missing (null/empty)")
    raise ValueError(f"{where}: label {value!r} ({type(value).__name__}) is not an integer")


def load_text_dataset(
    path: str | os.PathLike[str],
    text_column: str = "text",
    label_column: str = "label",
    stride: int = 1,
    offset: int = 0,
    limit: int | None = None,
    classes: Sequence[str] | None = None,
) -> TextDataset:
    """Load a labelled text dataset from a CSV, JSONL/NDJSON or Parquet file.

    Args:
        path: file to read; the format is chosen by its extension.
        text_column: column holding the text (must be a non-empty string in every row).
        label_column: column holding the integer label.
        stride: keep every ``stride``-th row (``>= 1``).
        offset: index of the first row kept (``>= 0`` and smaller than the row count).
        limit: keep at most this many rows after striding (``None``: all).
        classes: class names in label order; string labels are mapped through it
            and integer labels must lie in ``range(len(classes))``.

    Every row of the file is validated, also rows that subsampling drops.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unsupported extension, missing columns, empty text, a label
            that is not an integer (and not a known class name), bad
            ``stride``/``offset``/``limit``, or a file without rows.
    """
    p = Path(path)
    if stride < 1:
        raise ValueError(f"{p}: stride must be >= 1, got {stride}")
    if offset < 0:
        raise ValueError(f"{p}: offset must be >= 0, got {offset}")
    if limit is not None and limit < 0:
        raise ValueError(f"{p}: limit must be >= 0 or None, got {limit}")
    if not p.exists():
        raise FileNotFoundError(f"text dataset file not found: {p}")
    if not p.is_file():
        raise ValueError(f"{p}: not a regular file")
    fmt = _FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"{p}: unsupported file extension {p.suffix or '(none)'!r}; "
            f"expected one of {', '.join(SUPPORTED_EXTENSIONS)}"
        )

    if fmt == "csv":
        columns, rows, lines, header = _read_csv(p)
    elif fmt == "jsonl":
        columns, rows, lines, header = _read_jsonl(p)
    else:
        columns, rows, lines, header = _read_parquet(p, text_column, label_column)

    missing = [c for c in (text_column, label_column) if c not in columns]
    if missing:
        raise ValueError(
            f"{header}: missing column(s) {missing}; columns present: {columns}"
        )
    if not rows:
        raise ValueError(f"{p}: file contains no rows")

    class_list = None if classes is None else [str(c) for c in classes]
    class_index = None if class_list is None else {c: i for i, c in enumerate(class_list)}

    texts: list[str] = []
    labels: list[int] = []
    for i, row in enumerate(rows):
        where = f"{p}: row {i} (0-based{'' if lines is None else f', line {lines[i]}'})"
        if text_column not in row or (fmt == "csv" and row[text_column] is None):
            raise ValueError(f"{where} has no {text_column!r} field")
        if label_column not in row or (fmt == "csv" and row[label_column] is None):
            raise ValueError(f"{where} has no {label_column!r} field")
        text = row[text_column]
        if not isinstance(text, str) or not text.strip():
            raise ValueError(
                f"{where} has empty or non-string text in column "
                f"{text_column!r}: {text!r}"
            )
        label = _parse_label(row[label_column], where, class_index)
        if label < 0:
            raise ValueError(f"{where}: label {label} is negative")
        if class_list is not None and label >= len(class_list):
            raise ValueError(
                f"{where}: label {label} is out of range for "
                f"{len(class_list)} classes"
            )
        texts.append(text)
        labels.append(label)

    if offset >= len(texts):
        raise ValueError(f"{p}: offset {offset} is beyond the {len(texts)} rows in the file")
    texts, labels = subsample(texts, offset, stride, limit), subsample(labels, offset, stride, limit)
    return TextDataset(texts=texts, labels=np.asarray(labels, dtype=np.int64), classes=class_list)


# --------------------------------------------------------------------------- demo corpus


def demo_classes() -> list[str]:
    """Class names of the demo corpus, in label order."""
    return load_string_list(DEMO_CORPUS_DIR / "classes.json", "class name")


def demo_templates() -> list[str]:
    """Zero-shot prompt templates for the demo corpus (each contains ``{}``)."""
    return load_string_list(DEMO_CORPUS_DIR / "templates.json", "prompt template", "{}")


def load_demo_corpus(
    split: str, *, stride: int = 1, offset: int = 0, limit: int | None = None
) -> TextDataset:
    """Load the shipped demo topic-classification corpus (``"train"`` or ``"val"``)."""
    if split not in DEMO_SPLITS:
        raise ValueError(f"unknown demo corpus split {split!r}; expected one of {list(DEMO_SPLITS)}")
    return load_text_dataset(
        DEMO_CORPUS_DIR / f"{split}.jsonl",
        stride=stride,
        offset=offset,
        limit=limit,
        classes=demo_classes(),
    )
