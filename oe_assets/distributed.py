"""More than one process or machine: the layer partitions as runs whose steps execute on Celery workers
(``dagster-celery``), one worker per GPU, with a Redis broker and the Dagster instance on Postgres
(``pip install 'oe_assets[distributed]'``).

    python -m oe_assets worker --gpu 0          one worker on GPU 0 (CUDA_VISIBLE_DEVICES=0, one task at a time)
    python -m oe_assets worker --general        a worker for the steps that do not run the model
    python -m oe_assets materialize --executor celery --parallel-runs 2

Settings (environment variables; the in-process default of ``python -m oe_assets materialize`` needs none):

- ``OE_ASSETS_BROKER``: the Celery broker (default ``redis://127.0.0.1:6379/0``);
- ``OE_ASSETS_BACKEND``: the Celery result backend (default: the broker);
- ``OE_ASSETS_QUEUE``: the queue of the steps that do not run the model, on which every worker listens
  (default ``oe_assets``); the steps that run the model (the assets and checks in pool ``gpu``, their op
  tags :func:`model_step_tags`) go to ``<queue>.gpu``, on which only the GPU workers listen;
- ``OE_ASSETS_POSTGRES_URL``: the Dagster instance's database (``postgresql+psycopg2://user:password@host:5432/db``:
  SQLAlchemy's form, with the driver the extra installs), named by the instance's ``dagster.yaml``
  (``data/distributed/dagster.yaml``; ``DAGSTER_HOME`` points at its folder).

Every step of a run is a Celery task: the worker rebuilds the job from the profile
(:func:`celery_job`), loads the model once per worker process (the model resource's cache) and
writes to the shared artifact store.  Each run is orchestrated by its own process on the host of
``materialize``, which waits for the ``gpu`` pool's slots (the pool limit is set to the number of
GPU workers, or ``--gpu-limit``).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from .processes import die_with_parent
from .step_tags import CELERY_QUEUE_TAG, GPU_POD_CONFIG, K8S_CONFIG_TAG, general_queue, model_queue, model_step_tags

__all__ = ["CelerySettings", "ServiceUnavailable", "wait_for_services", "init_instance", "celery_job",
           "celery_app", "layer_spans", "step_intervals", "worker_main", "materialize_celery", "SUBMISSION_TAG",
           "model_step_tags", "CELERY_QUEUE_TAG", "K8S_CONFIG_TAG", "GPU_POD_CONFIG"]

#: run tag naming the ``materialize`` submission a run belongs to (how the command finds its runs)
SUBMISSION_TAG = "oe_assets/submission"
#: the engine event metadata key dagster-celery writes the worker's node name under
WORKER_KEY = "Celery worker"
#: Postgres advisory lock held while the instance's tables are created or migrated
_INIT_LOCK = 0x0E5A55E7


@dataclass(frozen=True)
class CelerySettings:
    broker: str
    backend: str
    queue: str
    postgres_url: str | None

    @classmethod
    def from_env(cls) -> CelerySettings:
        broker = os.environ.get("OE_ASSETS_BROKER", "redis://127.0.0.1:6379/0")
        return cls(broker, os.environ.get("OE_ASSETS_BACKEND", broker), general_queue(),
                   os.environ.get("OE_ASSETS_POSTGRES_URL") or None)

    @property
    def model_queue(self) -> str:
        """The queue of the steps that run the model (their op tag names it), taken by the GPU workers."""
        return model_queue(self.queue)

    def config_source(self) -> dict:
        """Celery settings of both sides: steps without a queue tag go to the general queue; a worker
        takes a task only when it has none running (acknowledged late, one prefetched), so an idle
        worker is never left waiting while a busy one holds a second task."""
        return {"task_default_queue": self.queue, "task_acks_late": True, "worker_prefetch_multiplier": 1}

    def run_config(self) -> dict:
        """The run config of a run on the workers."""
        return {"execution": {"config": {"broker": self.broker, "backend": self.backend,
                                         "config_source": self.config_source()}}}



def libpq_url(url: str) -> str:
    """A SQLAlchemy URL (``postgresql+psycopg2://...``, the form ``dagster.yaml`` takes) as libpq reads it."""
    scheme, sep, rest = url.partition("://")
    return scheme.split("+", 1)[0] + sep + rest


def redact(url: str) -> str:
    """``url`` without its password (for messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class ServiceUnavailable(RuntimeError):
    """The broker or the database did not answer within the wait."""


def _wait(what: str, address: str, connect, timeout_s: float, hint: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            connect()
            return
        except Exception as e:  # noqa: BLE001 - every failure to connect is reported the same way
            last = e
        if time.monotonic() >= deadline:
            reason = (str(last).strip().splitlines() or [type(last).__name__])[0]
            raise ServiceUnavailable(f"cannot reach the {what} at {redact(address)} within {timeout_s:.0f} s "
                                     f"({reason}); {hint}")
        time.sleep(0.5)


def wait_for_services(settings: CelerySettings, timeout_s: float = 10.0) -> None:
    """Return once the broker (and the database, when ``OE_ASSETS_POSTGRES_URL`` names one) accept a
    connection; else :class:`ServiceUnavailable` naming the address, after ``timeout_s``."""
    from kombu import Connection

    def broker():
        with Connection(settings.broker, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1, timeout=2)

    _wait("Celery broker", settings.broker, broker, timeout_s, "start redis-server there or set OE_ASSETS_BROKER")
    if settings.postgres_url:
        import psycopg2

        def database():
            psycopg2.connect(libpq_url(settings.postgres_url), connect_timeout=2).close()

        _wait("Dagster instance's database", settings.postgres_url, database, timeout_s,
              "start Postgres there or set OE_ASSETS_POSTGRES_URL")


def init_instance(settings: CelerySettings):
    """The instance of ``DAGSTER_HOME``, its tables created or migrated by one process at a time (a
    file lock in ``DAGSTER_HOME`` on this host, and a Postgres advisory lock across hosts): workers
    and the command starting together do not race on the schema."""
    import dagster as dg

    from .profiles import default_dagster_home

    home = default_dagster_home()
    os.environ["DAGSTER_HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".oe_assets-init.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if settings.postgres_url:
            import psycopg2

            conn = psycopg2.connect(libpq_url(settings.postgres_url), connect_timeout=5)
            conn.autocommit = True
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_advisory_lock(%s)", (_INIT_LOCK,))
                    try:
                        instance = dg.DagsterInstance.get()
                    finally:
                        cur.execute("SELECT pg_advisory_unlock(%s)", (_INIT_LOCK,))
            finally:
                conn.close()
        else:
            instance = dg.DagsterInstance.get()
    return instance


class _StepTask:
    """A step's Celery task as dagster-celery's executor loop reads it (``ready``, ``get``, ``revoke``),
    where a task that failed outside the step (its worker process was killed: ``WorkerLostError``;
    the task raised before or after the step) reads as the step's own failure event, logged with the
    task's error.  dagster-celery's loop would keep that error aside and stop submitting steps, and with
    steps left (another branch waiting for its turn or a pool slot) poll without sleeping and without
    end; as a failed step, the run frees its pool slot, goes on as after any failed step and fails."""

    def __init__(self, result, step_context):
        self.result, self.step_context = result, step_context

    def ready(self) -> bool:
        return self.result.ready()

    def revoke(self):
        return self.result.revoke()

    def get(self):
        from celery.exceptions import TaskRevokedError
        from dagster import serialize_value

        from .dagster_private import step_failure_event

        try:
            return self.result.get()
        except TaskRevokedError:
            raise  # the loop's own case: the run was terminated
        except Exception as e:  # noqa: BLE001 - every task failure is the step's failure
            key = self.step_context.step.key
            first = (str(e).strip().splitlines() or [""])[0]
            event = step_failure_event(self.step_context, sys.exc_info(),
                                       f'The Celery task of step "{key}" failed ({type(e).__name__}: {first}); '
                                       "the step failed")
            return [serialize_value(event)]


def _submit_step(app, plan_context, step, queue, priority, known_state):
    from .dagster_private import celery_submit_step

    result = celery_submit_step()(app, plan_context, step, queue, priority, known_state)
    return _StepTask(result, plan_context.for_step(step))


_EXECUTOR = None


def celery_executor():
    """dagster-celery's ``celery_executor`` (same name and config), whose loop gets every failed Celery
    task as its step's failure (:class:`_StepTask`) instead of an error that leaves the run polling."""
    global _EXECUTOR
    if _EXECUTOR is None:
        import dagster as dg
        from dagster_celery import celery_executor as library_executor
        from dagster_celery.executor import CeleryExecutor

        class StepFailingCeleryExecutor(CeleryExecutor):
            def execute(self, plan_context, execution_plan):
                from dagster_celery.core_execution_loop import core_celery_execution_loop

                return core_celery_execution_loop(plan_context, execution_plan, step_execution_fn=_submit_step)

        @dg.executor(name="celery", config_schema=library_executor.config_schema,
                     requirements=dg.multiple_process_executor_requirements())
        def executor(init_context):
            config, library = init_context.executor_config, library_executor.executor_creation_fn(init_context)
            return StepFailingCeleryExecutor(broker=config.get("broker"), backend=config.get("backend"),
                                             config_source=config.get("config_source"), include=config.get("include"),
                                             retries=library.retries)

        _EXECUTOR = executor
    return _EXECUTOR


def celery_job(profile: str, job_name: str):
    """The job ``job_name`` of ``profile`` with the Celery executor (:func:`celery_executor`): how a
    worker rebuilds a run's job (:func:`dagster.build_reconstructable_job`)."""
    from .definitions import build_definitions

    return build_definitions(profile, executor=celery_executor()).resolve_job_def(job_name)


def celery_app(settings: CelerySettings):
    """The Celery app of a worker, with dagster-celery's step task registered."""
    from dagster_celery.executor import CeleryExecutor
    from dagster_celery.make_app import make_app
    from dagster_celery.tasks import create_task

    app = make_app(CeleryExecutor.for_cli(settings.broker, settings.backend,
                                          config_source=settings.config_source()).app_args())
    create_task(app)
    return app


def _allow_data_loader_workers(**_kwargs) -> None:
    """In a pool process: let it start processes of its own (the DataLoader's workers that decode
    and tokenize ahead of the model); Celery starts pool processes as daemons, which may not."""
    import multiprocessing

    multiprocessing.current_process().daemon = False


def queue_workers(settings: CelerySettings, timeout_s: float = 2.0) -> dict[str, bool]:
    """The workers listening on the project's queues now: node name -> whether it takes the steps
    that run the model (listens on the model queue)."""
    app = celery_app(settings)
    queues = app.control.inspect(timeout=timeout_s).active_queues() or {}
    out = {}
    for node, qs in sorted(queues.items()):
        names = {q.get("name") for q in qs}
        if names & {settings.queue, settings.model_queue}:
            out[node] = settings.model_queue in names
    return out


# ---- the worker ------------------------------------------------------------------------------------
def worker_main(gpu: int | None, name: str | None = None, wait_s: float = 10.0, loglevel: str = "INFO",
                general: bool = False) -> int:
    """A Celery worker, one task at a time (``-c 1``), pinned to GPU ``gpu`` (``CUDA_VISIBLE_DEVICES``;
    None: the devices the environment gives), on the general queue and the model queue; with
    ``general`` on the general queue alone (the steps that do not run the model; no GPU).  Its node
    name ``<name or gpuN>.<pid>@<host>`` is what each step's engine event records."""
    if general and gpu is not None:
        print("error: --general takes no --gpu (a general worker runs no model step)", file=sys.stderr)
        return 2
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # before anything imports torch
    settings = CelerySettings.from_env()
    try:
        wait_for_services(settings, wait_s)
        init_instance(settings)
    except ServiceUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if general:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a general step never touches a GPU
    # each task names its run's profile (celery_job); a profile left in the shell (a finished
    # experiment's, a deleted file) must not break the import of the definitions module
    os.environ.pop("OE_ASSETS_PROFILE", None)
    prefix = name or ("general" if general else "gpu" + str(gpu) if gpu is not None else "worker")
    node = f"{prefix}.{os.getpid()}@{socket.gethostname()}"
    queues = settings.queue if general else f"{settings.queue},{settings.model_queue}"
    print(f"worker {node}: queues {queues}, broker {redact(settings.broker)}, DAGSTER_HOME "
          f"{os.environ['DAGSTER_HOME']}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')}", flush=True)
    from celery.signals import worker_process_init

    worker_process_init.connect(_allow_data_loader_workers, weak=False)
    app = celery_app(settings)
    app.worker_main(["worker", "-Q", queues, "-c", "1", "-n", node, "-l", loglevel, "-O", "fair",
                     "--without-gossip", "--without-mingle"])
    return 0


# ---- runs ------------------------------------------------------------------------------------------
def layer_spans(spans: list[tuple[list[str], tuple]], parallel_runs: int) -> list[tuple[list[str], tuple]]:
    """Contiguous layer spans (each with the assets its layers need) cut into runs of at most
    ``ceil(L / parallel_runs)`` layers, L the layers in all: each run is one data pass over its span."""
    total = sum(len(layers) for layers, _ in spans)
    if not total:
        return []
    size = math.ceil(total / max(1, parallel_runs))
    return [(layers[i:i + size], need) for layers, need in spans for i in range(0, len(layers), size)]


def step_intervals(instance, run_id: str) -> dict[str, dict]:
    """Per step of a run: ``start`` and ``end`` (event timestamps) and the ``worker`` that ran it."""
    import dagster as dg

    out: dict[str, dict] = {}
    kinds = [dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE,
             dg.DagsterEventType.ENGINE_EVENT]
    for kind in kinds:
        for record in instance.get_records_for_run(run_id, of_type=kind, limit=10_000).records:
            entry = record.event_log_entry
            event = entry.dagster_event
            if event is None or event.step_key is None:
                continue
            step = out.setdefault(event.step_key, {})
            if kind == dg.DagsterEventType.STEP_START:
                step["start"] = entry.timestamp
            elif kind == dg.DagsterEventType.ENGINE_EVENT:
                meta = (event.engine_event_data.metadata or {}) if event.engine_event_data else {}
                if WORKER_KEY in meta:
                    step["worker"] = str(meta[WORKER_KEY].value)
            else:
                step["end"] = entry.timestamp
    return out


def _failures(instance, run_id: str, limit: int = 5) -> list[str]:
    """The first line of each step failure's error and of the run failure's message."""
    import dagster as dg

    lines = []
    for kind in (dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE):
        for record in instance.get_records_for_run(run_id, of_type=kind, limit=limit).records:
            event = record.event_log_entry.dagster_event
            data = event.event_specific_data
            error = getattr(data, "error", None)
            text = error.to_string() if error is not None else (event.message or "")
            last = [line for line in text.strip().splitlines() if line.strip()]
            lines.append(f"{event.step_key or 'run'}: {last[0] if last else kind.value}"
                         + (f" ... {last[-1]}" if len(last) > 1 else ""))
    return lines


def _run_child(spec: dict) -> int:
    """One run of ``spec`` (profile, job, assets, tags) on the instance, its steps on the workers."""
    import warnings

    warnings.filterwarnings("ignore")
    import dagster as dg

    from .recovery import process_tags

    settings = CelerySettings.from_env()
    os.environ["OE_ASSETS_PROFILE"] = spec["profile"]
    instance = dg.DagsterInstance.get()
    job = dg.build_reconstructable_job("oe_assets.distributed", "celery_job", (spec["profile"], spec["job"]))
    result = dg.execute_job(job, instance, run_config=settings.run_config(),
                            tags={**spec["tags"], **process_tags()},
                            asset_selection=[dg.AssetKey.from_user_string(k) for k in spec["assets"]])
    return 0 if result.success else 1


def _submit(spec: dict, log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        # the run ends with this process: a killed materialize leaves no run behind
        return subprocess.Popen([sys.executable, "-m", "oe_assets.distributed", "run", json.dumps(spec)],
                                stdout=f, stderr=subprocess.STDOUT, env=os.environ.copy(), preexec_fn=die_with_parent)


def _finish(instance, submissions: list[tuple[str, str, subprocess.Popen]], timeout_s: float, log: Path, out) -> bool:
    """Wait (at most ``timeout_s``) for the submitted runs; one line per run with its status and
    workers; the pool slots of a failed run are freed.  Whether every run succeeded with its checks."""
    import dagster as dg

    deadline = time.monotonic() + timeout_s
    for _, _, proc in submissions:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for _, _, p in submissions:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)  # the run is terminated: Dagster revokes its tasks
            for _, _, p in submissions:
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
            out(f"error: runs still running after {timeout_s:.0f} s: terminated (see {log})", file=sys.stderr)
            break
    ok = True
    for sid, what, proc in submissions:
        runs = instance.get_runs(filters=dg.RunsFilter(tags={SUBMISSION_TAG: sid}))
        if not runs:
            out(f"error: the run{what} was not created (exit {proc.returncode}); see {log}", file=sys.stderr)
            ok = False
            continue
        run = runs[0]
        steps = step_intervals(instance, run.run_id)
        workers = sorted({s["worker"] for s in steps.values() if "worker" in s})
        failed_checks = [r.event_log_entry.dagster_event.event_specific_data.check_name
                         for r in instance.get_records_for_run(
                             run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION, limit=10_000).records
                         if not r.event_log_entry.dagster_event.event_specific_data.passed]
        status = run.status.value
        out(f"run {run.run_id}{what}: {status}, steps on {', '.join(workers) or 'no worker'}"
            + (f"; checks failed: {failed_checks}" if failed_checks else ""), flush=True)
        if run.status != dg.DagsterRunStatus.SUCCESS or failed_checks:
            ok = False
            for line in _failures(instance, run.run_id):
                out(f"  {line}", file=sys.stderr)
        if run.is_finished and instance.event_log_storage.supports_global_concurrency_limits:
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)  # a dead worker's step held one
    if not ok:
        out(f"a run failed; see the Dagster run log and {log} (a rerun starts where it failed)", file=sys.stderr)
    return ok


