"""Recovery from killed runs: stale runs failed and their pool slots freed, an interruptible wait for a
pool slot, dead writers' staging files removed, and a SIGKILLed materialization that the next one
finishes by itself.  Also: ``.ci/run`` keeps a working copy's ``.venv``."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster import DagsterEventType

from oe_assets import processes, recovery
from oe_assets.dagster_private import EngineEventData, create_run_for_test
from oe_assets.recovery import Process, process_start, process_tags
from oe_assets.resources.store import ArtifactStore, atomic_path
from helpers import tiny_bert_profile, one_step_job

warnings.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_YAML = ROOT / "data" / "dagster_home" / "dagster.yaml"


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


@pytest.fixture
def instance(tmp_path, monkeypatch):
    """An instance with the shipped dagster.yaml (its gpu pool limit of 1 and run monitoring)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(SHIPPED_YAML, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as inst:
        yield inst


def started_run(instance, tags=None, slot_pool=None):
    run = create_run_for_test(instance, job_name="materialize_layers", status=dg.DagsterRunStatus.STARTED,
                              tags=tags or {})
    if slot_pool:
        instance.event_log_storage.initialize_concurrency_limit_to_default(slot_pool)
        assert instance.event_log_storage.claim_concurrency_slot(slot_pool, run.run_id, "second_order_effects").is_claimed
    return run


def lines_until(proc, text: str, seconds: float) -> list[str]:
    """``proc``'s output lines up to the first holding ``text``; a process still silent after
    ``seconds`` is killed (its output ends), so a hang fails the test instead of stalling the suite."""
    killer = threading.Timer(seconds, proc.kill)
    killer.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if text in line:
                break
    finally:
        killer.cancel()
    return lines


def holders(instance, pool="gpu"):
    return {s.run_id for s in instance.event_log_storage.get_concurrency_info(pool).claimed_slots}


# ---- the shipped instance ------------------------------------------------------------------------
def test_shipped_instance_enables_run_monitoring(instance):
    assert instance.run_monitoring_enabled
    assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0
    assert instance.event_log_storage.get_pool_config().default_pool_limit == 1


# ---- stale runs ----------------------------------------------------------------------------------
def test_process_identity():
    me = recovery.this_process()
    assert me.pid == os.getpid() and me.start == process_start(os.getpid()) and me.start.isdigit()
    assert recovery.is_dead(me) is None
    assert "is gone" in recovery.is_dead(Process(me.host, dead_pid(), ""))
    # the pid is alive but belongs to a process started at another time: a recycled pid
    assert "now another process" in recovery.is_dead(Process(me.host, me.pid, str(int(me.start) + 1)))
    # another host: not known, so never judged dead
    assert recovery.is_dead(Process(me.host + "-elsewhere", dead_pid(), "")) is None
    # an exited child not yet reaped (a zombie) holds nothing: dead
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 30
    while not processes._zombie(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    zombie = Process(me.host, child.pid, process_start(child.pid))
    assert "is gone" in recovery.is_dead(zombie)
    child.wait()


def test_stale_runs_are_failed_and_their_slots_freed(instance):
    host = socket.gethostname()
    dead = started_run(instance, process_tags(Process(host, dead_pid(), "123")), slot_pool="gpu")
    recycled = started_run(instance, process_tags(Process(host, os.getpid(), "1")))
    live = started_run(instance, process_tags())
    remote = started_run(instance, process_tags(Process(host + "-elsewhere", dead_pid(), "")))
    # launched without our tags: judged by the pid of Dagster's own engine event
    untagged_dead, untagged_live, untagged_unknown = (started_run(instance) for _ in range(3))
    # a re-execution from the UI of a dead CLI run: Dagster copied the CLI's tags, its own process lives
    reexecuted = started_run(instance, process_tags(Process(host, dead_pid(), "123"), run_id="an-earlier-run"))
    for run, pid in ((untagged_dead, dead_pid()), (untagged_live, os.getpid()), (reexecuted, os.getpid())):
        instance.report_engine_event(f"Started process for run (pid: {pid}).", run, EngineEventData.in_process(pid))
    assert holders(instance) == {dead.run_id}

    lines = []
    stale = recovery.fail_stale_runs(instance, out=lambda *a, **k: lines.append(a[0]))

    assert {s.run_id for s in stale} == {dead.run_id, recycled.run_id, untagged_dead.run_id}
    status = {r.run_id: instance.get_run_by_id(r.run_id).status for r in
              (dead, recycled, live, remote, untagged_dead, untagged_live, untagged_unknown, reexecuted)}
    assert status[dead.run_id] == status[recycled.run_id] == status[untagged_dead.run_id] == dg.DagsterRunStatus.FAILURE
    assert {status[r.run_id] for r in (live, remote, untagged_live, untagged_unknown, reexecuted)} == \
        {dg.DagsterRunStatus.STARTED}
    assert holders(instance) == set()
    assert any(dead.run_id in line and "marked failed" in line and "is gone" in line for line in lines)
    assert any(recycled.run_id in line and "now another process" in line for line in lines)
    failure = instance.get_records_for_run(dead.run_id, of_type=DagsterEventType.RUN_FAILURE).records
    assert failure and "is gone" in failure[0].event_log_entry.dagster_event.message


def test_wait_for_a_pool_slot_frees_dead_holders_and_says_what_a_live_one_holds(instance):
    dead = started_run(instance, process_tags(Process(socket.gethostname(), dead_pid(), "")), slot_pool="gpu")
    lines = []
    recovery.wait_for_pools(instance, ["gpu"], out=lambda *a, **k: lines.append(a[0]))  # returns: slot freed
    assert holders(instance) == set() and any(dead.run_id in line for line in lines)

    live = started_run(instance, process_tags(), slot_pool="gpu")
    lines.clear()
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT))  # Ctrl-C while it waits
    timer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(recovery.PoolWaitInterrupted) as e:
            recovery.wait_for_pools(instance, ["gpu"], poll_seconds=0.2, out=lambda *a, **k: lines.append(a[0]))
    finally:
        timer.cancel()  # never a stray Ctrl-C into pytest when the wait ended otherwise
    assert time.monotonic() - t0 < 10
    assert e.value.exit_code == 130 and "SIGINT" in str(e.value) and live.run_id in str(e.value)
    assert lines == [next(line for line in lines if "waiting for a slot of pool gpu (limit 1)" in line)]
    assert live.run_id in lines[0] and f"pid {os.getpid()}" in lines[0]
    assert holders(instance) == {live.run_id}  # a live run's slot is never taken


