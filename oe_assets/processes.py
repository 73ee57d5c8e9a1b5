"""Which process is which: a process named by host, pid and start time, and whether it is gone.

Staging files name their writer this way (:mod:`oe_assets.storage.layout`), and so do the CLI's runs
(:mod:`oe_assets.recovery`); a name outlives its process, so a later process can tell a dead writer's
files and runs from a live one's.  No Dagster import.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Process", "process_start", "this_process", "is_dead", "die_with_parent"]


@dataclass(frozen=True)
class Process:
    """A process by host, pid and start time (clock ticks after boot; ``""`` when unknown)."""

    host: str
    pid: int
    start: str = ""

    def __str__(self) -> str:
        started = f" (started at tick {self.start})" if self.start.isdigit() else ""
        return f"pid {self.pid} on {self.host}{started}"


def process_start(pid: int) -> str:
    """Start time of process ``pid`` in clock ticks after boot (``/proc/<pid>/stat`` field 22);
    ``""`` when there is no such process or no ``/proc``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # fields after "(comm)" start at field 3


def _zombie(pid: int) -> bool:
    """Whether ``pid`` has exited and waits to be reaped (state ``Z``: it holds nothing any more)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def this_process() -> Process:
    return Process(socket.gethostname(), os.getpid(), process_start(os.getpid()))


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def is_dead(process: Process) -> str | None:
    """Why ``process`` is known to be gone (``None``: alive, or on another host, so not known)."""
    if process.host != socket.gethostname():
        return None
    if not _exists(process.pid) or _zombie(process.pid):
        return f"its process ({process}) is gone"
    now = process_start(process.pid)
    if process.start and now and now != process.start:
        return f"its process ({process}) is gone; pid {process.pid} is now another process (started at tick {now})"
    return None


def die_with_parent(signum: int = 15) -> None:
    """In a child process: have the kernel send it ``signum`` (default SIGTERM) when its parent dies
    (Linux ``prctl(PR_SET_PDEATHSIG)``; elsewhere nothing).  It fires when the *thread* that started
    the child ends, so call it for children started from the main thread; e.g. as a ``Popen``
    ``preexec_fn`` or a DataLoader ``worker_init_fn``."""
    import sys

    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signum)  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
