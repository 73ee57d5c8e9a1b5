"""ImageNet-R as an evaluation set: the 200-way subset and the 1000-way option, and its own assets
next to the ImageNet val ones."""

import warnings
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import tiny_clip_vision
from oe_assets.definitions import build_definitions, inputs_job, job_asset_keys, layers_job, summary_job
from oe_assets.lens import ALL_SCENARIOS, top1_accuracy
from oe_assets.lens.zero_shot import imagenet_r_wnids, imagenet_wnids
from oe_assets.profiles.validation import ProfileError, validate_profile
from oe_assets.resources.datasets import DatasetResource
from oe_assets.resources.io_managers import H5Group
from helpers import layer_range, run_job

warnings.filterwarnings("ignore", category=dg.PreviewWarning if hasattr(dg, "PreviewWarning") else Warning)

R_FOLDERS = ("n01443537", imagenet_r_wnids()[7])


def _images(root: Path, folders, n: int, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for wnid in folders:
        (root / wnid).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / wnid / f"{i}.png")


def imagenet_r_profile(root: Path, imagenet_r_classes: str = "subset") -> dict:
    """A tiny random CLIP vision model with its image processor, ImageNet-layout train and val
    trees over ImageNet classes outside ImageNet-R, an ImageNet-R tree, a random 1000-way classifier."""
    from transformers import CLIPImageProcessor

    tiny_clip_vision(layers=4).save_pretrained(root / "model")
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(root / "model")
    others = [w for w in imagenet_wnids() if w not in set(imagenet_r_wnids())][:2]
    _images(root / "train", others, 4, 0)
    _images(root / "val", others, 2, 1)
    _images(root / "imagenet-r", R_FOLDERS, 3, 2)
    rng = np.random.default_rng(3)
    words = ["cat", "dog", "fish", "car", "tree", "cup"]
    (root / "vocab.txt").write_text("\n".join(words))
    W = rng.normal(size=(24, 1000))
    np.savez(root / "arrays.npz", classifier=W / np.linalg.norm(W, axis=0), text=rng.normal(size=(len(words), 24)))
    return {
        "model": {"source": str(root / "model"), "dtype": "float64", "device": "cpu", "batch_size": 4},
        "dataset": {"kind": "image_folder", "train_path": str(root / "train"), "val_path": str(root / "val"),
                    "val_r_path": str(root / "imagenet-r"), "imagenet_r_classes": imagenet_r_classes,
                    "num_workers": 0},
        "analysis": {"top_k": 3, "components": 2, "classifier_path": f"{root / 'arrays.npz'}:classifier",
                     "text_embeddings_path": f"{root / 'arrays.npz'}:text", "vocabulary_path": str(root / "vocab.txt")},
        "storage": {"base_dir": str(root / "store")},
    }


def test_imagenet_r_wnids_are_200_imagenet_ids_in_class_order():
    ids, r = imagenet_wnids(), imagenet_r_wnids()
    assert len(r) == len(set(r)) == 200 and r[0] == "n01443537"
    positions = [ids.index(w) for w in r]
    assert positions == sorted(positions)


def test_subset_restricts_to_the_200_columns_and_all_keeps_the_1000(tmp_path):
    root = tmp_path / "imagenet-r"
    _images(root, R_FOLDERS, 2, 0)
    common = dict(kind="image_folder", train_path=str(root), val_path=str(root), val_r_path=str(root), num_workers=0)
    subset = DatasetResource(**common)  # the default: 200-way
    assert subset.imagenet_r_classes == "subset"
    columns = subset.imagenet_r_columns()
    assert columns.tolist() == [imagenet_wnids().index(w) for w in imagenet_r_wnids()]
    labels = subset.split("val_r").labels
    assert labels.tolist() == [0, 0, 7, 7]
    full = DatasetResource(**common, imagenet_r_classes="all")
    assert full.imagenet_r_columns() is None
    assert full.split("val_r").labels.tolist() == [imagenet_wnids().index(w) for w in R_FOLDERS for _ in range(2)]
    # the subset labels index the restricted columns: the same class either way
    assert (columns[labels] == full.split("val_r").labels).all()
    strided = DatasetResource(**common, val_stride=2).split("val_r")
    assert strided.labels.tolist() == [0, 7] and len(strided.paths) == 2
    with pytest.raises(ValueError, match="val_r_path"):
        DatasetResource(kind="image_folder", train_path=str(root), val_path=str(root)).split("val_r")


