"""Tests for oe_assets.datasources.text_datasets (no model downloads, no Dagster)."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from oe_assets.datasources.text_datasets import (
    DEMO_CORPUS_DIR,
    TextDataset,
    demo_classes,
    demo_templates,
    load_demo_corpus,
    load_text_dataset,
)

TEXTS = [f"sentence number {i}" for i in range(10)]
LABELS = [i % 3 for i in range(10)]


# --------------------------------------------------------------------------- helpers


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    columns = columns or list(rows[0])
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_parquet(path: Path, columns: dict[str, list]) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def base_rows() -> list[dict]:
    return [{"text": t, "label": y} for t, y in zip(TEXTS, LABELS)]


@pytest.fixture(params=["csv", "jsonl", "ndjson", "parquet"])
def any_format_file(request, tmp_path) -> Path:
    fmt = request.param
    if fmt == "csv":
        return write_csv(tmp_path / "d.csv", base_rows())
    if fmt in ("jsonl", "ndjson"):
        return write_jsonl(tmp_path / f"d.{fmt}", base_rows())
    return write_parquet(tmp_path / "d.parquet", {"text": TEXTS, "label": LABELS})


# --------------------------------------------------------------------------- formats


def test_each_format_roundtrips(any_format_file):
    ds = load_text_dataset(any_format_file)
    assert isinstance(ds, TextDataset)
    assert len(ds) == 10
    assert ds.texts == TEXTS
    assert ds.labels.dtype == np.int64
    assert ds.labels.tolist() == LABELS
    assert ds.classes is None


def test_csv_custom_columns_extra_columns_and_bom(tmp_path):
    path = tmp_path / "d.csv"
    with path.open("w", encoding="utf-8-sig", newline="") as f:  # Excel-style BOM
        w = csv.writer(f)
        w.writerow(["id", "sentence", "y"])
        w.writerow([1, "hello, world", 2])  # comma inside a quoted field
        w.writerow([2, 'she said "hi"', 0])
    ds = load_text_dataset(path, text_column="sentence", label_column="y")
    assert ds.texts == ["hello, world", 'she said "hi"']
    assert ds.labels.tolist() == [2, 0]


def test_jsonl_skips_blank_lines_and_ignores_extra_keys(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"text": "a b c", "label": 1, "extra": 5}\n\n   \n{"text": "d e f", "label": 0}\n',
        encoding="utf-8",
    )
    ds = load_text_dataset(path)
    assert ds.texts == ["a b c", "d e f"]
    assert ds.labels.tolist() == [1, 0]


def test_parquet_custom_columns_and_other_columns(tmp_path):
    path = write_parquet(
        tmp_path / "d.pq", {"s": ["x y", "z w"], "y": [4, 1], "other": [0.5, 0.25]}
    )
    ds = load_text_dataset(path, text_column="s", label_column="y")
    assert ds.texts == ["x y", "z w"]
    assert ds.labels.tolist() == [4, 1]


def test_extension_is_case_insensitive(tmp_path):
    path = write_jsonl(tmp_path / "D.JSONL", base_rows())
    assert len(load_text_dataset(path)) == 10


def test_accepts_str_path(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", base_rows())
    assert len(load_text_dataset(str(path))) == 10


# --------------------------------------------------------------------------- labels


def test_string_labels_mapped_through_classes(tmp_path):
    rows = [{"text": "kick the ball", "label": "sports"}, {"text": "bake bread", "label": "food"}]
    for path in (
        write_jsonl(tmp_path / "d.jsonl", rows),
        write_csv(tmp_path / "d.csv", rows),
        write_parquet(tmp_path / "d.parquet", {"text": ["kick the ball", "bake bread"],
                                               "label": ["sports", "food"]}),
    ):
        ds = load_text_dataset(path, classes=["food", "sports"])
        assert ds.labels.tolist() == [1, 0], path
        assert ds.classes == ["food", "sports"]


def test_integer_like_labels_accepted(tmp_path):
    rows = [{"text": "a", "label": 2.0}, {"text": "b", "label": "3"}, {"text": "c", "label": " 1 "}]
    ds = load_text_dataset(write_jsonl(tmp_path / "d.jsonl", rows))
    assert ds.labels.tolist() == [2, 3, 1]


def test_integer_labels_with_classes_are_range_checked(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", base_rows())
    ds = load_text_dataset(path, classes=["a", "b", "c"])
    assert ds.classes == ["a", "b", "c"] and ds.num_classes == 3
    with pytest.raises(ValueError, match=r"d\.jsonl.*label 2 is out of range for 2 classes"):
        load_text_dataset(path, classes=["a", "b"])


# --------------------------------------------------------------------------- subsampling


@pytest.mark.parametrize(
    "stride, offset, limit, expected",
    [
        (1, 0, None, list(range(10))),
        (3, 0, None, [0, 3, 6]),  # len // stride samples: no last, partial stride
        (3, 1, None, [1, 4, 7]),
        (3, 2, None, [2, 5, 8]),
        (2, 1, 3, [1, 3, 5]),
        (1, 0, 4, [0, 1, 2, 3]),
        (4, 0, 100, [0, 4]),
        (20, 5, None, []),
        (1, 9, None, [9]),
        (2, 0, 0, []),
    ],
)
def test_stride_offset_limit(any_format_file, stride, offset, limit, expected):
    ds = load_text_dataset(any_format_file, stride=stride, offset=offset, limit=limit)
    assert ds.texts == [TEXTS[i] for i in expected]
    assert ds.labels.tolist() == [LABELS[i] for i in expected]


def test_subsampling_is_deterministic_and_disjoint_across_offsets(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", base_rows())
    a = load_text_dataset(path, stride=2, offset=0)
    assert a == load_text_dataset(path, stride=2, offset=0)
    b = load_text_dataset(path, stride=2, offset=1)
    assert set(a.texts).isdisjoint(b.texts)
    assert sorted(a.texts + b.texts) == sorted(TEXTS)


# --------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_text_dataset(path)


@pytest.mark.parametrize("name", ["d.txt", "d.json", "d.tsv", "noext"])
def test_unknown_extension(tmp_path, name):
    path = tmp_path / name
    path.write_text("text,label\nabc,1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{name}.*unsupported file extension.*\.csv"):
        load_text_dataset(path)


def test_directory_is_rejected(tmp_path):
    d = tmp_path / "dir.jsonl"
    d.mkdir()
    with pytest.raises(ValueError, match="not a regular file"):
        load_text_dataset(d)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_missing_columns_lists_present_columns(tmp_path, fmt):
    if fmt == "csv":
        path = write_csv(tmp_path / "d.csv", [{"sentence": "a b", "label": 1}])
    elif fmt == "jsonl":
        path = write_jsonl(tmp_path / "d.jsonl", [{"sentence": "a b", "label": 1}])
    else:
        path = write_parquet(tmp_path / "d.parquet", {"sentence": ["a b"], "label": [1]})
    with pytest.raises(ValueError) as exc:
        load_text_dataset(path)
    msg = str(exc.value)
    assert f"d.{fmt}" in msg
    assert "missing column(s) ['text']" in msg
    assert "columns present: ['sentence', 'label']" in msg


def test_missing_label_column(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", base_rows())
    with pytest.raises(ValueError, match=r"missing column\(s\) \['target'\].*columns present: \['text', 'label'\]"):
        load_text_dataset(path, label_column="target")


def test_jsonl_row_missing_a_key(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 1}, {"text": "b"}])
    with pytest.raises(ValueError, match=r"d\.jsonl: row 1 \(0-based, line 2\) has no 'label' field"):
        load_text_dataset(path)


@pytest.mark.parametrize("bad_text", ["", "   ", None, 17])
def test_empty_or_non_string_text_jsonl(tmp_path, bad_text):
    rows = base_rows()
    rows[4]["text"] = bad_text
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(ValueError, match=r"d\.jsonl: row 4 \(0-based, line 5\) has empty or non-string text"):
        load_text_dataset(path)


def test_empty_text_csv_and_parquet(tmp_path):
    rows = base_rows()
    rows[2]["text"] = ""
    with pytest.raises(ValueError, match=r"d\.csv: row 2 .*empty"):
        load_text_dataset(write_csv(tmp_path / "d.csv", rows))
    texts = list(TEXTS)
    texts[3] = None
    with pytest.raises(ValueError, match=r"d\.parquet: row 3 .*empty"):
        load_text_dataset(write_parquet(tmp_path / "d.parquet", {"text": texts, "label": LABELS}))


def test_rows_dropped_by_subsampling_are_still_validated(tmp_path):
    rows = base_rows()
    rows[1]["text"] = ""
    with pytest.raises(ValueError, match="row 1"):
        load_text_dataset(write_jsonl(tmp_path / "d.jsonl", rows), stride=2, offset=0)


def test_string_labels_without_classes(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": "cat"}])
    with pytest.raises(ValueError, match=r"d\.jsonl: row 1 .*label 'cat' is not an integer; pass classes"):
        load_text_dataset(path)


def test_string_label_not_in_classes(tmp_path):
    path = write_csv(tmp_path / "d.csv", [{"text": "a", "label": "dog"}])
    with pytest.raises(ValueError, match=r"d\.csv: row 0 .*'dog' is not an integer and not one of the 2 given classes"):
        load_text_dataset(path, classes=["cat", "bird"])


@pytest.mark.parametrize("bad", [1.5, float("nan"), True, None, [1], {"a": 1}])
def test_non_integer_labels(tmp_path, bad):
    rows = base_rows()
    rows[7]["label"] = bad
    path = tmp_path / "d.jsonl"
    # json.dumps turns nan into NaN, which json.loads reads back as float('nan')
    write_jsonl(path, rows)
    with pytest.raises(ValueError, match=r"d\.jsonl: row 7 \(0-based, line 8\)"):
        load_text_dataset(path)


def test_non_integer_label_parquet_and_csv(tmp_path):
    with pytest.raises(ValueError, match=r"d\.parquet: row 0 .*label 0\.5 is not an integer"):
        load_text_dataset(write_parquet(tmp_path / "d.parquet", {"text": ["a"], "label": [0.5]}))
    with pytest.raises(ValueError, match=r"d\.csv: row 0 .*label '' is not an integer"):
        load_text_dataset(write_csv(tmp_path / "d.csv", [{"text": "a", "label": ""}]))


def test_negative_label(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": -1}])
    with pytest.raises(ValueError, match=r"d\.jsonl: row 0 .*label -1 is negative"):
        load_text_dataset(path)


@pytest.mark.parametrize("stride", [0, -2])
def test_bad_stride(tmp_path, stride):
    path = write_jsonl(tmp_path / "d.jsonl", base_rows())
    with pytest.raises(ValueError, match=rf"d\.jsonl: stride must be >= 1, got {stride}"):
        load_text_dataset(path, stride=stride)


def test_bad_offset_and_limit(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", base_rows())
    with pytest.raises(ValueError, match=r"d\.jsonl: offset must be >= 0"):
        load_text_dataset(path, offset=-1)
    with pytest.raises(ValueError, match=r"d\.jsonl: offset 10 is beyond the 10 rows"):
        load_text_dataset(path, offset=10)
    with pytest.raises(ValueError, match=r"d\.jsonl: limit must be >= 0"):
        load_text_dataset(path, limit=-1)


def test_invalid_jsonl(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": 0}\n{not json}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"d\.jsonl line 2: not valid JSON \(Expecting property name .* at column 2\)"):
        load_text_dataset(path)
    path.write_text('["a", 0]\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"d\.jsonl line 1: must be a JSON object, got list"):
        load_text_dataset(path)


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"definitely not parquet")
    with pytest.raises(ValueError, match=r"d\.parquet: cannot read Parquet file"):
        load_text_dataset(path)


def test_empty_files(tmp_path):
    empty_jsonl = tmp_path / "e.jsonl"
    empty_jsonl.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match=r"e\.jsonl: missing column\(s\) \['text', 'label'\]; columns present: \[\]"):
        load_text_dataset(empty_jsonl)
    header_only = tmp_path / "e.csv"
    header_only.write_text("text,label\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"e\.csv: file contains no rows"):
        load_text_dataset(header_only)


# --------------------------------------------------------------------------- TextDataset


def test_textdataset_validation_and_equality():
    ds = TextDataset(texts=("a", "b"), labels=[0, 1], classes=None)
    assert isinstance(ds.texts, list) and ds.labels.dtype == np.int64 and len(ds) == 2
    assert ds.num_classes == 2
    assert ds == TextDataset(["a", "b"], np.array([0, 1]), None)
    assert ds != TextDataset(["a", "b"], np.array([1, 1]), None)
    with pytest.raises(ValueError, match="2 texts but 1 labels"):
        TextDataset(["a", "b"], np.array([0]), None)
    with pytest.raises(ValueError, match="must be integers"):
        TextDataset(["a"], np.array([0.5]), None)
    with pytest.raises(ValueError, match="out of range"):
        TextDataset(["a"], np.array([3]), ["x", "y"])
    with pytest.raises(AttributeError):  # frozen
        ds.texts = []  # type: ignore[misc]
    assert len(TextDataset([], np.array([], dtype=np.int64), None)) == 0


# --------------------------------------------------------------------------- demo corpus


def test_demo_corpus_files_exist():
    for name in ("train.jsonl", "val.jsonl", "classes.json", "templates.json", "README.md"):
        assert (DEMO_CORPUS_DIR / name).is_file(), name


def test_demo_corpus_counts_and_disjointness():
    classes = demo_classes()
    assert len(classes) >= 10
    assert len(set(classes)) == len(classes)
    train, val = load_demo_corpus("train"), load_demo_corpus("val")
    assert train.classes == classes and val.classes == classes
    tc, vc = Counter(train.labels.tolist()), Counter(val.labels.tolist())
    for label, name in enumerate(classes):
        assert tc[label] >= 40, f"{name}: only {tc[label]} train sentences"
        assert vc[label] >= 15, f"{name}: only {vc[label]} val sentences"
    norm = lambda s: " ".join(s.lower().split())  # noqa: E731
    train_set, val_set = {norm(t) for t in train.texts}, {norm(t) for t in val.texts}
    assert train_set.isdisjoint(val_set)
    assert len(train_set) == len(train) and len(val_set) == len(val)  # no duplicates
    for t in train.texts + val.texts:
        assert 4 <= len(t.split()) <= 35, t


def test_demo_corpus_subsampling():
    full = load_demo_corpus("val")
    sub = load_demo_corpus("val", stride=5, offset=2, limit=10)
    assert sub.texts == full.texts[2::5][:10]
    assert sub.labels.tolist() == full.labels[2::5][:10].tolist()


def test_demo_corpus_bad_split():
    with pytest.raises(ValueError, match="unknown demo corpus split 'test'"):
        load_demo_corpus("test")


def test_demo_templates():
    templates = demo_templates()
    assert 3 <= len(templates) <= 8
    assert all("{}" in t for t in templates)
    assert templates[0].format("music") != templates[0]


def test_subsampling_keeps_len_over_stride_samples_like_the_published_datasets(tmp_path):
    """``len // stride`` samples at ``offset + i * stride``: 5,124 of ImageNet's 1,281,167 train
    images at stride 250, 1 of 13 at stride 10; checked on an image tree against a listing made here."""
    from oe_assets.datasources.text_datasets import subsample
    from oe_assets.resources.datasets import DatasetResource

    assert len(subsample(range(1_281_167), 0, 250)) == 5_124
    assert list(subsample(range(13), 0, 10)) == [0]
    assert list(subsample(range(13), 2, 5)) == [2, 7]  # (13 - 2) // 5 = 2
    assert list(subsample(range(20), 0, 4, limit=3)) == [0, 4, 8]
    for c in ("n01", "n02", "n03"):
        (tmp_path / c).mkdir()
        for i in range(7):
            (tmp_path / c / f"{i:02d}.JPEG").write_bytes(b"")
    listing = sorted(str(p) for p in tmp_path.rglob("*.JPEG"))  # 21 files, class folders in order
    split = DatasetResource(kind="image_folder", train_path=str(tmp_path), val_path=str(tmp_path),
                            class_index="folders", train_stride=4, num_workers=0).split("train")
    assert [str(p) for p in split.paths] == [listing[i * 4] for i in range(21 // 4)]
