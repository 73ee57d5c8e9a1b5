"""Provenance, checked: every asset file records what it was made from, and a consumer refuses inputs
made from different data or settings (the silent partial reruns of issue 13), naming both assets and
the field.  And the CLI observes the source assets, so the daemon's first observation of unchanged
files requests nothing.

The graph is the tiny BERT one of ``test_assets`` (6 train / 6 val sentences), materialized once for
layer 0; each test works on that folder restored from a snapshot."""

import re
import shutil
import warnings
from pathlib import Path

import dagster as dg
import h5py
import pytest
import yaml

from oe_assets import __main__ as cli
from oe_assets.dagster_private import CachingStaleStatusResolver, LoadingContextForTest, StaleStatus
from oe_assets.lens.effects_file import ATTRS_CHECKSUM
from oe_assets.definitions import OBSERVE_DATASETS, build_definitions, inputs_job
from oe_assets.provenance import PROVENANCE_ATTR, ProvenanceError, check, split_fingerprint, weights_hash
from oe_assets.resources.datasets import TextSplit
from oe_assets.resources.store import H5Group
from helpers import materialize, refused, run_job, tiny_bert_folder, tiny_bert_profile

warnings.filterwarnings("ignore")

LAYER0 = ["second_order_effects", "val_second_order_effects", "neuron_pcas", "sparse_codes", "ablation_report",
          "neuron_report"]


