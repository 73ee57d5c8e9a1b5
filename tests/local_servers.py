"""Real servers for the Celery path, on this machine's loopback address: ``redis-server`` (the broker), a
Postgres cluster (``initdb`` into a temporary folder, run as the ``postgres`` user when this is root: the
Dagster instance), and ``python -m oe_assets worker`` processes, each started here and stopped by its pid;
every wait is bounded.  Used by ``tests/test_distributed.py`` and ``benchmarks/bench_distributed.py``."""

from __future__ import annotations

import contextlib
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
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
#: the queue of the servers' workers (the model steps' queue is ``<QUEUE>.gpu``)
QUEUE = "oe_assets_test"
#: the variables :mod:`oe_assets.distributed` reads
ENV_KEYS = ("DAGSTER_HOME", "OE_ASSETS_POSTGRES_URL", "OE_ASSETS_BROKER", "OE_ASSETS_QUEUE")


def binary(name: str) -> str | None:
    """``name`` on the PATH, else in Debian's ``/usr/lib/postgresql/<version>/bin``."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return versions[-1] if versions else None


def missing() -> str | None:
    """Why the servers cannot start here (``None``: they can)."""
    if not (binary("redis-server") and binary("initdb") and binary("postgres")):
        return "redis-server or Postgres (initdb, postgres) not installed"
    try:
        import dagster_celery  # noqa: F401
        import dagster_postgres  # noqa: F401
    except ImportError:
        return "the [distributed] extra is not installed"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until(what: str, ready, timeout_s: float, procs=()) -> None:
    """Return once ``ready()`` is true; raise when one of ``procs`` exits or after ``timeout_s``."""
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


def stop(proc: subprocess.Popen, sig=signal.SIGTERM, wait_s: float = 20.0) -> None:
    """Stop ``proc`` (by its pid): ``sig``, then SIGKILL after ``wait_s``."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=wait_s)


@contextlib.contextmanager
def servers(prefix: str = "oe-assets-dist-") -> Iterator[dict]:
    """Redis and Postgres on free loopback ports and a ``DAGSTER_HOME`` with the distributed
    ``dagster.yaml``; yields ``root`` (a temporary folder, removed at the end), ``env`` (the environment
    of the command and the workers), ``home``, ``procs`` (stopped at the end, last first: add workers
    there), ``redis_port`` and ``pg_url``."""
    why = missing()
    if why:
        raise RuntimeError(why)
    redis_bin, initdb, postgres = binary("redis-server"), binary("initdb"), binary("postgres")
    procs: list[subprocess.Popen] = []
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        redis_port, pg_port = free_port(), free_port()
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
        until("redis", lambda: redis_client.Redis(port=redis_port, socket_connect_timeout=1).ping(), 30, [redis])
        until("postgres", lambda: psycopg2.connect(url.replace("+psycopg2", ""), connect_timeout=1).close() is None,
              60, [pg])
        home = root / "dagster_home"
        home.mkdir()
        shutil.copy(ROOT / "data" / "distributed" / "dagster.yaml", home / "dagster.yaml")
        # not a profile an earlier test of this process left in its environment (the CLI sets it)
        inherited = {k: v for k, v in os.environ.items() if k != "OE_ASSETS_PROFILE"}
        env = {**inherited, "DAGSTER_HOME": str(home), "OE_ASSETS_POSTGRES_URL": url,
               "OE_ASSETS_BROKER": f"redis://127.0.0.1:{redis_port}/0", "OE_ASSETS_QUEUE": QUEUE,
               "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        yield {"root": root, "env": env, "home": home, "procs": procs, "redis_port": redis_port, "pg_url": url}
    finally:
        for p in reversed(procs):
            stop(p)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def in_env(env: dict) -> Iterator[None]:
    """This process with the servers' variables (:mod:`oe_assets.distributed` reads them), restored after."""
    old = {k: os.environ.get(k) for k in ENV_KEYS}
    os.environ.update({k: env[k] for k in ENV_KEYS})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start_workers(srv: dict, which=(("--gpu", "0"), ("--gpu", "1"), ("--general",)), timeout_s: float = 120.0,
                  name: str | None = None) -> list[subprocess.Popen]:
    """The instance initialised once, then one ``python -m oe_assets worker`` per entry of ``which``
    (their logs ``<root>/worker<last argument>.log``), added to ``srv["procs"]``; returns once all of
    them listen on the queues (at most ``timeout_s``)."""
    from oe_assets.distributed import CelerySettings, init_instance, queue_workers

    with in_env(srv["env"]):
        init_instance(CelerySettings.from_env()).dispose()
        settings = CelerySettings.from_env()
        before = set(queue_workers(settings, timeout_s=1.0))
        workers = []
        for args in which:
            log = open(srv["root"] / f"worker{args[-1]}{'-' + name if name else ''}.log", "ab")
            workers.append(subprocess.Popen([sys.executable, "-m", "oe_assets", "worker", *args], cwd=ROOT,
                                            env=srv["env"], stdout=log, stderr=subprocess.STDOUT))
            log.close()
        srv["procs"].extend(workers)
        until(f"{len(workers)} worker(s)", lambda: len(set(queue_workers(settings)) - before) == len(workers),
              timeout_s, workers)
    return workers


def worker_children(worker: subprocess.Popen) -> list[int]:
    """The pids of a worker's pool processes (the children that execute its tasks)."""
    try:
        text = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]
