"""The Dagster asset graph, in-process with a temporary instance."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import REFERENCE, _need_reference
from oe_assets.assets.checks import (
    check_fast_equals_slow, check_neurons, check_norms, check_pca, check_sparsity, check_unit_columns,
)
from oe_assets.definitions import (
    MATERIALIZE_JOBS, build_definitions, inputs_job, job_asset_keys, layers_job, summary_job,
)
from oe_assets.lens import ALL_SCENARIOS, SCENARIOS, SecondOrderLens, top1_accuracy
from oe_assets.profiles import load_profile
from oe_assets.resources import model as model_module
from oe_assets.resources.io_managers import H5Group, H5Payload, HDF5IOManager, open_effects
from oe_assets.resources.store import ArtifactStore

warnings.filterwarnings("ignore", category=dg.PreviewWarning if hasattr(dg, "PreviewWarning") else Warning)

from helpers import layer_range, materialize, materialize_graph, rel, run_job, tiny_bert_profile  # noqa: E402

# ---------------------------------------------------------------- the reference CLIP graph
def test_reference_graph_files_equal_reference_arrays(reference_graph, reference):
    d, meta = reference
    _, _, base, _, _ = reference_graph
    g = lambda *p: H5Group(base.joinpath(*p))  # noqa: E731
    assert rel(g("train_representations", "all.h5").read("representations"), d["train_representations"]) <= 1e-5
    np.testing.assert_array_equal(g("classifier", "all.h5").read("classifier"), d["classifier"])
    np.testing.assert_array_equal(g("text_embeddings", "all.h5").read("embeddings"), d["text_embeddings"])
    np.testing.assert_array_equal(g("val_representations", "all.h5").read("labels"), d["val_labels"])
    official = dict(zip(meta["ablation_rows"], range(5)))
    official["without_significant"], official["without_insignificant"] = 3, 2  # see test_clip_reference
    reports = {}
    for layer in (0, 1, 2):
        effects = g("second_order_effects", f"{layer}.h5")
        assert effects.attrs["layer"] == layer and effects.attrs["convention"] == "reference"
        assert effects.attrs["model"].endswith("model") and effects.attrs["coefficient"] == 100.0
        assert "effects" not in effects.names and effects["alpha"].shape == (48, 4 * (3 - layer), 256)  # no dense file
        assert rel(open_effects(effects)[:], d[f"train_second_order_layer{layer}"]) <= 1e-5
        assert rel(open_effects(g("val_second_order_effects", f"{layer}.h5"))[:], d[f"val_second_order_layer{layer}"]) <= 1e-5
        pcas = g("neuron_pcas", f"{layer}.h5")
        assert rel(pcas.read("components"), d[f"pca_layer{layer}"]) <= 1e-5
        assert rel(pcas.read("norms"), d[f"pca_norms_layer{layer}"]) <= 1e-5
        assert rel(pcas.read("means"), d[f"neuron_means_layer{layer}"]) <= 1e-5
        codes = g("sparse_codes", f"{layer}.h5")
        dense = np.zeros((256, 200))
        idx, val = codes.read("indices"), codes.read("values")
        for n in range(256):
            dense[n, idx[n][idx[n] >= 0]] = val[n][idx[n] >= 0]
        assert rel(dense, d[f"sparse_codes_layer{layer}"]) <= 1e-4
        table = pq.read_table(base / "ablation_report" / f"{layer}.parquet").to_pylist()
        by = {r["scenario"]: r for r in table}
        for s in SCENARIOS:
            assert rel(np.array(by[s]["logits"]), d[f"ablation_logits_layer{layer}"][official[s]]) <= 1e-5
        labels = d["val_labels"]
        for s in ALL_SCENARIOS:  # each stored accuracy is the top-1 accuracy of the stored logits
            assert by[s]["accuracy"] == top1_accuracy(np.array(by[s]["logits"]), labels), (layer, s)
        # the reconstruction scenario is its own: PCs replaced by their sparse-code reconstructions
        assert rel(np.array(by["sparse_reconstruction"]["logits"]), np.array(by["projected_to_pc"]["logits"])) > 0
        reports[layer] = {s: by[s]["accuracy"] for s in ALL_SCENARIOS}
    summary = pq.read_table(base / "layer_summary" / "all.parquet").to_pylist()
    assert [r["layer"] for r in summary] == [0, 1, 2]
    assert [{s: r[s] for s in ALL_SCENARIOS} for r in summary] == [reports[layer] for layer in (0, 1, 2)]


def test_one_run_over_all_layers_loads_the_model_once(reference_graph):
    _, instance, _, result, loads = reference_graph
    assert result.success
    assert len(loads) == 1  # inputs run + three-layer run + summary run share the process cache
    mats = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == "second_order_effects"]
    assert sorted(e.partition for e in mats) == ["0", "1", "2"]
    checks = {(e.asset_check_key.name, e.passed) for e in result.get_asset_check_evaluations()}
    assert ("fast_path_equals_slow_path", True) in checks and ("pca_unit_and_sign", True) in checks
    assert all(passed for _, passed in checks)


def test_catalog_metadata(reference_graph):
    _, instance, base, result, _ = reference_graph
    md = {e.asset_key.to_user_string(): e.step_materialization_data.materialization.metadata
          for e in result.get_asset_materialization_events()}
    effects = md["second_order_effects"]
    for key in ("effects_shape", "alpha_dtype", "layout", "data_passes", "rows", "model", "coefficient", "run_time_s",
                "path", "size_bytes"):
        assert key in effects, key
    assert effects["effects_shape"].value == "[48, 256, 32]"
    assert "| scenario |" in md["ablation_report"]["preview"].value
    assert "| neuron |" in md["sparse_codes"]["preview"].value
    spec = instance.get_latest_materialization_event(dg.AssetKey("layer_summary"))
    assert "data:image/png;base64" in spec.asset_materialization.metadata["plot"].value
    findings = spec.asset_materialization.metadata["findings"].value
    assert "| layer | significant (sample, neuron) pairs % |" in findings and "total mean ablation acc %" in findings
    assert findings.count("\n| ") == 3  # one row per layer
    assert "| scenario |" in md["total_effects"]["preview"].value


def test_reference_graph_baselines(reference_graph, reference_model):
    """The reference CLIP's first-order and total effects, against the lenses run directly."""
    defs, _, base, _, _ = reference_graph
    prof = load_profile("clip_reference")
    loaded = model_module.ModelResource(**prof["model"]).load()
    check_baselines(base, loaded.adapter, prof, layers=(0, 1, 2))
    summary = pq.read_table(base / "layer_summary" / "all.parquet").to_pylist()
    # the significance is that of the ablation: the pairs without_significant removes
    for r in summary:
        assert 0 < r["significant_fraction"] < 1 and r["significant_neurons"] > 0


