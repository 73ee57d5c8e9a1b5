"""``python -m oe_assets``: materialize the whole asset graph, or run the lens demo.

    python -m oe_assets materialize [--profile demo] [--layers 0 4] [--force]
                                    [--executor celery --parallel-runs N [--gpu-limit G]]
    python -m oe_assets worker --gpu N        (a Celery worker on GPU N: oe_assets.distributed; --general: no model)
    python -m oe_assets export --format official --layer L [--profile P] [--out DIR]
                               [--dataset imagenet --model NAME --pretrained TAG]
    python -m oe_assets import-official DIR --layer L [--profile P] [...]
    python -m oe_assets demo [...]            (same as python -m oe_assets.demo)
    python -m oe_assets dev [-p PORT ...]     (dagster dev on the project's workspace and instance)
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import uuid
import warnings


#: written as ``dagster.yaml`` into a Dagster instance folder the CLI creates: no usage statistics sent,
#: no first-run telemetry banner, no community pop-up in the UI (as the shipped ``data/dagster_home``)
INSTANCE_SETTINGS = "telemetry:\n  enabled: false\nnux:\n  enabled: false\n"
#: what SQLite says when the instance's database files cannot be written (full disk, read-only, quota)
_UNWRITABLE = ("disk i/o error", "database or disk is full", "readonly database", "unable to open database file")


class InstanceUnwritable(OSError):
    """The Dagster instance's storage under ``DAGSTER_HOME`` cannot be written."""


def open_instance():
    """The Dagster instance in ``DAGSTER_HOME`` (default ``<project root>/data/dagster_home``, exported
    to the environment): a folder that does not exist or is empty is created with
    :data:`INSTANCE_SETTINGS`.  A storage that cannot be written raises :class:`InstanceUnwritable`."""
    from pathlib import Path

    import dagster as dg

    from .profiles import default_dagster_home
    from .storage.layout import atomic_path

    home = Path(default_dagster_home()).resolve()
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        home.mkdir(parents=True, exist_ok=True)
        if not any(home.iterdir()):
            with atomic_path(home / "dagster.yaml") as tmp:
                tmp.write_text(INSTANCE_SETTINGS)
        return dg.DagsterInstance.get()
    except Exception as e:
        unwritable = instance_error(e, home)
        if unwritable is None:
            raise
        raise unwritable from e


def instance_error(exc: BaseException, home=None) -> InstanceUnwritable | None:
    """``exc`` (or an error it was raised from) as :class:`InstanceUnwritable` when it says the instance
    at ``home`` (default ``$DAGSTER_HOME``) cannot be written: SQLite's disk I/O / disk full /
    read-only errors (raw or wrapped by SQLAlchemy or Dagster), or an ``OSError`` on a file under
    ``home``; else None."""
    import errno
    import sqlite3

    home = home or os.environ.get("DAGSTER_HOME")
    if not home:
        return None
    home = os.path.abspath(str(home))
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, InstanceUnwritable):
            return e
        if isinstance(e, sqlite3.OperationalError) and any(m in str(e).lower() for m in _UNWRITABLE):
            return InstanceUnwritable(f"the Dagster instance at {home} cannot be written: {e}")
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG) \
                and os.path.abspath(str(e.filename or "")).startswith(home + os.sep):
            return InstanceUnwritable(f"the Dagster instance at {home} cannot be written: {e}")
        todo += [getattr(e, "orig", None), e.__cause__, e.__context__]
    return None


