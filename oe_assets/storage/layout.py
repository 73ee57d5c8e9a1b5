"""The storage layout: where every artifact lives and how it is written.

``<base>/<asset key path>/<partition or "all"><suffix>`` (``.h5``, ``.parquet``, ``.html``; plots
``<name>[.<partitions>].png`` beside them).  Every write goes to a staging file beside its target
(``<name>.partial-<random>-<pid>-<start>@<host>[~<run id>]``: it names its writer, so a dead writer's
leftovers are removed by the next write of the same file, a live writer's never; a file written in a
run (:func:`writing_for_run`) names the run too, so that the leftovers of a writer on another host are
removed once the run has ended, :func:`remove_ended_staging`), is fsynced and only then
renamed into place (:func:`atomic_path`, :meth:`Layout.commit`), so a killed run never leaves a file
that a later read takes for a complete artifact.  A write that would not fit is refused before it
starts (:func:`require_free_space`).  No Dagster import: :class:`oe_assets.resources.store.ArtifactStore`
(the Dagster resource), the official import / export and the recovery of killed runs all use it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ..processes import Process, is_dead, this_process

__all__ = ["Layout", "DiskFullError", "require_free_space", "atomic_path", "staging_path", "staging_suffix",
           "staging_writer", "staging_run", "writing_for_run", "remove_ended_staging", "fsync", "size_text", "describe"]


class DiskFullError(OSError):
    """Not enough free space for an artifact: refused before writing, or ENOSPC while writing."""


def size_text(n: float) -> str:
    """Bytes for people: ``1.23 GB``, ``45.6 MB``."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} bytes"


def require_free_space(folder: Path, needed: int, what: str, advice: str) -> None:
    """Refuse (:class:`DiskFullError`, with both numbers and the folder) writing ``needed`` bytes of
    ``what`` into ``folder`` (created) when its disk has less free space."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DiskFullError(f"{what} needs about {size_text(needed)} ({needed} bytes) in {folder}, but its disk has only "
                            f"{size_text(free)} ({free} bytes) free; {advice}")


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it to ``target`` only if the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_path(target)
    try:
        yield tmp
        fsync(tmp)
        os.replace(tmp, target)
        fsync(target.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def staging_path(target: Path) -> Path:
    """A fresh staging path beside ``target`` that names its writer (this process:
    ``<target name>.partial-<random>-<pid>-<start tick>@<host>``).  Staging files of the same target
    left by a writer that is dead (a killed run) are removed first; a live writer's are kept."""
    for sibling in target.parent.glob(f"{glob.escape(target.name)}.partial-*"):
        writer = staging_writer(sibling.name)
        if writer is not None and is_dead(writer):
            with contextlib.suppress(FileNotFoundError):
                sibling.unlink()
    return target.with_name(target.name + staging_suffix(uuid.uuid4().hex[:8]))


