"""``python -m oe_assets``: materialize the whole asset graph, or run the lens demo.

    python -m oe_assets materialize [--profile demo] [--layers 0 4]
    python -m oe_assets demo [...]            (same as python -m oe_assets.demo)
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import warnings


def materialize_all(profile: str, first: str | None = None, last: str | None = None) -> int:
    """The three jobs of :data:`oe_assets.definitions.MATERIALIZE_JOBS` as three runs on the instance in
    ``DAGSTER_HOME`` (default: ``<project root>/data/dagster_home``, see
    :func:`oe_assets.profiles.project_root`): the unpartitioned inputs, every layer-partitioned asset
    over the layer range in one run (the model is loaded once), then the summary.  Checks run with
    their assets."""
    from .profiles import default_dagster_home

    os.environ["DAGSTER_HOME"] = str(default_dagster_home())
    os.makedirs(os.environ["DAGSTER_HOME"], exist_ok=True)
    os.environ["OE_ASSETS_PROFILE"] = profile
    warnings.filterwarnings("ignore")
    import dagster as dg

    from .definitions import MATERIALIZE_JOBS, build_definitions, job_asset_keys, layer_range_tags, layers_job

    defs = build_definitions(profile)
    instance = dg.DagsterInstance.get()
    layers = defs.resolve_job_def(layers_job.name).partitions_def.get_partition_keys()
    first, last = first or layers[0], last or layers[-1]
    t0 = time.perf_counter()
    for job in MATERIALIZE_JOBS:  # one process: the model resource's cache loads the model once
        tags = layer_range_tags(first, last) if job is layers_job else {}
        print(f"materializing {', '.join(job_asset_keys(defs, job.name))}"
              + (f" for layers {first}..{last}" if tags else ""), flush=True)
        result = defs.resolve_job_def(job.name).execute_in_process(instance=instance, tags=tags, raise_on_error=False)
        if not result.success:
            print("run failed; see the Dagster run log", file=sys.stderr)
            return 1
        failed = [e.asset_check_key.name for e in result.get_asset_check_evaluations() if not e.passed]
        if failed:
            print(f"checks failed: {failed}", file=sys.stderr)
            return 1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"done: profile {profile}, layers {first}..{last}, {time.perf_counter() - t0:.0f} s, peak RSS {peak:.2f} GiB")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m oe_assets")
    sub = ap.add_subparsers(dest="command", required=True)
    m = sub.add_parser("materialize", help="materialize every asset, every layer partition")
    m.add_argument("--profile", default=os.environ.get("OE_ASSETS_PROFILE", "demo"))
    m.add_argument("--layers", nargs=2, metavar=("FIRST", "LAST"), default=None)
    sub.add_parser("demo", help="run every stage of the lens on the MiniLM demo and print the table")
    args, rest = ap.parse_known_args(argv)
    if args.command == "materialize":
        first, last = args.layers or (None, None)
        return materialize_all(args.profile, first, last)
    from .demo import main as demo_main

    demo_main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