def profile(root: Path, **analysis) -> dict:
    """The tiny BERT profile over the files in ``root`` (:func:`tiny_bert_folder`), with ``analysis``
    settings changed."""
    return {
        "model": {"source": str(root / "model"), "dtype": "float64", "device": "cpu", "batch_size": 4},
        "dataset": {"kind": "text", "train_path": str(root / "train.jsonl"), "val_path": str(root / "val.jsonl"),
                    "classes_path": str(root / "classes.json")},
        "analysis": {"top_k": 3, "components": 2, "templates_path": str(root / "templates.json"),
                     "vocabulary_path": str(root / "vocab.txt"), **analysis},
        "storage": {"base_dir": str(root / "store")},
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny BERT files with every layer-0 asset materialized (consistent), and a snapshot of them."""
    base = tmp_path_factory.mktemp("provenance")
    root = tiny_bert_folder(base / "graph")
    defs = build_definitions(profile(root))
    instance = dg.DagsterInstance.ephemeral()
    run_job(defs, inputs_job, instance)
    materialize(defs, LAYER0, instance, partition_key="0")
    shutil.copytree(root, base / "snapshot")
    return root, base / "snapshot"


@pytest.fixture
def work(built):
    """The built folder, restored from its snapshot (same paths: the same recorded model id)."""
    root, snapshot = built
    shutil.rmtree(root)
    shutil.copytree(snapshot, root)
    return root


def stale_status(instance, defs, key: str) -> StaleStatus:
    """The status the UI shows for an asset (fresh or stale, from the recorded data versions)."""
    resolver = CachingStaleStatusResolver(instance, defs.resolve_asset_graph(), LoadingContextForTest(instance))
    return resolver.get_status(dg.AssetKey(key))


def reorder(path: Path, order) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[i] for i in order) + "\n")


# ---------------------------------------------------------------- the silent cases of the issue
def test_shuffled_val_then_only_val_representations_and_ablation_report_is_refused(work):
    defs = build_definitions(profile(work))
    reorder(work / "val.jsonl", [5, 4, 3, 2, 1, 0])  # same samples, another order
    materialize(defs, ["val_representations"], dg.DagsterInstance.ephemeral())
    msg = refused(defs, ["ablation_report"], "0")
    assert msg.startswith("ablation_report layer 0:")
    assert "val.order" in msg and "val.content" not in msg and "val.samples" not in msg
    assert "val_representations has" in msg and "val_second_order_effects layer 0 has" in msg
    assert "Re-materialize val_second_order_effects layer 0" in msg  # the older of the two
    # doing what the message says makes them agree again
    materialize(defs, ["val_second_order_effects", "ablation_report"], dg.DagsterInstance.ephemeral(),
                partition_key="0")


def test_coefficient_change_then_only_val_representations_and_ablation_report_is_refused(work):
    defs = build_definitions(profile(work, coefficient=50.0))
    materialize(defs, ["val_representations"], dg.DagsterInstance.ephemeral())
    msg = refused(defs, ["ablation_report"], "0")
    line = next(line for line in msg.splitlines() if line.startswith("- analysis.coefficient: "))
    assert line.startswith("- analysis.coefficient: val_representations has 50.0; ") and line.endswith(" have 100.0")
    assert "val_second_order_effects layer 0" in line and "second_order_effects layer 0 (as neuron_pcas" in line
    # every input made with the other coefficient is to be re-materialized, not only the first one
    advice = msg.splitlines()[-1]
    assert "val_second_order_effects layer 0" in advice and re.search(r"(?<!val_)second_order_effects layer 0", advice)


def test_shuffled_train_then_only_neuron_report_is_refused(work):
    defs = build_definitions(profile(work))
    reorder(work / "train.jsonl", [3, 4, 5, 0, 1, 2])
    msg = refused(defs, ["neuron_report"], "0")
    assert msg.startswith("neuron_report layer 0:")
    assert "- train.order: " in msg and "train.content" not in msg
    assert "second_order_effects layer 0" in msg and "neuron_report layer 0 (the profile and data it reads now)" in msg
    assert "Re-materialize second_order_effects layer 0" in msg


def test_halved_train_is_a_provenance_error_not_an_index_error(work):
    defs = build_definitions(profile(work))
    reorder(work / "train.jsonl", [0, 1, 2])
    msg = refused(defs, ["neuron_report"], "0")
    assert "- train.samples: " in msg and "has 6" in msg and "has 3" in msg
    assert "second_order_effects layer 0" in msg and "neuron_report" in msg


def test_a_consistent_rerun_is_accepted(work):
    """Re-materializing an input from the same data and settings gives the same data version."""
    defs = build_definitions(profile(work))
    before = H5Group(work / "store" / "val_representations" / "all.h5").attrs[PROVENANCE_ATTR]
    materialize(defs, ["val_representations"], dg.DagsterInstance.ephemeral())
    after = H5Group(work / "store" / "val_representations" / "all.h5").attrs[PROVENANCE_ATTR]
    record = lambda lineage: lineage["records"]["val_representations"]  # noqa: E731
    assert record(after)["data_version"] == record(before)["data_version"]
    assert record(after)["made_at"] > record(before)["made_at"]
    materialize(defs, ["ablation_report", "neuron_report"], dg.DagsterInstance.ephemeral(), partition_key="0")


def test_files_without_provenance_are_checked_on_their_plain_attributes(work):
    """Files written before provenance was recorded are accepted; their plain attributes (coefficient,
    model, convention, ...) are still compared."""
    defs = build_definitions(profile(work))
    path = work / "store" / "val_representations" / "all.h5"
    with h5py.File(path, "a") as f:  # as written before provenance and the attributes' checksum
        del f.attrs[PROVENANCE_ATTR]
        del f.attrs[ATTRS_CHECKSUM]
    materialize(defs, ["ablation_report"], dg.DagsterInstance.ephemeral(), partition_key="0")
    with h5py.File(path, "a") as f:
        f.attrs["coefficient"] = 50.0
    msg = refused(defs, ["ablation_report"], "0")
    assert "- analysis.coefficient: " in msg and "; val_representations has 50.0" in msg


# ---------------------------------------------------------------- what is recorded
def test_every_file_records_its_lineage(work):
    store = work / "store"
    pcas = H5Group(store / "neuron_pcas" / "0.h5").attrs[PROVENANCE_ATTR]
    assert pcas["entry"] == "neuron_pcas[0]"
    effects = pcas["records"]["second_order_effects[0]"]
    for field in ("model.source", "model.weights", "analysis.coefficient", "convention", "train.samples",
                  "train.content", "train.order", "code_version", "data_version"):
        assert effects.get(field) is not None, field
    assert pcas["records"]["neuron_pcas[0]"]["analysis.top_k"] == 3
    codes = H5Group(store / "sparse_codes" / "0.h5").attrs[PROVENANCE_ATTR]["records"]
    assert codes["sparse_codes[0]"]["analysis.components"] == 2 and codes["text_embeddings"]["vocabulary"]
    import pyarrow.parquet as pq

    from oe_assets.resources.store import table_attrs

    report = table_attrs(pq.read_table(store / "ablation_report" / "0.parquet", columns=["scenario"]))
    assert {"val_representations", "val_second_order_effects[0]", "classifier", "sparse_codes[0]",
            "ablation_report[0]"} <= set(report[PROVENANCE_ATTR]["records"])
    assert weights_hash(str(work / "model")) == effects["model.weights"]


def test_materialization_metadata_carries_the_provenance(tmp_path):
    defs = build_definitions(tiny_bert_profile(tmp_path))
    instance = dg.DagsterInstance.ephemeral()
    materialize(defs, ["val_representations"], instance)
    md = instance.get_latest_materialization_event(dg.AssetKey("val_representations")).asset_materialization.metadata
    record = md["provenance"].value
    assert record["analysis.coefficient"] == 100.0 and record["val.samples"] == 6 and record["model.weights"]


def test_fingerprint_and_weights_hash():
    split = TextSplit(["a", "b", "c"], [0, 1, 0])
    fp = split_fingerprint(split)
    shuffled = split_fingerprint(TextSplit(["c", "a", "b"], [0, 0, 1]))
    relabelled = split_fingerprint(TextSplit(["a", "b", "c"], [0, 1, 1]))
    assert shuffled["content"] == fp["content"] and shuffled["order"] != fp["order"]
    assert relabelled["content"] != fp["content"] and fp["samples"] == 3


def test_weights_hash_follows_the_weight_bytes(tmp_path):
    folder = tiny_bert_folder(tmp_path) / "model"
    first = weights_hash(str(folder))
    assert weights_hash(str(folder)) == first
    weights = next(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert weights_hash(str(folder)) != first


def test_check_names_both_assets_the_field_and_the_values():
    a = {PROVENANCE_ATTR: {"entry": "x", "records": {"x": {"analysis.coefficient": 50.0, "made_at": 2.0,
                                                           "data_version": "1"}}}}
    b = {PROVENANCE_ATTR: {"entry": "y[0]", "records": {"y[0]": {"analysis.coefficient": 100.0, "made_at": 1.0,
                                                                 "data_version": "2"}}}}
    with pytest.raises(ProvenanceError) as e:
        check("z[0]", {"x": a, "y[0]": b}, {})
    msg = str(e.value)
    assert "- analysis.coefficient: x has 50.0; y layer 0 has 100.0" in msg and "Re-materialize y layer 0 (" in msg
    lineage = check("z[0]", {"x": a}, {"top_k": 3}, "2")
    assert set(lineage["records"]) == {"x", "z[0]"} and lineage["records"]["z[0]"]["top_k"] == 3


# ---------------------------------------------------------------- dataset files as observed sources
def test_a_changed_dataset_file_marks_its_assets_stale(tmp_path):
    prof = tiny_bert_profile(tmp_path)
    defs = build_definitions(prof)
    instance = dg.DagsterInstance.ephemeral()
    observe = defs.resolve_job_def(OBSERVE_DATASETS)
    observe.execute_in_process(instance=instance)
    materialize(defs, ["val_representations"], instance)
    graph = defs.resolve_asset_graph()
    status = lambda: stale_status(instance, defs, "val_representations")  # noqa: E731
    assert status() == StaleStatus.FRESH
    observe.execute_in_process(instance=instance)  # unchanged: still fresh
    assert status() == StaleStatus.FRESH
    reorder(Path(prof["dataset"]["val_path"]), [1, 0, 2, 3, 4, 5])
    observe.execute_in_process(instance=instance)
    assert status() == StaleStatus.STALE
    assert "val_data" in {k.to_user_string() for k in graph.get(dg.AssetKey("val_second_order_effects")).parent_keys}


# ---------------------------------------------------------------- item 6: no rerun after a CLI materialization
def test_first_observation_after_a_cli_materialization_requests_nothing(tmp_path, monkeypatch, capsys):
    prof = tiny_bert_profile(tmp_path)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(prof))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    assert cli.main(["materialize", "--profile", str(path), "--layers", "0", "0"]) == 0, capsys.readouterr().err
    defs = build_definitions(prof)
    with dg.DagsterInstance.get() as instance:
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance)  # the sensor's first tick
        assert tick.total_requested == 0
        for job in ("observe_vocabulary", OBSERVE_DATASETS):  # the schedules' first observations
            defs.resolve_job_def(job).execute_in_process(instance=instance)
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
        assert tick.total_requested == 0, {r.key.to_user_string() for r in tick.results if r.true_subset.size}
        # a changed dataset file marks its assets stale, and runs nothing by itself (they run the model)
        reorder(Path(prof["dataset"]["train_path"]), [5, 4, 3, 2, 1, 0])
        defs.resolve_job_def(OBSERVE_DATASETS).execute_in_process(instance=instance)
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
        assert tick.total_requested == 0
        assert stale_status(instance, defs, "train_representations") == StaleStatus.STALE
        assert stale_status(instance, defs, "val_representations") == StaleStatus.FRESH
        vocab = Path(prof["analysis"]["vocabulary_path"])
        vocab.write_text(vocab.read_text() + "\nreferee")
        defs.resolve_job_def("observe_vocabulary").execute_in_process(instance=instance)
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
        assert {r.key.to_user_string() for r in tick.results if r.true_subset.size} == {"text_embeddings"}
    # the CLI's next run reruns what was made from the changed train file (and the vocabulary), nothing else
    assert cli.main(["materialize", "--profile", str(path), "--layers", "0", "0"]) == 0
    lines = {line.split(":")[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "to run (train_data changed (" in lines["train_representations"]
    assert "to run (train_data changed (" in lines["second_order_effects"]
    assert "to run (vocabulary changed" in lines["text_embeddings"]
    assert "skipped" in lines["val_representations"] and "to run" not in lines["val_second_order_effects"]



# ---------------------------------------------------------------- every recorded field
def _with_field(attrs: dict, name: str, field: str, value) -> dict:
    """A copy of a file's attributes whose own record holds ``value`` for ``field``."""
    import copy

    attrs = copy.deepcopy(attrs)
    attrs[PROVENANCE_ATTR]["records"][name][field] = value
    return attrs


@pytest.mark.parametrize("field, asset", [
    ("model.source", "val_representations"), ("model.weights", "val_representations"),
    ("convention", "val_second_order_effects[0]"), ("analysis.coefficient", "val_representations"),
    ("vocabulary", "text_embeddings"), ("analysis.top_k", "neuron_pcas[0]"),
    ("analysis.components", "sparse_codes[0]"), ("val.order", "val_representations"),
    ("val.content", "val_representations"), ("val.samples", "val_representations"),
    ("code_version", "neuron_pcas[0]"),
])
def test_a_mismatch_in_each_recorded_field_is_refused(work, field, asset):
    """``ablation_report`` layer 0's real inputs, one of them holding another value of ``field`` in its
    own record: refused, naming the field and the stale files (that input when the profile or the
    code says which value is current, else the files holding the older value)."""
    from oe_assets.assets.common import CODE_VERSION
    from oe_assets.resume import profile_resources
    from oe_assets.settings import current_values

    defs = build_definitions(profile(work))
    store = work / "store"
    files = {"val_representations": "val_representations/all.h5", "val_second_order_effects[0]":
             "val_second_order_effects/0.h5", "classifier": "classifier/all.h5", "neuron_pcas[0]": "neuron_pcas/0.h5",
             "sparse_codes[0]": "sparse_codes/0.h5", "text_embeddings": "text_embeddings/all.h5"}
    inputs = {name: dict(H5Group(store / path).attrs) for name, path in files.items()}
    current = current_values(profile_resources(defs))
    code_versions = dict.fromkeys(["val_representations", "val_second_order_effects", "classifier", "neuron_pcas",
                                   "sparse_codes", "text_embeddings", "second_order_effects"], CODE_VERSION)
    check("ablation_report[0]", inputs, {}, CODE_VERSION, current, code_versions)  # as they are: accepted
    value = inputs[asset][PROVENANCE_ATTR]["records"][asset].get(field)
    other = f"another {value}" if isinstance(value, str) else (value or 0) + 1
    inputs[asset] = _with_field(inputs[asset], asset, field, other)
    with pytest.raises(ProvenanceError) as e:
        check("ablation_report[0]", inputs, {}, CODE_VERSION, current, code_versions)
    msg = str(e.value)
    assert f"- {field}: " in msg, msg
    stale = msg.splitlines()[-1]
    assert stale.startswith("Re-materialize ") and " (the stale" in stale, stale
    if field in current or field == "code_version":
        assert asset.replace("[0]", " layer 0") in stale.split(" (the stale")[0], stale
