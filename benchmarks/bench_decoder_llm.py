"""Decoder LLMs on CPU, float32, random weights of real shapes (built here from ``LlamaConfig``,
nothing downloaded).

``speed``: a SmolLM2-135M shape (d 576, 1,536 neurons, 30 layers, 9 heads, 3 key/value heads),
batch 8 x 128 tokens: the model's forward pass against the lens (capture forward included) at the
first, middle and last-but-one MLP layers; one-time precomputation printed apart.

``memory``: a Llama-3.2-1B shape (d 2048, 8,192 neurons, 16 layers, 32 heads, 8 key/value heads),
batch 1 x 128 tokens: peak extra RSS of building the lens and computing one batch of factorized
effects (path weights, and the norms of every neuron's effect, formed one neuron block at a time),
per MLP layer.  What the lens keeps per layer is measured at the last-but-one layer (one later block)
and scaled by the number of later blocks (it is linear in them, whether it stores dense directions
or per-head factors); layers whose estimate exceeds ``--budget-gb`` are reported and skipped.

    python benchmarks/bench_decoder_llm.py [--part speed|memory|all] [--layers 0,7,14] [--budget-gb 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import gc
import time

import torch
from common import PeakRSS, timed
from transformers import LlamaConfig, LlamaForCausalLM

from oe_assets.lens import SecondOrderLens
from oe_assets.lens.adapters import ModelAdapter, get_adapter

SHAPES = {
    "SmolLM2-135M": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152,
                     "tie_word_embeddings": True},
    "Llama-3.2-1B": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
                     "tie_word_embeddings": True},
}
GiB = 2.0 ** 30


def random_model(shape: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(**SHAPES[shape], max_position_embeddings=2048)
    model = LlamaForCausalLM(cfg).float().eval()
    model.set_attn_implementation("sdpa")
    return model


def token_batch(batch: int, tokens: int, vocab: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, vocab, (batch, tokens), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def lens_bytes(lens: SecondOrderLens) -> int:
    """Bytes of the tensors the lens keeps (the model's own weights not counted)."""
    seen: dict[int, int] = {}

    def walk(obj):
        if isinstance(obj, torch.Tensor):
            seen[obj.untyped_storage().data_ptr()] = obj.untyped_storage().nbytes()
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)
        elif hasattr(obj, "__dict__") and not isinstance(obj, (ModelAdapter, torch.nn.Module)):
            walk(vars(obj))

    walk(vars(lens))
    return sum(seen.values())


