"""Strict profiles and clear errors (issue 13, item 4): every case a careless user hit, each error
asserted to name the input (file, key, line) and what is wrong, raised before any work.

- profile typos (``coeficient``, ``batchsize``) and ``--layers`` out of order / out of range;
- model sources: a missing folder (absolute, relative in a profile), a file or folder that is not a
  model, an uncached hub id offline or with the hub unreachable -- and no network call for a
  path-like source;
- vocabulary, dataset and class / template files that are not UTF-8 or not JSON: file and line.
"""

import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import dagster as dg
import pytest
import yaml

from oe_assets import __main__ as cli
from oe_assets.definitions import build_definitions
from oe_assets.models.hub import ModelSourceError, load_config, looks_like_hub_id, resolve_source
from oe_assets.models.loading import load_model
from oe_assets.datasources.text_datasets import load_string_list, load_text_dataset, read_text
from oe_assets.datasources.vocabulary import load_vocabulary
from oe_assets.profiles import PROFILE_DIR, load_profile
from oe_assets.profiles.validation import ProfileError, validate_profile
from oe_assets.resources import model as model_module
from oe_assets.resources.datasets import DatasetResource
from oe_assets.resources.model import model_layers
from helpers import small_tmpfs, tiny_bert_profile

warnings.filterwarnings("ignore")

REPO = Path(__file__).resolve().parents[1]
UNCACHED_ID = "acme-research/no-such-model-anywhere"


def problems_of(cfg) -> str:
    with pytest.raises(ProfileError) as e:
        validate_profile(cfg)
    return str(e.value)


