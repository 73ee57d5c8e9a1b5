"""all-MiniLM-L6-v2 on the demo corpus: per-sample time of the forward pass and of the fast path
at every layer (capture forward included; one-time precomputation printed apart).

    python benchmarks/bench_minilm.py [--batch 32] [--samples 256]
"""

from __future__ import annotations

import argparse
import time

import torch

from common import timed
from oe_assets.lens import SecondOrderLens
from oe_assets.lens.batching import text_batches
from oe_assets.models.loading import MINILM_ID, load_model
from oe_assets.datasources.text_datasets import load_demo_corpus


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--samples", type=int, default=256)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    lm = load_model(MINILM_ID, dtype="float32", device="cpu")
    texts = load_demo_corpus("train").texts[: args.samples]
    batches = list(text_batches(lm.tokenizer, texts, args.batch))
    n = len(texts)
    t_fwd, _ = timed(lambda: [lm.adapter.forward(lm.adapter.prepare_inputs(b)) for b in batches], repeat=2)
    print(f"all-MiniLM-L6-v2 (6 layers, 1536 neurons, width 384), {n} demo sentences, batch {args.batch}, "
          f"CPU float32, torch threads {torch.get_num_threads()}")
    print(f"forward pass              {1e3 * t_fwd / n:8.2f} ms/sample")
    total = 0.0
    for layer in range(lm.adapter.n_layers - 1):
        t0 = time.perf_counter()
        lens = SecondOrderLens(lm.adapter, layer)
        t_pre = time.perf_counter() - t0
        t_fast, _ = timed(lambda lens=lens: [lens(b) for b in batches], repeat=2)
        total += t_fast
        print(f"fast path, layer {layer}        {1e3 * t_fast / n:8.2f} ms/sample   (fast/forward {t_fast / t_fwd:5.2f}x; "
              f"precomputation {t_pre:5.2f} s)")
    print(f"all {lm.adapter.n_layers - 1} layers: {1e3 * total / n:.1f} ms/sample; the 900-sentence demo corpus "
          f"(train + val) would take {900 * total / n:.0f} s for effects at every layer")


if __name__ == "__main__":
    main()