def fsync(path: Path) -> None:
    """Flush a file (or a folder's entries) to disk, so a renamed file is never a truncated one."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_STAGING = re.compile(r"\.partial-[0-9a-f]{8}-(?P<pid>\d+)-(?P<start>\d*)@(?P<host>[^~/]+)(?:~(?P<run>[0-9A-Za-z-]+))?$")
_RUN_ID = re.compile(r"[0-9A-Za-z-]+")

#: the run this process writes for now (:func:`writing_for_run`); one run at a time per process
_writing_run: str | None = None


def writing_for_run(run_id: str | None) -> str | None:
    """Name ``run_id`` in the staging files this process writes from now on (``None``: no run); the
    run before.  Set by the artifact store's resource when a step starts in a process (in process,
    on a Celery worker, in a step's subprocess), so that the staging files of a writer on another host
    can be judged by whether its run has ended (:func:`remove_ended_staging`)."""
    global _writing_run
    if run_id is not None and not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"run id {run_id!r}: not a Dagster run id (letters, digits and '-')")
    before, _writing_run = _writing_run, run_id
    return before


def staging_suffix(token: str) -> str:
    """``.partial-<token>-<pid>-<start>@<host>[~<run id>]``: a staging name naming its writer (this
    process) and the run it writes for (:func:`writing_for_run`), if any."""
    p = this_process()
    return f".partial-{token}-{p.pid}-{p.start}@{p.host}" + (f"~{_writing_run}" if _writing_run else "")


def staging_writer(name: str) -> Process | None:
    """The writer named in a staging file name (``None``: not a name of :func:`staging_suffix`)."""
    m = _STAGING.search(name)
    return Process(m["host"], int(m["pid"]), m["start"]) if m else None


def staging_run(name: str) -> str | None:
    """The run named in a staging file name (``None``: none, or not a staging name)."""
    m = _STAGING.search(name)
    return m["run"] if m else None


def remove_ended_staging(base: str | os.PathLike, run_has_ended: Callable[[str], bool]) -> list[Path]:
    """Remove every staging file under ``base`` whose run has ended (``run_has_ended(run_id)``: the
    instance's judgement, which must say False for a run it does not know) or whose writer on this
    host is dead; the file of a writer on another host that names no run is never judged.  The files
    removed.  Whatever still writes for an ended run (a step the run no longer waits for) fails at its
    commit: it never leaves a file taken for complete."""
    removed = []
    judged: dict[str, bool] = {}
    for path in sorted(Path(base).rglob("*.partial-*")):
        run = staging_run(path.name)
        writer = staging_writer(path.name)
        if writer is None:
            continue
        if run is not None and run not in judged:
            judged[run] = bool(run_has_ended(run))
        if (run is not None and judged[run]) or is_dead(writer):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def describe(asset: str, partitions: Sequence[str] | str | None = None) -> str:
    """``asset <name>`` with its partition(s), for errors."""
    if partitions is None:
        return f"asset {asset}"
    parts = [partitions] if isinstance(partitions, str) else list(partitions)
    return f"asset {asset} partition{'s' if len(parts) > 1 else ''} {', '.join(parts)}"


class Layout:
    """The files of one store folder (``base``): where each asset (partition) lives, staging paths,
    atomic commits; ``asset``: an asset name (``"second_order_effects"``) or its key path."""

    def __init__(self, base: str | os.PathLike):
        self.base = Path(base)

    @staticmethod
    def _parts(asset: str | Sequence[str]) -> tuple[str, ...]:
        return (asset,) if isinstance(asset, str) else tuple(asset)

    def path_for(self, asset: str | Sequence[str], partition: str | None = None, suffix: str = ".h5") -> Path:
        """``<base>/<key path>/<partition or 'all'><suffix>``."""
        return self.base.joinpath(*self._parts(asset)) / f"{partition if partition is not None else 'all'}{suffix}"

    def plot_path(self, asset: str | Sequence[str], name: str, partitions: Sequence[str] | None = None) -> Path:
        """Where a plot of an asset lives, beside its files: ``<name>.png``, or for the partitions a run
        covered ``<name>.<partition>.png`` / ``<name>.<first>-<last>.png``."""
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"plot name {name!r} of {describe('/'.join(self._parts(asset)))}: not a plain file name")
        span = "" if not partitions else f".{partitions[0]}" if len(partitions) == 1 else \
            f".{partitions[0]}-{partitions[-1]}"
        return self.base.joinpath(*self._parts(asset)) / f"{name}{span}.png"

    def partitions(self, asset: str | Sequence[str], suffix: str = ".h5") -> list[str]:
        """The partitions of an asset with a complete file (staging files never count)."""
        folder = self.base.joinpath(*self._parts(asset))
        keys = [p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}")] if folder.exists() else []
        return sorted(keys, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))

    def require(self, asset: str | Sequence[str], partition: str | None = None, suffix: str = ".h5") -> Path:
        """The file of an asset (partition); raises naming both when it was never materialized."""
        path = self.path_for(asset, partition, suffix)
        if not path.exists():
            raise FileNotFoundError(f"{describe('/'.join(self._parts(asset)), partition)} has no materialized file at "
                                    f"{path}; materialize it first")
        return path

    def stage(self, asset: str | Sequence[str], partition: str | None = None, suffix: str = ".h5") -> Path:
        """A fresh staging path beside the asset's final file, for streaming writes
        (:func:`staging_path`: dead writers' staging files of that file are removed)."""
        final = self.path_for(asset, partition, suffix)
        final.parent.mkdir(parents=True, exist_ok=True)
        return staging_path(final)

    @staticmethod
    def commit(staged: Path, target: Path) -> None:
        """Move a complete staging file into place: fsync it, rename, fsync the folder."""
        fsync(staged)
        os.replace(staged, target)
        fsync(target.parent)

    @staticmethod
    def discard(path: Path) -> None:
        """Remove a staging file left by a failed step (best effort)."""
        with contextlib.suppress(FileNotFoundError):
            Path(path).unlink()

    def write_bytes(self, path: Path, data: bytes) -> Path:
        """Write ``data`` to ``path`` atomically; returns the path."""
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        return path

    def __repr__(self):
        return f"Layout({str(self.base)!r})"