def with_(prof, section, **changes):
    return {**prof, section: {**prof[section], **changes}}


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test on any hub download or socket connection."""
    import huggingface_hub
    import huggingface_hub.file_download as file_download
    import transformers.utils.hub as transformers_hub

    def refuse(*args, **kwargs):
        pytest.fail(f"network / hub call attempted: args={args!r}")

    for module, name in ((huggingface_hub, "hf_hub_download"), (file_download, "hf_hub_download"),
                         (transformers_hub, "hf_hub_download"), (huggingface_hub, "snapshot_download"),
                         (transformers_hub, "snapshot_download"), (file_download, "get_hf_file_metadata"),
                         (file_download, "_get_metadata_or_catch_error"), (socket, "create_connection"),
                         (socket.socket, "connect")):
        monkeypatch.setattr(module, name, refuse)


# ---------------------------------------------------------------- profiles and --layers


def demo_copy(tmp_path, **analysis_model) -> Path:
    """The shipped demo profile as a YAML file storing under ``tmp_path``, with changes."""
    prof = yaml.safe_load((PROFILE_DIR / "demo.yaml").read_text())
    prof["storage"]["base_dir"] = str(tmp_path / "store")
    for section, changes in analysis_model.items():
        prof[section].update(changes)
    path = tmp_path / "demo_copy.yaml"
    path.write_text(yaml.safe_dump(prof))
    return path


def test_misspelled_profile_keys_are_errors_with_a_suggestion(tmp_path, monkeypatch, capsys):
    path = demo_copy(tmp_path, analysis={"coeficient": 50}, model={"batchsize": 8})
    with pytest.raises(ProfileError) as e:
        load_profile(str(path))
    msg = str(e.value)
    assert "analysis.coeficient: unknown key (did you mean 'coefficient'?)" in msg
    assert "model.batchsize: unknown key (did you mean 'batch_size'?)" in msg
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    assert cli.main(["materialize", "--profile", str(path)]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'coefficient'?" in err and "did you mean 'batch_size'?" in err and "Traceback" not in err
    assert not (tmp_path / "store").exists()


def test_layers_out_of_order_exits_2_before_any_work(tmp_path):
    """``python -m oe_assets materialize --layers 3 1`` on the demo: a clear error, exit code 2, no run."""
    home = tmp_path / "home"
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "oe_assets", "materialize", "--profile", str(demo_copy(tmp_path)),
                           "--layers", "3", "1"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "--layers: 3 1 is out of order; FIRST must not come after LAST" in proc.stderr
    assert "UnboundLocalError" not in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "store").exists()


def test_layers_outside_the_model_fail_before_any_work(tmp_path, monkeypatch, capsys):
    """MiniLM has 6 layers, so 5 layer partitions (0..4: every MLP with a later attention block)."""
    assert model_layers("sentence-transformers/all-MiniLM-L6-v2") == ["0", "1", "2", "3", "4"]
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    loads = []
    monkeypatch.setattr(model_module, "load_model", lambda *a, **k: loads.append(a))
    assert cli.main(["materialize", "--profile", str(demo_copy(tmp_path)), "--layers", "7", "9"]) == 2
    out = capsys.readouterr()
    assert "--layers FIRST: '7' is not a layer of the model; its layers are 0..4" in out.err
    assert "--layers LAST: '9' is not a layer of the model; its layers are 0..4" in out.err
    assert "Traceback" not in out.err and "materializing" not in out.out
    assert loads == [] and not (tmp_path / "store").exists()  # no input recomputed, nothing stored
    (tmp_path / "home").mkdir(exist_ok=True)  # the CLI opens the instance only after validating
    with dg.DagsterInstance.get() as instance:
        assert instance.get_runs() == []


# ---------------------------------------------------------------- model sources


@pytest.mark.parametrize("value,hub", [
    ("gpt2", True), ("org/name", True), ("sentence-transformers/all-MiniLM-L6-v2", True), ("a_b.c-d/x.y", True),
    ("/abs/model", False), ("./model", False), ("../shared/model", False), ("~/model", False), (".model", False),
    ("org\\name", False), ("data/models/minilm", False), ("org/name/", False), ("org--x/name", False),
    ("org/na..me", False), ("-org/name", False), ("org/name.", False), ("", False), ("a" * 97, False),
])
def test_hub_ids_are_told_from_paths_without_the_network(value, hub):
    assert looks_like_hub_id(value) is hub


def test_missing_absolute_model_folder_is_named_without_the_network(tmp_path, no_network):
    folder = tmp_path / "no_model"
    expected = f"model folder {folder} does not exist; give an existing model folder or a Hugging Face hub id"
    for load in (lambda: load_model(str(folder), device="cpu"), lambda: model_layers(str(folder)),
                 lambda: load_config(str(folder))):
        with pytest.raises(ModelSourceError) as e:
            load()
        assert expected in str(e.value)
    msg = problems_of(with_(tiny_bert_profile(tmp_path), "model", source=str(folder)))
    assert f"model.source: {expected}" in msg


def test_missing_relative_model_path_in_a_profile_is_named_with_the_project_root(tmp_path, monkeypatch, no_network):
    """A relative path with a separator that is not an ``org/name`` id: before, it went to the hub."""
    prof = tiny_bert_profile(tmp_path)
    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.setenv("OE_ASSETS_ROOT", str(root))
    for source in ("models/minilm/v2", "./minilm", "models/minilm/"):
        path = tmp_path / "relative.yaml"
        path.write_text(yaml.safe_dump(with_(prof, "model", source=source)))
        cfg = load_profile(str(path))
        resolved = root / source.strip("./").rstrip("/")
        assert cfg["model"]["source"] == str(resolved)
        msg = problems_of(cfg)
        assert f"model.source: model folder {resolved} does not exist" in msg
        assert f"relative paths in a profile resolve against the project root {root}" in msg
        with pytest.raises(ProfileError, match="model.source: model folder"):
            build_definitions(str(path))
    # outside a profile a relative path resolves against the working directory, and says so
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelSourceError) as e:
        load_model("models/minilm/v2", device="cpu")
    assert (f"model folder 'models/minilm/v2' (a relative path, resolved against {tmp_path}: "
            f"{tmp_path / 'models/minilm/v2'}) does not exist") in str(e.value)


def test_a_file_or_a_folder_without_config_is_not_a_model(tmp_path, no_network):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.safetensors").write_bytes(b"\0" * 8)
    (tmp_path / "model.bin").write_bytes(b"\0" * 8)
    with pytest.raises(ModelSourceError, match=f"model folder {tmp_path / 'weights'} has no config.json"):
        load_model(str(tmp_path / "weights"), device="cpu")
    with pytest.raises(ModelSourceError, match=f"model source {tmp_path / 'model.bin'} is a file, not a model folder"):
        model_layers(str(tmp_path / "model.bin"))
    msg = problems_of(with_(tiny_bert_profile(tmp_path), "model", source=str(tmp_path / "weights")))
    assert f"model.source: model folder {tmp_path / 'weights'} has no config.json" in msg


def test_uncached_hub_id_offline_says_offline_and_not_cached(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for load in (lambda: load_model(UNCACHED_ID, device="cpu"), lambda: model_layers(UNCACHED_ID)):
        with pytest.raises(ModelSourceError) as e:
            load()
        msg = str(e.value)
        assert f"model source {UNCACHED_ID!r}: the Hugging Face hub is offline" in msg
        assert "the model is not in the local Hugging Face cache" in msg
        assert f"huggingface-cli download {UNCACHED_ID}" in msg and "local model folder" in msg
    msg = problems_of(with_(tiny_bert_profile(tmp_path), "model", source=UNCACHED_ID))
    assert f"model.source: model source {UNCACHED_ID!r}: the Hugging Face hub is offline" in msg
    # the shipped MiniLM copy and a local folder need no hub, offline or not
    assert Path(resolve_source("sentence-transformers/all-MiniLM-L6-v2")).is_dir()
    assert resolve_source(str(tmp_path / "model")) == str(tmp_path / "model")


def test_uncached_hub_id_with_the_hub_unreachable_says_so(monkeypatch):
    """Not offline by setting, but no connection: transformers' error is translated, not dumped."""
    from huggingface_hub import constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 1)

    def unreachable(*args, **kwargs):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(ModelSourceError) as e:
        load_config(UNCACHED_ID)
    msg = str(e.value)
    assert f"model source {UNCACHED_ID!r}: the Hugging Face hub is unreachable" in msg
    assert "not in the local Hugging Face cache" in msg


