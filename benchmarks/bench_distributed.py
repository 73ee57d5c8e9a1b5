"""The Celery path against in process, side by side in one run, on the tests' tiny BERT graph (the demo's
graph at a tiny size: 3 blocks, 2 layer partitions, train texts repeated ``--repeat`` times so that a layer
costs more than its steps' overhead), with real servers on the loopback address (``redis-server``, a
Postgres cluster) and ``python -m oe_assets worker`` processes, started and stopped here
(``tests/local_servers.py``, as the tests do):

- per-step overhead: the same materialize (the same runs and steps: ``--parallel-runs 1``) in process
  and on one GPU worker (+ a general worker), warm workers (a first materialize loads the model),
  seconds per step = (celery wall - in-process wall) / steps; and the dispatch latency (``Submitting
  celery task`` to the step's start) per step;
- the layers' wall time (first layer run's start to last one's end) with 1 GPU worker and with 2, each
  ``--parallel-runs 2 --force`` after a warm-up;
- a projection for 11 ViT-B/32 layers and for a 32-layer 8B model on 8 GPU workers from the measured
  fixed costs here and the per-layer costs given on the command line (defaults: the figures of
  docs/benchmarks.md, see ``--help``).

    python benchmarks/bench_distributed.py [--repeat 100]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import yaml
from tabulate import tabulate

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' server helpers and tiny graph
sys.path.insert(0, str(ROOT))

import local_servers  # noqa: E402
from helpers import tiny_bert_profile  # noqa: E402


def materialize(env: dict, profile: Path, *args) -> float:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "oe_assets", "materialize", "--profile", str(profile), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"materialize {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return wall


def runs_of(instance, before: set[str]) -> list:
    return [r for r in instance.get_runs() if r.run_id not in before]


def step_figures(instance, runs) -> dict:
    """Steps, their summed durations, the mean dispatch latency (Celery), the layer runs' interval."""
    import dagster as dg

    from oe_assets.distributed import step_intervals

    steps, busy, waits = 0, 0.0, []
    for run in runs:
        intervals = step_intervals(instance, run.run_id)
        submitted = {}
        for record in instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT,
                                                   limit=10_000).records:
            entry = record.event_log_entry
            if entry.dagster_event.step_key and (entry.user_message or "").startswith("Submitting celery task"):
                submitted[entry.dagster_event.step_key] = entry.timestamp
        for key, s in intervals.items():
            if "start" in s and "end" in s:
                steps += 1
                busy += s["end"] - s["start"]
                if key in submitted:
                    waits.append(s["start"] - submitted[key])
    layer_records = [instance.get_run_record_by_id(r.run_id) for r in runs if r.job_name == "materialize_layers"]
    layers = (max(r.end_time for r in layer_records) - min(r.start_time for r in layer_records)) if layer_records else 0.0
    return {"steps": steps, "busy": busy, "dispatch": sum(waits) / len(waits) if waits else float("nan"),
            "layer_runs": len(layer_records), "layers_wall": layers,
            "layer_run_walls": [r.end_time - r.start_time for r in layer_records]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=100, help="train texts x this (6 x 100 = 600 texts)")
    ap.add_argument("--vit-layer-s", type=float, default=238.0,
                    help="one ViT-B/32 layer's effects pass (s): 238 s, layer 0, 5,000 images, docs/benchmarks.md "
                         "(2-core CPU, 2026-11-27)")
    ap.add_argument("--vit-inputs-s", type=float, default=(8.4 + 3.2 + 7.7) * 60,
                    help="ViT-B/32 inputs before the layers (classifier, text embeddings, representations), s")
    ap.add_argument("--llm-layer-s", type=float, default=0.8 * 60,
                    help="one 8B layer of 10,000 samples on one H100 (s): 0.8 min, docs/benchmarks.md projection")
    ap.add_argument("--workers", type=int, default=8, help="GPU workers of the projection")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    why = local_servers.missing()
    if why:
        sys.exit(f"error: {why}")

    work = Path(tempfile.mkdtemp(prefix="oe-bench-dist-"))
    try:
        measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(args, work: Path) -> None:
    import dagster as dg


    def profile_in(folder: Path) -> Path:
        prof = tiny_bert_profile(folder)
        rows = (folder / "train.jsonl").read_text().splitlines()
        (folder / "train.jsonl").write_text("\n".join(rows * args.repeat) + "\n")
        path = folder / "profile.yaml"
        path.write_text(yaml.safe_dump(prof))
        return path

    # in process (its own SQLite instance), twice: the second is the one compared (files cached alike)
    inproc = work / "in_process"
    inproc_profile = profile_in(inproc)
    env = {**os.environ, "DAGSTER_HOME": str(inproc / "home"), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    (inproc / "home").mkdir()
    materialize(env, inproc_profile)
    with dg.DagsterInstance.from_config(str(inproc / "home")) as instance:
        before = {r.run_id for r in instance.get_runs()}
    wall_in = materialize(env, inproc_profile, "--force")
    with dg.DagsterInstance.from_config(str(inproc / "home")) as instance:
        fig_in = step_figures(instance, runs_of(instance, before))

    rows, figs = [], {}
    with local_servers.servers(prefix="oe-bench-dist-servers-") as srv, local_servers.in_env(srv["env"]):
        celery_profile = profile_in(srv["root"] / "celery")
        local_servers.start_workers(srv, (("--gpu", "0"), ("--general",)))
        instance = dg.DagsterInstance.from_config(str(srv["home"]))
        for workers in (1, 2):
            if workers == 2:
                local_servers.start_workers(srv, (("--gpu", "1"),))
            materialize(srv["env"], celery_profile, "--executor", "celery", "--parallel-runs", "2", "--force")  # warm-up
            if workers == 1:  # the runs and steps of in process: one layer run over both layers
                before = {r.run_id for r in instance.get_runs()}
                wall = materialize(srv["env"], celery_profile, "--executor", "celery", "--parallel-runs", "1", "--force")
                figs["same"] = {**step_figures(instance, runs_of(instance, before)), "wall": wall}
            before = {r.run_id for r in instance.get_runs()}
            wall = materialize(srv["env"], celery_profile, "--executor", "celery", "--parallel-runs", "2", "--force")
            figs[workers] = {**step_figures(instance, runs_of(instance, before)), "wall": wall}
        instance.dispose()

    one, two, same = figs[1], figs[2], figs["same"]
    per_step = (same["wall"] - wall_in) / max(1, same["steps"])
    def row(name, fig, wall, dispatch):
        runs = fig["layer_runs"]
        return [name, f"{wall:.1f}", fig["steps"], f"{fig['busy']:.1f}", dispatch,
                f"{fig['layers_wall']:.1f} ({runs} run{'s' if runs > 1 else ''})"]

    rows = [row("in process", fig_in, wall_in, "-"),
            row("Celery, 1 GPU worker, --parallel-runs 1", same, same["wall"], f"{same['dispatch']:.2f}"),
            row("Celery, 1 GPU worker, --parallel-runs 2", one, one["wall"], f"{one['dispatch']:.2f}"),
            row("Celery, 2 GPU workers, --parallel-runs 2", two, two["wall"], f"{two['dispatch']:.2f}")]
    print(f"{platform.node()}: {os.cpu_count()} CPU cores; tiny BERT graph, {6 * args.repeat} train texts, "
          f"2 layer partitions; warm workers; {time.strftime('%Y-%m-%d')}")
    print(tabulate(rows, headers=["path", "materialize wall (s)", "steps", "in steps (s)", "dispatch (s/step)",
                                  "layers wall (s)"]))
    speedup = one["layers_wall"] / two["layers_wall"]
    print(f"\nper-step overhead of the Celery path: {per_step:.2f} s a step ((celery, 1 worker, same runs - in process)"
          f" / {same['steps']} steps)")
    print(f"layers with 2 GPU workers against 1: {speedup:.2f}x (ideal 2x); layer runs' walls: 1 worker "
          f"{', '.join(f'{w:.1f}' for w in one['layer_run_walls'])} s, 2 workers "
          f"{', '.join(f'{w:.1f}' for w in two['layer_run_walls'])} s")

    # projection: T(G) = inputs + fixed + ceil(L / G) x layer, each layer counted as its own pass (an upper
    # bound: a run's layers share the forward pass); fixed = the Celery overhead of one layer run measured here
    fixed = max(w for w in two["layer_run_walls"]) - fig_in["layers_wall"] / 2
    print(f"\nprojection (fixed cost of a layer run on the workers, measured here: {fixed:.1f} s; each layer its own "
          f"pass; model load and data reads on the GPU node not included):")
    out = []
    for name, layers, layer_s, inputs_s in (("ViT-B/32 (CPU figures)", 11, args.vit_layer_s, args.vit_inputs_s),
                                            ("8B, 10,000 samples (H100 figures)", 32, args.llm_layer_s, 0.0)):
        serial = inputs_s + fixed + layers * layer_s
        spread = inputs_s + fixed + math.ceil(layers / args.workers) * layer_s
        out.append([name, layers, f"{layer_s:.0f}", f"{serial / 60:.1f}", f"{spread / 60:.1f}",
                    f"{serial / spread:.2f}x", f"{layers / math.ceil(layers / args.workers):.2f}x"])
    print(tabulate(out, headers=["model", "layers", "s a layer", "1 worker (min)", f"{args.workers} workers (min)",
                                 "speed-up", "layers-only bound"]))


if __name__ == "__main__":
    main()
