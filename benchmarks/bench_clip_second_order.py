"""Second-order effects on a ViT-B/32-shaped random CLIP vision tower: fast path vs forward vs slow.

Prints per-image times for the plain forward pass, the fast path at layers 9 and 0 (capture
forward included; its one-time precomputation printed separately), the literal slow path at
layer 9 on one image, their ratios, and the peak extra memory of one fast-path batch.

    python benchmarks/bench_clip_second_order.py [--device cpu|cuda] [--batch 16] [--skip-slow]
"""

from __future__ import annotations

import argparse
import gc
import time

import torch

from common import PeakRSS, sync, timed, vit_b32
from oe_assets.lens import SecondOrderLens, slow_second_order_effects


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--skip-slow", action="store_true")
    args = ap.parse_args()
    dev, B = args.device, args.batch
    torch.set_grad_enabled(False)
    model = vit_b32(dev)
    x = torch.randn(B, 3, 224, 224, device=dev)
    print(f"ViT-B/32-shaped CLIP vision tower (width 768, 12 layers, 12 heads, 50 tokens, 3072 neurons, "
          f"output 512), {dev}, float32, batch {B}, torch threads {torch.get_num_threads()}")

    def forward():
        out = model(pixel_values=x).image_embeds
        sync(dev)
        return out

    t_fwd, _ = timed(forward)
    print(f"forward pass              {1e3 * t_fwd / B:9.2f} ms/image")
    fast = {}
    for layer in (9, 0):
        t0 = time.perf_counter()
        lens = SecondOrderLens(model, layer)
        sync(dev)
        t_pre = time.perf_counter() - t0

        def run(lens=lens):
            out = lens(x)
            sync(dev)
            return out

        t_fast, out = timed(run)
        fast[layer] = t_fast
        out_bytes = out.numel() * out.element_size()
        del out
        gc.collect()
        if dev == "cpu":
            with PeakRSS() as mem:
                out = lens(x)
            extra, how = mem.extra, "peak RSS"
        else:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            out = lens(x)
            torch.cuda.synchronize()
            extra, how = torch.cuda.max_memory_allocated() - base, "peak CUDA allocation"
        del out
        print(f"fast path, layer {layer:2d}       {1e3 * t_fast / B:9.2f} ms/image   "
              f"(fast/forward {t_fast / t_fwd:5.2f}x; one-time precomputation {t_pre:6.2f} s, "
              f"dense M {lens.factors.nbytes() / 2**20:7.1f} MiB, kept while it is under dense_cache_bytes)")
        print(f"   batch memory: output {out_bytes / 2**20:7.1f} MiB, extra {how} {extra / 2**20:7.1f} MiB "
              f"({extra / out_bytes:4.2f}x output)")
        del lens
        gc.collect()
    if not args.skip_slow:
        one = x[:1]
        t0 = time.perf_counter()
        slow = slow_second_order_effects(model, one, 9)
        sync(dev)
        t_slow = time.perf_counter() - t0
        check = SecondOrderLens(model, 9)(one)
        err = ((check - slow).abs().max() / slow.abs().max()).item()
        print(f"slow path, layer  9       {1e3 * t_slow:9.2f} ms/image   (one image; fast vs slow max rel. diff {err:.1e})")
        print(f"ratio slow/fast, layer 9  {t_slow / (fast[9] / B):9.1f}x")


if __name__ == "__main__":
    main()
