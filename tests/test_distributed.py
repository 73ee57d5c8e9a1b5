"""The layer partitions on Celery workers with the real servers: ``redis-server`` (the broker) and a
Postgres cluster (the Dagster instance) on free loopback ports, two workers (``-c 1``), all started
here and stopped by pid; every wait is bounded.

Without ``redis-server`` / ``initdb`` or the ``[distributed]`` extra these tests are skipped, except
under ``CI=true``, where they fail.  ``python -m pytest -m distributed`` runs them alone; ``-m cluster`` the two
that start the workers (a few minutes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

import local_servers
from helpers import tiny_bert_profile

pytestmark = pytest.mark.distributed

ROOT = local_servers.ROOT


def _require_servers() -> None:
    why = local_servers.missing()
    if why is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why} (required under CI=true: .ci/run installs redis-server and postgresql)")
    pytest.skip(why)


@pytest.fixture(scope="module")
def servers():
    """Redis and Postgres on free loopback ports, a DAGSTER_HOME with the distributed dagster.yaml, and
    the environment for the command and the workers (:func:`local_servers.servers`)."""
    _require_servers()
    with local_servers.servers() as srv:
        yield srv


@pytest.fixture(scope="module")
def cluster(servers):
    """The instance initialised once, then two GPU workers and one general worker (``-c 1``) on the test's queues."""
    from oe_assets.distributed import CelerySettings

    workers = local_servers.start_workers(servers)
    with local_servers.in_env(servers["env"]):
        yield {**servers, "workers": workers, "settings": CelerySettings.from_env()}