# ---- staging files -------------------------------------------------------------------------------
def test_dead_writers_staging_files_are_removed_live_ones_kept(tmp_path):
    store = ArtifactStore(base_dir=str(tmp_path))
    target = store.path_for("second_order_effects", "0")
    target.parent.mkdir(parents=True)
    host = socket.gethostname()
    me = recovery.this_process()
    dead = target.with_name(f"{target.name}.partial-0123abcd-{dead_pid()}-42@{host}")
    recycled = target.with_name(f"{target.name}.partial-0123abce-{me.pid}-{int(me.start) + 1}@{host}")
    live = target.with_name(target.name + recovery.staging_suffix("0123abcf"))
    remote = target.with_name(f"{target.name}.partial-0123abd0-{dead_pid()}-42@{host}-elsewhere")
    other_target = target.with_name(f"1.h5.partial-0123abd1-{dead_pid()}-42@{host}")
    for p in (dead, recycled, live, remote, other_target):
        p.write_bytes(b"x" * 100)

    staged = store.stage("second_order_effects", "0")

    assert recovery.staging_writer(staged.name) == me and staged.parent == target.parent
    assert not dead.exists() and not recycled.exists()
    assert live.exists() and remote.exists() and other_target.exists()  # a live writer's, another host's, another file's
    assert store.partitions("second_order_effects") == []  # staging files are never partitions

    # atomic_path (the small files' writer) cleans up the same way
    dead.write_bytes(b"x")
    with atomic_path(target) as tmp:
        assert recovery.staging_writer(tmp.name) == me
        tmp.write_bytes(b"done")
    assert not dead.exists() and live.exists() and target.read_bytes() == b"done"
    assert store.partitions("second_order_effects") == ["0"]