# ---------------------------------------------------------------- decode errors: file and line


def test_non_utf8_vocabulary_names_file_line_and_byte(tmp_path):
    path = tmp_path / "words.txt"
    path.write_bytes(b"cat\ndog\ncaf\xe9 au lait\nbird\n")
    with pytest.raises(ValueError) as e:
        load_vocabulary(path)
    assert str(e.value) == f"{path} line 3: not valid UTF-8 (byte 0xe9 at column 4)"
    assert not isinstance(e.value, UnicodeDecodeError)
    msg = problems_of(with_(tiny_bert_profile(tmp_path), "analysis", vocabulary_path=str(path)))
    assert f"analysis.vocabulary_path: {str(path)!r}: {path} line 3: not valid UTF-8 (byte 0xe9 at column 4)" in msg


def test_read_text_positions_count_lines_and_bytes(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"\xef\xbb\xbftext,label\r\n\"\xc3\xa9t\xc3\xa9\",0\r\nab\xff,1\r\n")  # BOM, CRLF
    with pytest.raises(ValueError, match=r"t\.csv line 3: not valid UTF-8 \(byte 0xff at column 3\)"):
        read_text(path, "utf-8-sig")


def test_text_dataset_decode_errors_name_file_and_line(tmp_path):
    rows = [{"text": f"text {i}", "label": i % 2} for i in range(4)]
    good = "\n".join(json.dumps(r) for r in rows)
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_bytes(b'{"text": "a", "label": 0}\n\n{"text": "b\x80", "label": 1}\n')
    with pytest.raises(ValueError, match=r"d\.jsonl line 3: not valid UTF-8 \(byte 0x80 at column 12\)"):
        load_text_dataset(jsonl)
    jsonl.write_text(good + '\n{"text": "c", "label": 1,}\n')
    with pytest.raises(ValueError, match=r"d\.jsonl line 5: not valid JSON \(.* at column 26\)"):
        load_text_dataset(jsonl)
    jsonl.write_text(good + '\n{"txt": "c", "label": 1}\n')
    with pytest.raises(ValueError, match=r"d\.jsonl: row 4 \(0-based, line 5\) has no 'text' field"):
        load_text_dataset(jsonl)
    jsonl.write_text("\n".join(json.dumps({"sentence": r["text"], "label": 0}) for r in rows))
    with pytest.raises(ValueError, match=r"d\.jsonl: missing column\(s\) \['text'\]; columns present: \['sentence', "):
        load_text_dataset(jsonl)
    csv_path = tmp_path / "d.csv"
    csv_path.write_text('sentence,label\n"multi\nline",0\nb,1\n')
    with pytest.raises(ValueError, match=r"d\.csv line 1 \(the header\): missing column\(s\) \['text'\]"):
        load_text_dataset(csv_path)
    csv_path.write_text('text,label\n"multi\nline",0\n\nb\nc,1\n')  # row 1 starts on line 5 and lacks a label
    with pytest.raises(ValueError, match=r"d\.csv: row 1 \(0-based, line 5\) has no 'label' field"):
        load_text_dataset(csv_path)
    csv_path.write_bytes(b"text,label\nok,0\nnot \xe9ok,1\n")
    with pytest.raises(ValueError, match=r"d\.csv line 3: not valid UTF-8 \(byte 0xe9 at column 5\)"):
        load_text_dataset(csv_path)


