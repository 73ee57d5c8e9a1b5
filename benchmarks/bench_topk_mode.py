"""The two storage modes side by side on the demo (all-MiniLM-L6-v2, 636 train / 264 val sentences):
``storage.effects_mode: stored`` and ``topk``, each materialized from a clean store by
``python -m oe_assets materialize`` over the same layers, one after the other in one run.

Prints per mode the wall time, the bytes of the effects files per layer (train effects, and the val
effects or the val pass's sums), and whether the PCA, the sparse codes and every ablation and
baseline accuracy of the top-k mode equal the stored mode's (PCA to 1e-6, accuracies exactly).

    python benchmarks/bench_topk_mode.py [--layers 0 1] [--out /tmp/bench_topk_mode]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import yaml
from tabulate import tabulate

from oe_assets.profiles import load_profile

MB = 1e6


def materialize(profile: dict, root: Path, layers: tuple[str, str]) -> float:
    """Wall seconds of ``materialize`` of ``profile`` into a fresh ``root`` (its own DAGSTER_HOME)."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    path = root / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    env = {**os.environ, "DAGSTER_HOME": str(root / "home"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    (root / "home").mkdir()
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "oe_assets", "materialize", "--profile", str(path), "--layers", *layers],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def size(store: Path, asset: str, layer: str) -> float:
    path = store / asset / f"{layer}.h5"
    return path.stat().st_size / MB if path.exists() else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", nargs=2, default=["0", "1"])
    ap.add_argument("--out", default="/tmp/bench_topk_mode")
    args = ap.parse_args()
    base = load_profile("demo")
    out = Path(args.out)
    stores, times = {}, {}
    for mode in ("stored", "topk"):
        profile = {**base, "storage": {"base_dir": str(out / mode / "store"), "effects_mode": mode}}
        times[mode] = materialize(profile, out / mode, tuple(args.layers))
        stores[mode] = out / mode / "store"
    layers = [str(k) for k in range(int(args.layers[0]), int(args.layers[1]) + 1)]
    rows = []
    for mode, store in stores.items():
        val = "val_second_order_effects" if mode == "stored" else "val_effect_sums"
        rows.append([mode, f"{times[mode]:.0f}",
                     " / ".join(f"{size(store, 'second_order_effects', k):.1f}" for k in layers),
                     " / ".join(f"{size(store, val, k):.1f}" for k in layers)])
    print(tabulate(rows, headers=["mode", "wall s", "train effects MB per layer", "val effects or sums MB per layer"],
                   tablefmt="github"))
    worst_pc, same_acc, same_codes = 0.0, True, True
    for k in layers:
        pcas = [stores[m] / "neuron_pcas" / f"{k}.h5" for m in ("stored", "topk")]
        codes = [stores[m] / "sparse_codes" / f"{k}.h5" for m in ("stored", "topk")]
        with h5py.File(pcas[0]) as a, h5py.File(pcas[1]) as b:
            worst_pc = max(worst_pc, float(np.max(1 - np.sum(a["components"][:] * b["components"][:], axis=1))))
        with h5py.File(codes[0]) as a, h5py.File(codes[1]) as b:
            same_codes &= bool(np.array_equal(a["indices"][:], b["indices"][:]))
        for asset in ("ablation_report", "total_effects"):
            acc = [[r["accuracy"] for r in pq.read_table(stores[m] / asset / f"{k}.parquet", columns=["accuracy"])
                    .to_pylist()] for m in ("stored", "topk")]
            same_acc &= acc[0] == acc[1]
    print(f"\nlayers {', '.join(layers)}: PC 1 - cos, worst neuron {worst_pc:.1e}; same sparse-code indices: "
          f"{same_codes}; every ablation and baseline accuracy equal: {same_acc}")


if __name__ == "__main__":
    main()