def materialize_celery(profile: str, first: str | None = None, last: str | None = None, force: bool = False,
                       parallel_runs: int = 1, gpu_limit: int | None = None, timeout_s: float = 7 * 86400.0,
                       wait_s: float = 10.0, out=print) -> int:
    """:func:`oe_assets.__main__.materialize_all` with every step on the Celery workers: the inputs
    run, the layer-partitioned assets as runs of at most ``ceil(L / parallel_runs)`` layers each
    submitted together (each its own process here, each one data pass over its span on a worker),
    then the summary run.  Resume, ``force`` and validation as in process; stale runs of dead
    processes are failed first and the slots of ended runs freed.  The ``gpu`` pool limit is set to
    ``gpu_limit`` or the number of workers on the queue."""
    import warnings

    warnings.filterwarnings("ignore")
    from .profiles import default_dagster_home

    if parallel_runs < 1:
        out(f"error: --parallel-runs must be at least 1, not {parallel_runs}", file=sys.stderr)
        return 2
    if gpu_limit is not None and gpu_limit < 1:
        out(f"error: --gpu-limit must be at least 1, not {gpu_limit}", file=sys.stderr)
        return 2
    if os.path.isfile(profile):  # the runs' processes and the workers read it from another directory
        profile = os.path.abspath(profile)
    os.environ["DAGSTER_HOME"] = str(default_dagster_home())
    os.environ["OE_ASSETS_PROFILE"] = profile
    settings = CelerySettings.from_env()
    t0 = time.perf_counter()
    try:
        wait_for_services(settings, wait_s)
        instance = init_instance(settings)
    except ServiceUnavailable as e:
        out(f"error: {e}", file=sys.stderr)
        return 2
    from .definitions import MATERIALIZE_JOBS, build_definitions, layer_range_tags, layers_job
    from .profiles.validation import ProfileError, validate_layers
    from .recovery import fail_stale_runs, free_ended_run_slots, remove_ended_run_staging
    from .resume import observe_and_plan, plan_layer_spans, settings_tags

    try:
        defs = build_definitions(profile)
        layers = defs.resolve_job_def(layers_job.name).partitions_def.get_partition_keys()
        problems = validate_layers(layers, first, last)
        if problems:
            raise ProfileError(problems, "the command line")
    except (ProfileError, FileNotFoundError) as e:
        out(f"error: {e}", file=sys.stderr)
        return 2
    workers = queue_workers(settings)
    deadline = time.monotonic() + wait_s
    while not workers and time.monotonic() < deadline:
        time.sleep(1.0)
        workers = queue_workers(settings)
    gpu_workers = [node for node, model in workers.items() if model]
    while not gpu_workers and time.monotonic() < deadline:
        time.sleep(1.0)
        workers = queue_workers(settings)
        gpu_workers = [node for node, model in workers.items() if model]
    if not gpu_workers:
        out(f"error: no GPU worker listens on queue {settings.model_queue} at {redact(settings.broker)} "
            f"(waited {wait_s:.0f} s); start one with `python -m oe_assets worker --gpu 0`", file=sys.stderr)
        return 2
    general = [node for node, model in workers.items() if not model]
    limit = gpu_limit or len(gpu_workers)
    instance.event_log_storage.set_concurrency_slots("gpu", limit)
    out(f"{len(gpu_workers)} GPU worker(s) on queues {settings.queue} and {settings.model_queue}: {', '.join(gpu_workers)}"
        + (f"; general worker(s) on {settings.queue}: {', '.join(general)}" if general else "")
        + f"; pool gpu limit {limit}", flush=True)
    first, last = first or layers[0], last or layers[-1]
    in_range = layers[layers.index(first): layers.index(last) + 1]
    fail_stale_runs(instance, out)
    free_ended_run_slots(instance, out)
    remove_ended_run_staging(instance, defs.resources["store"].base_dir, out)
    planned = observe_and_plan(defs, instance, in_range, force, out)
    if planned is None:
        return 1
    jobs, plan = planned
    base_tags = settings_tags(defs)
    log_dir = Path(os.environ["DAGSTER_HOME"]) / "oe_assets_runs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    ran = 0
    for job in MATERIALIZE_JOBS:
        keys = [k for k in jobs[job.name] if plan.to_run(k)]
        if not keys:
            continue
        runs: list[tuple[list, dict, str]]
        if job is layers_job:
            spans = plan_layer_spans(plan, keys, in_range, layers)
            runs = [(list(need), layer_range_tags(cut[0], cut[-1]), f" for layers {cut[0]}..{cut[-1]}")
                    for cut, need in layer_spans(spans, parallel_runs)]
        else:
            runs = [(keys, {}, "")]
        submissions = []
        for selection, tags, where in runs:
            sid = str(uuid.uuid4())
            out(f"submitting {', '.join(k.to_user_string() for k in selection)}{where}", flush=True)
            spec = {"profile": profile, "job": job.name, "assets": [k.to_user_string() for k in selection],
                    "tags": {**tags, **base_tags, SUBMISSION_TAG: sid}}
            submissions.append((sid, where, _submit(spec, log)))
        ran += len(submissions)
        if not _finish(instance, submissions, max(0.0, timeout_s - (time.perf_counter() - t0)), log, out):
            return 1
    what = "everything up to date, nothing run" if not ran else f"{ran} run(s)"
    out(f"done: profile {profile}, layers {first}..{last}, {what} on the Celery workers, "
        f"{time.perf_counter() - t0:.0f} s")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m oe_assets.distributed")
    ap.add_argument("command", choices=["run"])
    ap.add_argument("spec")
    args = ap.parse_args(argv)
    return _run_child(json.loads(args.spec))


if __name__ == "__main__":
    sys.exit(main())
