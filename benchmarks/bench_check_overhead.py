"""The blocking fast = slow check against the effects pass it guards, side by side, on the demo
profile (all-MiniLM-L6-v2, the 636-sentence train split, every layer).

- effects pass: what ``second_order_effects`` does: one data pass for every layer, path weights
  written to an effects file per layer;
- check: what ``fast_path_equals_slow_path`` does for every layer: the lens on two train samples
  against the literal slow path and the stored file, on the check's spread neurons.

Target (issue): the check takes at most 10% of the effects pass.

    python benchmarks/bench_check_overhead.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch
from tabulate import tabulate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs of each")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_grad_enabled(False)
    from oe_assets.assets.checks import CHECK_NEURONS, fast_equals_slow_layers
    from oe_assets.definitions import build_definitions
    from oe_assets.lens import SecondOrderLens
    from oe_assets.lens.batching import iter_factorized
    from oe_assets.lens.effects_file import FactorizedEffectsWriter, open_factorized

    resources = build_definitions("demo").resources
    model, dataset, analysis = resources["model"], resources["dataset"], resources["analysis"]
    loaded = model.load()
    split = dataset.split("train")
    layers = list(range(loaded.adapter.n_layers - 1))
    work = Path(tempfile.mkdtemp(prefix="oe_check_"))

    def effects_pass():
        lenses = {layer: SecondOrderLens(loaded.adapter, layer, analysis.coefficient, analysis.convention,
                                         dense_cache_bytes=0) for layer in layers}
        writers = {layer: FactorizedEffectsWriter(work / f"{layer}.h5", len(split), lens.factors,
                                                  with_const=lens.convention == "reference",
                                                  batch_size=model.batch_size, n_tokens=loaded.adapter.fixed_tokens)
                   for layer, lens in lenses.items()}
        for _, effects in iter_factorized(lenses, split.batches(loaded, model.batch_size, model.max_length)):
            for layer, fe in effects.items():
                writers[layer].write(fe)
        for writer in writers.values():
            writer.close(labels=split.labels)

    def check():  # what the blocking check runs, on the files just written
        batch = next(iter(split.batches(loaded, 2, model.max_length)))
        ok, worst = fast_equals_slow_layers(loaded.adapter, batch, layers, analysis.coefficient, analysis.convention,
                                            lambda layer: (open_factorized(work / f"{layer}.h5"), "float32"))
        assert ok, f"fast != slow: {worst}"

    def best(fn):
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    try:
        t_effects = best(effects_pass)
        t_check = best(check)
    finally:
        shutil.rmtree(work)
    print(f"demo profile ({model.source}), {len(split)} train samples, layers {layers[0]}..{layers[-1]}, "
          f"batch {model.batch_size}, torch threads {torch.get_num_threads()}, best of {args.repeat}")
    print(tabulate([["effects pass (all layers, one pass, files written)", t_effects, 1.0],
                    [f"fast = slow check (2 samples x {CHECK_NEURONS} neurons a layer)", t_check,
                     t_check / t_effects]],
                   ["step", "seconds", "share of the effects pass"], floatfmt=".3f"))


if __name__ == "__main__":
    main()
