"""Running a lens over a dataset batch by batch, into memory or into an array-like sink."""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

__all__ = ["text_batches", "image_batches", "iter_effects", "collect_effects", "Progress"]


def text_batches(tokenizer, texts: Sequence[str], batch_size: int = 32, max_length: int = 128) -> Iterator[dict]:
    """Tokenizer outputs (right-padded, truncated to ``max_length``) of consecutive slices of ``texts``."""
    for i in range(0, len(texts), batch_size):
        yield tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")


def image_batches(pixel_values: torch.Tensor | np.ndarray, batch_size: int = 16) -> Iterator[torch.Tensor]:
    """Consecutive slices of an image tensor ``[samples, 3, H, W]``."""
    pv = torch.as_tensor(pixel_values)
    for i in range(0, pv.shape[0], batch_size):
        yield pv[i:i + batch_size]


class Progress:
    """Counts samples; reports ``done/total``, samples per second and time left to ``log`` (a
    callable taking one string, e.g. a Dagster run log), or, when ``log`` is None, draws a progress
    bar in a notebook or terminal (``tqdm.auto``; a plain bar on a terminal without tqdm)."""

    def __init__(self, total: int, label: str = "", log: Callable[[str], None] | None = None, every: float = 5.0):
        self.total, self.label, self.log, self.every = total, label, log, every
        self.done, self.start, self.last = 0, time.perf_counter(), 0.0
        self._bar = None
        if log is None:
            try:
                from tqdm.auto import tqdm

                self._bar = tqdm(total=total, desc=label, unit="sample", leave=False)
            except ImportError:
                pass

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        rate = self.done / max(now - self.start, 1e-9)
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        finished = self.done >= self.total
        if self.log is not None:
            if finished or now - self.last >= self.every:
                self.last = now
                self.log(f"{self.label} {self.done}/{self.total} samples, {rate:.1f} samples/s, {left:.0f} s left")
        elif self._bar is not None:
            self._bar.update(n)
            if finished:
                self._bar.close()
        elif sys.stderr.isatty():
            width = 30
            filled = int(width * self.done / max(self.total, 1))
            sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                             f"{rate:.1f}/s {left:.0f}s left" + ("\n" if finished else ""))
            sys.stderr.flush()


def iter_effects(lens, batches: Iterable[Any]) -> Iterator[tuple[int, np.ndarray, torch.Tensor]]:
    """Yield ``(start, effects [batch, neurons, d_out] as numpy, representation [batch, d_out])``."""
    start = 0
    for batch in batches:
        cap = lens.capture(batch)
        effects = lens.from_capture(cap).cpu().numpy()
        yield start, effects, cap.representation.cpu()
        start += effects.shape[0]


def collect_effects(lens, batches: Iterable[Any], n_samples: int, out=None, progress: Progress | None = None):
    """Write every batch's effects into ``out`` (``[n_samples, neurons, d_out]``; a numpy array or an
    h5py dataset; allocated as float32 numpy when None) and return it."""
    if out is None:
        out = np.empty((n_samples, lens.n_neurons, lens.d_out), dtype=np.float32)
    end = 0
    for start, effects, _ in iter_effects(lens, batches):
        end = start + effects.shape[0]
        if end > n_samples:
            raise ValueError(f"the batches hold more than n_samples={n_samples} samples")
        out[start:end] = effects
        if progress is not None:
            progress.update(effects.shape[0])
    if end != n_samples:
        raise ValueError(f"the batches held {end} samples, not n_samples={n_samples}")
    return out
