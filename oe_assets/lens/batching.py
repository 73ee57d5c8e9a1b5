"""Running lenses over a dataset batch by batch: one forward pass per batch for every layer."""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch

from .tokenization import tokenize
from .factorized import FactorizedEffects

__all__ = ["text_batches", "iter_factorized", "collect_factorized", "Progress"]


def text_batches(tokenizer, texts: Sequence[str], batch_size: int = 32, max_length: int = 128) -> Iterator[dict]:
    """Tokenizer outputs (right-padded, truncated to ``max_length``) of consecutive slices of ``texts``:
    ``input_ids`` / ``attention_mask`` ``[batch, tokens]`` (``batch <= batch_size``,
    ``tokens <= max_length``)."""
    for i in range(0, len(texts), batch_size):
        yield tokenize(tokenizer, texts[i:i + batch_size], max_length)


class Progress:
    """Counts samples; reports ``done/total``, samples per second and time left to ``log`` (a
    callable taking one string, e.g. a Dagster run log), or, when ``log`` is None, draws a progress
    bar in a notebook or terminal (``tqdm.auto``)."""

    def __init__(self, total: int, label: str = "", log: Callable[[str], None] | None = None, every: float = 5.0):
        self.total, self.label, self.log, self.every = total, label, log, every
        self.done, self.start, self.last = 0, time.perf_counter(), 0.0
        self._bar = None
        if log is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=label, unit="sample", leave=False)

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
        else:
            self._bar.update(n)
            if finished:
                self._bar.close()


def iter_factorized(lenses: Mapping[int, Any], batches: Iterable[Any], progress: Progress | None = None,
                    on_capture: Callable[[Any, dict], None] | None = None,
                    ) -> Iterator[tuple[slice, dict[int, FactorizedEffects]]]:
    """One data pass for several layers: per batch, one forward pass with hooks for every layer of
    ``lenses`` (``{mlp_layer: SecondOrderLens}`` over one model), then each layer's factorized
    effects from that single capture.  Yields ``(samples, {layer: FactorizedEffects})``: ``samples``
    the batch's slice of the data, each effects ``[batch, neurons, d_out]``.  ``on_capture(batch,
    {layer: Capture})`` sees every batch's captures, so other statistics share the same pass."""
    if not lenses:
        raise ValueError("lenses is empty")
    adapter = next(iter(lenses.values())).adapter
    if any(lens.adapter.model is not adapter.model for lens in lenses.values()):
        raise ValueError("the lenses of one data pass must look at one model")
    start = 0
    for batch in batches:
        caps = adapter.capture_layers(batch, list(lenses))
        if on_capture is not None:
            on_capture(batch, caps)
        out = {layer: lens.factorized_from_capture(caps[layer]) for layer, lens in lenses.items()}
        n = int(next(iter(out.values())).alpha.shape[0])
        yield slice(start, start + n), out
        start += n
        if progress is not None:
            progress.update(n)


def collect_factorized(lenses: Mapping[int, Any], batches: Iterable[Any],
                       progress: Progress | None = None) -> dict[int, FactorizedEffects]:
    """Every batch's factorized effects, concatenated in memory: ``{layer: FactorizedEffects}``,
    each ``[samples, neurons, d_out]`` (``alpha`` ``[samples, J*H, neurons]`` on the CPU; a
    notebook-sized dataset)."""
    parts: dict[int, list[FactorizedEffects]] = {layer: [] for layer in lenses}
    for _, out in iter_factorized(lenses, batches, progress):
        for layer, fe in out.items():
            parts[layer].append(fe)
    result = {}
    for layer, fes in parts.items():
        if not fes:
            raise ValueError("the batches held no samples")
        const = None if fes[0].const is None else torch.cat([f.const.cpu() for f in fes])
        result[layer] = FactorizedEffects(torch.cat([f.alpha.cpu() for f in fes]), torch.cat([f.scale.cpu() for f in fes]),
                                          lenses[layer].factors, const)
    return result
