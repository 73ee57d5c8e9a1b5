"""``python -m oe_assets materialize``: resumable reruns, ``--force``, and profile validation."""

import json
import os
import warnings
from pathlib import Path

import dagster as dg
import pytest
import yaml

from oe_assets.assets.common import CODE_VERSION
from oe_assets import __main__ as cli
from oe_assets.definitions import build_definitions
from oe_assets.profiles import available_profiles, load_profile
from oe_assets.profiles.validation import ProfileError, count_samples, npz_shape, validate_layers, validate_profile
from oe_assets.resources import model as model_module
from oe_assets.resume import format_partitions
from helpers import tiny_bert_profile

warnings.filterwarnings("ignore")

ALL = ["text_embeddings", "classifier", "train_representations", "val_representations", "second_order_effects",
       "val_second_order_effects", "neuron_pcas", "sparse_codes", "ablation_report", "neuron_report", "layer_summary"]
LAYERED = ["second_order_effects", "val_second_order_effects", "neuron_pcas", "sparse_codes", "ablation_report",
           "neuron_report"]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """The tiny BERT profile as a YAML file, a DAGSTER_HOME, and a counter of model loads."""
    root = tmp_path_factory.mktemp("cli")
    prof = tiny_bert_profile(root)
    path = root / "tiny_bert.yaml"
    path.write_text(yaml.safe_dump(prof))
    return root, path, prof


def run_cli(bert, monkeypatch, capsys, *args):
    root, path, _ = bert
    monkeypatch.setenv("DAGSTER_HOME", str(root / "dagster_home"))
    loads = []
    original = model_module.load_model
    monkeypatch.setattr(model_module, "load_model", lambda *a, **k: loads.append(a) or original(*a, **k))
    model_module._CACHE.clear()
    rc = cli.main(["materialize", "--profile", str(path), *args])
    out = capsys.readouterr()
    lines = {line.split(":")[0]: line for line in out.out.splitlines() if line.split(":")[0] in ALL}
    return rc, lines, loads, out


def materialized(bert):
    """(asset, partition) -> storage id of its latest materialization."""
    root = bert[0]
    os.environ["DAGSTER_HOME"] = str(root / "dagster_home")
    with dg.DagsterInstance.get() as instance:
        out = {}
        for name in ALL:
            for r in instance.fetch_materializations(dg.AssetKey(name), limit=100, ascending=True).records:
                out[(name, r.partition_key)] = r.storage_id
        return out


def test_rerun_skips_what_is_up_to_date_and_force_reruns_all(bert, monkeypatch, capsys):
    rc, lines, loads, out = run_cli(bert, monkeypatch, capsys)
    assert rc == 0, out.err
    assert len(loads) == 1
    assert "never materialized" in lines["second_order_effects"]
    first = materialized(bert)
    assert {(n, p) for n, p in first if n == "neuron_pcas"} == {("neuron_pcas", "0"), ("neuron_pcas", "1")}

    # nothing changed: everything skipped, no model loaded, no run
    rc, lines, loads, out = run_cli(bert, monkeypatch, capsys)
    assert rc == 0 and loads == [] and "nothing run" in out.out
    assert set(lines) == set(ALL)
    assert lines["second_order_effects"] == f"second_order_effects: layers 0-1 up to date (code version {CODE_VERSION}), skipped"
    assert lines["layer_summary"] == f"layer_summary: up to date (code version {CODE_VERSION}), skipped"
    assert materialized(bert) == first

    # one partition's file gone: that partition and its downstream run, nothing else
    store = Path(bert[2]["storage"]["base_dir"])
    (store / "neuron_pcas" / "1.h5").unlink()
    rc, lines, loads, out = run_cli(bert, monkeypatch, capsys)
    assert rc == 0, out.err
    assert "layer 1 to run (no file at" in lines["neuron_pcas"] and "layer 0 up to date" in lines["neuron_pcas"]
    assert "layer 1 to run (upstream neuron_pcas runs)" in lines["sparse_codes"]
    assert "to run (upstream ablation_report layer 1 runs)" in lines["layer_summary"]
    second = materialized(bert)
    rerun = {k for k in second if second[k] != first.get(k)}
    assert rerun == {("neuron_pcas", "1"), ("sparse_codes", "1"), ("ablation_report", "1"), ("neuron_report", "1"),
                     ("layer_summary", None)}
    assert loads == []  # the effects were up to date: PCA on, no model run

    # --force: everything again
    rc, lines, loads, out = run_cli(bert, monkeypatch, capsys, "--force")
    assert rc == 0, out.err
    assert all("to run (--force)" in lines[n] for n in ALL)
    third = materialized(bert)
    assert all(third[k] != second[k] for k in second if k[0] in ALL and k[1] in (None, "0", "1"))