def test_partition_selection(tmp_path):
    _need_reference()
    defs = build_definitions("clip_reference", base_dir=str(tmp_path))
    instance = dg.DagsterInstance.ephemeral()
    run_job(defs, inputs_job, instance)
    materialize(defs, ["second_order_effects", "neuron_pcas"], instance, partition_key="1")
    assert sorted(p.name for p in (tmp_path / "second_order_effects").iterdir()) == ["1.h5"]
    assert sorted(p.name for p in (tmp_path / "neuron_pcas").iterdir()) == ["1.h5", "explained_variance.1.png",
                                                                           "significance.1.png"]
    assert instance.get_materialized_partitions(dg.AssetKey("second_order_effects")) == {"1"}


# ---------------------------------------------------------------- a tiny BERT graph
@pytest.fixture
def bert_profile(tmp_path):
    return tiny_bert_profile(tmp_path)


def test_tiny_bert_graph(bert_profile, tmp_path):
    defs = build_definitions(bert_profile)
    instance = dg.DagsterInstance.ephemeral()
    run_job(defs, inputs_job, instance)
    result = run_job(defs, layers_job, instance, tags=layer_range(0, 1))
    assert all(e.passed for e in result.get_asset_check_evaluations())
    run_job(defs, summary_job, instance)
    store = Path(bert_profile["storage"]["base_dir"])
    effects = H5Group(store / "second_order_effects" / "1.h5")
    assert open_effects(effects).shape == (6, 64, 32) and effects.attrs["convention"] == "direct"
    assert H5Group(store / "classifier" / "all.h5").read("classifier").shape == (32, 2)
    summary = pq.read_table(store / "layer_summary" / "all.parquet").to_pylist()
    assert [r["layer"] for r in summary] == [0, 1]
    # accuracies only by default: no per-sample logits stored
    report = pq.read_table(store / "ablation_report" / "1.parquet").to_pylist()
    assert all(r["logits"] is None for r in report) and all(r["accuracy"] is not None for r in report)
    # the stored effects are the lens's own
    cached = next(k for k in model_module._CACHE if k[0] == bert_profile["model"]["source"])
    lens = SecondOrderLens(model_module._CACHE[cached].adapter, 1)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bert_profile["model"]["source"])
    texts = [json.loads(line)["text"] for line in open(Path(bert_profile["dataset"]["train_path"]))]
    direct = lens(tok(texts[:4], padding=True, return_tensors="pt")).numpy()
    assert rel(open_effects(effects)[:4], direct) <= 1e-6  # float32 path weights
    check_baselines(store, model_module._CACHE[cached].adapter, bert_profile, layers=(0, 1))