def test_a_steps_staging_files_name_its_run(tmp_path):
    """A staging file written inside a run names the run (the store resource sets it for the step), and
    only while the run's step executes."""
    names = []

    @dg.asset
    def staged(store: ArtifactStore):
        names.append(store.stage("staged", "0").name)
        with atomic_path(store.path_for("staged", "1")) as tmp:
            names.append(tmp.name)
            tmp.write_bytes(b"done")
        return None

    base = str(tmp_path)
    with dg.instance_for_test() as instance:
        result = dg.materialize([staged], resources={"store": ArtifactStore(base_dir=base)}, instance=instance)
        assert [recovery.staging_run(n) for n in names] == [result.run_id] * 2
        assert recovery.staging_writer(names[0]) == recovery.this_process()
        assert recovery.staging_run(ArtifactStore(base_dir=base).stage("staged", "0").name) is None  # after the run


def test_staging_files_of_ended_runs_on_another_host_are_removed_running_ones_kept(tmp_path):
    """A writer on another host is never judged by its pid; its staging file goes once the instance says
    its run has ended, and stays while the run is running or unknown to the instance."""

    one_step = one_step_job()
    folder = tmp_path / "second_order_effects"
    folder.mkdir()
    host = socket.gethostname()
    with dg.instance_for_test() as instance:
        ended = one_step.execute_in_process(instance=instance).run_id
        failed = instance.create_run_for_job(one_step).run_id
        instance.report_run_failed(instance.get_run_by_id(failed), "its worker died")
        running = instance.create_run_for_job(one_step).run_id
        instance.handle_run_event(running, dg.DagsterEvent("PIPELINE_START", one_step.name))
        unknown = "0b5c2f9e-1d2a-4c55-9c1e-2f0d6f3a7b11"

        def staged(token, pid, start, where, run=None):
            path = folder / (f"0.h5.partial-{token}-{pid}-{start}@{where}" + (f"~{run}" if run else ""))
            path.write_bytes(b"x")
            return path

        me = recovery.this_process()
        elsewhere = f"{host}-elsewhere"
        gone = [staged("0000000a", 4242, 42, elsewhere, ended), staged("0000000b", 4243, 43, elsewhere, failed),
                staged("0000000c", dead_pid(), 42, host)]  # a dead writer here, in no run
        kept = [staged("0000000d", 4244, 44, elsewhere, running), staged("0000000e", 4245, 45, elsewhere, unknown),
                staged("0000000f", 4246, 46, elsewhere),  # another host's writer in no run: never judged
                staged("00000010", me.pid, me.start, host, running)]
        assert [recovery.staging_run(p.name) for p in gone[:2]] == [ended, failed]
        assert recovery.staging_writer(gone[0].name) == Process(elsewhere, 4242, "42")
        lines = []
        removed = recovery.remove_ended_run_staging(instance, tmp_path, lines.append)
        assert sorted(removed) == sorted(gone)
        assert not any(p.exists() for p in gone) and all(p.exists() for p in kept)
        assert len(lines) == 1 and lines[0].startswith(f"removed 3 staging file(s) under {tmp_path}")
        assert ended in lines[0] and failed in lines[0]
        # once the running run has ended, its files go too, from both hosts
        instance.report_run_failed(instance.get_run_by_id(running), "ended")
        assert sorted(recovery.remove_ended_run_staging(instance, tmp_path, lines.append)) == sorted([kept[0], kept[3]])


def test_a_staging_run_id_that_is_not_one_is_refused():
    from oe_assets.storage.layout import writing_for_run

    with pytest.raises(ValueError, match="not a Dagster run id"):
        writing_for_run("../x")


# ---- the CLI -------------------------------------------------------------------------------------
def slow_profile(root: Path) -> Path:
    """The tiny BERT profile with 3,000 training texts, so that streaming ``second_order_effects``
    takes long enough to be killed in the middle."""
    prof = tiny_bert_profile(root)
    rows = (root / "train.jsonl").read_text().splitlines()
    (root / "train.jsonl").write_text("\n".join(rows * 500) + "\n")
    path = root / "slow.yaml"
    path.write_text(yaml.safe_dump(prof))
    return path


def cli(root: Path, profile: Path, *args) -> subprocess.Popen:
    home = root / "dagster_home"
    if not home.exists():
        home.mkdir()
        shutil.copy(SHIPPED_YAML, home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "oe_assets", "materialize", "--profile", str(profile), *args],
                            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_instance(root: Path):
    os.environ["DAGSTER_HOME"] = str(root / "dagster_home")
    return dg.DagsterInstance.get()


