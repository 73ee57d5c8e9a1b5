"""The top-k form of a layer's effects: what the PCA and the reports need, for models whose
per-sample effects do not fit a disk.

The PCA (:func:`oe_assets.lens.neuron_pca`) reads of each neuron ``n`` only its mean over the samples
``means[n]`` and the ``top_k`` samples with the largest centred norms ``|effects[s, n] - means[n]|``
(those rows); the reports read the norms ``|effects[s, n]|`` of every sample.  The top-k form keeps
exactly these, built in two data passes over the split (the centred norms need the final mean):

1. :class:`EffectsMean`: ``sum_s scale[s] alpha[s]`` ``[paths, neurons]`` (and ``sum_s scale[s]
   const[s]``), then ``means`` ``[neurons, d_out]`` through the factors;
2. :class:`TopKEffectsWriter`: per batch the norms of every sample (written as they come) and each
   neuron's batch top ``top_k`` by centred norm, merged into a running top ``top_k`` per neuron
   (held in memory: ``neurons x top_k x d_out`` numbers); the file is completed on :meth:`close`.

A sample in a neuron's top ``top_k`` of the whole split is in the top ``top_k`` of its own batch,
so the merge is exact.  Samples are ordered by ``(centred norm, position)`` everywhere, as the PCA's
stable sort does: equal norms keep the larger positions.

File (HDF5, ``attrs["layout"] == "topk"``, every dataset with the ``fletcher32`` checksum and the
attributes with their SHA-256, as :mod:`.effects_file`):

- ``norms`` ``[samples, neurons]``: ``|effects[s, n]|`` (uncentred; the reports' top inputs);
- ``means`` ``[neurons, d_out]`` (float64);
- ``topk_indices`` ``[neurons, top_k]`` (int64), ``topk_norms`` ``[neurons, top_k]`` (float64; centred
  norms, ascending) and ``topk_effects`` ``[neurons, top_k, d_out]``: the centred effects
  ``effects[s, n] - means[n]`` of those samples (add ``means[n]`` for the effects themselves);
- ``labels`` ``[samples]`` when given, and any extra arrays of the same pass (the first-order sums).

``norms`` and ``topk_effects`` are float32 by default (``dtype="float64"`` keeps them exact).  At the
Llama-3-8B shape (14,336 neurons, d_out 4096) and 10,000 samples a layer takes ``10,000 x 14,336 x 4``
bytes (0.57 GB) of norms and ``top_k x 14,336 x 4096 x 4`` bytes (0.23 GB per unit of ``top_k``): 5.3 GB
at ``top_k = 20``.  :class:`TopKEffects` reads a file back with the interface the PCA and the reports
use (``shape``, ``mean``, ``norms``, ``top_rows``); sums over neurons of every sample (the ablations)
are not in it: those come from the val pass itself (:func:`oe_assets.lens.ablations.ablation_sums`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from ..storage.hdf5 import _UNCLOSED, H5Handle, checksummed, discard_h5, write_attrs
from .factorized import FactorizedEffects, HeadFactors, _positions, _tensor

__all__ = ["TOPK_LAYOUT", "TOPK_DTYPES", "as_stored", "EffectsMean", "TopKEffectsWriter", "TopKEffects", "open_topk",
           "topk_bytes", "running_top_bytes", "layer_groups"]

TOPK_LAYOUT = "topk"
#: storage dtypes of ``norms`` and ``topk_effects``
TOPK_DTYPES = ("float32", "float64")


def topk_bytes(n_samples: int, n_neurons: int, d_out: int, top_k: int, dtype: str = "float32") -> int:
    """Bytes of a top-k file's datasets (norms, means, top indices / norms / effects), without HDF5's
    small overhead."""
    item = np.dtype(dtype).itemsize
    return (n_samples * n_neurons * item + n_neurons * d_out * 8 + n_neurons * top_k * 16
            + n_neurons * top_k * d_out * item)


def running_top_bytes(n_neurons: int, d_out: int, top_k: int, dtype: str = "float32") -> int:
    """Memory of one layer's :class:`TopKEffectsWriter` (its running top: rows, norms, indices) and
    means: ``neurons x (top_k x d_out)`` numbers of ``dtype`` and ``neurons x d_out`` float64."""
    return n_neurons * top_k * (d_out * np.dtype(dtype).itemsize + 16) + n_neurons * d_out * 8


def layer_groups(layers: list, layer_bytes: dict, budget: int) -> list[list]:
    """``layers`` in order, in consecutive groups whose ``layer_bytes`` sum to at most ``budget``
    (a layer larger than the budget alone): the layers one set of data passes can hold at once."""
    groups: list[list] = []
    used = 0
    for layer in layers:
        if groups and groups[-1] and used + layer_bytes[layer] <= budget:
            groups[-1].append(layer)
            used += layer_bytes[layer]
        else:
            groups.append([layer])
            used = layer_bytes[layer]
    return groups


def as_stored(fe: FactorizedEffects, alpha_dtype: str = "float32", factors: HeadFactors | None = None,
              dtype: torch.dtype = torch.float64) -> FactorizedEffects:
    """One batch's effects with the numbers an effects file holds (:mod:`.effects_file`): ``alpha``
    rounded to ``alpha_dtype``, ``factors`` (already rounded to the file's factor dtype, or None:
    ``fe``'s own), computed in ``dtype``; so the top-k form equals the stored path on the same data."""
    store = torch.bfloat16 if alpha_dtype == "bfloat16" else getattr(torch, alpha_dtype)
    alpha = torch.as_tensor(fe.alpha).to(store).to(dtype)
    return FactorizedEffects(alpha, fe.scale, factors or fe.factors, fe.const, dtype=dtype, device=fe.device,
                             block_bytes=fe.block_bytes)


def rounded_factors(factors: HeadFactors, factor_dtype: torch.dtype = torch.float32) -> HeadFactors:
    """``factors`` rounded as an effects file stores them (``factor_dtype``, float32 by default)."""
    return HeadFactors(torch.as_tensor(factors.left).to(factor_dtype), torch.as_tensor(factors.right).to(factor_dtype))


class EffectsMean:
    """First pass: ``means[n] = mean_s effects[s, n]`` ``[neurons, d_out]`` accumulated batch by batch
    from the factorized effects (``sum_s scale[s] alpha[s]`` ``[paths, neurons]`` and ``sum_s scale[s]
    const[s]``), formed through the factors once at the end (:meth:`FactorizedEffects.mean`)."""

    def __init__(self, factors: HeadFactors, dtype: torch.dtype = torch.float64, device=None):
        self.factors, self.dtype, self.device = factors, dtype, torch.device(device or "cpu")
        self.weighted = torch.zeros(factors.n_paths, factors.n_neurons, dtype=dtype, device=self.device)
        self.const_sum: torch.Tensor | None = None
        self.count = 0

    def add(self, fe: FactorizedEffects) -> None:
        if (fe.n_paths, fe.shape[1]) != (self.factors.n_paths, self.factors.n_neurons):
            raise ValueError(f"effects of shape {fe.shape} with {fe.n_paths} paths do not belong to this layer "
                             f"({self.factors.n_paths} paths, {self.factors.n_neurons} neurons)")
        scale = fe.scale.to(self.device, self.dtype)  # the batch may live on another device (a GPU)
        alpha = _tensor(fe.alpha, self.dtype, self.device)
        self.weighted += torch.einsum("s,spn->pn", scale, alpha)
        if fe.const is not None:
            part = (scale[:, None] * fe.const.to(self.device, self.dtype)).sum(0)
            self.const_sum = part if self.const_sum is None else self.const_sum + part
        self.count += len(fe)

    def means(self) -> np.ndarray:
        """``[neurons, d_out]`` float64."""
        if self.count == 0:
            raise ValueError("no samples were added to the mean")
        scale = torch.tensor([1.0 / self.count], dtype=self.dtype)
        const = None if self.const_sum is None else self.const_sum[None]
        return FactorizedEffects(self.weighted[None], scale, self.factors, const, dtype=self.dtype,
                                 device=self.device).mean()


class TopKEffectsWriter:
    """Second pass: streams a split's top-k form (module docstring) into a new HDF5 file at ``path``.

    ``means`` ``[neurons, d_out]`` (from :class:`EffectsMean` on the same samples); ``write(fe)``
    takes the next batch's :class:`FactorizedEffects`; ``close(labels, attrs)`` checks that all
    ``n_samples`` were written, then writes the top ``top_k`` per neuron.  A failed write or close
    closes the file (:meth:`abort`); the caller removes the staging file (making the file appear
    atomically is the caller's business, as for :class:`~oe_assets.lens.effects_file.FactorizedEffectsWriter`)."""

    def __init__(self, path: str | Path, n_samples: int, means: np.ndarray, top_k: int, batch_size: int = 64,
                 dtype: str = "float32", device=None):
        means = np.asarray(means, dtype=np.float64)
        if means.ndim != 2:
            raise ValueError(f"means must be [neurons, d_out], got shape {means.shape}")
        if dtype not in TOPK_DTYPES:
            raise ValueError(f"dtype={dtype!r}; choose one of {TOPK_DTYPES}")
        if not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= n_samples:
            raise ValueError(f"top_k={top_k!r} must be an integer in 1..{n_samples} (the number of samples)")
        N, d = means.shape
        self.path, self.n_samples, self.top_k, self.written = Path(path), int(n_samples), int(top_k), 0
        self.means, self.dtype, self.device = means, dtype, torch.device(device or "cpu")
        self._centre: torch.Tensor | None = None  # the means on the batches' device
        rows_dtype = getattr(torch, dtype)
        # the running top per neuron, ascending by (centred norm, position); empty slots sort first
        self.top_norms = torch.full((N, top_k), -torch.inf, dtype=torch.float64, device=self.device)
        self.top_index = torch.full((N, top_k), -1, dtype=torch.int64, device=self.device)
        self.top_rows = torch.zeros((N, top_k, d), dtype=rows_dtype, device=self.device)
        self.file = h5py.File(self.path, "w", rdcc_nbytes=0)
        try:
            b = max(1, min(n_samples, batch_size))
            self.norms = self.file.create_dataset("norms", shape=(n_samples, N), dtype=dtype,
                                                  **checksummed((n_samples, N), (b, min(N, 1024))))
        except BaseException:
            self.abort()
            raise

    def write(self, fe: FactorizedEffects) -> None:
        """Add the next batch: its norms go to the file, its top samples into the running top."""
        try:
            self._write(fe)
        except BaseException:
            self.abort()
            raise

    def _write(self, fe: FactorizedEffects) -> None:
        if self.file is None:
            raise RuntimeError(f"{self.path}: the writer is closed")
        S, N, d = fe.shape
        if (N, d) != self.means.shape:
            raise ValueError(f"effects of shape {fe.shape} do not match the means {self.means.shape}")
        s0 = self.written
        if s0 + S > self.n_samples:
            raise ValueError(f"{self.path}: a batch of {S} after {s0} samples exceeds n_samples={self.n_samples}")
        self.norms[s0:s0 + S] = fe.norms().astype(self.dtype)
        if self._centre is None or self._centre.device != fe.device or self._centre.dtype != fe.dtype:
            self._centre = torch.as_tensor(self.means, dtype=fe.dtype, device=fe.device)  # once, not per batch
        for n0, count, samples, norms, rows in fe.top_samples(self._centre, min(self.top_k, S)):
            block = slice(n0, n0 + count)
            all_norms = torch.cat([self.top_norms[block], norms.to(self.device, torch.float64)], 1)
            all_index = torch.cat([self.top_index[block], samples.to(self.device) + s0], 1)
            all_rows = torch.cat([self.top_rows[block], rows.to(self.device, self.top_rows.dtype)], 1)
            # stable: equal norms stay in position order (the running top precedes the batch)
            keep = torch.sort(all_norms, dim=1, stable=True).indices[:, -self.top_k:]
            self.top_norms[block] = torch.take_along_dim(all_norms, keep, 1)
            self.top_index[block] = torch.take_along_dim(all_index, keep, 1)
            self.top_rows[block] = torch.take_along_dim(all_rows, keep[:, :, None], 1)
        self.written = s0 + S

    def close(self, labels: np.ndarray | None = None, attrs: dict[str, Any] | None = None,
              extras: dict[str, np.ndarray] | None = None) -> None:
        """Check that every sample was written, then write the top ``top_k`` per neuron, ``labels``,
        ``extras`` (named arrays of the same data pass, e.g. first-order sums) and ``attrs``; close."""
        try:
            if self.written != self.n_samples:
                raise RuntimeError(f"{self.path}: wrote {self.written} of {self.n_samples} samples")
            N, d = self.means.shape
            for name, value in (("means", self.means), ("topk_indices", self.top_index.cpu().numpy()),
                                ("topk_norms", self.top_norms.cpu().numpy()),
                                ("topk_effects", self.top_rows.cpu().numpy()),
                                *((("labels", np.asarray(labels)),) if labels is not None else ()),
                                *((name, np.asarray(value)) for name, value in (extras or {}).items())):
                chunks = (1, *value.shape[1:]) if name == "topk_effects" else None
                self.file.create_dataset(name, data=value, **checksummed(value.shape, chunks))
            write_attrs(self.file, {"layout": TOPK_LAYOUT, "top_k": self.top_k, "samples": self.n_samples,
                                    "topk_dtype": self.dtype, **(attrs or {})})
            self.file.flush()
            self.file.close()
        except BaseException:
            self.abort()
            raise
        self.file = self.norms = None

    def abort(self) -> None:
        """Close without completing (the staging file truncated, no error raised); the caller removes
        the file.  Safe to call more than once."""
        file, self.file = self.file, None
        if file is not None and not discard_h5(file, self.path):
            _UNCLOSED.append((file, self.norms))
        self.norms = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()


class TopKEffects:
    """A top-k file (module docstring) with the interface of the effects that the PCA
    (:func:`oe_assets.lens.neuron_pca`) and the reports read: ``shape`` ``(samples, neurons, d_out)``,
    :meth:`mean`, :meth:`norms` (uncentred) and :meth:`top_rows`.  What the file does not hold (the
    effects of other samples, norms about another centre, sums over neurons) is refused with an error
    saying so."""

    def __init__(self, handle: H5Handle):
        self.handle = handle
        self.path = handle.path
        if handle.attrs.get("layout") != TOPK_LAYOUT:
            raise ValueError(f"{handle.path} is not a top-k effects file (layout {handle.attrs.get('layout')!r})")
        self.top_k = int(handle.attrs["top_k"])
        self._means = np.asarray(handle.read("means"), dtype=np.float64)
        S, N = handle.file["norms"].shape
        self.shape = (int(S), int(N), int(self._means.shape[1]))

    def __len__(self) -> int:
        return self.shape[0]

    def mean(self) -> np.ndarray:
        """``means`` ``[neurons, d_out]``."""
        return self._means.copy()

    def norms(self, centre=None, neurons=slice(None), progress=None) -> np.ndarray:
        """``|effects[s, n]|`` ``[samples, len(neurons)]`` (float64); the centred norms of every
        sample are not stored (``centre`` must be None)."""
        if centre is not None:
            raise ValueError(f"{self.path}: a top-k effects file holds the uncentred norms of every sample and "
                             "the centred norms of each neuron's top samples only, not norms about another centre")
        pos = _positions(neurons, self.shape[1])
        uniq, inverse = np.unique(pos, return_inverse=True)
        block = np.asarray(self.handle.read("norms", (slice(None), uniq.tolist())), dtype=np.float64)
        return block[:, inverse]

    def top_indices(self, neurons=slice(None)) -> np.ndarray:
        """``[len(neurons), top_k]``: each neuron's top samples, ascending by centred norm."""
        return np.asarray(self.handle.read("topk_indices"))[_positions(neurons, self.shape[1])]

    def top_samples(self, centre, top_k: int, neurons=slice(None), block: int = 256):
        """As :meth:`FactorizedEffects.top_samples`: ``(first, count, samples, norms, rows)`` per
        neuron block, the last ``top_k`` of the stored top (``top_k`` at most the file's); ``centre``
        must be the file's ``means`` (the top was chosen about them)."""
        if not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= self.top_k:
            raise ValueError(f"top_k={top_k!r}: {self.path} holds the top {self.top_k} samples per neuron; "
                             f"choose 1..{self.top_k} or rebuild the file with a larger top_k")
        if not np.array_equal(np.asarray(centre, dtype=np.float64), self._means):
            raise ValueError(f"{self.path}: the top samples were chosen about the file's own means; "
                             "pass centre=effects.mean()")
        pos = _positions(neurons, self.shape[1])
        for i0 in range(0, pos.size, block):
            sel = pos[i0:i0 + block]
            read = [torch.from_numpy(self._read_top(name, sel, top_k))
                    for name in ("topk_indices", "topk_norms", "topk_effects")]
            yield (i0, sel.size, *read)

    def _read_top(self, name: str, neurons: np.ndarray, top_k: int) -> np.ndarray:
        """The last ``top_k`` columns of a ``topk_*`` dataset for ``neurons`` (h5py reads one sorted,
        unique list per selection), integers as they are, numbers as float64."""
        uniq, inverse = np.unique(neurons, return_inverse=True)
        block = np.asarray(self.handle.read(name, uniq.tolist()))[inverse][:, self.top_k - top_k:]
        return block if block.dtype.kind == "i" else block.astype(np.float64)

    def top_rows(self, centre, top_k: int, neurons=slice(None)):
        """``(first, count, norms, rows)`` per neuron block (:meth:`top_samples` without the samples):
        the input of :func:`oe_assets.lens.neuron_pca`."""
        for i0, count, _, norms, rows in self.top_samples(centre, top_k, neurons):
            yield i0, count, norms, rows

    def close(self) -> None:
        self.handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"TopKEffects(shape={self.shape}, top_k={self.top_k}, path={str(self.path)!r})"


def open_topk(path: str | Path | H5Handle, what: str | None = None) -> TopKEffects:
    """A top-k file as :class:`TopKEffects`, through one open handle (pass one to share it)."""
    return TopKEffects(path if isinstance(path, H5Handle) else H5Handle(path, what))