def check_baselines(store: Path, adapter, profile, layers):
    """first_order_effects, total_effects and the summary's three mean ablations and findings, against
    the lenses run directly on the whole val split."""
    from oe_assets.lens import FirstOrderLens, replaced_mlp_representations, representations
    from oe_assets.resources.datasets import DatasetResource

    dataset = DatasetResource(**profile["dataset"])
    model = model_module.ModelResource(**profile["model"])
    loaded = model.load()
    val = dataset.split("val")
    reps = H5Group(store / "val_representations" / "all.h5").read("representations")
    W = H5Group(store / "classifier" / "all.h5").read("classifier")
    labels = H5Group(store / "val_representations" / "all.h5").read("labels")
    summary = {r["layer"]: r for r in pq.read_table(store / "layer_summary" / "all.parquet").to_pylist()}
    for layer in layers:
        fo = H5Group(store / "first_order_effects" / f"{layer}.h5")
        lens = FirstOrderLens(adapter, layer)
        batches = list(val.batches(loaded, model.batch_size, model.max_length))
        direct = np.concatenate([lens(b).sum(1).numpy() for b in batches])
        assert fo.read("val_sum").shape == (len(val), adapter.d_out)
        assert rel(fo.read("val_sum"), direct) <= 1e-9
        assert fo.read("train_mean_sum").shape == (adapter.d_out,) and fo.read("mlp_out_mean").shape == (adapter.d_model,)
        table = {r["scenario"]: r for r in pq.read_table(store / "total_effects" / f"{layer}.parquet").to_pylist()}
        X_fo = reps - fo.read("val_sum") + fo.read("train_mean_sum")
        assert table["first_order_mean_ablation"]["accuracy"] == top1_accuracy(X_fo @ W, labels)
        mean = torch.as_tensor(fo.read("mlp_out_mean"))
        X = np.concatenate([representations(replaced_mlp_representations(adapter, b, layer, mean), 100.0).numpy()
                            for b in batches])
        assert table["total_mean_ablation"]["accuracy"] == top1_accuracy(X @ W, labels)
        assert table["total_mean_ablation"]["mean_change"] > 0
        report = pq.read_table(store / "ablation_report" / f"{layer}.parquet").to_pylist()
        row = summary[layer]
        assert row["mean_ablate_all"] == next(r["accuracy"] for r in report if r["scenario"] == "mean_ablate_all")
        assert row["first_order_mean_ablation"] == table["first_order_mean_ablation"]["accuracy"]
        assert row["total_mean_ablation"] == table["total_mean_ablation"]["accuracy"]
        assert 0 <= row["significant_fraction"] <= 1 and 0 <= row["significant_neurons"] <= adapter.d_mlp
        assert row["significant_fraction"] == report[0]["significant_fraction"]
        explained = H5Group(store / "neuron_pcas" / f"{layer}.h5").read("explained")
        assert row["pc1_explained_median"] == float(np.median(explained)) and row["neurons"] == adapter.d_mlp