def test_sigkill_during_effects_then_the_next_materialize_recovers(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    profile = slow_profile(tmp_path)
    effects = tmp_path / "store" / "second_order_effects"
    proc = cli(tmp_path, profile)
    deadline = time.monotonic() + 400
    try:
        while not list(effects.glob("*.partial-*")):
            assert proc.poll() is None, f"the run ended before writing effects:\n{proc.stdout.read()}"
            assert time.monotonic() < deadline, "no staging file of second_order_effects appeared"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    partials = list(effects.glob("*.partial-*"))
    assert partials, "the kill came after the effects were committed"

    # today's state after the kill: the run is STARTED and holds the only gpu slot
    with run_instance(tmp_path) as instance:
        killed = [r.run_id for r in instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))]
        assert len(killed) == 1 and holders(instance) == set(killed)

    again = cli(tmp_path, profile)
    try:
        out, _ = again.communicate(timeout=500)  # a hang (the blocked gpu slot) fails here
    finally:
        again.kill()
    assert again.returncode == 0, out
    assert f"run {killed[0]} (materialize_layers) marked failed and its pool slots freed" in out
    assert "is gone" in out
    assert not list((tmp_path / "store").rglob("*.partial-*"))
    assert (effects / "0.h5").exists()
    with run_instance(tmp_path) as instance:
        assert instance.get_run_by_id(killed[0]).status == dg.DagsterRunStatus.FAILURE
        assert holders(instance) == set()


def test_cli_waiting_for_a_live_runs_slot_says_so_and_stops_on_sigterm(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    prof = tiny_bert_profile(tmp_path)
    profile = tmp_path / "tiny.yaml"
    profile.write_text(yaml.safe_dump(prof))
    (tmp_path / "dagster_home").mkdir()
    shutil.copy(SHIPPED_YAML, tmp_path / "dagster_home" / "dagster.yaml")
    with run_instance(tmp_path) as instance:  # a live run (this test's process) holds the gpu slot
        live = started_run(instance, process_tags(), slot_pool="gpu")
    proc = cli(tmp_path, profile)
    lines = []
    try:
        lines += lines_until(proc, "waiting for a slot of pool gpu", 300)
        assert lines and "waiting for a slot of pool gpu" in lines[-1], "".join(lines)
        assert live.run_id in lines[-1]
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)  # today: spins on "Step blocked by limit", ignoring SIGTERM
    finally:
        proc.kill()
    assert proc.returncode == 143, rest
    assert f"interrupted (SIGTERM) while waiting for pool gpu held by {live.run_id}" in rest
    with run_instance(tmp_path) as instance:
        assert holders(instance) == {live.run_id}


# ---- CI ------------------------------------------------------------------------------------------
def test_ci_run_keeps_the_users_venv(tmp_path):
    """``.ci/run`` in a working copy with a ``.venv``: its own venv folder, the user's left as it was.
    A stand-in python makes the venv and stops the script at its first pip call."""
    (tmp_path / ".ci").mkdir()
    shutil.copy(ROOT / ".ci" / "run", tmp_path / ".ci" / "run")
    shutil.copy(ROOT / "run", tmp_path / "run")  # the set-up script .ci/run calls
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "mine").write_text("the user's venv")
    fake = tmp_path / "fakepython"
    fake.write_text('#!/bin/sh\n[ "$1 $2" = "-m venv" ] || exit 3\nmkdir -p "$3/bin"\n'
                    'printf \'#!/bin/sh\\nexit 7\\n\' > "$3/bin/python"\nchmod +x "$3/bin/python"\n')
    fake.chmod(0o755)
    r = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], env={**os.environ, "PYTHON": str(fake)},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 7, r.stderr  # stopped at the first pip call, inside its own venv
    assert (tmp_path / ".venv" / "mine").read_text() == "the user's venv"
    ci_venv = [p.name for p in tmp_path.iterdir() if p.name.startswith(".venv") and p.name != ".venv"]
    assert ci_venv, "no venv folder of its own"
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert all(f"{name}/" in ignored for name in ci_venv)



WATCHED_RUN = """
import os, sys, uuid, warnings
warnings.filterwarnings("ignore")
import dagster as dg
from oe_assets.recovery import watch_pool_wait

@dg.op(pool="gpu")
def step():
    pass

@dg.job
def job():
    step()

with dg.DagsterInstance.get() as instance:
    run_id = sys.argv[1]
    with watch_pool_wait(instance, run_id, ["gpu"], poll_seconds=0.2):
        job.execute_in_process(instance=instance, run_id=run_id)
"""