def test_code_version_change_reruns_those_assets_and_downstream(bert, monkeypatch, capsys):
    import oe_assets.assets.analysis as analysis

    rc, _, _, out = run_cli(bert, monkeypatch, capsys)  # up to date (after the test above) or fresh
    assert rc == 0, out.err
    before = materialized(bert)
    bumped = str(int(CODE_VERSION) + 1)
    monkeypatch.setattr(analysis, "CODE_VERSION", bumped)  # the analysis stages changed meaning
    rc, lines, loads, out = run_cli(bert, monkeypatch, capsys)
    assert rc == 0, out.err
    assert f"layers 0-1 to run (code version {CODE_VERSION} -> {bumped})" in lines["neuron_pcas"]
    assert lines["second_order_effects"] == f"second_order_effects: layers 0-1 up to date (code version {CODE_VERSION}), skipped"
    assert "to run" not in lines["text_embeddings"]
    after = materialized(bert)
    assert {k[0] for k in after if after[k] != before.get(k)} == {
        "neuron_pcas", "sparse_codes", "ablation_report", "neuron_report", "layer_summary"}
    assert loads == []
    monkeypatch.undo()
    rc, lines, _, out = run_cli(bert, monkeypatch, capsys)  # and back
    assert f"layers 0-1 to run (code version {bumped} -> {CODE_VERSION})" in lines["neuron_pcas"]


def test_a_failed_run_resumes_where_it_failed(tmp_path, monkeypatch, capsys):
    prof = tiny_bert_profile(tmp_path)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(prof))
    bert = (tmp_path, path, prof)
    import oe_assets.assets.analysis as analysis

    original = analysis.sparse_decompose
    monkeypatch.setattr(analysis, "sparse_decompose", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    rc, _, _, out = run_cli(bert, monkeypatch, capsys)
    assert rc == 1 and "run failed" in out.err
    monkeypatch.setattr(analysis, "sparse_decompose", original)
    before = materialized(bert)
    rc, lines, loads, out = run_cli(bert, monkeypatch, capsys)
    assert rc == 0, out.err
    assert "skipped" in lines["neuron_pcas"] and "to run" not in lines["neuron_pcas"]
    assert "layers 0-1 to run (never materialized)" in lines["sparse_codes"]
    after = materialized(bert)
    assert {k for k in after if after[k] != before.get(k)} == {
        *((n, p) for n in ("sparse_codes", "ablation_report", "neuron_report") for p in ("0", "1")),
        ("layer_summary", None)}


def test_settings_change_reruns_only_the_assets_that_read_it(bert, monkeypatch, capsys):
    rc, _, _, out = run_cli(bert, monkeypatch, capsys)
    assert rc == 0, out.err
    root, path, prof = bert
    changed = {**prof, "analysis": {**prof["analysis"], "top_k": 2}}
    path.write_text(yaml.safe_dump(changed))
    try:
        rc, lines, loads, out = run_cli(bert, monkeypatch, capsys)
    finally:
        path.write_text(yaml.safe_dump(prof))
    assert rc == 0, out.err
    assert "analysis.top_k 3 -> 2" in lines["neuron_pcas"]
    assert "skipped" in lines["second_order_effects"] and loads == []


def test_format_partitions():
    keys = [str(i) for i in range(6)]
    assert format_partitions(["0", "1", "2", "4"], keys) == "layers 0-2, 4"
    assert format_partitions(["3"], keys) == "layer 3"
    assert format_partitions([None], [None]) == ""


# ---------------------------------------------------------------- profile validation
def bad(prof, section, **changes):
    return {**prof, section: {**prof[section], **changes}}


def problems_of(cfg):
    with pytest.raises(ProfileError) as e:
        validate_profile(cfg)
    return str(e.value)


def test_shipped_profiles_load_without_building_definitions():
    """Listing and loading every shipped profile needs no network and no environment variables."""
    assert {"demo", "clip_reference", "clip_vit_b32_imagenet", "llm_example"} <= set(available_profiles())
    for name in available_profiles():
        cfg = load_profile(name)
        assert cfg["model"]["source"] and cfg["dataset"]["train_path"]


def test_unset_environment_variable_is_named(monkeypatch):
    monkeypatch.delenv("IMAGENET_ROOT", raising=False)
    cfg = load_profile("clip_vit_b32_imagenet")
    msg = problems_of(cfg)
    assert "dataset.train_path" in msg and "$IMAGENET_ROOT" in msg and "not set" in msg
    with pytest.raises(ValueError, match="IMAGENET_ROOT"):
        build_definitions("clip_vit_b32_imagenet")


def test_unknown_keys_are_named_with_the_valid_ones(tmp_path):
    prof = tiny_bert_profile(tmp_path)
    cfg = bad(bad(prof, "analysis", coeficient=50.0), "model", batchsize=8)
    msg = problems_of(cfg)
    assert "analysis.coeficient: unknown key (did you mean 'coefficient'?)" in msg
    assert "model.batchsize: unknown key (did you mean 'batch_size'?)" in msg
    assert "valid keys of 'analysis': classifier_path, coefficient, components" in msg
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(bad(prof, "dataset", train_strid=2)))
    with pytest.raises(ValueError, match="dataset.train_strid: unknown key"):
        load_profile(str(path))
    with pytest.raises(ValueError, match="storage.basedir"):
        build_definitions(bad(prof, "storage", basedir="x"))