def test_materialize_jobs_cover_the_graph_once(bert_profile):
    """The three jobs of the CLI materialize every materializable asset exactly once, the layers job
    exactly the layer-partitioned ones, and each asset's checks with it."""
    defs = build_definitions(bert_profile)
    graph = defs.resolve_asset_graph()
    per_job = {j.name: job_asset_keys(defs, j.name) for j in MATERIALIZE_JOBS}
    everything = sorted(k.to_user_string() for k in graph.materializable_asset_keys)
    assert sorted(k for keys in per_job.values() for k in keys) == everything
    partitioned = {k.to_user_string() for k in graph.materializable_asset_keys if graph.get(k).partitions_def}
    assert set(per_job[layers_job.name]) == partitioned
    assert not partitioned & {*per_job[inputs_job.name], *per_job[summary_job.name]}
    for job in MATERIALIZE_JOBS:
        checks = {c.asset_key.to_user_string() for c in defs.resolve_job_def(job.name).asset_layer.asset_graph.asset_check_keys}
        assert checks <= set(per_job[job.name]), (job.name, checks)
    assert {c.asset_key.to_user_string() for c in graph.asset_check_keys} <= set(everything)


# ---------------------------------------------------------------- reruns when the vocabulary changes
def test_vocabulary_change_reruns_text_embeddings_then_sparse_codes(bert_profile, tmp_path):
    vocab = Path(bert_profile["analysis"]["vocabulary_path"])
    defs = build_definitions(bert_profile)
    instance = dg.DagsterInstance.ephemeral()
    run_job(defs, inputs_job, instance)
    run_job(defs, layers_job, instance, tags=layer_range(0, 1))
    run_job(defs, summary_job, instance)
    observe = defs.resolve_job_def("observe_vocabulary")
    assert "observe_vocabulary_schedule" in {s.name for s in defs.schedules}
    assert "vocabulary_automation" in {s.name for s in defs.sensors}

    observe.execute_in_process(instance=instance, resources=defs.resources)
    tick = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    observe.execute_in_process(instance=instance, resources=defs.resources)  # same content
    tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
    assert tick.total_requested == 0

    vocab.write_text(vocab.read_text() + "\nreferee")
    observe.execute_in_process(instance=instance, resources=defs.resources)
    tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
    assert {r.key.to_user_string() for r in tick.results if r.true_subset.size} == {"text_embeddings"}
    materialize(defs, ["text_embeddings"], instance)
    tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
    requested = {r.key.to_user_string(): r.true_subset for r in tick.results if r.true_subset.size}
    assert requested["sparse_codes"].size == 2  # both materialized layers, in one request
    assert "ablation_report" in requested
    assert tick.get_requested_partitions(dg.AssetKey("sparse_codes")) == {"0", "1"}


# ---------------------------------------------------------------- checks fed broken data
def test_checks_fail_on_broken_data():
    rng = np.random.default_rng(0)
    reps = rng.normal(size=(5, 4))
    assert not check_norms(reps, 100.0)[0]
    assert check_norms(100 * reps / np.linalg.norm(reps, axis=1, keepdims=True), 100.0)[0]
    W = rng.normal(size=(4, 3))
    assert not check_unit_columns(W)[0] and check_unit_columns(W / np.linalg.norm(W, axis=0))[0]
    effects = rng.normal(size=(30, 3, 4)) + np.array([3.0, 0, 0, 0])
    from oe_assets.lens import neuron_pca

    pca = neuron_pca(effects, 10)
    assert check_pca(pca.components, effects, pca.means, 10)[0]
    assert not check_pca(-pca.components, effects, pca.means, 10)[0]
    assert not check_pca(2 * pca.components, effects, pca.means, 10)[0]
    idx, val = np.array([[4, 0, -1], [2, -1, -1]]), np.array([[0.5, -0.2, 0.0], [1.0, 0.0, 0.0]])
    assert check_sparsity(idx, val, 3, n_descriptions=5)[0]
    assert not check_sparsity(idx, val, 1, n_descriptions=5)[0]  # two non-zeros, one allowed
    assert not check_sparsity(idx, val, 3, n_descriptions=4)[0]  # index 4 outside a 4-word vocabulary
    bad = idx.copy()
    bad[0, 1] = 4  # description 4 twice in neuron 0's code
    assert check_sparsity(bad, val, 3)[1]["duplicates"] == 1 and not check_sparsity(bad, val, 3)[0]
    bad = val.copy()
    bad[1, 2] = 0.3  # a value behind padding index -1
    assert check_sparsity(idx, bad, 3)[1]["padding_mismatch"] == 1 and not check_sparsity(idx, bad, 3)[0]
    bad = val.copy()
    bad[1, 0] = 0.0  # a stored index whose value is zero
    assert not check_sparsity(idx, bad, 3)[0]
    assert not check_sparsity(np.array([[-2, 0]]), np.array([[1.0, 1.0]]), 3)[0]  # below the -1 padding
    assert not check_sparsity(idx, val[:, :2], 3)[0]  # shapes differ