def test_a_run_blocked_on_a_pool_inside_dagster_says_so_and_stops_on_ctrl_c(instance, tmp_path):
    """The slot taken between the check and the run: Dagster's executor waits, recording Ctrl-C
    without acting on it; the watch says what the run waits for and ends it."""
    live = started_run(instance, process_tags(), slot_pool="gpu")
    run_id = "0f0e0d0c-0000-4000-8000-000000000001"
    script = tmp_path / "watched.py"
    script.write_text(WATCHED_RUN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(script), run_id], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        lines = lines_until(proc, "waits for a slot of pool gpu", 300)
        assert lines and live.run_id in lines[-1] and run_id in lines[-1], "".join(lines)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)  # today: "Step blocked by limit" until killed
    finally:
        proc.kill()
    assert proc.returncode == 130, rest
    assert f"interrupted while run {run_id} waited for a slot of pool gpu held by run {live.run_id}" in rest
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
    assert holders(instance) == {live.run_id}
    assert all(p.run_id != run_id for p in instance.event_log_storage.get_concurrency_info("gpu").pending_steps)


# ---------------------------------------------------------------- process ends

LOADER_CHILD = r"""
import sys, time
from types import SimpleNamespace
from pathlib import Path
import numpy as np
from PIL import Image
from transformers import CLIPImageProcessor
from oe_assets.resources.datasets import DatasetResource

root = Path(sys.argv[1])
rng = np.random.default_rng(0)
for c in ("a", "b"):
    (root / c).mkdir(parents=True)
    for i in range(48):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
split = DatasetResource(kind="image_folder", class_index="folders", train_path=str(root), val_path=str(root),
                        num_workers=2).split("train")
loaded = SimpleNamespace(model=None, image_processor=CLIPImageProcessor(), source="clip")
batches = iter(split.batches(loaded, batch_size=4))
next(batches)
print("READY", flush=True)
time.sleep(600)
"""


def descendants(pid: int) -> list[int]:
    """The live processes below ``pid`` (from ``/proc``)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and has not exited (a zombie waiting for pid 1 holds nothing)."""
    return bool(process_start(pid)) and not processes._zombie(pid)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_dataloader_workers_end_when_their_parent_is_sigkilled(tmp_path):
    """The image pipeline's DataLoader workers, mid-prefetch, end within 2 s of a SIGKILLed parent (the
    kernel kills them: 0.05 s here).  Torch's own check of the parent runs every 5 s between samples,
    and a worker can then hang at exit in ``Queue._finalize_join``; this fails without the guard."""
    proc = subprocess.Popen([sys.executable, "-c", LOADER_CHILD, str(tmp_path / "images")], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    workers: list[int] = []
    try:
        assert "READY" in lines_until(proc, "READY", 180)[-1]
        time.sleep(2)  # the workers fill the queue the dead parent will never read
        workers = descendants(proc.pid)
        assert len(workers) >= 2, workers
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and any(alive(w) for w in workers):
            time.sleep(0.2)
        assert [w for w in workers if alive(w)] == []
    finally:
        proc.kill()
        for w in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize("how", ["SIGINT to its pid", "SIGTERM to its process group"])
def test_dagster_dev_stops_with_all_its_processes(tmp_path, how):
    """``python -m oe_assets dev`` started as a script's background job (SIGINT ignored, which plain
    ``dagster dev`` also applies to SIGTERM: neither stops it) serves the UI on loopback and stops,
    with every process it started, within 30 s of Ctrl-C or a SIGTERM to its group."""
    import urllib.request

    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "oe_assets", "dev", "-p", str(port)], env=env, cwd=tmp_path,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    started: list[int] = []
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "the UI did not come up"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(1)
        started = descendants(proc.pid)
        assert len(started) >= 4, started  # dagster dev, its code server, the webserver, the daemon
        assert (tmp_path / "home" / "dagster.yaml").is_file()  # the instance: DAGSTER_HOME
        if how.startswith("SIGINT"):
            proc.send_signal(signal.SIGINT)
        else:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        assert proc.returncode == (130 if how.startswith("SIGINT") else 143)
        deadline = time.monotonic() + 5  # a process reparented to pid 1 after the wrapper's last check
        while time.monotonic() < deadline and any(alive(p) for p in started):
            time.sleep(0.2)
        assert [p for p in started if alive(p)] == []
    finally:
        for pid in [proc.pid, *started]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