def materialize_all(profile: str, first: str | None = None, last: str | None = None, force: bool = False) -> int:
    """The three jobs of :data:`oe_assets.definitions.MATERIALIZE_JOBS` as runs on the instance in
    ``DAGSTER_HOME`` (default: ``<project root>/data/dagster_home``, see
    :func:`oe_assets.profiles.project_root`): the unpartitioned inputs, every layer-partitioned asset
    over the layer range (one run per contiguous span of layers needing the same assets: the model is
    loaded once), then the summary.  Checks run with their assets.

    Resumable: (asset, partition)s already materialized and up to date are skipped
    (:mod:`oe_assets.resume`), one line per asset says what is skipped and what runs and why;
    ``force`` recomputes everything.  The profile is validated first.

    Killed runs (:mod:`oe_assets.recovery`): each run is tagged with this process (pid, host, start
    time); at start, runs whose process is dead are marked failed and their pool slots freed, one line
    each.  Before each run, a pool slot held by a live run is waited for here, saying which run holds
    it; Ctrl-C / SIGTERM end the wait (exit 130 / 143)."""
    os.environ["OE_ASSETS_PROFILE"] = profile
    warnings.filterwarnings("ignore")
    from .models.hub import ModelSourceError
    from .profiles.validation import ProfileError, validate_layers
    from .recovery import (
        RUN_TAG, PoolWaitInterrupted, fail_stale_runs, process_tags, remove_ended_run_staging, wait_for_pools,
        watch_pool_wait,
    )
    from .resume import observe_and_plan, plan_layer_spans, settings_tags

    t0 = time.perf_counter()
    try:  # importing the definitions builds them from OE_ASSETS_PROFILE: its errors are the user's too
        from .definitions import MATERIALIZE_JOBS, build_definitions, layer_range_tags, layers_job

        defs = build_definitions(profile)
        layers = defs.resolve_job_def(layers_job.name).partitions_def.get_partition_keys()
        problems = validate_layers(layers, first, last)
        if problems:
            raise ProfileError(problems, "the command line")
    except (ProfileError, ModelSourceError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    first, last = first or layers[0], last or layers[-1]
    in_range = layers[layers.index(first): layers.index(last) + 1]
    instance = open_instance()
    fail_stale_runs(instance)  # runs left STARTED by a killed process: failed, their pool slots freed
    remove_ended_run_staging(instance, defs.resources["store"].base_dir)  # their staged files, from any host
    planned = observe_and_plan(defs, instance, in_range, force)
    if planned is None:
        return 1
    jobs, plan = planned
    settings = {**settings_tags(defs), **process_tags()}  # the process tags let a later start see it died
    ran = 0
    for job in MATERIALIZE_JOBS:  # one process: the model resource's cache loads the model once
        keys = [k for k in jobs[job.name] if plan.to_run(k)]
        if not keys:
            continue
        if job is layers_job:  # one run per contiguous span of layers that need the same assets
            spans = plan_layer_spans(plan, keys, in_range, layers)
            runs = [(list(need), layer_range_tags(span[0], span[-1]), f" for layers {span[0]}..{span[-1]}")
                    for span, need in spans]
        else:
            runs = [(keys, {}, "")]
        for selection, tags, where in runs:
            print(f"materializing {', '.join(k.to_user_string() for k in selection)}{where}", flush=True)
            pools = sorted({p for k in selection if (p := defs.resolve_assets_def(k).op.pool)})
            try:  # Dagster's executor waits for a slot ignoring Ctrl-C: wait here, interruptibly
                wait_for_pools(instance, pools)
            except PoolWaitInterrupted as e:
                print(f"error: {e}", file=sys.stderr)
                return e.exit_code
            run_id = str(uuid.uuid4())
            with watch_pool_wait(instance, run_id, pools):  # a slot taken meanwhile: still interruptible
                result = defs.resolve_job_def(job.name).execute_in_process(
                    instance=instance, run_id=run_id, tags={**tags, **settings, RUN_TAG: run_id}, asset_selection=selection,
                    raise_on_error=False)
            ran += 1
            if not result.success:
                print("run failed; see the Dagster run log (a rerun starts where it failed)", file=sys.stderr)
                return 1
            failed = [e.asset_check_key.name for e in result.get_asset_check_evaluations() if not e.passed]
            if failed:
                print(f"checks failed: {failed}", file=sys.stderr)
                return 1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    what = "everything up to date, nothing run" if not ran else f"{ran} run(s)"
    print(f"done: profile {profile}, layers {first}..{last}, {what}, {time.perf_counter() - t0:.0f} s, "
          f"peak RSS {peak:.2f} GiB")
    return 0


def _official_setup(profile: str, model: str | None, dataset: str, pretrained: str, base_dir: str | None):
    from .formats.official import OfficialNames
    from .profiles import load_profile
    from .settings import default

    cfg = load_profile(profile)
    mode = (cfg.get("storage") or {}).get("effects_mode", default("storage.effects_mode"))
    if mode != "stored":
        raise ValueError(f"profile {profile!r} keeps its effects in the top-k mode (storage.effects_mode: {mode}): "
                         "the official files hold every sample's effects; use a profile with storage.effects_mode: "
                         "stored to export or import them")
    source = str(cfg["model"].get("source", "model"))
    names = OfficialNames(dataset, model or os.path.basename(source.rstrip("/")) or "model", pretrained)
    base = base_dir or cfg["storage"].get("base_dir", "data/materialized")
    return cfg, names, base


def model_dims(source: str) -> tuple[int | None, int | None]:
    """``(d_out, MLP neurons)`` of a local model folder's ``config.json`` (CLIP: the projection and the
    vision tower's MLP width; language models: hidden and intermediate size); Nones when unknown."""
    import json
    from pathlib import Path

    path = Path(source) / "config.json"
    if not path.is_file():
        return None, None
    c = json.loads(path.read_text())
    vision = c.get("vision_config") or c
    d_out = c.get("projection_dim") or vision.get("projection_dim") or c.get("hidden_size")
    return d_out, vision.get("intermediate_size") or c.get("intermediate_size")


def export_cmd(profile: str, layer: int, out: str | None, dataset: str, model: str | None, pretrained: str,
               base_dir: str | None = None) -> int:
    """Write the official output files of one layer from the profile's materialized assets, saying
    how much first; refused when the output folder's disk has less free space.  ``dataset`` /
    ``pretrained`` None: ``imagenet`` / ``openai`` (the CLIP setting), refused for a text profile."""
    from .formats.official import export_bytes, export_official
    from .resources.store import require_free_space

    try:
        cfg, _, _ = _official_setup(profile, model, "-", "-", base_dir)
        if cfg["dataset"].get("kind", "text") == "text" and (dataset is None or pretrained is None):
            raise ValueError(f"profile {profile!r} is a text profile: the file names need --dataset NAME and "
                             "--pretrained TAG (the defaults, imagenet and openai, name CLIP on ImageNet), "
                             "e.g. --dataset demo --pretrained minilm")
        _, names, base = _official_setup(profile, model, dataset or "imagenet", pretrained or "openai", base_dir)
        out = out or os.path.join(base, "official")
        needed = export_bytes(base, layer)
        require_free_space(out, needed, f"the official files of layer {layer}", "nothing was written")
        print(f"writing {needed / 1e9:.2f} GB to {out}", flush=True)
        written = export_official(base, out, layer, names)
    except (FileNotFoundError, ValueError, OSError) as e:  # DiskFullError is an OSError
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


def import_official_cmd(directory: str, profile: str, layer: int, dataset: str, model: str | None, pretrained: str,
                        top_k: int | None = None, base_dir: str | None = None, instance=None) -> int:
    """Load the official output files of one layer as the profile's materialized assets, and record a
    runless materialization per asset (metadata ``imported_from``) on the Dagster instance
    (``DAGSTER_HOME``, as :func:`materialize_all`, unless one is given)."""
    from .formats.official import import_official

    try:
        cfg, names, base = _official_setup(profile, model, dataset, pretrained, base_dir)
        d_out, neurons = model_dims(str(cfg["model"].get("source", "")))
        analysis = cfg.get("analysis") or {}
        class_names = None
        try:
            from .resources.datasets import DatasetResource

            class_names = DatasetResource(**cfg["dataset"]).classes()
        except Exception:  # noqa: BLE001 - names are a nicety; labels are what matters
            pass
        result = import_official(directory, base, layer, names, top_k or int(analysis.get("top_k", 16)),
                                 d_out=d_out, neurons=neurons, model=str(cfg["model"].get("source")),
                                 coefficient=float(analysis.get("coefficient", 100.0)),
                                 components=analysis.get("components"), class_names=class_names)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore")
    import dagster as dg

    if instance is None:
        instance = open_instance()
    for asset, partition, path, sources in result.assets:
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key=asset, partition=partition,
            metadata={"imported_from": ", ".join(str(p.resolve()) for p in sources),
                      "path": dg.MetadataValue.path(str(path))}))
        print(f"imported {asset}{'' if partition is None else ' partition ' + partition} from "
              f"{', '.join(p.name for p in sources)}")
    for path, why in result.skipped:
        print(f"not imported {path.name}: {why}")
    return 0