def test_blocking_check_fails_in_dagster_on_a_broken_classifier(tmp_path):
    _need_reference()
    d = np.load(REFERENCE / "expected.npz")
    np.savez(tmp_path / "broken.npz", classifier=2 * d["classifier"])
    prof = load_profile("clip_reference")
    prof["analysis"]["classifier_path"] = f"{tmp_path / 'broken.npz'}:classifier"
    defs = build_definitions(prof, base_dir=str(tmp_path / "store"))
    result = materialize(defs, ["classifier"], dg.DagsterInstance.ephemeral(), raise_on_error=False)
    evaluations = {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}
    assert evaluations == {"classifier_unit_columns": False}


def test_fast_equals_slow_check_catches_a_corrupted_file(reference_model, reference):
    d, _ = reference
    lens = SecondOrderLens(reference_model, 1)
    batch = torch.from_numpy(d["train_images"][:2])
    good = lens(batch).numpy()
    assert check_fast_equals_slow(lens, batch, good, 1e-8)[0]
    bad = good.copy()
    bad[0, 3, 1] += 0.01
    assert not check_fast_equals_slow(lens, batch, bad, 1e-8)[0]


def test_fast_equals_slow_check_catches_a_broken_fast_path(reference_model, reference, monkeypatch):
    # the check as the asset runs it: its spread neurons, dense values of those neurons only
    d, _ = reference
    lens = SecondOrderLens(reference_model, 1, dense_cache_bytes=0)
    batch = torch.from_numpy(d["train_images"][:2])
    stored = lens(batch).numpy()
    neurons = check_neurons(lens.n_neurons)
    capture = lens.adapter.capture_layers(batch, [1])[1]  # one forward pass, shared as the asset does
    assert check_fast_equals_slow(lens, batch, stored, 1e-8, neurons=neurons, capture=capture)[0]
    fast = lens.factorized_from_capture

    def without_last_head(cap, dtype=None):  # a fast path that forgets the last later head's path
        fe = fast(cap, dtype)
        fe.alpha = fe.alpha.clone()
        fe.alpha[:, -1, :] = 0
        return fe

    monkeypatch.setattr(lens, "factorized_from_capture", without_last_head)
    ok, errors = check_fast_equals_slow(lens, batch, stored, 1e-8, neurons=neurons, capture=capture)
    assert not ok and errors["fast_vs_slow"] > 1e-3 and errors["file_vs_slow"] <= 1e-8
    assert not check_fast_equals_slow(lens, batch, stored, 1e-8, neurons=neurons)[0]  # its own capture too


# ---------------------------------------------------------------- atomic writes
def test_io_manager_writes_atomically_and_records_attributes(tmp_path):
    io = HDF5IOManager(store=ArtifactStore(base_dir=str(tmp_path)))
    ctx = dg.build_output_context(asset_key=dg.AssetKey("thing"))
    io.handle_output(ctx, H5Payload({"x": np.arange(6.0).reshape(2, 3), "names": ["a", "b"]},
                                    {"model": "m", "layer": 3, "shape": [2, 3]}))
    group = H5Group(tmp_path / "thing" / "all.h5")
    assert group.read("names") == ["a", "b"] and group.attrs["layer"] == 3 and group.attrs["shape"] == [2, 3]
    assert not list((tmp_path / "thing").glob("*.partial-*"))
    with pytest.raises(TypeError, match="cannot store"):
        io.handle_output(ctx, {"not": "a payload"})


