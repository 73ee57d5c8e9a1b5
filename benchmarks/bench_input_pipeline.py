"""The image input pipeline: decode + preprocess throughput by DataLoader workers, the folder listing,
and the passes over the data of an 11-layer effects step.

Builds a synthetic ImageNet tree itself (``--classes`` x ``--per-class`` realistic JPEGs of 500x375,
about 110 KB each: smooth colour fields plus texture noise) and a CLIP image processor (224 px,
no download), then measures side by side in one run:

1. images/s decoded and preprocessed by the split's DataLoader with 0 workers (in the asset
   process, as the earlier serial loop did), 1 worker and N workers;
2. the tree's listing: first call, and later calls in the same process (cached);
3. an 11-layer ``second_order_effects`` step through Dagster on a ViT-B/32-shaped random model:
   image decodes and forward passes counted, so passes over the data = decodes / images.

    python benchmarks/bench_input_pipeline.py [--classes 16] [--per-class 32] [--workers N]
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from common import vit_b32
from tabulate import tabulate


def make_tree(root: Path, classes: int, per_class: int, seed: int = 0) -> list[int]:
    """``root/<class>/<n>.JPEG``; returns the file sizes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = []
    for c in range(classes):
        folder = root / f"n{c:08d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            coarse = rng.uniform(0, 255, size=(6, 8, 3))
            field = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((500, 375), Image.BICUBIC), dtype=float)
            img = np.clip(field + rng.normal(0, 20, size=field.shape), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=92)
            (folder / f"{i}.JPEG").write_bytes(buf.getvalue())
            sizes.append(len(buf.getvalue()))
    return sizes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=16)
    ap.add_argument("--per-class", type=int, default=32)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--step-images", type=int, default=32)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from transformers import CLIPImageProcessor

    from oe_assets.resources import datasets

    work = Path(tempfile.mkdtemp(prefix="oe_inputs_"))
    try:
        sizes = make_tree(work / "train", args.classes, args.per_class)
        print(f"synthetic ImageNet tree: {args.classes} classes x {args.per_class} JPEGs, 500x375, "
              f"mean {np.mean(sizes) / 1e3:.0f} KB; {os.cpu_count()} CPUs")
        processor = CLIPImageProcessor()  # 224 px resize + centre crop + normalise (the CLIP defaults)
        loaded = SimpleNamespace(source="synthetic", model=None, image_processor=processor, tokenizer=None)

        # 2. listing: once per process
        t0 = time.perf_counter()
        datasets.image_folder_samples(work / "train")
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        datasets.image_folder_samples(work / "train")
        t_again = time.perf_counter() - t0

        # 1. decode + preprocess throughput by workers
        rows = []
        base = None
        for workers in sorted({0, 1, args.workers}):
            resource = datasets.DatasetResource(kind="image_folder", train_path=str(work / "train"),
                                                val_path=str(work / "train"), class_index="folders",
                                                num_workers=workers)
            split = resource.split("train")
            t0 = time.perf_counter()
            seen = sum(len(b) for b in split.batches(loaded, args.batch))
            rate = seen / (time.perf_counter() - t0)
            base = base or rate
            rows.append([workers, seen, rate, rate / base])
        print(tabulate(rows, ["DataLoader workers", "images", "images/s", "vs 0 workers"], floatfmt=".1f"))
        print(f"listing the tree: {1e3 * t_first:.1f} ms the first time, {1e3 * t_again:.2f} ms after (cached)")

        # 3. an 11-layer step: decodes and forwards counted
        import dagster as dg

        from oe_assets.definitions import build_definitions

        step = work / "step"
        make_tree(step, 1, args.step_images, seed=1)
        vit_b32().save_pretrained(work / "model")
        processor.save_pretrained(work / "model")
        decodes = multiprocessing.get_context("fork").Value("i", 0)
        original = datasets._DecodeImage.__call__

        def counting(self, i):
            with decodes.get_lock():
                decodes.value += 1
            return original(self, i)

        datasets._DecodeImage.__call__ = counting  # inherited by the forked workers
        profile = {
            "model": {"source": str(work / "model"), "dtype": "float32", "device": "auto", "batch_size": 16},
            "dataset": {"kind": "image_folder", "train_path": str(step), "val_path": str(step),
                        "class_index": "folders", "num_workers": args.workers},
            "analysis": {"top_k": 8, "components": 4},
            "storage": {"base_dir": str(work / "store")},
        }
        defs = build_definitions(profile)
        dg_logger = dg.get_dagster_logger()
        while dg_logger.parent is not None and dg_logger.name != "dagster":
            dg_logger = dg_logger.parent
        dg_logger.setLevel("ERROR")  # the run's step log would bury the figures
        forwards = []
        from oe_assets.resources.model import ModelResource

        vision = ModelResource(**profile["model"]).load().model.vision_model
        hook = vision.register_forward_pre_hook(lambda *a: forwards.append(1))
        t0 = time.perf_counter()
        result = dg.materialize([*defs.assets], selection=["second_order_effects"], resources=defs.resources,
                                instance=dg.DagsterInstance.ephemeral(),
                                tags={"dagster/asset_partition_range_start": "0",
                                      "dagster/asset_partition_range_end": "10"})
        seconds = time.perf_counter() - t0
        hook.remove()
        datasets._DecodeImage.__call__ = original
        assert result.success
        files = sorted((work / "store" / "second_order_effects").glob("*.h5"))
        print(f"11-layer second_order_effects step ({len(files)} layer files) on {args.step_images} images: "
              f"{decodes.value} decodes, {len(forwards)} forward passes of batch 16 -> "
              f"{decodes.value / args.step_images:.0f} pass(es) over the data, {seconds:.1f} s")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