def speed(layers: list[int] | None) -> None:
    model = random_model("SmolLM2-135M")
    adapter = get_adapter(model)
    batch = adapter.prepare_inputs(token_batch(8, 128, model.config.vocab_size))
    L = adapter.n_layers
    layers = layers or [0, L // 2 - 1, L - 2]
    print(f"SmolLM2-135M shape (d 576, 1536 neurons, 30 layers, 9 heads / 3 KV heads), random weights, "
          f"batch 8 x 128 tokens, CPU float32, torch threads {torch.get_num_threads()}")
    for layer in layers:
        t0 = time.perf_counter()
        lens = SecondOrderLens(adapter, layer)
        t_pre = time.perf_counter() - t0
        t_fwd, t_fast, out = interleaved(lambda: adapter.forward(batch), lambda lens=lens: lens(batch))
        print(f"layer {layer:2d} ({L - 1 - layer:2d} later blocks): forward {1e3 * t_fwd / 8:6.1f} ms/sample, "
              f"effects {1e3 * t_fast / 8:6.1f} ms/sample: effects/forward {t_fast / t_fwd:5.2f}x (target <= 2); "
              f"precomputation {t_pre:5.2f} s, lens keeps {lens_bytes(lens) / GiB:5.2f} GiB, "
              f"output {out.numel() * 4 / GiB:5.3f} GiB")
        del lens, out
        gc.collect()


def interleaved(forward, effects, repeat: int = 3):
    """Best times of ``forward`` and ``effects`` run in turns (after one warm-up each), so that a
    change in the machine's load hits both alike; and the last effects."""
    forward(), effects()
    t_fwd = t_eff = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        forward()
        t_fwd = min(t_fwd, time.perf_counter() - t0)
        t0 = time.perf_counter()
        out = effects()
        t_eff = min(t_eff, time.perf_counter() - t0)
    return t_fwd, t_eff, out


def memory(layers: list[int] | None, budget_gb: float) -> None:
    t0 = time.perf_counter()
    model = random_model("Llama-3.2-1B")
    adapter = get_adapter(model)
    L = adapter.n_layers
    batch = adapter.prepare_inputs(token_batch(1, 128, model.config.vocab_size))
    print(f"Llama-3.2-1B shape (d 2048, 8192 neurons, 16 layers, 32 heads / 8 KV heads), random weights "
          f"({sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters, built in "
          f"{time.perf_counter() - t0:.0f} s), batch 1 x 128 tokens, CPU float32")
    with PeakRSS() as fwd, torch.no_grad():
        t_fwd, _ = timed(lambda: adapter.forward(batch), repeat=1)
    print(f"forward pass: {1e3 * t_fwd:.0f} ms, peak extra RSS {fwd.extra / GiB:.2f} GiB")
    probe = SecondOrderLens(adapter, L - 2, dense_cache_bytes=0)
    per_block = lens_bytes(probe)
    del probe
    gc.collect()
    dense = adapter.d_mlp * adapter.n_heads * adapter.d_out * 4
    factors = adapter.n_heads * adapter.d_head * (adapter.d_out + adapter.d_mlp) * 4
    print(f"the lens keeps {per_block / GiB:.2f} GiB per later block (dense directions: {dense / GiB:.2f} GiB, "
          f"per-head factors: {factors / GiB:.3f} GiB); at layer 0 ({L - 1} later blocks): "
          f"{per_block * (L - 1) / GiB:.1f} GiB")
    for layer in layers or [0, L // 2 - 1, L - 3, L - 2]:
        estimate = per_block * (L - 1 - layer)
        if estimate > budget_gb * GiB:
            print(f"layer {layer:2d}: SKIPPED, the lens would keep {estimate / GiB:.1f} GiB > budget "
                  f"{budget_gb:.1f} GiB (this machine cannot hold it; rerun with a larger --budget-gb "
                  f"where it fits, or once the lens stores less per block)")
            continue
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            lens = SecondOrderLens(adapter, layer, dense_cache_bytes=0)
            t_pre = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = lens.factorized(batch)
            t_eff = time.perf_counter() - t0
            t0 = time.perf_counter()
            out.norms()  # every (sample, neuron): dense neuron blocks only
            t_norms = time.perf_counter() - t0
        alpha = out.alpha.numel() * out.alpha.element_size()
        print(f"layer {layer:2d} ({L - 1 - layer:2d} later blocks): peak extra RSS {rss.extra / GiB:6.2f} GiB "
              f"(lens keeps {lens_bytes(lens) / GiB:5.2f} GiB, path weights {alpha / GiB:.3f} GiB); "
              f"precomputation {t_pre:5.1f} s, effects {t_eff:5.2f} s ({t_eff / t_fwd:4.1f}x forward), "
              f"all norms {t_norms:5.1f} s")
        del lens, out
        gc.collect()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=("speed", "memory", "all"), default="all")
    ap.add_argument("--layers", type=lambda s: [int(x) for x in s.split(",")], default=None)
    ap.add_argument("--budget-gb", type=float, default=10.0, help="skip layers whose lens would keep more")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.part in ("speed", "all"):
        speed(args.layers)
    if args.part in ("memory", "all"):
        memory(args.layers, args.budget_gb)


if __name__ == "__main__":
    main()