def test_failed_materialization_leaves_no_file(tmp_path, monkeypatch):
    _need_reference()
    defs = build_definitions("clip_reference", base_dir=str(tmp_path))
    instance = dg.DagsterInstance.ephemeral()
    run_job(defs, inputs_job, instance)
    calls = {"n": 0}
    original = SecondOrderLens.factorized_from_capture

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed mid-stream")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SecondOrderLens, "factorized_from_capture", failing)
    result = materialize(defs, ["second_order_effects"], instance, partition_key="0", raise_on_error=False)
    assert not result.success
    folder = tmp_path / "second_order_effects"
    assert not (folder / "0.h5").exists()
    assert not list(folder.glob("*")) if folder.exists() else True


KILLED_WRITER = textwrap.dedent("""
    import sys, time, numpy as np, dagster as dg
    from oe_assets.resources.io_managers import HDF5IOManager, StagedH5
    from oe_assets.resources.store import ArtifactStore
    import h5py
    store = ArtifactStore(base_dir=sys.argv[1])
    io = HDF5IOManager(store=store)
    path = store.stage(dg.AssetKey("second_order_effects"), "0")
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("effects", shape=(100, 8, 4), dtype="f4")
        for i in range(100):
            ds[i] = i
            f.flush()
            if i == 3:
                print("writing", flush=True)
            time.sleep(0.05)
    io.handle_output(dg.build_output_context(asset_key=dg.AssetKey("second_order_effects"), partition_key="0"),
                     StagedH5(path))
""")


