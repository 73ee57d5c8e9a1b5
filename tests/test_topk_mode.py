"""``storage.effects_mode: topk`` through the whole asset graph: the tiny BERT graph materialized in
both modes gives the same norms, the same top-k sets, the same PCA (1e-6), the same sparse codes and
the same ablation and baseline accuracies; the top-k graph has no val effects (``val_effect_sums``
instead), its files hold no per-sample effects, and ``analysis.top_k`` reruns its effects (only its)."""

import copy

import h5py

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest

from oe_assets import resume
from oe_assets.assets import effects as effects_module
from oe_assets.assets.common import reconstruction_dictionary, sparse_reconstructions
from oe_assets.lens.ablations import EffectSums, effect_sums
from oe_assets.storage.hdf5 import read_attrs, write_attrs
from oe_assets.lens.topk import open_topk
from oe_assets.profiles.validation import ProfileError, validate_profile
from oe_assets.resources.store import open_effects
from oe_assets.storage.hdf5 import H5Handle
from helpers import materialize_graph, tiny_bert_profile

LAYERS = ("0", "1")


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """The graph in the stored mode and in the top-k mode, over the same files and settings."""
    root = tmp_path_factory.mktemp("topk_mode")
    stored = tiny_bert_profile(root)
    stored["analysis"]["store_logits"] = True  # the logits are compared too
    topk = copy.deepcopy(stored)
    stored["storage"]["base_dir"] = str(root / "stored")
    topk["storage"] = {"base_dir": str(root / "topk"), "effects_mode": "topk"}
    return {mode: materialize_graph(prof) + (prof,) for mode, prof in (("stored", stored), ("topk", topk))}


def _h5(store, asset, layer):
    return H5Handle(store / asset / f"{layer}.h5")


def test_the_topk_graph_replaces_the_val_effects_by_their_sums(both):
    keys = {mode: {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
            for mode, (defs, *_rest) in both.items()}
    assert keys["stored"] - keys["topk"] == {"val_second_order_effects"}
    assert keys["topk"] - keys["stored"] == {"val_effect_sums"}
    graph = both["topk"][0].resolve_asset_graph()
    parents = {p.to_user_string() for p in graph.get(dg.AssetKey("val_effect_sums")).parent_keys}
    assert {"neuron_pcas", "sparse_codes", "text_embeddings"} <= parents  # the val pass after the PCA
    store = both["topk"][2]
    for layer in LAYERS:
        with _h5(store, "second_order_effects", layer) as f:
            assert f.attrs["layout"] == "topk" and "alpha" not in f.names and "token_activations" not in f.names
            assert not (store / "val_second_order_effects").exists()


@pytest.mark.parametrize("layer", LAYERS)
def test_same_norms_top_sets_and_pca_as_the_stored_mode(both, layer):
    s_store, t_store = both["stored"][2], both["topk"][2]
    top_k = both["topk"][3]["analysis"]["top_k"]
    with _h5(s_store, "second_order_effects", layer) as sf, _h5(t_store, "second_order_effects", layer) as tf:
        full, top = open_effects(sf), open_topk(tf)
        assert top.shape == full.shape
        norms = full.norms()
        np.testing.assert_allclose(top.norms(), norms, rtol=1e-6, atol=1e-9 * norms.max())
        means = full.mean()
        np.testing.assert_allclose(top.mean(), means, rtol=1e-6, atol=1e-9 * np.abs(means).max())
        for (_, _, s_samples, s_norms, _), (_, _, t_samples, t_norms, _) in zip(
                full.top_samples(means, top_k), top.top_samples(top.mean(), top_k)):
            assert np.array_equal(np.sort(s_samples.numpy(), 1), np.sort(t_samples.numpy(), 1))  # the same sets
            np.testing.assert_allclose(t_norms.numpy(), s_norms.numpy(), rtol=1e-6)
        for name in ("first_order_sum", "mlp_out_mean", "labels"):
            np.testing.assert_array_equal(tf.read(name), sf.read(name))
    with _h5(s_store, "neuron_pcas", layer) as sp, _h5(t_store, "neuron_pcas", layer) as tp:
        for name in ("norms", "means", "explained"):
            np.testing.assert_allclose(tp.read(name), sp.read(name), rtol=1e-6, atol=1e-12)
        cos = np.sum(tp.read("components") * sp.read("components"), axis=1)
        assert np.max(1 - cos) < 1e-6  # the same components, the same signs
    with _h5(s_store, "sparse_codes", layer) as sc, _h5(t_store, "sparse_codes", layer) as tc:
        np.testing.assert_array_equal(tc.read("indices"), sc.read("indices"))
        np.testing.assert_allclose(tc.read("values"), sc.read("values"), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("asset", ["ablation_report", "total_effects"])
def test_same_accuracies_as_the_stored_mode(both, asset):
    for layer in LAYERS:
        s, t = (pq.read_table(both[m][2] / asset / f"{layer}.parquet").to_pylist() for m in ("stored", "topk"))
        assert [r["scenario"] for r in t] == [r["scenario"] for r in s]
        for rs, rt in zip(s, t):
            assert rt["accuracy"] == rs["accuracy"], (layer, rs["scenario"])
            for column in ("significant_fraction", "significant_neurons", "mean_change"):
                if column in rs:
                    assert rt[column] == pytest.approx(rs[column], rel=1e-9), (layer, column)
            if rs.get("logits") is not None:
                np.testing.assert_allclose(rt["logits"], rs["logits"], rtol=1e-6, atol=1e-9)


def test_the_reports_and_the_summary_are_made_from_the_topk_files(both):
    store = both["topk"][2]
    for layer in LAYERS:
        assert "<html" in (store / "neuron_report" / f"{layer}.html").read_text().lower()
    summary = {m: pq.read_table(both[m][2] / "layer_summary" / "all.parquet").to_pylist() for m in both}
    assert [r["mean_ablate_all"] for r in summary["topk"]] == [r["mean_ablate_all"] for r in summary["stored"]]


def test_top_k_reruns_the_topk_effects_and_not_the_stored_ones(both, tmp_path, monkeypatch):
    from oe_assets.definitions import build_definitions

    runs = {}
    for mode, (_, _, _, prof) in both.items():
        changed = copy.deepcopy(prof)
        changed["analysis"]["top_k"] = prof["analysis"]["top_k"] - 1
        defs = build_definitions(changed)
        monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / mode))
        (tmp_path / mode).mkdir()
        with dg.DagsterInstance.get() as instance:
            keys = [k for k in defs.resolve_asset_graph().toposorted_asset_keys if k.to_user_string() != "model"
                    and defs.resolve_asset_graph().get(k).is_materializable]
            plan = resume.plan_materialization(defs, instance, keys, list(LAYERS))
        runs[mode] = {k.to_user_string() for k in plan.run}
    assert "second_order_effects" in runs["topk"] and "neuron_pcas" in runs["topk"]
    assert "second_order_effects" not in runs["stored"] and "neuron_pcas" in runs["stored"]


