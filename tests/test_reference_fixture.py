"""The reference outputs shipped with the tests (tests/fixtures/clip_vit_tiny): the same as the original
in ../shared, complete, and what the clip_reference profile reads from a clone."""

import json
import os

import numpy as np
import pytest

from conftest import REFERENCE, SHARED_REFERENCE
from oe_assets.profiles import load_profile
from oe_assets.profiles.validation import ProfileError, validate_profile


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_shipped_reference_equals_the_shared_original():
    if not SHARED_REFERENCE.exists():
        if os.environ.get("CI"):  # CI has ../shared beside the clone: a missing original is a failure there
            pytest.fail(f"the original reference outputs are not at {SHARED_REFERENCE}")
        pytest.skip(f"no original at {SHARED_REFERENCE} to compare the shipped copy with")
    assert _files(REFERENCE) == _files(SHARED_REFERENCE)
    for name in _files(REFERENCE):
        if name.endswith(".npz"):  # the arrays, bit for bit (the container may be compressed differently)
            with np.load(REFERENCE / name) as got, np.load(SHARED_REFERENCE / name) as want:
                assert sorted(got.files) == sorted(want.files), name
                for key in want.files:
                    a, b = got[key], want[key]
                    assert (a.dtype, a.shape) == (b.dtype, b.shape), f"{name}:{key}"
                    assert a.tobytes() == b.tobytes(), f"{name}:{key}"
        else:
            assert (REFERENCE / name).read_bytes() == (SHARED_REFERENCE / name).read_bytes(), name


def test_shipped_reference_is_complete():
    """Every array the README lists, with the sizes of meta.json and the model's config."""
    meta = json.loads((REFERENCE / "meta.json").read_text())
    config = json.loads((REFERENCE / "model" / "config.json").read_text())
    assert (REFERENCE / "model" / "model.safetensors").is_file() and (REFERENCE / "README.md").is_file()
    n_train, n_val, d_out, k = meta["n_train"], meta["n_val"], meta["out_dim"], meta["classes"]
    neurons = int(meta["width"] * meta["mlp_ratio"])
    vision = config.get("vision_config") or config
    assert (config["projection_dim"], vision["intermediate_size"], vision["num_hidden_layers"]) == \
        (d_out, neurons, meta["layers"])
    side = meta["image"]
    shapes = {"train_images": (n_train, 3, side, side), "val_images": (n_val, 3, side, side), "val_labels": (n_val,),
              "classifier": (d_out, k), "train_representations": (n_train, d_out), "text_embeddings": (meta["n_text"], d_out)}
    rows = len(meta["ablation_rows"])
    for layer in range(meta["layers"] - 1):
        shapes |= {f"train_second_order_layer{layer}": (n_train, neurons, d_out),
                   f"val_second_order_layer{layer}": (n_val, neurons, d_out),
                   f"pca_layer{layer}": (neurons, d_out), f"pca_norms_layer{layer}": (neurons, meta["top_k"]),
                   f"neuron_means_layer{layer}": (neurons, d_out), f"ablation_logits_layer{layer}": (rows, n_val, k),
                   f"ablation_acc_layer{layer}": (rows,), f"sparse_codes_layer{layer}": (neurons, meta["n_text"])}
    with np.load(REFERENCE / "expected.npz") as d:
        assert {key: d[key].shape for key in shapes} == shapes
        assert all(d[key].dtype == np.float64 for key in shapes if key != "val_labels")


def test_clip_reference_profile_reads_the_shipped_copy():
    prof = load_profile("clip_reference")
    assert prof["model"]["source"] == str(REFERENCE / "model")
    assert prof["dataset"]["train_path"] == str(REFERENCE / "expected.npz")
    assert prof["analysis"]["classifier_path"] == f"{REFERENCE / 'expected.npz'}:classifier"
    measured = validate_profile(prof)
    assert measured["train_samples"] == 48 and measured["descriptions"] == 200 and measured["d_out"] == 32


def test_clip_reference_profile_outside_a_clone_says_where_its_files_come_from(tmp_path, monkeypatch):
    """As an installed wheel sees it: the project root is a folder without the repository's tests."""
    monkeypatch.setenv("OE_ASSETS_ROOT", str(tmp_path))
    with pytest.raises(ProfileError) as e:
        validate_profile(load_profile("clip_reference"))
    msg = str(e.value)
    for key in ("model.source", "dataset.train_path", "analysis.classifier_path", "analysis.text_embeddings_path"):
        assert f"{key}: " in msg
    assert msg.count("tests/fixtures/clip_vit_tiny/") >= 5
    assert "is test data of the source repository, not installed with the package: run from a clone" in msg