def test_killed_run_leaves_nothing_that_loads_as_complete(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    folder = tmp_path / "second_order_effects"
    assert not (folder / "0.h5").exists()
    assert [p.name for p in folder.iterdir()][0].startswith("0.h5.partial-")
    io = HDF5IOManager(store=ArtifactStore(base_dir=str(tmp_path)))
    ctx = dg.build_input_context(asset_key=dg.AssetKey("second_order_effects"))
    with pytest.raises(FileNotFoundError, match="no materialized file"):
        io.load_input(ctx)


def test_neuron_report_and_catalog_plots(reference_graph):
    _, instance, base, result, _ = reference_graph
    page = (base / "neuron_report" / "1.html").read_text()
    assert page.count("<section class='neuron'") == 10 and "<script" not in page
    assert page.count("data:image/png;base64,") >= 10  # image thumbnails of the top inputs
    pcas = H5Group(base / "neuron_pcas" / "1.h5")
    thresholds = pcas.read("norms")[:, 0]
    top = int(np.argmax(thresholds))
    assert page.index(f"id='neuron-{top}'") < page.index("<section class='neuron'", page.index(f"id='neuron-{top}'") + 1)
    md = {e.asset_key.to_user_string(): e.step_materialization_data.materialization.metadata
          for e in result.get_asset_materialization_events()}
    assert md["neuron_report"]["report"].value.endswith(".html")
    for key in ("significance", "explained_variance"):
        assert "data:image/png;base64," in md["neuron_pcas"][key].value
    explained = pcas.read("explained")
    assert ((explained > 0) & (explained <= 1)).all()


def test_metadata_is_per_layer(reference_graph):
    _, instance, base, result, _ = reference_graph
    events = {(e.asset_key.to_user_string(), e.partition): e.step_materialization_data.materialization.metadata
              for e in result.get_asset_materialization_events()}
    for layer in ("0", "1", "2"):
        assert events[("neuron_report", layer)]["report"].value.endswith(f"neuron_report/{layer}.html")
        assert events[("ablation_report", layer)]["layer"].value == int(layer)
        expected = pq.read_table(base / "ablation_report" / f"{layer}.parquet").to_pylist()
        preview = events[("ablation_report", layer)]["preview"].value
        assert f"{expected[4]['accuracy']:.4g}" in preview
    assert events[("sparse_codes", "0")]["preview"].value != events[("sparse_codes", "2")]["preview"].value


def test_missing_upstream_layer_is_named(tmp_path):
    from oe_assets.assets.analysis import same_vocabulary
    from oe_assets.resources.datasets import DatasetResource

    io = HDF5IOManager(store=ArtifactStore(base_dir=str(tmp_path)))
    layers = dg.StaticPartitionsDefinition(["0", "1"])
    ctx = dg.build_input_context(asset_key=dg.AssetKey("second_order_effects"), partition_key="1",
                                 asset_partitions_def=layers)
    with pytest.raises(FileNotFoundError, match="second_order_effects partition 1"):
        io.load_input(ctx)
    io.handle_output(dg.build_output_context(asset_key=dg.AssetKey("a"), partition_key="0"), H5Payload(
        {"x": np.zeros(2)}, {"vocabulary_version": "v1"}))
    io.handle_output(dg.build_output_context(asset_key=dg.AssetKey("b")), H5Payload(
        {"x": np.zeros(2)}, {"vocabulary_version": "v2"}))
    with pytest.raises(ValueError, match="computed on vocabulary v1 but text_embeddings is now v2"):
        same_vocabulary(H5Group(tmp_path / "b" / "all.h5"), H5Group(tmp_path / "a" / "0.h5"), "0")
    np.savez(tmp_path / "x.npz", train_images=np.zeros((3, 3, 4, 4)))
    empty = DatasetResource(kind="npz", train_path=str(tmp_path / "x.npz"), val_path=str(tmp_path / "x.npz"),
                            offset=5, n_classes=2)
    with pytest.raises(ValueError, match="train split of .*x.npz is empty after subsampling"):
        empty.split("train")


def test_sparsity_check_sees_the_coder_output():
    idx = np.array([[0, 1, 2], [2, 0, 1]])
    assert check_sparsity(idx, np.ones((2, 3)), 3, coder_nonzeros=3)[0]
    assert not check_sparsity(idx, np.ones((2, 3)), 3, coder_nonzeros=5)[0]


def test_tiny_llama_graph(tmp_path):
    """The whole graph on a tiny random Llama (grouped-query attention, RMSNorm, rotary positions)
    saved to a folder, with a byte-level BPE tokenizer trained here."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from conftest import CORPUS, tiny_bpe_tokenizer

    tok = tiny_bpe_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False))
    with torch.no_grad():  # non-trivial RMSNorm weights
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.2)
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    rows = [(text + " Topic:", i % 2) for i, text in enumerate(CORPUS)]
    for split in ("train", "val"):
        with open(tmp_path / f"{split}.jsonl", "w") as f:
            for t, y in rows:
                f.write(json.dumps({"text": t, "label": y}) + "\n")
    (tmp_path / "classes.json").write_text(json.dumps(["sports", "music"]))
    (tmp_path / "vocab.txt").write_text("\n".join(["cat", "dog", "team", "rain", "bread", "court", "star", "music"]))
    profile = {
        "model": {"source": str(tmp_path / "model"), "dtype": "float64", "device": "cpu", "batch_size": 4},
        "dataset": {"kind": "text", "train_path": str(tmp_path / "train.jsonl"),
                    "val_path": str(tmp_path / "val.jsonl"), "classes_path": str(tmp_path / "classes.json")},
        "analysis": {"top_k": 3, "components": 2, "vocabulary_path": str(tmp_path / "vocab.txt")},
        "storage": {"base_dir": str(tmp_path / "store")},
    }
    defs = build_definitions(profile)
    assert defs.resolve_assets_def("second_order_effects").partitions_def.get_partition_keys() == ["0", "1"]
    defs, instance, store = materialize_graph(profile)
    effects = open_effects(H5Group(store / "second_order_effects" / "0.h5"))
    assert effects.shape == (len(rows), 48, 32) and effects.n_paths == 2 * 4
    summary = pq.read_table(store / "layer_summary" / "all.parquet").to_pylist()
    assert [r["layer"] for r in summary] == [0, 1]