def test_missing_paths_are_named(tmp_path):
    prof = tiny_bert_profile(tmp_path)
    msg = problems_of(bad(bad(prof, "dataset", val_path=str(tmp_path / "nope.jsonl")), "analysis",
                          vocabulary_path=str(tmp_path / "words.txt")))
    assert f"dataset.val_path: '{tmp_path / 'nope.jsonl'}' does not exist" in msg
    assert "analysis.vocabulary_path" in msg
    assert "nope.jsonl" in problems_of(bad(prof, "dataset", val_path=str(tmp_path / "nope.jsonl")))
    msg = problems_of(bad(prof, "model", source=str(tmp_path / "no_model")))
    assert "model.source" in msg and "no_model" in msg


def test_top_k_and_components_against_the_data(tmp_path):
    prof = tiny_bert_profile(tmp_path)  # 6 train rows, 20 descriptions, hidden size 32
    assert validate_profile(prof) == {"train_samples": 6, "descriptions": 20, "d_out": 32}
    msg = problems_of(bad(prof, "analysis", top_k=7))
    assert "analysis.top_k: 7 exceeds the 6 train samples" in msg
    assert validate_profile(bad(bad(prof, "analysis", top_k=3), "dataset", train_stride=2))["train_samples"] == 3
    assert "top_k: 4 exceeds the 3 train samples" in problems_of(bad(bad(prof, "analysis", top_k=4), "dataset",
                                                                      train_stride=2))
    msg = problems_of(bad(prof, "analysis", components=21))
    assert "analysis.components: 21 exceeds the 20 descriptions" in msg and "d_out" not in msg
    (tmp_path / "big_vocab.txt").write_text("\n".join(f"w{i}" for i in range(100)))
    msg = problems_of(bad(prof, "analysis", components=40, vocabulary_path=str(tmp_path / "big_vocab.txt")))
    assert "analysis.components: 40 exceeds d_out = 32" in msg
    assert "analysis.top_k: 0 must be a positive integer" in problems_of(bad(prof, "analysis", top_k=0))
    with pytest.raises(ValueError, match="analysis.top_k: 7 exceeds"):
        build_definitions(bad(prof, "analysis", top_k=7))


