"""Rank-1 (PCA) approximation of each neuron's second-order effects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["NeuronPCA", "neuron_pca"]


@dataclass(frozen=True)
class NeuronPCA:
    """``components`` ``[neurons, d_out]`` (unit rows), ``norms`` ``[neurons, top_k]`` (ascending:
    ``norms[n, 0]`` is neuron ``n``'s significance threshold), ``means`` ``[neurons, d_out]``,
    ``explained`` ``[neurons]``: the share of the top-``k`` rows' variance along the PC,
    ``s_0^2 / sum_i s_i^2``."""

    components: np.ndarray
    norms: np.ndarray
    means: np.ndarray
    explained: np.ndarray | None = None

    @property
    def thresholds(self) -> np.ndarray:
        """``norms[:, 0]``: ``[neurons]``."""
        return self.norms[:, 0]


def neuron_pca(
    effects, top_k: int, block_size: int | None = None, progress: Callable[[int, int], None] | None = None,
    block_bytes: int = 256 * 2**20,
) -> NeuronPCA:
    """Per neuron ``n`` of ``effects`` ``[samples, neurons, d_out]`` (a numpy array, a torch tensor
    or an h5py dataset, read ``block_size`` neurons at a time):

    1. ``means[n] = mean_s effects[s, n]``; ``X = effects[:, n] - means[n]``;
    2. keep the ``top_k`` rows of ``X`` with the largest L2 norms (``norms[n]``, ascending);
    3. ``components[n]`` = first right singular vector of those rows, negated unless more than
       ``top_k // 2`` of them project positively on it.
    Computed in float64.  ``block_size`` defaults to as many neurons as fit ``block_bytes`` of
    float64 samples, so memory stays bounded whatever the number of samples.  Returns a
    :class:`NeuronPCA` (``components`` / ``means`` ``[neurons, d_out]``, ``norms``
    ``[neurons, top_k]``, ``explained`` ``[neurons]``).  Factorized effects
    (:class:`~oe_assets.lens.factorized.FactorizedEffects`) take their own path: the means and every
    centred norm come from the factors, and only each neuron's top rows are formed
    (:meth:`~oe_assets.lens.factorized.FactorizedEffects.top_rows`)."""
    shape = tuple(getattr(effects, "shape", ()))
    if len(shape) != 3:
        raise ValueError(f"effects must be [samples, neurons, d_out], got shape {shape}")
    S, N, d = shape
    if not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= S:
        raise ValueError(f"top_k={top_k!r} must be an integer in 1..{S} (the number of samples)")
    if block_size is None:
        block_size = max(1, min(N, block_bytes // max(1, S * d * 8)))
        chunks = getattr(effects, "chunks", None)
        if chunks:  # whole HDF5 chunks per block: each chunk is decompressed once
            block_size = max(chunks[1], block_size // chunks[1] * chunks[1])
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    components = np.empty((N, d))
    norms = np.empty((N, top_k))
    means = np.empty((N, d))
    explained = np.empty(N)
    if hasattr(effects, "top_rows"):  # factorized: only the top rows are ever formed
        means[:] = effects.mean()
        for n0, count, top_norms, rows in effects.top_rows(means, top_k):
            n1 = n0 + count
            norms[n0:n1] = top_norms.cpu().numpy()
            components[n0:n1], explained[n0:n1] = _principal(rows.cpu().numpy(), top_k)
            if progress is not None:
                progress(n1, N)
        return NeuronPCA(components, norms, means, explained)
    for n0 in range(0, N, block_size):
        n1 = min(N, n0 + block_size)
        block = effects[:, n0:n1, :]
        block = block.detach().cpu().numpy() if hasattr(block, "detach") else np.asarray(block)
        block = block.astype(np.float64, copy=False)
        mean = block.mean(axis=0)  # [nb, d]
        centred = (block - mean).transpose(1, 0, 2)  # [nb, S, d]
        row_norms = np.linalg.norm(centred, axis=-1)  # [nb, S]
        top = np.argsort(row_norms, axis=1, kind="stable")[:, S - top_k:]  # ascending norms
        rows = np.take_along_axis(centred, top[:, :, None], axis=1)  # [nb, k, d]
        components[n0:n1], explained[n0:n1] = _principal(rows, top_k)
        norms[n0:n1], means[n0:n1] = np.take_along_axis(row_norms, top, 1), mean
        if progress is not None:
            progress(n1, N)
    return NeuronPCA(components, norms, means, explained)


def _principal(rows: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """First right singular vector of each neuron's top rows ``[nb, k, d]`` with the sign rule, and
    the share of variance along it: ``(components [nb, d], explained [nb])``."""
    _, sv, vt = np.linalg.svd(rows, full_matrices=False)
    explained = sv[:, 0] ** 2 / np.maximum((sv ** 2).sum(axis=1), 1e-300)
    pc = vt[:, 0, :]  # [nb, d]
    positive = (np.einsum("nkd,nd->nk", rows, pc) > 0).sum(axis=1)
    return np.where((positive > top_k // 2)[:, None], pc, -pc), explained