def test_an_unknown_mode_and_topk_with_imagenet_r_are_refused(tmp_path):
    prof = tiny_bert_profile(tmp_path)
    prof["storage"]["effects_mode"] = "sparse"
    with pytest.raises(ProfileError, match=r"storage.effects_mode: 'sparse' must be one of stored, topk"):
        validate_profile(prof)
    prof["storage"]["effects_mode"] = "topk"
    prof["dataset"]["val_r_path"] = str(tmp_path)
    with pytest.raises(ProfileError, match=r"storage.effects_mode: 'topk' does not provide the ImageNet-R ablations"):
        validate_profile(prof)


def test_the_official_export_reader_names_a_topk_file(both):
    from oe_assets.lens.effects_file import open_factorized

    path = both["topk"][2] / "second_order_effects" / "0.h5"
    with pytest.raises(ValueError, match="is a top-k effects file"):
        open_factorized(path)


def test_export_refuses_a_topk_profile_before_writing(both, tmp_path, capsys):
    import yaml

    from oe_assets import __main__ as cli

    path = tmp_path / "topk.yaml"
    path.write_text(yaml.safe_dump(both["topk"][3]))
    assert cli.main(["export", "--format", "official", "--layer", "0", "--profile", str(path), "--dataset", "demo",
                     "--pretrained", "tiny", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and "storage.effects_mode: topk" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("layer", LAYERS)
def test_the_val_sums_equal_those_of_the_stored_val_effects(both, layer):
    """``val_effect_sums`` holds what :func:`effect_sums` gives on the stored mode's val effects, about the
    stored mode's PCA and sparse reconstructions: every sum, and the significant pairs exactly."""
    s_store, t_store = both["stored"][2], both["topk"][2]
    with _h5(s_store, "val_second_order_effects", layer) as val, _h5(s_store, "neuron_pcas", layer) as pcas, \
            _h5(s_store, "sparse_codes", layer) as codes, H5Handle(s_store / "text_embeddings" / "all.h5") as text, \
            _h5(t_store, "val_effect_sums", layer) as got:
        rec = sparse_reconstructions(codes, reconstruction_dictionary(text, 100.0))
        want = effect_sums(open_effects(val), pcas.read("means"), pcas.read("norms")[:, 0], pcas.read("components"), rec)
        have = EffectSums.from_arrays(got.read)
        np.testing.assert_array_equal(have.significant, want.significant)
        for name in ("total", "significant_sum", "projected", "reconstructed"):
            a, b = getattr(have, name), getattr(want, name)
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * np.abs(b).max(), err_msg=name)  # of the scale
        np.testing.assert_array_equal(got.read("first_order_sum"), val.read("first_order_sum"))


def test_half_precision_effects_in_the_topk_mode_pass_the_blocking_checks(tmp_path):
    """A bfloat16 top-k file is checked against the slow path at bfloat16's tolerance (the file says
    its dtypes), so the graph's blocking checks pass, and its PCA is the stored bfloat16 one's."""
    prof = tiny_bert_profile(tmp_path)
    runs = {}
    for mode in ("stored", "topk"):
        prof["storage"] = {"base_dir": str(tmp_path / mode), "effects_mode": mode, "alpha_dtype": "bfloat16"}
        runs[mode] = materialize_graph(prof)[2]  # asserts that every check passed
    with _h5(runs["topk"], "second_order_effects", "0") as f:
        assert f.attrs["alpha_dtype"] == "bfloat16" and f.attrs["topk_dtype"] == "float32"
    with _h5(runs["stored"], "neuron_pcas", "0") as a, _h5(runs["topk"], "neuron_pcas", "0") as b:
        assert "layout" not in b.attrs and "topk_dtype" not in b.attrs  # the PCA is not an effects file
        np.testing.assert_allclose(b.read("norms"), a.read("norms"), rtol=1e-5)


def test_layers_grouped_to_fit_memory_give_the_same_files(both, tmp_path, monkeypatch):
    """With too little memory for two layers' running tops, each layer gets its own data passes: the
    files equal those of one pass over both layers."""
    monkeypatch.setattr(effects_module, "memory_budget", lambda: 1)
    prof = copy.deepcopy(both["topk"][3])
    prof["storage"]["base_dir"] = str(tmp_path / "grouped")
    store = materialize_graph(prof)[2]
    for layer in LAYERS:
        for asset, names in (("second_order_effects", ("norms", "means", "topk_indices", "topk_effects")),
                             ("val_effect_sums", ("total", "significant", "projected", "reconstructed"))):
            with _h5(store, asset, layer) as a, _h5(both["topk"][2], asset, layer) as b:
                for name in names:
                    np.testing.assert_array_equal(a.read(name), b.read(name), err_msg=f"{asset} {layer} {name}")


def test_import_refuses_a_topk_profile(both, tmp_path, capsys):
    import yaml

    from oe_assets import __main__ as cli

    path = tmp_path / "topk.yaml"
    path.write_text(yaml.safe_dump(both["topk"][3]))
    (tmp_path / "official").mkdir()
    assert cli.main(["import-official", str(tmp_path / "official"), "--layer", "0", "--profile", str(path)]) == 2
    assert "storage.effects_mode: topk" in capsys.readouterr().err


def test_files_recorded_before_the_mode_existed_are_not_rerun(both, tmp_path, monkeypatch):
    """A record without ``storage.effects_mode`` / ``storage.topk_samples`` (written before they were
    declared) stands for the stored mode: the plan keeps the file."""
    import shutil

    store = tmp_path / "store"
    shutil.copytree(both["stored"][2], store)  # the fixture's files stay as they are
    profile = copy.deepcopy(both["stored"][3])
    profile["storage"]["base_dir"] = str(store)
    path = store / "second_order_effects" / "0.h5"
    with h5py.File(path, "r+") as f:
        attrs = read_attrs(f, path)
        provenance = attrs["provenance"]
        record = provenance["records"]["second_order_effects[0]"]
        for setting in ("storage.effects_mode", "storage.topk_samples"):
            record.pop(setting)
        write_attrs(f, {"provenance": provenance})
    from oe_assets.definitions import build_definitions

    defs = build_definitions(profile)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        keys = [k for k in defs.resolve_asset_graph().toposorted_asset_keys
                if k.to_user_string() != "model" and defs.resolve_asset_graph().get(k).is_materializable]
        plan = resume.plan_materialization(defs, instance, keys, list(LAYERS))
    assert not plan.run, plan.lines()
