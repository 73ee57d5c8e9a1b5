"""Recovery from killed runs: which process wrote a file or runs a run, whether it is still alive,
failing the runs of dead processes (which frees their pool slots), and waiting for a pool slot in a
way that Ctrl-C and SIGTERM end.

A process is named by ``(host, pid, start)`` (:mod:`oe_assets.processes`), so a pid the kernel gave
to a new process is not taken for the old one; staging files name their writer the same way
(:mod:`oe_assets.storage.layout`).  A process on another host is never judged dead (nothing here
can see it); a staging file written in a run names the run too, and is removed once the instance
says that run has ended, whichever host wrote it (:func:`remove_ended_run_staging`).

The ``python -m oe_assets materialize`` runs carry these as run tags (:func:`process_tags`).  Runs
without them (launched from the UI or the daemon by Dagster's default run launcher, which cannot
report its workers' health) are judged by the pid in the run's first engine event that names one
(``Started process for run (pid: ...)``, ``Executing steps in process (pid: ...)``): dead when no
such process exists, or when the process with that pid started after the event (a recycled pid).
This only holds for an instance whose runs execute on this host, i.e. the default local storage
under ``DAGSTER_HOME``; for another storage such runs are left alone.

Dagster's ``dagster.yaml`` ``run_monitoring`` (enabled in the shipped instance) covers the rest in
the daemon: start and cancel timeouts, and freeing the slots of finished runs.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .processes import Process, is_dead, process_start, this_process
from .storage.layout import remove_ended_staging, staging_run, staging_suffix, staging_writer

__all__ = ["PID_TAG", "HOST_TAG", "START_TAG", "RUN_TAG", "Process", "this_process", "process_start", "process_tags",
           "is_dead", "staging_suffix", "staging_writer", "staging_run", "run_has_ended",
           "remove_ended_run_staging", "StaleRun", "stale_runs", "fail_stale_runs",
           "free_ended_run_slots", "wait_for_pools", "PoolWaitInterrupted", "watch_pool_wait"]

PID_TAG = "oe_assets/pid"
HOST_TAG = "oe_assets/host"
START_TAG = "oe_assets/process_start"
#: the run the process tags were written for: Dagster copies a run's tags to its re-executions, whose
#: process is another one
RUN_TAG = "oe_assets/run_id"


def process_tags(process: Process | None = None, run_id: str | None = None) -> dict[str, str]:
    """Run tags naming the process that executes the run (``run_id``: that run, so that a
    re-execution carrying copies of the tags is not taken for this process's run)."""
    p = process or this_process()
    return {PID_TAG: str(p.pid), HOST_TAG: p.host, START_TAG: p.start, **({RUN_TAG: run_id} if run_id else {})}


# ---- runs ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StaleRun:
    run_id: str
    job_name: str
    why: str


def _run_process(instance, run) -> Process | None:
    """The process executing ``run``: from its tags, else from its first engine event with a pid
    (then only on a local instance, see the module docstring)."""
    tags = run.tags
    if PID_TAG in tags and tags[PID_TAG].isdigit() and tags.get(RUN_TAG, run.run_id) == run.run_id:
        return Process(tags.get(HOST_TAG, ""), int(tags[PID_TAG]), tags.get(START_TAG, ""))
    from dagster import DagsterEventType

    from .dagster_private import run_storage_is_sqlite

    if not run_storage_is_sqlite(instance):
        return None
    for record in instance.get_records_for_run(run.run_id, of_type=DagsterEventType.ENGINE_EVENT,
                                               limit=50).records:
        data = record.event_log_entry.dagster_event.engine_event_data
        pid = (data.metadata or {}).get("pid") if data else None
        if pid is not None and str(pid.value).isdigit():
            pid = int(pid.value)
            start = _start_tick_before(pid, record.event_log_entry.timestamp)
            return Process(socket.gethostname(), pid, start)
    return None


def _start_tick_before(pid: int, timestamp: float) -> str:
    """The current start tick of ``pid`` if that process started before ``timestamp`` (so it may be
    the one that logged the event), else ``"recycled"`` (a later process got the pid)."""
    tick = process_start(pid)
    if not tick:
        return ""
    try:
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, StopIteration):
        return ""
    started = boot + int(tick) / os.sysconf("SC_CLK_TCK")
    # a minute's margin for the boot time's whole seconds and clock steps: a pid reused that soon is
    # taken as alive (the run is waited for, never wrongly failed)
    return tick if started <= timestamp + 60.0 else "recycled"


