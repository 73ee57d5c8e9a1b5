"""The lens at the Llama-3-8B layer shape on this machine, and what 1B / 8B / 70B take per layer and in all.

A random Llama with the Llama-3-8B layer shape (d_model 4096, d_ff 14,336, 32 query / 8 key-value
heads of 128; built from ``LlamaConfig``, nothing downloaded) and ``--layers`` blocks instead of 32
(memory and time on a 2-core, 24 GB CPU machine), on one input of 128 tokens:

- stored bytes per sample per layer in each form, from the writer's size rule
  (:meth:`FactorizedEffectsWriter.bytes_per_sample`, float32, direct convention) at the full 32-layer
  shape (layer 0: 31 later blocks x 32 heads = 992 paths; no weights needed);
- effects pass / forward pass: the capture and layer 0's factorized effects against the model's plain
  forward pass (best of ``--repeat``).  Both scale with the number of blocks (the capture recomputes
  each later block's attention probabilities), so the ratio at layer 0 is the one at 32 layers;
- peak memory of the lens beyond the model (process RSS: the layer-0 factors, built once, and one
  effects pass), measured, and projected to 32 layers: the factors (``paths x (d_model + d_ff) x
  d_head`` numbers) in proportion to the later blocks, the rest (one block's temporaries) as measured;
- weights identity: :func:`oe_assets.models.identity.weights_hash` of the saved random model, the second call
  in a new process (the first fills the persistent cache);
- the top-k mode's disk per layer for 10,000 samples at the 8B shape, from its file layout
  (:func:`oe_assets.lens.topk.topk_bytes`): ``samples x neurons`` float32 norms, ``neurons x d_out``
  float64 means, each neuron's ``top_k`` samples' float32 effects ``[d_out]`` and their indices and norms.

Then a projection for Llama-3.2-1B, Llama-3-8B and Llama-3-70B (:func:`projection_rows`).

    python benchmarks/bench_llm_scale.py [--layers 4] [--dtype float32] [--json PATH] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PeakRSS, rss_bytes  # noqa: E402

from oe_assets.lens import SecondOrderLens  # noqa: E402
from oe_assets.lens.effects_file import FactorizedEffectsWriter, choose_form  # noqa: E402
from oe_assets.lens.factorized import HeadFactors  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GiB, GB, MB = 2**30, 1e9, 1e6
#: (d_model, d_ff, layers, query heads, key-value heads, d_head, parameters) of the published models
SHAPES = {
    "Llama-3.2-1B": (2048, 8192, 16, 32, 8, 64, 1.24e9),
    "Llama-3-8B": (4096, 14_336, 32, 32, 8, 128, 8.03e9),
    "Llama-3-70B": (8192, 28_672, 80, 64, 8, 128, 70.6e9),
}
#: the projection's forward speed: an H100 SXM at 989 dense bf16 TFLOP/s and 40 % utilization (what
#: published Llama inference and training reports reach), forward FLOPs = 2 x parameters x tokens
GPU_FLOPS = 0.40 * 989e12
TOKENS, SAMPLES, TOP_K = 128, 10_000, 32


def meta_factors(shape, layer: int) -> HeadFactors:
    d, d_ff, layers, heads, _, d_head, _ = shape
    paths = (layers - 1 - layer) * heads
    return HeadFactors(torch.empty(paths, d, d_head, device="meta"), torch.empty(paths, d_head, d_ff, device="meta"))


def form_bytes(shape, layer: int) -> dict[str, int]:
    """Bytes per sample of one layer in each form (float32, direct convention, ``TOKENS`` tokens)."""
    f = meta_factors(shape, layer)
    out = {form: FactorizedEffectsWriter.bytes_per_sample(f, False, max_tokens=TOKENS, form=form)
           for form in ("alpha", "token_rows")}
    out["chosen"] = out[choose_form(f, max_tokens=TOKENS)]
    return out


def topk_bytes(shape, layer: int, samples: int = SAMPLES, top_k: int = TOP_K) -> int:
    """The top-k mode's bytes for one layer, from its file layout (:func:`oe_assets.lens.topk.topk_bytes`:
    every sample's norm per neuron, the neurons' means, each neuron's top_k samples' effects ``[d_out]``);
    the same for every layer."""
    from oe_assets.lens.topk import topk_bytes as layout_bytes

    d, d_ff = shape[0], shape[1]
    return layout_bytes(samples, d_ff, d, top_k)


def projection_rows(ratio: float) -> list[list]:
    """Per model: the effects pass of one layer (layer 0) and of every layer for ``SAMPLES`` samples of
    ``TOKENS`` tokens on one GPU (forward time from ``GPU_FLOPS`` x ``ratio``; every layer: one pass
    per layer, an upper bound since a step's layers share the forward pass), and disk per mode."""
    rows = []
    for name, shape in SHAPES.items():
        layers, params = shape[2], shape[6]
        forward_s = 2 * params * TOKENS * SAMPLES / GPU_FLOPS
        per_layer = [form_bytes(shape, layer) for layer in range(layers - 1)]
        topk = [topk_bytes(shape, layer) for layer in range(layers - 1)]
        rows.append([name, f"{ratio * forward_s / 60:.1f} min", f"{ratio * forward_s * (layers - 1) / 3600:.1f} h",
                     f"{per_layer[0]['alpha'] * SAMPLES / GB:.0f} / {sum(b['alpha'] for b in per_layer) * SAMPLES / GB:,.0f}",
                     f"{per_layer[0]['chosen'] * SAMPLES / GB:.0f} / {sum(b['chosen'] for b in per_layer) * SAMPLES / GB:,.0f}",
                     f"{topk[0] / GB:.1f} / {sum(topk) / GB:.0f}"])
    return rows


def random_llama(layers: int, dtype: torch.dtype, shrink: int = 1):
    """A random Llama at the Llama-3-8B layer shape (``shrink``: widths divided by it, a smoke run)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    d, d_ff, _, heads, kv, d_head, _ = SHAPES["Llama-3-8B"]
    d, d_ff, d_head = d // shrink, d_ff // shrink, d_head // shrink
    config = LlamaConfig(vocab_size=1024, hidden_size=d, intermediate_size=d_ff, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, head_dim=d_head,
                         max_position_embeddings=TOKENS, tie_word_embeddings=False)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config).to(dtype).eval()
    return model


def best_time(fn, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def identity_seconds(folder: Path, cache: Path) -> float:
    """:func:`weights_hash` of ``folder`` in a new process, with the persistent cache ``cache``: seconds."""
    code = ("import json, sys, time\nimport oe_assets.models.hub\nfrom oe_assets.models.identity import weights_hash\n"
            "t0 = time.perf_counter()\nweights_hash(sys.argv[1])\nprint(json.dumps(time.perf_counter() - t0))\n")
    env = {**os.environ, "OE_ASSETS_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, env=env, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4, help="blocks of the random model (32 in Llama-3-8B)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="weights' dtype")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 2 blocks at 1/8 of the widths, 16 tokens, one repeat (measured figures not the 8B's)")
    ap.add_argument("--json", default=None, help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    layers, tokens, repeat = (2, 16, 1) if args.quick else (args.layers, TOKENS, args.repeat)
    shape8b = SHAPES["Llama-3-8B"]
    sizes = form_bytes(shape8b, 0)
    t0 = time.perf_counter()

    base_rss = rss_bytes()
    model = random_llama(layers, getattr(torch, args.dtype), shrink=8 if args.quick else 1)
    gc.collect()
    model_gib = (rss_bytes() - base_rss) / GiB
    g = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(3, 1024, (1, tokens), generator=g),
             "attention_mask": torch.ones(1, tokens, dtype=torch.long)}
    with PeakRSS() as peak:
        t_factors = time.perf_counter()
        lens = SecondOrderLens(model, 0, convention="direct", dense_cache_bytes=0)
        t_factors = time.perf_counter() - t_factors
        lens.factorized_from_capture(lens.capture(batch))
    adapter = lens.adapter
    prepared = adapter.prepare_inputs(batch)
    forward_s = best_time(lambda: adapter.forward(prepared), repeat)
    effects_s = best_time(lambda: lens.factorized_from_capture(lens.capture(batch)), repeat)
    ratio = effects_s / forward_s
    extra_gib = peak.extra / GiB
    later = layers - 1
    # the factors grow with the later blocks, the per-block temporaries of building them do not
    factors_gib = (lens.factors.left.numel() + lens.factors.right.numel()) * lens.factors.right.element_size() / GiB
    projected_gib = extra_gib + factors_gib * (31 / later - 1)

    with tempfile.TemporaryDirectory() as work:
        folder = Path(work) / "model"
        model.save_pretrained(folder)
        lens = model = adapter = prepared = None  # free the memory before the identity processes
        gc.collect()
        identity_first = identity_seconds(folder, Path(work) / "cache")
        identity_s = identity_seconds(folder, Path(work) / "cache")
        folder_gb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / GB

    topk_gb = topk_bytes(shape8b, 0) / GB
    figures = {
        "token_form_bytes_per_sample_layer0": sizes["token_rows"],
        "alpha_bytes_per_sample_layer0": sizes["alpha"],
        "effects_over_forward": ratio,
        "lens_peak_extra_gib": extra_gib,
        "lens_peak_extra_gib_projected_32_layers": projected_gib,
        "weights_identity_s": identity_s,
        "topk_mode_disk_gb_per_layer_10k": topk_gb,
        "measured": {"layers": layers, "tokens": tokens, "dtype": args.dtype, "forward_s": forward_s,
                     "effects_s": effects_s, "factors_s": t_factors, "model_gib": model_gib,
                     "weights_identity_first_s": identity_first, "folder_gb": folder_gb, "quick": args.quick},
    }
    print(f"Llama-3-8B layer shape, {layers} blocks ({args.dtype} weights, CPU), 1 x {tokens} tokens")
    print(tabulate([
        ["token rows, bytes / sample, layer 0 (32 layers)", f"{sizes['token_rows'] / MB:.2f} MB"],
        ["alpha, bytes / sample, layer 0 (32 layers)", f"{sizes['alpha'] / MB:.2f} MB"],
        ["forward pass", f"{forward_s:.2f} s"],
        ["effects pass (capture + layer 0's factorized effects)", f"{effects_s:.2f} s"],
        ["effects / forward (target <= 1.3)", f"{ratio:.2f}x"],
        ["layer-0 factors, built once", f"{t_factors:.1f} s"],
        ["model in memory", f"{model_gib:.2f} GiB"],
        [f"lens peak beyond the model ({later} later blocks)", f"{extra_gib:.2f} GiB"],
        [f"  of which the factors ({later * 32} paths)", f"{factors_gib:.2f} GiB"],
        ["  projected to 31 later blocks (factors x 31 / %d)" % later, f"{projected_gib:.2f} GiB"],
        [f"weights identity ({folder_gb:.1f} GB folder), first / second call", f"{identity_first:.2f} s / {identity_s:.2f} s"],
        ["top-k mode, disk per layer, 10k samples, layer 0 (target <= 10 GB)", f"{topk_gb:.2f} GB"],
    ], tablefmt="github"))
    print(f"\nProjection: {SAMPLES:,} samples x {TOKENS} tokens per GPU (H100 at 40 % of 989 TFLOP/s, effects = "
          f"{ratio:.2f} x forward); disk float32, layer 0 / every layer")
    print(tabulate(projection_rows(ratio), ["model", "one layer", "every layer", "alpha (GB)", "token form (GB)",
                                            "top-k mode (GB)"], tablefmt="github"))
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main()