def test_dataset_decode_errors_are_profile_errors_before_any_work(tmp_path):
    prof = tiny_bert_profile(tmp_path)
    train = Path(prof["dataset"]["train_path"])
    train.write_bytes(train.read_bytes() + b'{"text": "caf\xe9", "label": 0}\n')
    lines = train.read_bytes().count(b"\n")
    msg = problems_of(prof)
    assert f"dataset.train_path: {str(train)!r} cannot be counted: {train} line {lines}: not valid UTF-8" in msg


def test_class_and_template_files_name_file_and_line(tmp_path):
    prof = tiny_bert_profile(tmp_path)
    classes, templates = Path(prof["dataset"]["classes_path"]), Path(prof["analysis"]["templates_path"])
    classes.write_bytes(b'[\n  "sports",\n  "caf\xe9"\n]\n')
    with pytest.raises(ValueError, match=r"classes\.json line 3: not valid UTF-8 \(byte 0xe9 at column 7\)"):
        DatasetResource(**prof["dataset"]).classes()
    templates.write_text('[\n  "a photo of {}.",\n  "about {}"\n  "more"\n]\n')
    with pytest.raises(ValueError, match=r"templates\.json line 4: not valid JSON \(Expecting ',' delimiter at column 3\)"):
        load_string_list(templates, "prompt template", "{}")
    msg = problems_of(prof)
    assert f"dataset.classes_path: {classes} line 3: not valid UTF-8" in msg
    assert f"analysis.templates_path: {templates} line 4: not valid JSON" in msg
    templates.write_text('["a photo of {}.", "no placeholder"]')
    classes.write_text('["sports", 3]')
    msg = problems_of(prof)
    assert f"analysis.templates_path: {templates}: entry 1 (0-based) of the prompt template list, " \
           "'no placeholder', has no '{}'" in msg
    assert f"dataset.classes_path: {classes}: entry 1 (0-based) of the class name list is 3, not a string" in msg


# ---------------------------------------------------------------- the CLI's user errors, as a process