def stale_runs(instance) -> list[StaleRun]:
    """Started or canceling runs of ``instance`` whose process is known to be dead."""
    from dagster import DagsterRunStatus, RunsFilter

    out = []
    statuses = [DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
    for record in instance.get_run_records(filters=RunsFilter(statuses=statuses)):
        run = record.dagster_run
        process = _run_process(instance, run)
        why = is_dead(process) if process else None
        if why:
            out.append(StaleRun(run.run_id, run.job_name, why))
    return out


def fail_stale_runs(instance, out=print) -> list[StaleRun]:
    """Mark every stale run failed and free its pool slots; one line each says which run and why."""
    stale = stale_runs(instance)
    for s in stale:
        run = instance.get_run_by_id(s.run_id)
        instance.report_run_failed(run, f"run {s.run_id} marked failed by {this_process()}: {s.why}")
        if instance.event_log_storage.supports_global_concurrency_limits:
            instance.event_log_storage.free_concurrency_slots_for_run(s.run_id)
        out(f"run {s.run_id} ({s.job_name}) marked failed and its pool slots freed: {s.why}")
    return stale


def free_ended_run_slots(instance, out=print) -> list[str]:
    """Free every pool slot (claimed or pending) held by a run that has ended or is not in the run
    storage: a run whose Celery worker died is failed by its executor (``WorkerLostError``) without
    its step's end event, so its slot stays claimed; one line per run.  The run ids freed."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    ended = set()
    for pool in sorted(storage.get_concurrency_keys()):
        info = storage.get_concurrency_info(pool)
        for run_id in sorted({s.run_id for s in info.claimed_slots} | {p.run_id for p in info.pending_steps}):
            if run_id in ended:
                continue
            run = instance.get_run_by_id(run_id)
            if run is None or run.is_finished:
                storage.free_concurrency_slots_for_run(run_id)
                ended.add(run_id)
                state = "not in the run storage" if run is None else run.status.value
                out(f"freed the pool slots of run {run_id} ({state}): the run has ended")
    return sorted(ended)


def run_has_ended(instance):
    """``run_id -> bool``: whether ``instance`` holds the run and it has ended (success, failure,
    canceled); a run it does not know (another instance's) has not."""
    def ended(run_id: str) -> bool:
        run = instance.get_run_by_id(run_id)
        return run is not None and run.is_finished
    return ended


def remove_ended_run_staging(instance, base_dir, out=print) -> list[Path]:
    """Remove the staging files under ``base_dir`` (the store) of runs that have ended, written on any
    host, and those of dead writers on this host (:func:`oe_assets.storage.layout.remove_ended_staging`);
    one line says how many and where.  The files removed."""
    if not Path(base_dir).exists():
        return []
    removed = remove_ended_staging(base_dir, run_has_ended(instance))
    if removed:
        runs = sorted({staging_run(p.name) or str(staging_writer(p.name)) for p in removed})
        out(f"removed {len(removed)} staging file(s) under {base_dir} left by ended runs or dead writers: "
            f"{', '.join(runs)}")
    return removed


# ---- waiting for a pool slot ---------------------------------------------------------------------
class PoolWaitInterrupted(Exception):
    """Ctrl-C or SIGTERM while waiting for a pool slot; ``exit_code`` is 130 or 143."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _holders(instance, pool: str) -> tuple[int, list[str]]:
    info = instance.event_log_storage.get_concurrency_info(pool)
    return info.slot_count, sorted({s.run_id for s in info.claimed_slots})


def _describe(instance, run_id: str) -> str:
    run = instance.get_run_by_id(run_id)
    if run is None:
        return f"run {run_id} (not in this instance's run storage)"
    process = _run_process(instance, run)
    if process is None:
        return (f"run {run_id} ({run.job_name}, {run.status.value}, its process unknown: if it is not running, "
                "terminate it in the Dagster UI to free the slot)")
    return f"run {run_id} ({run.job_name}, {run.status.value}, {process})"


def wait_for_pools(instance, pools, poll_seconds: float = 1.0, out=print) -> None:
    """Return once every pool in ``pools`` has a free slot.  Slots held by runs whose process is dead
    are freed (the run is failed, see :func:`fail_stale_runs`); while a live run holds them, say
    once which pool and which run, and wait.  Ctrl-C (SIGINT) and SIGTERM end the wait with
    :class:`PoolWaitInterrupted` (also when Dagster's own handlers are installed)."""
    if not instance.event_log_storage.supports_global_concurrency_limits:
        return
    said: set[tuple[str, tuple[str, ...]]] = set()
    received: list[int] = []

    def on_signal(signo, _frame):
        received.append(signo)

    main = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        while True:
            waiting, freed = [], False
            for pool in pools:
                limit, holders = _holders(instance, pool)
                if limit and len(holders) >= limit:
                    if _free_dead_holders(instance, pool, holders, out):
                        freed = True
                    else:
                        waiting.append((pool, limit, holders))
            if freed:
                continue  # look at every pool again
            if not waiting:
                return
            for pool, limit, holders in waiting:
                if (pool, tuple(holders)) not in said:
                    said.add((pool, tuple(holders)))
                    out(f"waiting for a slot of pool {pool} (limit {limit}), held by "
                        f"{'; '.join(_describe(instance, h) for h in holders)}; Ctrl-C to stop", flush=True)
            deadline = time.monotonic() + poll_seconds
            while time.monotonic() < deadline and not received:
                time.sleep(0.05)
            if received:
                signo = received[0]
                what = "; ".join(f"pool {p} held by {', '.join(h)}" for p, _, h in waiting)
                raise PoolWaitInterrupted(f"interrupted ({signal.Signals(signo).name}) while waiting for {what}",
                                          128 + signo)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _free_dead_holders(instance, pool: str, holders: list[str], out) -> bool:
    """Free the slots of ``holders`` that have ended or whose process is dead; whether any was."""
    freed = False
    for h in holders:
        run = instance.get_run_by_id(h)
        if run is None or run.is_finished:  # slots left by an ended run (the daemon frees them later)
            instance.event_log_storage.free_concurrency_slots_for_run(h)
            out(f"freed the pool {pool} slot of run {h}: the run has ended")
            freed = True
    return bool(fail_stale_runs(instance, out)) or freed


class watch_pool_wait:
    """While a run executes in this process (``execute_in_process``), a thread watches whether it is
    blocked on a pool (a pending step of ``run_id``): it says once what the run waits for, and when
    Ctrl-C or SIGTERM arrives while it is blocked (Dagster's executor only records the signal and
    keeps polling), it fails the run, frees its pending claims and exits the process (130 / 143).
    A run that is computing is never ended here: Dagster handles the signal at its next step."""

    def __init__(self, instance, run_id: str, pools, out=print, poll_seconds: float = 0.5):
        self.instance, self.run_id, self.pools, self.out, self.poll = instance, run_id, list(pools), out, poll_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="pool-wait-watch")

    def __enter__(self):
        if self.pools and self.instance.event_log_storage.supports_global_concurrency_limits:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _blocked_on(self) -> tuple[str, list[str]] | None:
        for pool in self.pools:
            info = self.instance.event_log_storage.get_concurrency_info(pool)
            mine = [p for p in info.pending_steps if p.run_id == self.run_id and p.assigned_timestamp is None]
            if mine:
                return pool, sorted({s.run_id for s in info.claimed_slots if s.run_id != self.run_id})
        return None

    def _watch(self) -> None:
        from .dagster_private import check_captured_interrupt

        said = False
        while not self._stop.wait(self.poll):
            try:
                blocked = self._blocked_on()
            except Exception:  # noqa: BLE001 - the storage may be closing with the run
                continue
            if blocked is None:
                continue
            pool, holders = blocked
            what = f"pool {pool} held by {'; '.join(_describe(self.instance, h) for h in holders) or 'another run'}"
            if not said:
                said = True
                self.out(f"run {self.run_id} waits for a slot of {what}; Ctrl-C to stop", flush=True)
            if check_captured_interrupt():
                self.out(f"interrupted while run {self.run_id} waited for a slot of {what}; run marked failed",
                         file=sys.stderr, flush=True)
                run = self.instance.get_run_by_id(self.run_id)
                if run is not None and not run.is_finished:
                    self.instance.report_run_failed(run, f"interrupted while waiting for a slot of {what}")
                self.instance.event_log_storage.free_concurrency_slots_for_run(self.run_id)
                os._exit(130)