def _materialize(env, profile_path, *args, timeout=900):
    return subprocess.run([sys.executable, "-m", "oe_assets", "materialize", "--profile", str(profile_path), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def in_process(servers):
    """The in-process result of the same profile (its own SQLite instance and store)."""
    root = servers["root"] / "in_process"
    profile = tiny_bert_profile(root)
    path = root / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    env = {**os.environ, "DAGSTER_HOME": str(root / "home"), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = _materialize(env, path)
    assert done.returncode == 0, done.stdout + done.stderr
    return Path(profile["storage"]["base_dir"])


def _datasets(group) -> list[str]:
    import h5py

    names: list[str] = []
    group.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return names


def _compare_stores(got: Path, expected: Path) -> int:
    """Every HDF5 dataset and Parquet column equal (floats to 1e-6); the number of files compared."""
    import h5py

    files = sorted(p.relative_to(expected) for p in expected.rglob("*") if p.suffix in (".h5", ".parquet"))
    assert files and files == sorted(p.relative_to(got) for p in got.rglob("*") if p.suffix in (".h5", ".parquet"))
    for rel in files:
        if rel.suffix == ".h5":
            with h5py.File(expected / rel) as e, h5py.File(got / rel) as g:
                names = _datasets(e)
                assert names, rel
                for n in names:
                    a, b = e[n][()], g[n][()]
                    if a.dtype.kind == "f":
                        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6, err_msg=f"{rel}:{n}")
                    else:
                        assert np.array_equal(a, b), f"{rel}:{n}"
        else:
            a, b = pq.read_table(expected / rel), pq.read_table(got / rel)
            assert a.column_names == b.column_names, rel
            for c in a.column_names:
                x, y = a[c].to_pylist(), b[c].to_pylist()
                try:
                    np.testing.assert_allclose(np.asarray(y, float), np.asarray(x, float), rtol=1e-6, atol=1e-6)
                except (TypeError, ValueError):
                    assert x == y, f"{rel}:{c}"
    return len(files)


def _model_steps(profile_path) -> set[str]:
    """The step keys of the steps that run the model (pool gpu)."""
    from oe_assets.definitions import build_definitions

    defs = build_definitions(str(profile_path))
    return {n.name for job in defs.resolve_all_job_defs() for n in job.nodes if n.definition.pool == "gpu"}


def _steps(instance, run_ids, keys):
    from oe_assets.distributed import step_intervals

    return [(run_id, key, s) for run_id in run_ids for key, s in step_intervals(instance, run_id).items() if key in keys]


def _effects_steps(instance, run_ids):
    from oe_assets.distributed import step_intervals

    out = []
    for run_id in run_ids:
        steps = step_intervals(instance, run_id)
        out += [(run_id, key, s) for key, s in steps.items() if key == "second_order_effects"]
    return out


def _layer_runs(instance):
    import dagster as dg

    runs = instance.get_runs(filters=dg.RunsFilter(job_name="materialize_layers"))
    return sorted((r for r in runs if r.status == dg.DagsterRunStatus.SUCCESS), key=lambda r: r.tags.get(
        "dagster/asset_partition_range_start", ""))


@pytest.mark.cluster
def test_two_layer_runs_on_two_workers_overlap_and_match_in_process(cluster, in_process):
    """Two parallel runs (one layer each) succeed at the same time, every step that runs the model on a
    GPU worker (never the general worker), two of them at once on the two GPU workers, every file equal
    to the in-process result; then with a gpu limit of 1 the model steps of a forced rerun are serialized."""
    import dagster as dg

    root = cluster["root"] / "celery"
    profile = tiny_bert_profile(root)
    path = root / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    done = _materialize(cluster["env"], path, "--executor", "celery", "--parallel-runs", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("run ") and "for layers" in line]
    assert len(lines) == 2 and all(": SUCCESS, steps on " in line and "gpu" in line for line in lines), done.stdout
    assert _compare_stores(Path(profile["storage"]["base_dir"]), in_process) >= 10

    instance = dg.DagsterInstance.from_config(str(cluster["home"]))
    runs = _layer_runs(instance)
    assert [(r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"])
            for r in runs] == [("0", "0"), ("1", "1")]

    # the model steps on the GPU workers only (op tag dagster-celery/queue), two of them at once on two workers
    model = _model_steps(path)
    all_runs = instance.get_runs()
    steps = [s for _, _, s in _steps(instance, [r.run_id for r in all_runs], model)]
    assert steps and all(s["worker"].startswith(("gpu0.", "gpu1.")) for s in steps), steps
    assert {s["worker"].split(".")[0] for s in steps} == {"gpu0", "gpu1"}, steps
    assert any(x["worker"] != y["worker"] and x["start"] < y["end"] and y["start"] < x["end"]
               for x in steps for y in steps), "no two model steps ran at the same time"
    assert len(_effects_steps(instance, [r.run_id for r in runs])) == 2
    a, b = (instance.get_run_record_by_id(r.run_id) for r in runs)
    assert a.start_time < b.end_time and b.start_time < a.end_time, "the two layer runs did not run at the same time"

    # a gpu limit of 1: the same two runs, forced, hold the pool one after the other
    done = _materialize(cluster["env"], path, "--executor", "celery", "--parallel-runs", "2", "--gpu-limit", "1",
                        "--force")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pool gpu limit 1" in done.stdout
    later = [r for r in _layer_runs(instance) if r.run_id not in {x.run_id for x in runs}]
    assert len(later) == 2
    steps = sorted((s for _, _, s in _steps(instance, [r.run_id for r in later], model)), key=lambda s: s["start"])
    assert len(steps) >= 2 and all(b["start"] >= a["end"] for a, b in zip(steps, steps[1:])), steps
    _compare_stores(Path(profile["storage"]["base_dir"]), in_process)
    instance.dispose()


@pytest.mark.cluster
def test_sigkill_of_a_workers_child_mid_effects_fails_the_run_and_the_next_materialize_completes(cluster):
    """SIGKILL of the worker process that streams the effects (the writer its staging file names): the
    run is failed within a bounded time (Celery's WorkerLostError), its gpu pool slot is freed, and the
    next materialize removes the staged file, completes and leaves no staging file."""
    import dagster as dg

    from oe_assets.recovery import staging_run, staging_writer

    root = cluster["root"] / "kill"
    profile = tiny_bert_profile(root)
    rows = (root / "train.jsonl").read_text().splitlines()
    (root / "train.jsonl").write_text("\n".join(rows * 400) + "\n")  # a data pass long enough to be killed in
    path = root / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    store = Path(profile["storage"]["base_dir"])
    effects = store / "second_order_effects"
    args = [sys.executable, "-m", "oe_assets", "materialize", "--profile", str(path), "--executor", "celery",
            "--parallel-runs", "1", "--gpu-limit", "1"]
    first = subprocess.Popen(args, cwd=ROOT, env=cluster["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        deadline = time.monotonic() + 400
        while not list(effects.glob("*.partial-*")):
            assert first.poll() is None, f"materialize ended before the effects were staged:\n{first.stdout.read()}"
            assert time.monotonic() < deadline, "no staging file of second_order_effects appeared"
            time.sleep(0.05)
        staged = list(effects.glob("*.partial-*"))[0]
        writer = staging_writer(staged.name)
        children = [c for w in cluster["workers"] for c in local_servers.worker_children(w)]
        assert writer.pid in children, (writer, children)  # the writer is a worker's pool process
        killed_at = time.monotonic()
        os.kill(writer.pid, 9)
        out, _ = first.communicate(timeout=300)
        failed_after = time.monotonic() - killed_at
    finally:
        first.kill()
        first.wait()
    assert first.returncode == 1, out
    assert failed_after < 120, f"the run ended {failed_after:.0f} s after the kill"
    print(f"materialize ended {failed_after:.1f} s after the kill")  # shown with pytest -s
    instance = dg.DagsterInstance.from_config(str(cluster["home"]))
    run = instance.get_run_by_id(staging_run(staged.name))
    assert run is not None and run.status == dg.DagsterRunStatus.FAILURE, out
    assert "WorkerLostError" in out or "WorkerLostError" in "".join(
        r.event_log_entry.dagster_event.message or "" for r in instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records), out
    info = instance.event_log_storage.get_concurrency_info("gpu")
    assert run.run_id not in {s.run_id for s in info.claimed_slots} | {p.run_id for p in info.pending_steps}
    left = list(store.rglob("*.partial-*"))  # the killed writer's files, until the next materialize
    assert staged in left and {staging_run(p.name) for p in left} == {run.run_id}

    again = _materialize(cluster["env"], path, "--executor", "celery", "--parallel-runs", "1", "--gpu-limit", "1",
                         timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (f"removed {len(left)} staging file(s) under {store} left by ended runs or dead writers: {run.run_id}"
            in again.stdout), again.stdout
    assert not list(store.rglob("*.partial-*"))
    assert {p.name for p in effects.glob("*.h5")} == {"0.h5", "1.h5"}
    assert not instance.event_log_storage.get_concurrency_info("gpu").claimed_slots
    instance.dispose()


def test_worker_names_a_missing_broker(servers):
    """A worker whose broker does not answer exits 2 within its wait, naming the address."""
    port = local_servers.free_port()
    env = {**servers["env"], "OE_ASSETS_BROKER": f"redis://127.0.0.1:{port}/0"}
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "oe_assets", "worker", "--gpu", "0", "--wait", "2"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"cannot reach the Celery broker at redis://127.0.0.1:{port}/0 within 2 s" in done.stderr
    assert time.monotonic() - t0 < 60


def test_worker_names_a_missing_database(servers):
    port = local_servers.free_port()
    env = {**servers["env"], "OE_ASSETS_POSTGRES_URL": f"postgresql+psycopg2://oe:secret@127.0.0.1:{port}/postgres"}
    done = subprocess.run([sys.executable, "-m", "oe_assets", "worker", "--gpu", "0", "--wait", "2"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    address = f"postgresql+psycopg2://oe:***@127.0.0.1:{port}/postgres"
    assert f"cannot reach the Dagster instance's database at {address}" in done.stderr
    assert "secret" not in done.stderr
