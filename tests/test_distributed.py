"""The layer partitions on Celery workers with the real servers: ``redis-server`` (the broker) and a
Postgres cluster (the Dagster instance) on free loopback ports, two workers (``-c 1``), all started
here and stopped by pid; every wait is bounded.

Without ``redis-server`` / ``initdb`` or the ``[distributed]`` extra these tests are skipped, except
under ``CI=true``, where they fail.  ``python -m pytest -m distributed`` runs them alone."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from helpers import tiny_bert_profile

pytestmark = pytest.mark.distributed

ROOT = Path(__file__).resolve().parents[1]


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return versions[-1] if versions else None


def _require(ok: bool, why: str) -> None:
    if ok:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why} (required under CI=true: .ci/run installs redis-server and postgresql)")
    pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _until(what: str, ready, timeout_s: float, procs=()) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{what}: process {p.pid} exited with {p.returncode}")
        try:
            if ready():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{what} not ready within {timeout_s} s")


def _stop(proc: subprocess.Popen, sig=signal.SIGTERM, wait_s: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=wait_s)


@pytest.fixture(scope="module")
def servers():
    """Redis and Postgres on free loopback ports, a DAGSTER_HOME with the distributed dagster.yaml
    (instance initialised here, once), and the environment for the command and the workers."""
    redis_bin, initdb, postgres = _binary("redis-server"), _binary("initdb"), _binary("postgres")
    _require(bool(redis_bin and initdb and postgres), "redis-server or Postgres (initdb, postgres) not installed")
    try:
        import dagster_celery  # noqa: F401
        import dagster_postgres  # noqa: F401
    except ImportError:
        _require(False, "the [distributed] extra is not installed")
    procs: list[subprocess.Popen] = []
    root = Path(tempfile.mkdtemp(prefix="oe-assets-dist-"))
    try:
        redis_port, pg_port = _free_port(), _free_port()
        redis = subprocess.Popen([redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no", "--dir", str(root)], stdout=subprocess.DEVNULL)
        procs.append(redis)
        pgdata = root / "pg"
        pgdata.mkdir()
        as_user = {}
        if os.geteuid() == 0:  # Postgres refuses to run as root
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chmod(root, 0o755)
            os.chown(pgdata, pw.pw_uid, pw.pw_gid)
            as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        subprocess.run([initdb, "-D", str(pgdata), "-A", "trust", "-U", "oe", "--no-sync"], check=True, timeout=120,
                       stdout=subprocess.DEVNULL, **as_user)
        pg = subprocess.Popen([postgres, "-D", str(pgdata), "-p", str(pg_port), "-h", "127.0.0.1", "-k", str(pgdata),
                               "-c", "fsync=off"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **as_user)
        procs.append(pg)
        import psycopg2
        import redis as redis_client

        url = f"postgresql+psycopg2://oe@127.0.0.1:{pg_port}/postgres"
        _until("redis", lambda: redis_client.Redis(port=redis_port, socket_connect_timeout=1).ping(), 30, [redis])
        _until("postgres", lambda: psycopg2.connect(url.replace("+psycopg2", ""), connect_timeout=1).close() is None,
               60, [pg])
        home = root / "dagster_home"
        home.mkdir()
        shutil.copy(ROOT / "data" / "distributed" / "dagster.yaml", home / "dagster.yaml")
        env = {**os.environ, "DAGSTER_HOME": str(home), "OE_ASSETS_POSTGRES_URL": url,
               "OE_ASSETS_BROKER": f"redis://127.0.0.1:{redis_port}/0", "OE_ASSETS_QUEUE": "oe_assets_test",
               "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        yield {"root": root, "env": env, "home": home, "procs": procs, "redis_port": redis_port, "pg_url": url}
    finally:
        for p in reversed(procs):
            _stop(p)
        shutil.rmtree(root, ignore_errors=True)


def _in_env(env):
    """Apply ``env`` to this process (the distributed module reads it); returns the old values."""
    keys = ["DAGSTER_HOME", "OE_ASSETS_POSTGRES_URL", "OE_ASSETS_BROKER", "OE_ASSETS_QUEUE"]
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: env[k] for k in keys})
    return old


def _restore(old):
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def cluster(servers):
    """The instance initialised once, then two GPU workers and one general worker (``-c 1``) on the test's queues."""
    from oe_assets.distributed import CelerySettings, init_instance, queue_workers

    old = _in_env(servers["env"])
    try:
        init_instance(CelerySettings.from_env()).dispose()
        workers = []
        for which in (["--gpu", "0"], ["--gpu", "1"], ["--general"]):
            log = open(servers["root"] / f"worker{which[-1]}.log", "wb")
            workers.append(subprocess.Popen([sys.executable, "-m", "oe_assets", "worker", *which],
                                            cwd=ROOT, env=servers["env"], stdout=log, stderr=subprocess.STDOUT))
        servers["procs"].extend(workers)
        settings = CelerySettings.from_env()
        _until("three workers", lambda: len(queue_workers(settings)) == 3, 120, workers)
        yield {**servers, "workers": workers, "settings": settings}
    finally:
        _restore(old)


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


def test_worker_names_a_missing_broker(servers):
    """A worker whose broker does not answer exits 2 within its wait, naming the address."""
    port = _free_port()
    env = {**servers["env"], "OE_ASSETS_BROKER": f"redis://127.0.0.1:{port}/0"}
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "oe_assets", "worker", "--gpu", "0", "--wait", "2"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"cannot reach the Celery broker at redis://127.0.0.1:{port}/0 within 2 s" in done.stderr
    assert time.monotonic() - t0 < 60


def test_worker_names_a_missing_database(servers):
    port = _free_port()
    env = {**servers["env"], "OE_ASSETS_POSTGRES_URL": f"postgresql+psycopg2://oe:secret@127.0.0.1:{port}/postgres"}
    done = subprocess.run([sys.executable, "-m", "oe_assets", "worker", "--gpu", "0", "--wait", "2"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    address = f"postgresql+psycopg2://oe:***@127.0.0.1:{port}/postgres"
    assert f"cannot reach the Dagster instance's database at {address}" in done.stderr
    assert "secret" not in done.stderr
