"""Nothing stale: every input that changes a number is in provenance and resume, and resume reads
the files, not the instance.

Each test starts from the tiny BERT graph (layers 0 and 1) materialized by the CLI (restored from a
snapshot: same paths, same instance), changes one thing the way a user would, and checks that a
partial rerun is refused naming what changed and the stale files, and that ``python -m oe_assets
materialize`` reruns exactly what is affected, then has nothing left to do."""

import json
import shutil
import warnings
from pathlib import Path

import dagster as dg
import h5py
import pytest
import yaml

from oe_assets import __main__ as cli
from oe_assets.definitions import build_definitions
from oe_assets.provenance import PROVENANCE_ATTR
from oe_assets.resources import model as model_module
from oe_assets.resources.store import H5Group
from helpers import materialize, refused, tiny_bert_profile

warnings.filterwarnings("ignore")

ALL = ["text_embeddings", "classifier", "train_representations", "val_representations", "second_order_effects",
       "val_second_order_effects", "first_order_effects", "neuron_pcas", "sparse_codes", "total_effects",
       "ablation_report", "neuron_report", "layer_summary"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("stale")
    root = base / "graph"
    root.mkdir()
    prof = tiny_bert_profile(root)
    (root / "profile.yaml").write_text(yaml.safe_dump(prof))
    mp = pytest.MonkeyPatch()
    mp.setenv("DAGSTER_HOME", str(root / "dagster_home"))
    try:
        model_module._CACHE.clear()
        assert cli.main(["materialize", "--profile", str(root / "profile.yaml")]) == 0
    finally:
        mp.undo()
    shutil.copytree(root, base / "snapshot")
    return root, base / "snapshot", prof


@pytest.fixture
def work(built, monkeypatch):
    root, snapshot, prof = built
    shutil.rmtree(root)
    shutil.copytree(snapshot, root)
    monkeypatch.setenv("DAGSTER_HOME", str(root / "dagster_home"))
    model_module._CACHE.clear()
    return root, prof


def write_profile(root: Path, prof: dict, **changes) -> dict:
    """The profile with ``{"section.key": value}`` changes, written to profile.yaml."""
    prof = json.loads(json.dumps(prof))
    for key, value in changes.items():
        section, name = key.split(".")
        prof[section][name] = value
    (root / "profile.yaml").write_text(yaml.safe_dump(prof))
    return prof


def run_cli(root: Path, capsys) -> tuple[int, dict[str, str], str]:
    rc = cli.main(["materialize", "--profile", str(root / "profile.yaml")])
    out = capsys.readouterr()
    lines = {line.split(":")[0]: line for line in out.out.splitlines() if line.split(":")[0] in ALL}
    return rc, lines, out.out + out.err


def reran(lines: dict[str, str]) -> set[str]:
    return {name for name, line in lines.items() if "to run" in line}


def advice(msg: str) -> str:
    return msg.splitlines()[-1]


def up_to_date_after(root: Path, capsys) -> None:
    rc, lines, out = run_cli(root, capsys)
    assert rc == 0 and "nothing run" in out, out


MODEL_READERS = {"text_embeddings", "classifier", "train_representations", "val_representations",
                 "second_order_effects", "val_second_order_effects", "first_order_effects", "total_effects"}


# ---------------------------------------------------------------- model settings
@pytest.mark.parametrize("setting, value", [("model.pooling", "cls"), ("model.max_length", 6)])
def test_a_model_setting_then_only_val_representations_is_refused_and_materialize_repairs_everything(
        work, capsys, setting, value):
    root, prof = work
    changed = write_profile(root, prof, **{setting: value})
    defs = build_definitions(changed)
    materialize(defs, ["val_representations"], dg.DagsterInstance.ephemeral())
    msg = refused(defs, ["ablation_report"], "0")
    assert f"- {setting}: " in msg and "val_representations has" in msg
    stale = advice(msg)
    assert "val_second_order_effects layer 0" in stale and "classifier" in stale
    assert "val_representations," not in stale  # remade with the new value: not stale
    rc, lines, out = run_cli(root, capsys)
    assert rc == 0, out
    assert "skipped" in lines["val_representations"] and "to run" not in lines["val_representations"]
    assert reran(lines) == set(ALL) - {"val_representations"}
    assert f"{setting} " in lines["val_second_order_effects"]
    up_to_date_after(root, capsys)


# ---------------------------------------------------------------- files changed in place
def test_templates_content_changed_in_place_reruns_the_classifier_and_its_downstream(work, capsys):
    root, _ = work
    (root / "templates.json").write_text(json.dumps(["a text about {}", "{}"]))
    rc, lines, out = run_cli(root, capsys)
    assert rc == 0, out
    assert "analysis.templates" in lines["classifier"]
    assert reran(lines) == {"classifier", "ablation_report", "total_effects", "layer_summary"}
    up_to_date_after(root, capsys)


def test_class_names_changed_in_place_rerun_what_reads_them(work, capsys):
    root, _ = work
    (root / "classes.json").write_text(json.dumps(["sport", "music"]))
    rc, lines, out = run_cli(root, capsys)
    assert rc == 0, out
    assert "dataset.classes" in lines["classifier"] and "dataset.classes" in lines["neuron_report"]
    assert {"classifier", "val_representations", "neuron_report", "ablation_report", "layer_summary"} <= reran(lines)
    assert "to run" not in lines["text_embeddings"]
    up_to_date_after(root, capsys)


def test_weights_changed_in_place_rerun_every_asset_that_runs_the_model(work, capsys):
    root, _ = work
    weights = root / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 1  # a mantissa bit of the last weight
    weights.write_bytes(bytes(data))
    rc, lines, out = run_cli(root, capsys)
    assert rc == 0, out
    assert all("model.weights" in lines[name] for name in MODEL_READERS)
    assert reran(lines) == set(ALL)
    up_to_date_after(root, capsys)


# ---------------------------------------------------------------- resume reads the files
def test_a_truncated_file_is_rerun_saying_why(work, capsys):
    root, _ = work
    path = root / "store" / "neuron_pcas" / "0.h5"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    rc, lines, out = run_cli(root, capsys)
    assert rc == 0, out
    assert "layer 0 to run (its file does not read" in lines["neuron_pcas"] and "layer 1 up to date" in lines["neuron_pcas"]
    assert "layer 0 to run (upstream neuron_pcas runs)" in lines["sparse_codes"]
    up_to_date_after(root, capsys)


def test_a_flipped_data_byte_is_rerun_saying_why(work, capsys):
    root, _ = work
    path = root / "store" / "val_second_order_effects" / "1.h5"
    with h5py.File(path, "r") as f:
        name = max((n for n in f if isinstance(f[n], h5py.Dataset) and f[n].chunks), key=lambda n: f[n].nbytes)
        offset = f[name].id.get_chunk_info(0).byte_offset
    data = bytearray(path.read_bytes())
    data[offset + 5] ^= 0xFF
    path.write_bytes(bytes(data))
    rc, lines, out = run_cli(root, capsys)
    assert rc == 0, out
    assert "layer 1 to run (its file does not read" in lines["val_second_order_effects"]
    assert "checksum" in lines["val_second_order_effects"].lower() or "corrupt" in lines["val_second_order_effects"]
    assert "layer 0 up to date" in lines["val_second_order_effects"]
    up_to_date_after(root, capsys)


def test_files_rewritten_by_another_instance_are_accepted_when_they_match_and_rerun_when_not(work, capsys):
    """``dagster asset materialize`` without this DAGSTER_HOME, or a run from the UI of another
    instance: the same profile's files are up to date; another profile's are rerun."""
    root, prof = work
    other = dg.DagsterInstance.ephemeral()
    materialize(build_definitions(prof), ["neuron_pcas"], other, partition_key="0")
    rc, lines, out = run_cli(root, capsys)
    assert rc == 0 and "nothing run" in out, out
    assert "layer 0 made outside this instance's runs, accepted" in lines["neuron_pcas"]
    assert "made outside" not in lines["sparse_codes"]
    materialize(build_definitions({**prof, "analysis": {**prof["analysis"], "top_k": 2}}), ["neuron_pcas"], other,
                partition_key="1")
    rc, lines, out = run_cli(root, capsys)
    assert rc == 0, out
    assert "layer 1 to run (profile settings changed: analysis.top_k 2 -> 3)" in lines["neuron_pcas"]
    assert "layer 0 up to date" in lines["neuron_pcas"]
    assert reran(lines) == {"neuron_pcas", "sparse_codes", "ablation_report", "neuron_report", "layer_summary"}
    up_to_date_after(root, capsys)


def test_a_lineage_attribute_changed_by_hand_is_refused_on_read(work, capsys):
    root, _ = work
    path = root / "store" / "sparse_codes" / "0.h5"
    with h5py.File(path, "a") as f:  # rewritten without its checksum: as a byte flip in the attribute
        f.attrs[PROVENANCE_ATTR] = f.attrs[PROVENANCE_ATTR].replace('"analysis.components": 2', '"analysis.components": 8')
    with pytest.raises(Exception, match="sparse_codes"):
        H5Group(path, "asset sparse_codes partition 0")
    rc, lines, out = run_cli(root, capsys)
    assert rc == 0, out
    assert "layer 0 to run (its file does not read" in lines["sparse_codes"]
    up_to_date_after(root, capsys)


# ---------------------------------------------------------------- advice
def test_advice_names_the_stale_file_not_the_one_just_remade(work):
    """top_k changed and neuron_pcas rebuilt: the stale file is sparse_codes (made from the old
    PCA), not neuron_pcas."""
    root, prof = work
    defs = build_definitions({**prof, "analysis": {**prof["analysis"], "top_k": 2}})
    materialize(defs, ["neuron_pcas"], dg.DagsterInstance.ephemeral(), partition_key="0")
    msg = refused(defs, ["ablation_report"], "0")
    assert "- analysis.top_k: " in msg
    assert advice(msg).startswith("Re-materialize sparse_codes layer 0 (the stale file), then ablation_report layer 0")
