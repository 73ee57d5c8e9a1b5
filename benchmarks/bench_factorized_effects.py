"""Factorized effects at the ViT-B/32 shape: stored bytes, the effects pass against the forward pass,
the PCA factorized against dense, and the published setting's disk projected from measured bytes.

Builds a random ViT-B/32-shaped CLIP vision tower (width 768, 12 layers, 12 heads, 50 tokens, 3072
neurons, output 512) and random images, all here (no download), then measures side by side in one
run:

1. per image: the plain forward pass; the factorized effects pass (capture + path weights) at layers
   9 and 0, and for all 11 layers in one data pass;
2. stored bytes per sample of every layer's effects file (written with the project's writer),
   against the dense ``[neurons, d_out]`` float32 that the earlier layout stored;
3. the published setting (every 250th train and 10th val ImageNet image: 5,124 + 5,000 samples),
   dense against factorized, per layer and for all 11 layers, from those measured bytes;
4. the PCA of ``--pca-samples`` samples at ``--pca-layer``: factorized file against the same effects
   dense in HDF5 (float32, the earlier layout), each read block by block.

    python benchmarks/bench_factorized_effects.py [--device cpu] [--batch 16] [--pca-samples 2000]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from tabulate import tabulate

from common import sync, timed, vit_b32
from oe_assets.lens import SecondOrderLens, neuron_pca
from oe_assets.lens.batching import iter_factorized
from oe_assets.lens.effects_file import FactorizedEffectsWriter, open_factorized

TRAIN, VAL = 1_281_167 // 250, 50_000 // 10  # the published subsampling: len // stride


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--pca-samples", type=int, default=2000)
    ap.add_argument("--pca-top-k", type=int, default=100)
    ap.add_argument("--pca-layer", type=int, default=9)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    dev, B = args.device, args.batch
    torch.set_grad_enabled(False)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="oe_factorized_"))
    work.mkdir(parents=True, exist_ok=True)
    model = vit_b32(dev)
    x = torch.randn(B, 3, 224, 224, device=dev, generator=torch.Generator(dev).manual_seed(1))
    layers = list(range(11))
    print(f"ViT-B/32-shaped CLIP vision tower, {dev}, float32, batch {B}, torch threads {torch.get_num_threads()}")

    # 1. the effects pass against the forward pass, timed in turns so load changes hit both
    lenses = {layer: SecondOrderLens(model, layer, dense_cache_bytes=0) for layer in layers}

    def forward():
        out = model(pixel_values=x).image_embeds
        sync(dev)
        return out

    def effects(ls):
        def run():
            out = next(iter_factorized(ls, [x]))[1]
            sync(dev)
            return out
        return run

    rows = []
    for name, ls in (("layer 9", {9: lenses[9]}), ("layer 0", {0: lenses[0]}), ("all 11 layers, one pass", lenses)):
        t_fwd, _ = timed(forward)
        t_eff, _ = timed(effects(ls))
        rows.append([name, 1e3 * t_fwd / B, 1e3 * t_eff / B, t_eff / t_fwd, (t_eff - t_fwd) / t_fwd])
    print(tabulate(rows, ["effects pass", "forward ms/image", "effects ms/image", "effects / forward",
                          "extra / forward"], floatfmt=".2f"))

    # 2. stored bytes per sample, every layer (two batches written, as a data pass writes them)
    T = model.vision_model.config.image_size // 32
    n_tokens = T * T + 1
    measured = {}
    for alpha_dtype in ("float32", "float16"):
        writers = {layer: FactorizedEffectsWriter(work / f"bytes_{alpha_dtype}_{layer}.h5", 2 * B, lenses[layer].factors,
                                                  with_const=True, batch_size=B, alpha_dtype=alpha_dtype,
                                                  n_tokens=n_tokens) for layer in layers}
        for _, fes in iter_factorized(lenses, [x, x.flip(0)]):
            for layer, fe in fes.items():
                writers[layer].write(fe)
        for layer, writer in writers.items():
            writer.close(labels=np.zeros(2 * B, dtype=np.int64))
            path = work / f"bytes_{alpha_dtype}_{layer}.h5"
            with h5py.File(path) as f:
                per_file = sum(f[n].id.get_storage_size() for n in ("left", "right"))
                form = f.attrs["alpha_form"]
            measured[alpha_dtype, layer] = ((path.stat().st_size - per_file) / (2 * B), per_file, form)
    dense = 3072 * 512 * 4
    table, sums = [], np.zeros(3)
    for layer in layers:
        per_sample, per_file, form = measured["float32", layer]
        per_sample16, per_file16, _ = measured["float16", layer]
        gb = [dense * (TRAIN + VAL) / 1e9, (per_sample * (TRAIN + VAL) + 2 * per_file) / 1e9,
              (per_sample16 * (TRAIN + VAL) + 2 * per_file16) / 1e9]
        sums += gb
        table.append([layer, lenses[layer].factors.n_paths, form, per_sample / 2**20, dense / per_sample, *gb])
    table.append(["all 11", "", "", "", "", *sums])
    print(f"\nstored bytes per sample (measured) and the published setting ({TRAIN} train + {VAL} val samples, "
          f"both splits, factors included)")
    print(tabulate(table, ["layer", "paths", "stored as", "MiB/sample", "dense / factorized", "dense GB",
                           "factorized GB", "factorized GB, float16"], floatfmt=".2f"))

    # 4. PCA of many samples: factorized file against the same effects dense in HDF5
    S, layer = args.pca_samples, args.pca_layer
    lens = lenses[layer]
    fpath, dpath = work / "pca_factorized.h5", work / "pca_dense.h5"
    t0 = time.perf_counter()
    with FactorizedEffectsWriter(fpath, S, lens.factors, with_const=True, batch_size=B,
                                 n_tokens=n_tokens) as writer, \
            h5py.File(dpath, "w") as dense_file:
        ds = dense_file.create_dataset("effects", shape=(S, 3072, 512), dtype=np.float32,
                                       chunks=(B, 16, 512))
        g = torch.Generator(dev).manual_seed(2)
        for s0 in range(0, S, B):
            b = min(B, S - s0)
            imgs = torch.randn(b, 3, 224, 224, device=dev, generator=g)
            fe = lens.factorized_from_capture(lens.capture(imgs), dtype=torch.float32)
            writer.write(fe)
            ds[s0:s0 + b] = fe.dense().cpu().numpy()
        writer.close()
    t_write = time.perf_counter() - t0
    t0 = time.perf_counter()
    with h5py.File(dpath) as f:
        pca_dense = neuron_pca(f["effects"], args.pca_top_k)
    t_dense = time.perf_counter() - t0
    t0 = time.perf_counter()
    pca_fact = neuron_pca(open_factorized(fpath), args.pca_top_k)
    t_fact = time.perf_counter() - t0
    err = float(np.abs(pca_fact.components - pca_dense.components).max())
    print(f"\nPCA of {S} samples at layer {layer} (top_k {args.pca_top_k}), written in {t_write:.0f} s:")
    print(tabulate([["dense HDF5 (float32)", dpath.stat().st_size / 2**30, t_dense],
                    ["factorized (float32 alpha)", fpath.stat().st_size / 2**30, t_fact]],
                   ["effects stored", "GiB", "PCA seconds"], floatfmt=".2f"))
    print(f"factorized / dense PCA time {t_fact / t_dense:.2f}x; components max abs difference {err:.1e} "
          "(dense float32 storage against float64 densification)")
    if not args.workdir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
