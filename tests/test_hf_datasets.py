"""dataset.kind "hf": Hugging Face datasets (save_to_disk folders, DatasetDicts), Parquet and Arrow folders,
read in blocks; the same splits, fingerprints and asset files as the JSONL version of the same samples."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

datasets = pytest.importorskip("datasets")

from oe_assets.definitions import OBSERVE_DATASETS, build_definitions  # noqa: E402
from oe_assets.datasources import hf_datasets  # noqa: E402
from oe_assets.profiles.validation import ProfileError, count_samples, validate_profile  # noqa: E402
from oe_assets.provenance import split_fingerprint  # noqa: E402
from oe_assets.resources.datasets import DatasetResource  # noqa: E402
from helpers import materialize, tiny_bert_profile  # noqa: E402

WORDS = ["the", "team", "won", "cup", "band", "played", "loud", "song", "goal", "match"]


def _rows(n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=rng.integers(2, 7))) + f" {i}" for i in range(n)]
    return texts, [int(y) for y in rng.integers(0, 2, size=n)]


def _jsonl(path: Path, texts, labels) -> Path:
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels)))
    return path


def _resource(kind: str, train: Path | str, val: Path | str, **kw) -> DatasetResource:
    return DatasetResource(kind=kind, train_path=str(train), val_path=str(val), **kw)


@pytest.fixture
def sources(tmp_path):
    """One split of 2,500 rows (more than two read blocks) as JSONL, save_to_disk, a DatasetDict,
    Parquet files with several row groups, and Arrow files."""
    texts, labels = _rows(2500)
    ds = datasets.Dataset.from_dict({"text": texts, "label": labels, "extra": list(range(2500))})
    ds.save_to_disk(tmp_path / "saved")
    datasets.DatasetDict({"train": ds, "validation": ds.select(range(100)), "test": ds.select(range(7))}) \
        .save_to_disk(tmp_path / "dict")
    (tmp_path / "parquet").mkdir()
    table = pa.table({"text": texts, "label": labels})
    pq.write_table(table.slice(0, 1300), tmp_path / "parquet" / "part-0.parquet", row_group_size=300)
    pq.write_table(table.slice(1300), tmp_path / "parquet" / "part-1.parquet", row_group_size=500)
    (tmp_path / "arrow").mkdir()
    for i, part in enumerate((table.slice(0, 999), table.slice(999))):
        with pa.ipc.new_stream(tmp_path / "arrow" / f"data-{i}.arrow", part.schema) as w:
            w.write_table(part, max_chunksize=200)
    return {"texts": texts, "labels": labels, "jsonl": _jsonl(tmp_path / "train.jsonl", texts, labels),
            "saved": tmp_path / "saved", "dict": tmp_path / "dict", "parquet": tmp_path / "parquet",
            "arrow": tmp_path / "arrow"}


@pytest.mark.parametrize("form", ["saved", "dict", "parquet", "arrow"])
@pytest.mark.parametrize("stride,offset,limit", [(1, 0, None), (7, 3, None), (250, 5, 4), (3, 1100, 500)])
def test_every_form_gives_the_jsonl_split(sources, form, stride, offset, limit):
    sub = dict(train_stride=stride, val_stride=stride, offset=offset, limit=limit, num_workers=0)
    expected = _resource("text", sources["jsonl"], sources["jsonl"], **sub).split("train")
    got = _resource("hf", sources[form], sources[form], **sub).split("train")
    assert list(got.texts) == list(expected.texts) and len(got) == len(expected)
    assert got.labels.dtype == np.int64 and np.array_equal(got.labels, expected.labels)
    assert [got.describe(i) for i in (0, len(got) - 1, len(got) // 2)] == \
        [expected.texts[i] for i in (0, len(got) - 1, len(got) // 2)]
    assert split_fingerprint(got) == split_fingerprint(expected)  # the observed data version: the JSONL one's
    counted = count_samples({"kind": "hf", "train_path": str(sources[form]), "val_path": str(sources[form]),
                             "train_stride": stride, "offset": offset, "limit": limit}, "train")
    assert counted == len(expected)


def test_the_split_of_a_dataset_dict(sources):
    dd = sources["dict"]
    assert len(_resource("hf", dd, dd).split("val")) == 100  # val_key left at its default: "validation"
    assert len(_resource("hf", dd, dd, val_key="test").split("val")) == 7
    assert len(_resource("hf", dd / "test", dd / "test").split("val")) == 7  # a split's own folder
    with pytest.raises(ValueError, match=r"without split 'dev'; it holds \['train', 'validation', 'test'\]"):
        _resource("hf", dd, dd, val_key="dev").split("val")


def _cache_as_hub_dataset(cache: Path, name: str, splits: dict[str, Path]) -> None:
    """Put Parquet files into the ``datasets`` cache ``cache`` as a hub dataset ``name`` prepared
    earlier (``<namespace>___<name>/default/0.0.0/<hash>/<name>-<split>.arrow``, what a download
    leaves), without a network: prepared from the files under the ``parquet`` builder, then moved."""
    built = datasets.load_dataset("parquet", data_files={k: str(v) for k, v in splits.items()},
                                  cache_dir=str(cache / "build"))
    folder = Path(next(iter(built.values())).cache_files[0]["filename"]).parent
    namespace, short = name.split("/")
    target = cache / f"{namespace}___{short}" / "default" / "0.0.0" / folder.name
    target.parent.mkdir(parents=True)
    folder.rename(target)
    for split in splits:
        (target / f"parquet-{split}.arrow").rename(target / f"{short}-{split}.arrow")


def test_a_name_in_the_local_cache_gives_the_jsonl_split_offline(sources, tmp_path, monkeypatch):
    texts, labels = sources["texts"], sources["labels"]
    pq.write_table(pa.table({"text": texts, "label": labels}), tmp_path / "train.parquet")
    pq.write_table(pa.table({"text": texts[:100], "label": labels[:100]}), tmp_path / "validation.parquet")
    cache = tmp_path / "datasets_cache"
    _cache_as_hub_dataset(cache, "lab/topics", {"train": tmp_path / "train.parquet",
                                                "validation": tmp_path / "validation.parquet"})
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    sub = dict(train_stride=7, val_stride=3, offset=2, num_workers=0)
    for split, jsonl in (("train", sources["jsonl"]), ("val", _jsonl(tmp_path / "val.jsonl", texts[:100], labels[:100]))):
        expected = _resource("text", jsonl, jsonl, **sub).split(split)
        got = _resource("hf", "hf:lab/topics", "hf:lab/topics", **sub).split(split)
        assert list(got.texts) == list(expected.texts) and np.array_equal(got.labels, expected.labels)
        assert split_fingerprint(got) == split_fingerprint(expected)
    assert count_samples({"kind": "hf", "train_path": "hf:lab/topics", "val_path": "hf:lab/topics",
                          "train_stride": 7, "offset": 2}, "train") == len(range(2, 2500, 7))


def test_texts_are_read_in_blocks_not_whole(sources, monkeypatch):
    reads = []
    real = hf_datasets.ArrowRows.read

    def counting(self, start, stop, column):
        reads.append((start, stop, column))
        return real(self, start, stop, column)

    monkeypatch.setattr(hf_datasets.ArrowRows, "read", counting)
    split = _resource("hf", sources["parquet"], sources["parquet"], num_workers=0).split("train")
    text_reads = [r for r in reads if r[2] == "text"]
    assert not text_reads  # loading reads the labels only
    assert split.describe(2100) == sources["texts"][2100]
    assert [r for r in reads if r[2] == "text"] == [(2048, 2500, "text")]  # the block of one sample
    reads.clear()
    assert list(split.texts) == sources["texts"]
    assert max(stop - start for start, stop, c in reads) <= hf_datasets.BLOCK


def test_string_labels_through_the_classes(tmp_path):
    texts, labels = _rows(30)
    names = ["sports", "music"]
    datasets.Dataset.from_dict({"text": texts, "label": [names[y] for y in labels]}).save_to_disk(tmp_path / "s")
    (tmp_path / "classes.json").write_text(json.dumps(names))
    split = _resource("hf", tmp_path / "s", tmp_path / "s", classes_path=str(tmp_path / "classes.json"),
                      train_stride=2).split("train")
    assert np.array_equal(split.labels, labels[::2])
    with pytest.raises(ValueError, match="string labels.*classes_path"):
        _resource("hf", tmp_path / "s", tmp_path / "s").split("train")
    (tmp_path / "few.json").write_text(json.dumps(["sports"]))
    with pytest.raises(ValueError, match=r"row \d+: label 'music' is not one of the 1 classes"):
        _resource("hf", tmp_path / "s", tmp_path / "s", classes_path=str(tmp_path / "few.json")).split("train")


def test_class_label_names_are_the_classes(tmp_path):
    texts, labels = _rows(12)
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["sports", "music"])})
    datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features).save_to_disk(tmp_path / "c")
    resource = _resource("hf", tmp_path / "c", tmp_path / "c")
    assert resource.classes() == ["sports", "music"]
    assert np.array_equal(resource.split("train").labels, labels)


def test_bad_input_is_named(tmp_path, sources):
    with pytest.raises(ValueError, match=r"missing column\(s\) \['sentence'\].*columns present: \['text', 'label', 'extra'\]"):
        _resource("hf", sources["saved"], sources["saved"], text_column="sentence").split("train")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        _resource("hf", tmp_path / "nowhere", tmp_path / "nowhere").split("train")
    datasets.Dataset.from_dict({"text": ["fine", " "], "label": [0, 1]}).save_to_disk(tmp_path / "blank")
    with pytest.raises(ValueError, match=r"row 1 has empty or non-string text in column 'text'"):
        list(_resource("hf", tmp_path / "blank", tmp_path / "blank").split("train").texts)
    with pytest.raises(ValueError, match="not in the local datasets cache"):
        _resource("hf", "hf:org/not-cached", "hf:org/not-cached").split("train")
    profile = tiny_bert_profile(tmp_path / "p")
    profile["dataset"] = {"kind": "hf", "train_path": str(sources["saved"]), "val_path": str(sources["saved"]),
                          "text_column": "sentence", "classes_path": profile["dataset"]["classes_path"]}
    with pytest.raises(ProfileError, match=r"dataset.train_path.*missing column\(s\) \['sentence'\]"):
        validate_profile(profile)


def _hf_profile(root: Path) -> dict:
    """The tiny BERT profile with its JSONL splits as Hugging Face datasets (a DatasetDict)."""
    profile = tiny_bert_profile(root)
    splits = {}
    for split in ("train", "val"):
        rows = [json.loads(line) for line in Path(profile["dataset"][f"{split}_path"]).read_text().splitlines()]
        splits["train" if split == "train" else "validation"] = datasets.Dataset.from_list(rows)
    datasets.DatasetDict(splits).save_to_disk(root / "hf")
    profile["dataset"] = {**profile["dataset"], "kind": "hf", "train_path": str(root / "hf"),
                          "val_path": str(root / "hf")}
    return profile


def test_tiny_bert_graph_on_hf_datasets_equals_the_jsonl_one(tmp_path):
    stores = {}
    versions = {}
    for name, profile in (("jsonl", tiny_bert_profile(tmp_path / "jsonl")), ("hf", _hf_profile(tmp_path / "hf"))):
        validate_profile(profile)
        defs = build_definitions(profile)
        instance = dg.DagsterInstance.ephemeral()
        defs.resolve_job_def(OBSERVE_DATASETS).execute_in_process(instance=instance)
        records = {s: instance.get_latest_data_version_record(dg.AssetKey(f"{s}_data")) for s in ("train", "val")}
        versions[name] = {s: r.event_log_entry.asset_observation.data_version for s, r in records.items()}
        materialize(defs, ["val_representations", "second_order_effects"], instance, partition_key="0")
        stores[name] = Path(profile["storage"]["base_dir"])
    assert versions["hf"] == versions["jsonl"] and all(versions["hf"].values())
    for rel in ("val_representations/all.h5", "second_order_effects/0.h5"):
        with h5py.File(stores["jsonl"] / rel) as a, h5py.File(stores["hf"] / rel) as b:
            names = [n for n in a if isinstance(a[n], h5py.Dataset)]
            assert names and names == [n for n in b if isinstance(b[n], h5py.Dataset)]
            for n in names:
                assert np.array_equal(a[n][()], b[n][()]), (rel, n)


def test_without_datasets_the_error_names_the_extra(sources, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(ImportError, match=r"oe_assets\[llm\]"):
        _resource("hf", sources["saved"], sources["saved"]).split("train")
    split = _resource("hf", sources["parquet"], sources["parquet"]).split("train")  # pyarrow alone
    assert len(split) == 2500