def test_profile_validation_names_bad_imagenet_r_settings(tmp_path):
    prof = imagenet_r_profile(tmp_path)
    validate_profile(prof)
    with pytest.raises(ProfileError, match="imagenet_r_classes"):
        validate_profile({**prof, "dataset": {**prof["dataset"], "imagenet_r_classes": "200"}})


def test_imagenet_r_assets_only_when_the_profile_sets_them(tmp_path):
    prof = imagenet_r_profile(tmp_path)
    without = build_definitions({**prof, "dataset": {k: v for k, v in prof["dataset"].items() if k != "val_r_path"}})
    keys = {k.to_user_string() for k in without.resolve_asset_graph().materializable_asset_keys}
    assert not {k for k in keys if k.startswith("val_r_") or k.endswith("_r")}
    defs = build_definitions(prof)
    assert "val_r_representations" in job_asset_keys(defs, inputs_job.name)
    assert {"val_r_second_order_effects", "ablation_report_r"} <= set(job_asset_keys(defs, layers_job.name))
    graph = defs.resolve_asset_graph()
    groups = {k.to_user_string(): graph.get(k).group_name for k in graph.materializable_asset_keys}
    assert groups["val_r_representations"] == "inputs" and groups["val_r_second_order_effects"] == "second_order"
    assert groups["ablation_report_r"] == "analysis"


@pytest.mark.parametrize("mode", ["subset", "all"])
def test_imagenet_r_graph_next_to_imagenet(tmp_path, mode):
    prof = imagenet_r_profile(tmp_path, mode)
    defs = build_definitions(prof)
    instance = dg.DagsterInstance.ephemeral()
    run_job(defs, inputs_job, instance)
    result = run_job(defs, layers_job, instance, tags=layer_range(0, 2))
    assert all(e.passed for e in result.get_asset_check_evaluations())
    run_job(defs, summary_job, instance)
    store = Path(prof["storage"]["base_dir"])
    val, val_r = H5Group(store / "val_representations" / "all.h5"), H5Group(store / "val_r_representations" / "all.h5")
    assert val.read("representations").shape[0] == 4 and val_r.read("representations").shape[0] == 6
    assert val_r.attrs["split"] == "val_r" and val.attrs["split"] == "val"
    expected = [0, 0, 0, 7, 7, 7] if mode == "subset" else [imagenet_wnids().index(w) for w in R_FOLDERS for _ in range(3)]
    assert val_r.read("labels").tolist() == expected
    for layer in ("0", "1", "2"):
        assert H5Group(store / "val_second_order_effects" / f"{layer}.h5").attrs["split"] == "val"
        assert H5Group(store / "val_r_second_order_effects" / f"{layer}.h5").attrs["split"] == "val_r"
    W = H5Group(store / "classifier" / "all.h5").read("classifier")
    assert W.shape == (24, 1000)
    if mode == "subset":
        W = W[:, [imagenet_wnids().index(w) for w in imagenet_r_wnids()]]
    report_r = {r["scenario"]: r for r in pq.read_table(store / "ablation_report_r" / "1.parquet").to_pylist()}
    report = {r["scenario"]: r for r in pq.read_table(store / "ablation_report" / "1.parquet").to_pylist()}
    assert report_r["baseline"]["samples"] == 6 and report["baseline"]["samples"] == 4
    assert report_r["baseline"]["accuracy"] == pytest.approx(
        top1_accuracy(val_r.read("representations") @ W, val_r.read("labels")))
    summary = pq.read_table(store / "layer_summary" / "all.parquet")
    for s in ALL_SCENARIOS:
        assert s in summary.column_names and f"imagenet_r_{s}" in summary.column_names
    rows = summary.to_pylist()
    assert [r["layer"] for r in rows] == [0, 1, 2]
    assert rows[1]["imagenet_r_baseline"] == pytest.approx(report_r["baseline"]["accuracy"])
    assert rows[1]["baseline"] == pytest.approx(report["baseline"]["accuracy"])
