"""The HDF5 layout of factorized second-order effects (one file per MLP layer and split).

Datasets (see :mod:`.factorized` for the formula):

- ``alpha`` ``[samples, paths, neurons]``: float32 by default; float16, or bfloat16 kept as its raw
  16-bit pattern (``uint16``; HDF5 has no bfloat16), when ``attrs["alpha_dtype"]`` says so.  Chunked
  by one sample batch x a neuron block, so every batch write fills whole chunks and a neuron-block
  reader decompresses each chunk once;
- or, when every input has the same number of tokens and it is smaller than the number of paths
  (``attrs["alpha_form"] == "tokens"``; CLIP ViT-B/32's 50 tokens against 132 paths at layer 0),
  ``alpha``'s exact token factors instead: ``path_weights`` ``[samples, paths, tokens]`` and
  ``activations`` ``[samples, tokens, neurons]``, ``alpha = path_weights @ activations`` formed
  block by block on reading (2.5x smaller at ViT-B/32 layer 0);
- ``scale`` ``[samples]`` (``coefficient / |r|``), ``const`` ``[samples, d_out]`` (reference
  convention only), ``labels`` ``[samples]``;
- ``left`` ``[paths, d_out, d_head]``, ``right`` ``[paths, d_head, neurons]``: the layer's per-head
  factors, once per file.

``attrs["layout"] == "factorized"`` marks the layout.  A file of the earlier dense layout (one
``effects`` dataset ``[samples, neurons, d_out]``) is refused by :func:`open_factorized`, never
misread.  Writers stream batch by batch (:class:`FactorizedEffectsWriter`); making the file appear
atomically is the caller's business (write to a staging path, rename when complete).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from .factorized import FactorizedEffects, HeadFactors

__all__ = ["ALPHA_DTYPES", "FactorizedEffectsWriter", "open_factorized", "LAYOUT", "DenseLayoutError"]

LAYOUT = "factorized"
#: storage dtypes of ``alpha``
ALPHA_DTYPES = ("float32", "float16", "bfloat16", "float64")
#: neurons per chunk of ``alpha``
NEURON_CHUNK = 64


class DenseLayoutError(ValueError):
    """An effects file written in the earlier dense layout."""


def _encode(alpha: torch.Tensor, alpha_dtype: str) -> np.ndarray:
    if alpha_dtype == "bfloat16":
        return alpha.to(torch.bfloat16).view(torch.int16).cpu().numpy().view(np.uint16)
    return alpha.to(getattr(torch, alpha_dtype)).cpu().numpy()


class _BFloat16Dataset:
    """A ``uint16`` HDF5 dataset of bfloat16 bit patterns, read as float32 (shape, chunks, indexing)."""

    def __init__(self, dataset):
        self.dataset, self.shape, self.chunks = dataset, dataset.shape, getattr(dataset, "chunks", None)

    def __getitem__(self, index):
        raw = np.ascontiguousarray(self.dataset[index]).view(np.int16)
        return torch.from_numpy(raw).view(torch.bfloat16).float().numpy()


class _TokenAlpha:
    """``alpha[samples, :, neurons] = path_weights[samples] @ activations[samples, :, neurons]`` read
    from the token form (array-likes ``[S, P, T]`` and ``[S, T, N]``), in float64."""

    def __init__(self, path_weights, activations):
        S, P, _ = path_weights.shape
        self.path_weights, self.activations = path_weights, activations
        self.shape = (S, P, activations.shape[2])
        c = activations.chunks
        self.chunks = None if c is None else (c[0], P, c[2])

    def __getitem__(self, index):
        samples, paths, neurons = index
        if paths != slice(None):
            raise IndexError("the token form of alpha is read for every path at once")
        w = torch.as_tensor(np.asarray(self.path_weights[samples]), dtype=torch.float64)
        a = torch.as_tensor(np.asarray(self.activations[samples, :, neurons]), dtype=torch.float64)
        return torch.bmm(w, a).numpy()


class _LazyDataset:
    """One dataset of a file, opened on every read (picklable; no file handle held open)."""

    def __init__(self, path: Path, name: str):
        self.path, self.name = Path(path), name
        with h5py.File(self.path, "r") as f:
            self.shape, self.chunks, self.dtype = tuple(f[name].shape), f[name].chunks, f[name].dtype

    def __getitem__(self, index):
        with h5py.File(self.path, "r") as f:
            return f[self.name][index]


class FactorizedEffectsWriter:
    """Streams factorized effects of ``n_samples`` samples into a new HDF5 file at ``path``.

    ``write(fe)`` appends one batch (a :class:`FactorizedEffects` from
    :meth:`oe_assets.lens.SecondOrderLens.factorized_from_capture`); ``close(labels, attrs)`` checks
    that every sample was written and adds labels and attributes.  ``compression``: keyword
    arguments of ``h5py.create_dataset`` (e.g. ``{"compression": "lzf"}``)."""

    def __init__(self, path: str | Path, n_samples: int, factors: HeadFactors, with_const: bool,
                 batch_size: int, alpha_dtype: str = "float32", compression: dict | None = None,
                 factor_dtype: torch.dtype = torch.float32, n_tokens: int | None = None):
        if alpha_dtype not in ALPHA_DTYPES:
            raise ValueError(f"alpha_dtype={alpha_dtype!r}; choose one of {ALPHA_DTYPES}")
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        self.path, self.n_samples, self.alpha_dtype = Path(path), n_samples, alpha_dtype
        self.factors, self.written = factors, 0
        P, N, d = factors.n_paths, factors.n_neurons, factors.d_out
        store = np.uint16 if alpha_dtype == "bfloat16" else np.dtype(alpha_dtype)
        self.file = h5py.File(self.path, "w")
        b = min(n_samples, batch_size)
        #: the token form when it is smaller: every input has n_tokens tokens and n_tokens < paths
        self.token_form = n_tokens is not None and n_tokens < P
        if self.token_form:
            self.path_weights = self.file.create_dataset("path_weights", shape=(n_samples, P, n_tokens), dtype=store,
                                                         chunks=(b, P, n_tokens), **(compression or {}))
            self.activations = self.file.create_dataset(
                "activations", shape=(n_samples, n_tokens, N), dtype=store,
                chunks=(b, n_tokens, min(N, NEURON_CHUNK)), **(compression or {}))
        else:
            self.alpha = self.file.create_dataset("alpha", shape=(n_samples, P, N), dtype=store,
                                                  chunks=(b, P, min(N, NEURON_CHUNK)), **(compression or {}))
        self.scale = self.file.create_dataset("scale", shape=(n_samples,), dtype=np.float64)
        self.const = self.file.create_dataset("const", shape=(n_samples, d), dtype=np.float64) if with_const else None
        for name, value in (("left", factors.left), ("right", factors.right)):
            self.file.create_dataset(name, data=torch.as_tensor(value).to(factor_dtype).cpu().numpy(),
                                     **(compression or {}))

    def write(self, fe: FactorizedEffects) -> None:
        """Append one batch's ``alpha`` ``[batch, paths, neurons]`` (or its token form), ``scale``
        ``[batch]`` and ``const`` ``[batch, d_out]``."""
        b = int(fe.alpha.shape[0])
        s0, s1 = self.written, self.written + b
        if s1 > self.n_samples:
            raise ValueError(f"{self.path}: the batches hold more than n_samples={self.n_samples} samples")
        if (fe.const is None) != (self.const is None):
            raise ValueError(f"{self.path}: a batch {'with' if fe.const is not None else 'without'} const was written "
                             f"to a file {'with' if self.const is not None else 'without'} it")
        if self.token_form:
            if fe.tokens is None:
                raise ValueError(f"{self.path}: the token form needs the batch's path weights and activations")
            weights, activations = fe.tokens
            self.path_weights[s0:s1] = _encode(weights, self.alpha_dtype)
            self.activations[s0:s1] = _encode(activations, self.alpha_dtype)
        else:
            self.alpha[s0:s1] = _encode(torch.as_tensor(fe.alpha), self.alpha_dtype)
        self.scale[s0:s1] = fe.scale.double().cpu().numpy()
        if self.const is not None:
            self.const[s0:s1] = fe.const.double().cpu().numpy()
        self.written = s1

    def close(self, labels: np.ndarray | None = None, attrs: dict[str, Any] | None = None,
              extras: dict[str, np.ndarray] | None = None) -> None:
        """Check that every sample was written, then add ``labels`` ``[samples]``, ``extras`` (named
        arrays that came from the same data pass, e.g. first-order sums) and ``attrs``; close."""
        try:
            if self.written != self.n_samples:
                raise RuntimeError(f"{self.path}: wrote {self.written} of {self.n_samples} samples")
            if labels is not None:
                self.file.create_dataset("labels", data=np.asarray(labels))
            for name, arr in (extras or {}).items():
                self.file.create_dataset(name, data=np.asarray(arr))
            self.file.attrs["layout"] = LAYOUT
            self.file.attrs["alpha_dtype"] = self.alpha_dtype
            self.file.attrs["alpha_form"] = "tokens" if self.token_form else "alpha"
            for k, v in (attrs or {}).items():
                self.file.attrs[k] = v
        finally:
            self.file.close()

    def abort(self) -> None:
        """Close without completing (the caller discards the staging file)."""
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()


def check_layout(path: str | Path) -> None:
    """Raise :class:`DenseLayoutError` (naming the file) unless ``path`` is a factorized effects file."""
    with h5py.File(path, "r") as f:
        layout = f.attrs.get("layout")
        layout = layout.decode() if isinstance(layout, bytes) else layout
        if layout == LAYOUT:
            return
        if "effects" in f:
            raise DenseLayoutError(
                f"{path} holds second-order effects in the earlier dense layout (dataset 'effects' "
                f"{tuple(f['effects'].shape)}); this version reads the factorized layout only. Re-materialize "
                "second_order_effects and val_second_order_effects for this layer (Dagster UI, or "
                "`python -m oe_assets materialize`), then delete the old file")
        raise ValueError(f"{path} is not a factorized effects file (no layout attribute, datasets {sorted(f)})")


def open_factorized(path: str | Path, dtype: torch.dtype = torch.float64, device=None,
                    block_bytes: int | None = None) -> FactorizedEffects:
    """The effects of a file as :class:`FactorizedEffects` ``[samples, neurons, d_out]``, read lazily
    (``alpha`` block by block; ``scale``, ``const`` and the factors at once)."""
    path = Path(path)
    check_layout(path)
    with h5py.File(path, "r") as f:
        alpha_dtype = f.attrs.get("alpha_dtype", "float32")
        token_form = f.attrs.get("alpha_form", "alpha") == "tokens"
        scale = f["scale"][()]
        const = f["const"][()] if "const" in f else None
        factors = HeadFactors(torch.from_numpy(f["left"][()]), torch.from_numpy(f["right"][()]))

    def dataset(name):
        ds = _LazyDataset(path, name)
        return _BFloat16Dataset(ds) if alpha_dtype == "bfloat16" else ds

    alpha: Any = _TokenAlpha(dataset("path_weights"), dataset("activations")) if token_form else dataset("alpha")
    kwargs = {} if block_bytes is None else {"block_bytes": block_bytes}
    return FactorizedEffects(alpha, scale, factors, const, dtype=dtype, device=device, **kwargs)
