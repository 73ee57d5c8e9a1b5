"""Export to and import from the official implementation's output files, on the reference graph."""

import json
import warnings

import dagster as dg
import numpy as np
import pytest
import scipy.sparse

from oe_assets import __main__ as cli
from oe_assets.formats.official import OfficialFormatError, OfficialNames, export_bytes, import_official
from oe_assets.resources.store import H5Group
from conftest import REFERENCE

warnings.filterwarnings("ignore")

NAMES = OfficialNames("imagenet", "tiny", "ref")
LAYER = 1


@pytest.fixture(scope="module")
def exported(reference_graph, tmp_path_factory):  # noqa: F811
    _, _, base, _, _ = reference_graph
    out = tmp_path_factory.mktemp("official")
    rc = cli.main(["export", "--format", "official", "--layer", str(LAYER), "--profile", "clip_reference",
                   "--base-dir", str(base), "--out", str(out), "--model", "tiny", "--pretrained", "ref"])
    assert rc == 0
    return base, out


def test_export_states_its_size_first_and_refuses_a_disk_without_room(reference_graph, tmp_path, monkeypatch,  # noqa: F811
                                                                       capsys):
    """``writing <N> GB to <folder>`` before any file; N is the size of the ``.npy`` files written
    (less their headers); a disk with less free space is refused with nothing written."""
    import shutil

    from oe_assets.resources import store as store_module

    _, _, base, _, _ = reference_graph
    args = ["export", "--format", "official", "--layer", str(LAYER), "--profile", "clip_reference", "--base-dir", str(base),
            "--model", "tiny", "--pretrained", "ref"]
    real = shutil.disk_usage
    monkeypatch.setattr(store_module.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    assert cli.main([*args, "--out", str(tmp_path / "full")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the official files of layer 1 needs about ") and "1000 bytes) free" in err, err
    assert list((tmp_path / "full").iterdir()) == []
    monkeypatch.undo()
    assert cli.main([*args, "--out", str(tmp_path / "out")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("writing ") and first.endswith(f" GB to {tmp_path / 'out'}"), first
    npy = list((tmp_path / "out").glob("*.npy"))
    data = sum(np.load(p, mmap_mode="r").nbytes for p in npy)
    assert f"{data / 1e9:.2f}" == first.split()[1]
    assert export_bytes(base, LAYER) == data


def test_export_refuses_the_clip_names_for_a_text_profile(tmp_path, capsys, monkeypatch):
    """The demo is MiniLM on a text corpus: ``imagenet_*_openai`` file names would be wrong."""
    monkeypatch.delenv("OE_ASSETS_PROFILE", raising=False)  # the default profile, whatever ran before
    assert cli.main(["export", "--format", "official", "--layer", "3", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and "profile 'demo' is a text profile" in err
    assert "--dataset NAME" in err and "--pretrained TAG" in err
    assert not (tmp_path / "out").exists()


def test_export_writes_the_official_files(exported, reference):
    d, meta = reference
    _, out = exported
    f = lambda name: np.load(out / name)  # noqa: E731
    top_k = meta["top_k"]
    for split, n in (("train", 48), ("val", 24)):
        assert f(NAMES.representations(split)).shape == (n, 32)
        assert f(NAMES.classes(split)).shape == (n,)
    np.testing.assert_array_equal(f(NAMES.classes("val")), d["val_labels"])
    np.testing.assert_array_equal(f(NAMES.classifier()), d["classifier"])
    for split in ("train", "val"):
        merged = np.load(out / NAMES.merged(split, LAYER), mmap_mode="r")
        expected = d[f"{split}_second_order_layer{LAYER}"]
        assert merged.shape == (len(expected), 256, 32)
        assert np.abs(merged - expected).max() / np.abs(expected).max() <= 1e-5
    for what, key in (("pca", "pca_layer"), ("norm", "pca_norms_layer"), ("mean", "neuron_means_layer")):
        got, exp = f(NAMES.pca(LAYER, top_k, what)), d[f"{key}{LAYER}"]
        assert np.abs(got - exp).max() / np.abs(exp).max() <= 1e-5, what
    codes = scipy.sparse.load_npz(out / NAMES.pca(LAYER, top_k, "sparse.npz"))
    assert codes.format == "csc" and codes.shape == (256, 200)
    exp = d[f"sparse_codes_layer{LAYER}"]
    assert np.abs(codes.toarray() - exp).max() / np.abs(exp).max() <= 1e-4
    decomposition = json.loads((out / NAMES.pca(LAYER, top_k, "sparse.json")).read_text())
    assert sorted(decomposition, key=int) == [str(n) for n in range(256)]
    dense = codes.toarray()
    for n in (0, 100, 255):
        entries = decomposition[str(n)]
        assert [i for i, _, _ in entries] == sorted(np.flatnonzero(dense[n]), key=lambda i: -abs(dense[n, i]))
        assert all(isinstance(text, str) and text for _, _, text in entries)
        assert all(abs(v - dense[n, i]) < 1e-12 for i, v, _ in entries)


def test_import_round_trip(exported, tmp_path):
    base, out = exported
    fresh = tmp_path / "store"
    instance = dg.DagsterInstance.ephemeral()
    rc = cli.import_official_cmd(str(out), "clip_reference", LAYER, "imagenet", "tiny", "ref", base_dir=str(fresh),
                                 instance=instance)
    assert rc == 0
    g = lambda b, *p: H5Group(b.joinpath(*p))  # noqa: E731
    for asset, name, part in (("train_representations", "representations", "all"), ("train_representations", "labels", "all"),
                              ("val_representations", "representations", "all"), ("val_representations", "labels", "all"),
                              ("classifier", "classifier", "all"), ("neuron_pcas", "components", LAYER),
                              ("neuron_pcas", "norms", LAYER), ("neuron_pcas", "means", LAYER),
                              ("sparse_codes", "indices", LAYER), ("sparse_codes", "values", LAYER)):
        a = g(base, asset, f"{part}.h5").read(name)
        b = g(fresh, asset, f"{part}.h5").read(name)
        np.testing.assert_array_equal(a, b, err_msg=f"{asset}/{name}")
    attrs = g(fresh, "neuron_pcas", f"{LAYER}.h5").attrs
    assert attrs["imported_from"].endswith(NAMES.pca(LAYER, 16, "mean")) and attrs["top_k"] == 16
    event = instance.get_latest_materialization_event(dg.AssetKey("neuron_pcas"))
    assert event.asset_materialization.partition == str(LAYER)
    assert NAMES.pca(LAYER, 16, "pca") in event.asset_materialization.metadata["imported_from"].value
    assert instance.get_latest_materialization_event(dg.AssetKey("classifier")) is not None
    # the merged effects come back exactly, as factorized files the rest of the graph reads
    from oe_assets.lens.effects_file import open_factorized

    for asset in ("second_order_effects", "val_second_order_effects"):
        a = open_factorized(base / asset / f"{LAYER}.h5")[:, :, :]
        b = open_factorized(fresh / asset / f"{LAYER}.h5")
        assert b.n_paths == a.shape[2] and g(fresh, asset, f"{LAYER}.h5").attrs["imported"]
        assert np.abs(b[:, :, :] - a).max() <= 1e-6 * np.abs(a).max()


def test_import_recomputes_means_from_merged_and_refuses_without(exported, tmp_path, reference):
    d, _ = reference
    _, out = exported
    src = tmp_path / "src"
    src.mkdir()
    for p in out.iterdir():
        if not p.name.endswith("_mean.npy"):
            (src / p.name).symlink_to(p)
    result = import_official(src, tmp_path / "a", LAYER, NAMES, 16)
    means = H5Group(tmp_path / "a" / "neuron_pcas" / f"{LAYER}.h5").read("means")
    exp = d[f"neuron_means_layer{LAYER}"]
    assert np.abs(means - exp).max() / np.abs(exp).max() <= 1e-5
    assert not result.skipped
    assert {a for a, *_ in result.assets} >= {"second_order_effects", "val_second_order_effects"}
    (src / NAMES.merged("train", LAYER)).unlink()
    with pytest.raises(OfficialFormatError, match="neither .*_mean.npy nor .*train_mlps.*merged.npy"):
        import_official(src, tmp_path / "b", LAYER, NAMES, 16)


def test_import_refuses_shapes_of_another_model(exported, tmp_path, capsys):
    _, out = exported
    src = tmp_path / "src"
    src.mkdir()
    for p in out.iterdir():
        (src / p.name).symlink_to(p)
    bad = src / NAMES.pca(LAYER, 16, "pca")
    bad.unlink()
    np.save(bad, np.zeros((256, 48)))
    with pytest.raises(OfficialFormatError, match=r"_1_16_pca.npy: shape \[256, 48\] does not match the expected \[256, 32\]"):
        import_official(src, tmp_path / "a", LAYER, NAMES, 16, d_out=32, neurons=256)
    rc = cli.import_official_cmd(str(src), "clip_reference", LAYER, "imagenet", "tiny", "ref",
                                 base_dir=str(tmp_path / "b"), instance=dg.DagsterInstance.ephemeral())
    assert rc == 2 and "[256, 48]" in capsys.readouterr().err and not (tmp_path / "b").exists()
    np.save(bad, np.zeros((300, 32)))  # neurons of another model
    with pytest.raises(OfficialFormatError, match=r"\[300, 32\] does not match the expected \[256, 32\]"):
        import_official(src, tmp_path / "a", LAYER, NAMES, 16, d_out=32, neurons=256)
    assert cli.model_dims(str(REFERENCE / "model")) == (32, 256)
