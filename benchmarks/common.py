"""Shared helpers for the benchmark scripts: timing and peak-RSS sampling."""

from __future__ import annotations

import os
import threading
import time

import torch


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples the process RSS every millisecond while the block runs; ``extra`` is the peak minus
    the RSS on entry (large tensors are mmapped, so freed memory leaves RSS)."""

    def __enter__(self):
        self.start = rss_bytes()
        self.peak = self.start
        self._stop = threading.Event()

        def sample():
            while not self._stop.is_set():
                self.peak = max(self.peak, rss_bytes())
                time.sleep(0.001)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.extra = self.peak - self.start


def timed(fn, repeat: int = 3):
    """Best wall time of ``repeat`` calls (after one warm-up) and the last result."""
    out = fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def vit_b32(device: str = "cpu"):
    """A ViT-B/32-shaped CLIP vision tower with random weights (width 768, 12 layers, 12 heads,
    224 px / 32 px patches = 50 tokens, 3072 neurons, output 512): no download."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=32, projection_dim=512, hidden_act="quick_gelu")
    return CLIPVisionModelWithProjection(cfg).to(device).eval()


def sync(device: str) -> None:
    """Wait for queued CUDA work, so wall times measure it."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