def test_counting_is_cheap_for_each_kind(tmp_path):
    import numpy as np

    np.savez(tmp_path / "a.npz", train_images=np.zeros((10, 3, 4, 4)), val_images=np.zeros((4, 3, 4, 4)))
    assert npz_shape(tmp_path / "a.npz", "train_images") == (10, 3, 4, 4)
    ds = {"kind": "npz", "train_path": str(tmp_path / "a.npz"), "val_path": str(tmp_path / "a.npz"), "train_stride": 3}
    assert count_samples(ds, "train") == 3 and count_samples(ds, "val") == 4
    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(5):
            (tmp_path / "imgs" / cls / f"{i}.jpg").write_bytes(b"")
    ds = {"kind": "image_folder", "train_path": str(tmp_path / "imgs"), "val_path": str(tmp_path / "imgs"),
          "offset": 1, "train_stride": 2, "limit": 3}
    assert count_samples(ds, "train") == 3
    (tmp_path / "t.csv").write_text('text,label\n"a, b",0\n"multi\nline",1\n')
    assert count_samples({"kind": "text", "train_path": str(tmp_path / "t.csv")}, "train") == 2
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps({"text": "x", "label": 0}) for _ in range(7)) + "\n\n")
    assert count_samples({"kind": "text", "train_path": str(tmp_path / "t.jsonl"), "limit": 5}, "train") == 5


def test_layers_must_be_in_range_and_in_order(bert, monkeypatch, capsys):
    layers = ["0", "1", "2"]
    assert validate_layers(layers, "0", "2") == []
    assert "--layers LAST: '5' is not a layer of the model; its layers are 0..2" in validate_layers(layers, "0", "5")
    assert "out of order" in validate_layers(layers, "2", "1")[0]
    rc, _, loads, out = run_cli(bert, monkeypatch, capsys, "--layers", "1", "0")
    assert rc == 2 and "--layers: 1 0 is out of order" in out.err and loads == []
    rc, _, _, out = run_cli(bert, monkeypatch, capsys, "--layers", "0", "9")
    assert rc == 2 and "'9' is not a layer" in out.err


def test_cli_reports_a_broken_profile_up_front(tmp_path, monkeypatch, capsys):
    prof = tiny_bert_profile(tmp_path)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(bad(prof, "analysis", coeficient=5.0)))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    assert cli.main(["materialize", "--profile", str(path)]) == 2
    err = capsys.readouterr().err
    assert "analysis.coeficient: unknown key" in err and "Traceback" not in err


def test_readme_partition_command_records_into_the_project_instance(tmp_path):
    """The README's ``dagster asset materialize ... --partition-range 0...2``, run as printed from a
    checkout's root (here a copy holding ``data/dagster_home/dagster.yaml``, on a 4-layer tiny BERT
    whose inputs ``python -m oe_assets materialize`` made first), records its run and the new layer
    partitions in ``data/dagster_home``, not in a temporary instance."""
    import re
    import subprocess
    import sys

    from transformers import BertConfig, BertModel

    repo = Path(__file__).resolve().parents[1]
    command = re.search(r"`(DAGSTER_HOME=\S+ dagster asset materialize [^`]+)`", (repo / "README.md").read_text()).group(1)
    prof = tiny_bert_profile(tmp_path)
    BertModel(BertConfig(vocab_size=25, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
                         max_position_embeddings=32)).save_pretrained(tmp_path / "model")  # layers 0..2
    profile = tmp_path / "tiny.yaml"
    profile.write_text(yaml.safe_dump(prof))
    checkout = tmp_path / "checkout"
    (checkout / "data" / "dagster_home").mkdir(parents=True)
    shipped = repo / "data" / "dagster_home" / "dagster.yaml"
    (checkout / "data" / "dagster_home" / "dagster.yaml").write_text(shipped.read_text())
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env.update(PYTHONPATH=str(repo), OE_ASSETS_PROFILE=str(profile), OE_ASSETS_ROOT=str(checkout))
    first = subprocess.run([sys.executable, "-m", "oe_assets", "materialize", "--layers", "0", "0"], cwd=checkout, env=env,
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    proc = subprocess.run(["bash", "-c", command], cwd=checkout, env={**env, "PATH": f"{Path(sys.executable).parent}:"
                                                                       f"{env.get('PATH', '')}"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with dg.DagsterInstance.from_config(str(checkout / "data" / "dagster_home")) as instance:
        records = instance.fetch_materializations(dg.AssetKey("second_order_effects"), limit=100).records
        assert sorted(r.partition_key for r in records) == ["0", "0", "1", "2"]  # 0: by both commands
        assert any(r.job_name == "__ASSET_JOB" for r in instance.get_runs())