def run_cli(tmp_path, *args, preamble: str = "", home: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m oe_assets ARGS`` in a fresh process (nothing imported before), ``preamble`` run first."""
    env = {**os.environ, "DAGSTER_HOME": str(home or tmp_path / "home"), "PYTHONPATH": str(REPO)}
    env.pop("OE_NO_SUCH_VARIABLE", None)
    code = f"{preamble}\nimport sys\nfrom oe_assets.__main__ import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)


def assert_one_error(proc, *expected: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and proc.stderr.lstrip().startswith("error: "), proc.stderr[-3000:]
    for text in expected:
        assert text in proc.stderr, proc.stderr[-3000:]


@pytest.mark.parametrize("case", ["typo", "unknown profile", "unset variable", "missing path"])
def test_profile_errors_of_the_cli_process_are_one_error_line_and_exit_2(tmp_path, case):
    """Importing the definitions builds them from the profile: its errors are reported like the rest."""
    if case == "unknown profile":
        profile, expected = "no_such_profile", "profile 'no_such_profile' not found"
    else:
        changes = {"typo": {"analysis": {"coeficient": 50}},
                   "unset variable": {"storage": {"base_dir": "${OE_NO_SUCH_VARIABLE}/store"}},
                   "missing path": {"dataset": {"train_path": str(tmp_path / "nowhere.jsonl")}}}[case]
        profile = str(demo_copy(tmp_path, **changes))
        expected = {"typo": "did you mean 'coefficient'?", "unset variable": "OE_NO_SUCH_VARIABLE",
                    "missing path": "nowhere.jsonl"}[case]
    proc = run_cli(tmp_path, "materialize", "--profile", profile)
    assert_one_error(proc, expected)
    assert not (tmp_path / "store").exists()


def test_a_full_dagster_home_is_one_error_line_naming_it(tmp_path):
    """Files the process writes may not grow past 20 kB (``RLIMIT_FSIZE``, no root needed): SQLite
    cannot create the instance's databases, as on a full disk."""
    preamble = ("import resource, signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
                "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))")
    proc = run_cli(tmp_path, "materialize", "--profile", str(demo_copy(tmp_path)), preamble=preamble)
    assert_one_error(proc, f"error: the Dagster instance at {tmp_path / 'home'} cannot be written: ")
    assert "disk I/O error" in proc.stderr or "database or disk is full" in proc.stderr


def test_a_full_dagster_home_on_a_small_tmpfs(tmp_path):
    with small_tmpfs(tmp_path / "disk", "64k") as disk:
        proc = run_cli(tmp_path, "materialize", "--profile", str(demo_copy(tmp_path)), home=disk / "home")
    assert_one_error(proc, f"error: the Dagster instance at {disk / 'home'} cannot be written: ")


def test_shipped_instance_sends_no_telemetry_and_shows_no_community_pop_up():
    settings = yaml.safe_load((REPO / "data" / "dagster_home" / "dagster.yaml").read_text())
    assert settings["telemetry"] == {"enabled": False} and settings["nux"] == {"enabled": False}
    assert yaml.safe_load(cli.INSTANCE_SETTINGS) == {"telemetry": {"enabled": False}, "nux": {"enabled": False}}


def test_an_instance_the_cli_creates_has_telemetry_off_and_no_banner(tmp_path):
    """A fresh ``DAGSTER_HOME``: the CLI writes its ``dagster.yaml``; a whole run prints no telemetry
    banner and makes no telemetry id (Dagster prints its banner when it first makes one)."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_bert_profile(tmp_path)))
    proc = run_cli(tmp_path, "materialize", "--profile", str(path), "--layers", "0", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Telemetry:" not in proc.stderr and "Welcome to Dagster" not in proc.stderr
    home = tmp_path / "home"
    assert yaml.safe_load((home / "dagster.yaml").read_text())["telemetry"] == {"enabled": False}
    assert not (home / ".telemetry").exists()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert not instance.telemetry_enabled and not instance.nux_enabled and instance.get_runs()