def _process_group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is still running (exited ones waiting to be reaped hold
    nothing and do not count)."""
    from pathlib import Path

    if not Path("/proc/self/stat").exists():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if int(pgrp) == pgid and state != "Z":
            return True
    return False


def _end_process_group(pgid: int, grace: float) -> None:
    """Wait up to ``grace`` seconds for group ``pgid`` to end, then SIGTERM it, then SIGKILL it."""
    import signal

    for sig, wait in ((None, grace), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if sig is not None:
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _process_group_alive(pgid):
                return
            time.sleep(0.1)


def dev_cmd(rest: list[str], stop_grace: float = 20.0) -> int:
    """``dagster dev`` on the project's ``workspace.yaml`` and instance (``DAGSTER_HOME``, default
    ``<project root>/data/dagster_home``), in its own process group, ended with all its processes.

    Ctrl-C (SIGINT), SIGTERM or SIGHUP here, or to this process's group, ask ``dagster dev`` to shut
    down (SIGINT), wait ``stop_grace`` seconds for it, then end whatever of its group is left (its
    code server outlives it by up to a heartbeat timeout, 45 s), with SIGTERM then SIGKILL.  Started
    from a background job of a script, ``dagster dev`` inherits SIGINT ignored and maps SIGTERM to
    that too, so neither would stop it: here it starts with SIGINT at its default.  Exit code
    ``128 + signal`` when stopped by one, else ``dagster dev``'s."""
    import signal
    import subprocess

    from .processes import die_with_parent
    from .profiles import project_root

    open_instance().dispose()  # DAGSTER_HOME exported; a new instance folder gets INSTANCE_SETTINGS
    root = project_root()
    received: list[int] = []
    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum)) for sig in stops}
    try:  # the handlers are in place before the child starts: it execs with SIGINT at its default, not ignored
        proc = subprocess.Popen([sys.executable, "-m", "dagster", "dev", "-w", str(root / "workspace.yaml"), *rest],
                                cwd=root, start_new_session=True, preexec_fn=die_with_parent)
        try:
            while proc.poll() is None and not received:
                time.sleep(0.1)
            if received:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=stop_grace)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            _end_process_group(proc.pid, 5.0 if proc.poll() is not None else 0.0)
            proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 + received[0] if received else proc.returncode


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m oe_assets")
    sub = ap.add_subparsers(dest="command", required=True)
    m = sub.add_parser("materialize", help="materialize every asset, every layer partition")
    m.add_argument("--profile", default=os.environ.get("OE_ASSETS_PROFILE", "demo"))
    m.add_argument("--layers", nargs=2, metavar=("FIRST", "LAST"), default=None)
    m.add_argument("--force", action="store_true", help="recompute every asset, also those up to date")
    m.add_argument("--executor", choices=["in_process", "celery"], default="in_process",
                   help="celery: every step on the Celery workers (oe_assets.distributed)")
    m.add_argument("--parallel-runs", type=int, default=1, help="celery: layer runs at once (ceil(L/N) layers each)")
    m.add_argument("--gpu-limit", type=int, default=None, help="celery: pool gpu limit (default: the workers)")
    m.add_argument("--timeout", type=float, default=7 * 86400.0, help="celery: seconds to wait for the runs")
    w = sub.add_parser("worker", help="a Celery worker for --executor celery, pinned to one GPU")
    w.add_argument("--gpu", type=int, default=None, help="the device (CUDA_VISIBLE_DEVICES); default: as set")
    w.add_argument("--general", action="store_true", help="a worker for the steps that do not run the model (no GPU)")
    w.add_argument("--name", default=None, help="node name prefix (default: gpuN, or general)")
    w.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the broker and the database")
    for name, help_ in (("export", "write a layer's assets as the official implementation's output files"),
                        ("import-official", "load the official implementation's output files as assets")):
        e = sub.add_parser(name, help=help_)
        if name == "export":
            e.add_argument("--format", choices=["official"], default="official")
            e.add_argument("--out", default=None, help="folder (default: <base_dir>/official)")
        else:
            e.add_argument("directory")
            e.add_argument("--top-k", type=int, default=None, help="the files' top_k (default: the profile's)")
        e.add_argument("--layer", type=int, required=True)
        e.add_argument("--profile", default=os.environ.get("OE_ASSETS_PROFILE", "demo"))
        e.add_argument("--dataset", default=None if name == "export" else "imagenet",
                       help="dataset name in the file names (default: imagenet; export: required for a text profile)")
        e.add_argument("--model", default=None, help="model name in the file names (default: the model folder's name)")
        e.add_argument("--pretrained", default=None if name == "export" else "openai",
                       help="pretrained tag in the file names (default: openai; export: required for a text profile)")
        e.add_argument("--base-dir", default=None, help="the store (default: the profile's storage.base_dir)")
    sub.add_parser("demo", help="run every stage of the lens on the MiniLM demo and print the table")
    sub.add_parser("dev", help="dagster dev on the project's workspace and instance; Ctrl-C / SIGTERM end all of it "
                               "(other arguments go to dagster dev)")
    args, rest = ap.parse_known_args(argv)
    try:
        return _run(args, rest)
    except Exception as e:  # noqa: BLE001 - the instance's disk: one line; anything else: the traceback
        unwritable = instance_error(e)
        if unwritable is None:
            raise
        print(f"error: {unwritable}", file=sys.stderr)
        return 2


def _run(args, rest) -> int:
    if args.command == "export":
        return export_cmd(args.profile, args.layer, args.out, args.dataset, args.model, args.pretrained, args.base_dir)
    if args.command == "import-official":
        return import_official_cmd(args.directory, args.profile, args.layer, args.dataset, args.model,
                                   args.pretrained, args.top_k, args.base_dir)
    if args.command == "dev":
        return dev_cmd(rest)
    if args.command == "worker":
        from .distributed import worker_main

        return worker_main(args.gpu, args.name, args.wait, general=args.general)
    if args.command == "materialize" and args.executor == "celery":
        from .distributed import materialize_celery

        first, last = args.layers or (None, None)
        return materialize_celery(args.profile, first, last, force=args.force, parallel_runs=args.parallel_runs,
                                  gpu_limit=args.gpu_limit, timeout_s=args.timeout)
    if args.command == "materialize":
        first, last = args.layers or (None, None)
        return materialize_all(args.profile, first, last, force=args.force)
    from .demo import main as demo_main

    demo_main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
