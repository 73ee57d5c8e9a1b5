"""A measured projection of the published run: CLIP ViT-B/32 on ImageNet (5,124 train + 5,000 val
images, 11 layers, 1000 classes x 80 templates, 30k descriptions, top_k 100, 128 components).

Builds its own stand-ins (nothing downloaded): a ViT-B/32-shaped random CLIP with a text tower, a
synthetic ImageNet tree of realistic JPEGs (500x375, about 110 KB), the shipped 30k vocabulary and
80 templates, and path weights of the real shapes.  Times every stage per unit on this machine, then
projects each stage to the published size:

- classifier: prompts/s; text embeddings: descriptions/s;
- representations and effects (all 11 layers in one pass): images/s, decoding included;
- PCA (layers 0 and 9, interpolated in the number of paths) and sparse codes: neurons/s;
- ablations (layers 0 and 9): val samples/s plus a fixed cost a layer (two sample counts, fitted),
  side by side with that layer's own effects pass;
- disk: measured bytes per sample of every layer's effects files.

    python benchmarks/bench_published_setting.py [--device cpu] [--images 64] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import torch
from bench_input_pipeline import make_tree
from common import sync
from tabulate import tabulate

TRAIN, VAL, LAYERS, NEURONS, D_OUT, TOP_K, COMPONENTS = 5_124, 5_000, 11, 3072, 512, 100, 128


def clip_b32(device: str):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=32, hidden_act="quick_gelu"),
        text_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                         vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu"),
        projection_dim=512)
    return CLIPModel(cfg).to(device).eval()


def token_batches(n: int, batch: int, length: int, vocab: int):
    g = torch.Generator().manual_seed(0)
    for i in range(0, n, batch):
        b = min(batch, n - i)
        ids = torch.randint(1, vocab - 1, (b, length), generator=g)
        ids[:, -1] = vocab - 1  # CLIP reads the end-of-text token (the largest id)
        yield ids


def rate(fn, units: int, device: str) -> float:
    fn()  # warm-up
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return units / (time.perf_counter() - t0)


def synthetic_effects(path: Path, samples: int, layer: int, device: str, neurons: int = NEURONS):
    """A factorized effects file of the real shapes (``neurons`` of them) with random path weights: the
    analysis cost does not depend on their values, and the PCA's per neuron not on the others."""
    from oe_assets.lens.effects_file import FactorizedEffectsWriter, open_factorized
    from oe_assets.lens.factorized import FactorizedEffects, HeadFactors

    P = (LAYERS - layer) * 12
    g = torch.Generator().manual_seed(layer)
    factors = HeadFactors(torch.randn(P, D_OUT, 64, generator=g) / 30, torch.randn(P, 64, neurons, generator=g) / 30)
    with FactorizedEffectsWriter(path, samples, factors, with_const=True, batch_size=256) as writer:
        for s0 in range(0, samples, 256):
            b = min(256, samples - s0)
            writer.write(FactorizedEffects(torch.randn(b, P, neurons, generator=g).abs(), torch.rand(b, generator=g) + 0.5,
                                           factors, torch.randn(b, D_OUT, generator=g)))
        writer.close()
    return open_factorized(path, device=device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=max(0, min(8, (os.cpu_count() or 1) - 1)))
    ap.add_argument("--pca-neurons", type=int, default=128)
    ap.add_argument("--sparse-neurons", type=int, default=512)  # two of the coder's 256-target blocks
    ap.add_argument("--ablation-samples", type=int, default=500)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_grad_enabled(False)
    dev = args.device
    from transformers import CLIPImageProcessor

    from oe_assets.lens import SecondOrderLens, ablate, neuron_pca, sparse_decompose
    from oe_assets.lens.batching import iter_factorized
    from oe_assets.datasources.vocabulary import load_vocabulary
    from oe_assets.lens.zero_shot import imagenet_templates
    from oe_assets.profiles import load_profile
    from oe_assets.resources import datasets

    work = Path(tempfile.mkdtemp(prefix="oe_published_"))
    rows, disk = [], 0.0
    try:
        model = clip_b32(dev)
        text_batch = 256

        def encode_prompts(n):
            def run():
                for ids in token_batches(n, text_batch, 16, model.config.text_config.vocab_size):
                    model.get_text_features(input_ids=ids.to(dev))
            return run

        prompts = rate(encode_prompts(1024), 1024, dev)
        rows.append(["classifier (1000 classes x 80 templates)", f"{prompts:.0f} prompts/s", 80_000 / prompts])
        vocabulary = load_vocabulary(load_profile("clip_vit_b32_imagenet")["analysis"]["vocabulary_path"])
        assert len(imagenet_templates()) == 80
        descriptions = rate(encode_prompts(1024), 1024, dev)
        rows.append([f"text embeddings ({len(vocabulary)} descriptions)", f"{descriptions:.0f} descriptions/s",
                     len(vocabulary) / descriptions])

        # images: decode + preprocess in DataLoader workers, then the model
        make_tree(work / "tree", 4, args.images // 4)
        split = datasets.DatasetResource(kind="image_folder", train_path=str(work / "tree"), val_path=str(work / "tree"),
                                         class_index="folders", num_workers=args.workers).split("train")
        loaded = SimpleNamespace(source="synthetic", model=model, image_processor=CLIPImageProcessor(), tokenizer=None)
        vision = model.vision_model

        def representations():
            for pv in split.batches(loaded, args.batch):
                model.get_image_features(pixel_values=pv.to(dev))

        reps = rate(representations, len(split), dev)
        rows.append([f"representations ({args.workers} workers)", f"{reps:.1f} images/s", (TRAIN + VAL) / reps])
        from oe_assets.lens.adapters.clip_vision import CLIPVisionAdapter

        adapter = CLIPVisionAdapter(model)
        lenses = {layer: SecondOrderLens(adapter, layer, dense_cache_bytes=0) for layer in range(LAYERS)}

        def effects(lenses=lenses):
            for _ in iter_factorized(lenses, (pv.to(dev) for pv in split.batches(loaded, args.batch))):
                pass

        eff = rate(effects, len(split), dev)
        rows.append([f"effects, all {LAYERS} layers in one pass", f"{eff:.1f} images/s", (TRAIN + VAL) / eff])
        # one layer's own effects pass, the yardstick of that layer's ablations (issue target)
        layer_pass = {}
        for layer in (0, 9):
            layer_pass[layer] = rate(lambda one={layer: lenses[layer]}: effects(one), len(split), dev)
        del vision

        # disk: measured bytes per sample of every layer's files, from real path weights
        from oe_assets.lens.effects_file import FactorizedEffectsWriter

        pv = next(iter(split.batches(loaded, 16))).to(dev)
        for layer, fe in next(iter_factorized(lenses, [pv]))[1].items():
            path = work / f"bytes{layer}.h5"
            with FactorizedEffectsWriter(path, fe.shape[0], lenses[layer].factors, True, batch_size=16,
                                         n_tokens=adapter.fixed_tokens) as writer:
                writer.write(fe)
                writer.close()
            with h5py.File(path, "r") as f:  # the factors as stored (whole chunks), once per file
                fixed = sum(f[name].id.get_storage_size() for name in ("left", "right"))
            disk += ((path.stat().st_size - fixed) / fe.shape[0] * (TRAIN + VAL) + 2 * fixed) / 1e9
        del lenses

        # PCA and ablations on path weights of the real shapes (layers 0 and 9)
        per_layer, ablation_seconds = {}, {}
        for layer in (0, 9):
            train = synthetic_effects(work / f"train{layer}.h5", TRAIN, layer, dev, neurons=args.pca_neurons)
            sub = train.factors
            t0 = time.perf_counter()
            neuron_pca(train, TOP_K)
            pca_rate = args.pca_neurons / (time.perf_counter() - t0)
            # ablations: time at two sample counts, fitted affine (the per-layer Gram matrices and
            # directions are a fixed cost; reading the effects is per sample)
            seconds = []
            for samples in (args.ablation_samples // 2, args.ablation_samples):
                val = synthetic_effects(work / f"val{layer}_{samples}.h5", samples, layer, dev)
                rng = np.random.default_rng(0)
                t0 = time.perf_counter()
                ablate(rng.normal(size=(samples, D_OUT)), val, rng.normal(size=(D_OUT, 1000)),
                       rng.integers(0, 1000, samples), rng.normal(size=(NEURONS, D_OUT)), rng.uniform(size=NEURONS),
                       rng.normal(size=(NEURONS, D_OUT)), rng.normal(size=(NEURONS, D_OUT)))
                sync(dev)
                seconds.append(time.perf_counter() - t0)
                del val
            per_sample = max(1e-9, (seconds[1] - seconds[0]) / (args.ablation_samples - args.ablation_samples // 2))
            fixed = max(0.0, seconds[1] - per_sample * args.ablation_samples)
            ablation_rate = 1 / per_sample
            ablation_seconds[layer] = fixed + per_sample * VAL
            per_layer[layer] = (sub.n_paths, pca_rate, ablation_rate)
        (p0, pca0, abl0), (p9, pca9, abl9) = per_layer[0], per_layer[9]
        paths = [(LAYERS - layer) * 12 for layer in range(LAYERS)]

        def interpolate(r0, r9):  # time per unit is about affine in the number of paths
            return sum(1 / r9 + (1 / r0 - 1 / r9) * (p - p9) / (p0 - p9) for p in paths)

        rows.append([f"PCA (top_k {TOP_K}; {TRAIN} samples)", f"{pca0:.1f} / {pca9:.1f} neurons/s (layer 0 / 9)",
                     NEURONS * interpolate(pca0, pca9)])
        T = torch.randn(len(vocabulary), D_OUT, generator=torch.Generator().manual_seed(1)).numpy()
        X = np.random.default_rng(2).normal(size=(args.sparse_neurons, D_OUT))
        dtype = torch.float32
        t0 = time.perf_counter()
        sparse_decompose(X, T, COMPONENTS, method="batched", device=dev, dtype=dtype)
        sparse_rate = args.sparse_neurons / (time.perf_counter() - t0)
        rows.append([f"sparse codes ({COMPONENTS} of {len(vocabulary)}, float32)", f"{sparse_rate:.1f} neurons/s",
                     LAYERS * NEURONS / sparse_rate])
        fixed = [ablation_seconds[layer] - VAL / per_layer[layer][2] for layer in (0, 9)]
        rows.append([f"ablations ({VAL} val samples)", f"{abl0:.0f} / {abl9:.0f} samples/s + {fixed[0]:.0f} / "
                     f"{fixed[1]:.0f} s a layer (layer 0 / 9)", VAL * interpolate(abl0, abl9)
                     + sum(fixed[1] + (fixed[0] - fixed[1]) * (p - p9) / (p0 - p9) for p in paths)])
        side_by_side = [[f"layer {layer}", VAL / layer_pass[layer], ablation_seconds[layer],
                         ablation_seconds[layer] / (VAL / layer_pass[layer])] for layer in (0, 9)]
    finally:
        shutil.rmtree(work)
    total = sum(r[2] for r in rows)
    table = [[r[0], r[1], r[2] / 60] for r in rows] + [["total", "", total / 60]]
    print(f"published setting projected on this machine ({dev}, torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs): {TRAIN} + {VAL} images, {LAYERS} layers")
    print(tabulate(table, ["stage", "measured rate", "projected minutes"], floatfmt=".1f"))
    print(f"disk: {disk:.1f} GB of effects (float32 path weights, both splits, all layers)")
    print(f"\nablation_report of one layer against that layer's own effects pass over the {VAL} val images "
          "(target: ratio <= 1)")
    print(tabulate(side_by_side, ["layer", "effects pass s", "ablations s", "ratio"], floatfmt=".2f"))


if __name__ == "__main__":
    main()
