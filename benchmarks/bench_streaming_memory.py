"""Peak memory of materializing ViT-B/32-shaped effects whose dense tensor exceeds memory budgets.

Builds a random ViT-B/32-shaped CLIP vision tower (width 768, 12 layers, 3072 neurons, output 512)
and N random images (memory-mapped .npy), then materializes `second_order_effects` (factorized,
streamed into HDF5 batch by batch) and `neuron_pcas` (densified neuron block by neuron block) for one
layer through Dagster, in this process, and prints the dense size, the file size, the times and the
peak RSS.

    python benchmarks/bench_streaming_memory.py [--samples 2000] [--layer 9] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from common import vit_b32


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--layer", type=int, default=9)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import dagster as dg

    from oe_assets.definitions import build_definitions

    work = Path(args.workdir or tempfile.mkdtemp(prefix="oe_stream_"))
    work.mkdir(parents=True, exist_ok=True)
    vit_b32().save_pretrained(work / "model")
    images = np.lib.format.open_memmap(work / "images.npy", mode="w+", dtype=np.float16,
                                       shape=(args.samples, 3, 224, 224))
    rng = np.random.default_rng(0)
    for i in range(0, args.samples, 250):
        images[i:i + 250] = rng.normal(size=images[i:i + 250].shape).astype(np.float16)
    images.flush()
    del images
    profile = {
        "model": {"source": str(work / "model"), "dtype": "float32", "device": "auto", "batch_size": args.batch},
        "dataset": {"kind": "npz", "train_path": str(work / "images.npy"), "val_path": str(work / "images.npy"),
                    "n_classes": 1},
        "analysis": {"top_k": 100, "components": 8, "vocabulary_path": None},
        "storage": {"base_dir": str(work / "store")},
    }
    defs = build_definitions(profile)
    instance = dg.DagsterInstance.ephemeral()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t0 = time.perf_counter()
    result = dg.materialize([*defs.assets], selection=["second_order_effects"], partition_key=str(args.layer),
                            resources=defs.resources, instance=instance)
    t1 = time.perf_counter()
    after_effects = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    result = dg.materialize([*defs.assets], selection=["neuron_pcas"], partition_key=str(args.layer),
                            resources=defs.resources, instance=instance)
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    path = work / "store" / "second_order_effects" / f"{args.layer}.h5"
    n_bytes = args.samples * 3072 * 512 * 4
    print(f"dense effect tensor [{args.samples}, 3072, 512] float32 = {n_bytes / 2**30:.2f} GiB; "
          f"factorized file {path.stat().st_size / 2**30:.3f} GiB")
    print(f"second_order_effects, layer {args.layer}: {t1 - t0:7.1f} s ({1e3 * (t1 - t0) / args.samples:.1f} ms/image)")
    print(f"neuron_pcas (neuron blocks):        {t2 - t1:7.1f} s")
    print(f"peak RSS: {before:.2f} GiB before, {after_effects:.2f} GiB after effects, {peak:.2f} GiB after PCA "
          f"(dense tensor / peak RSS = {n_bytes / 2**30 / peak:.1f}x)")
    assert result.success
    if not args.keep and not args.workdir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
