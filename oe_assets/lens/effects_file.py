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
- or, for inputs of varying length (text; ``attrs["alpha_form"] == "token_rows"``), the same token
  factors with the padding left out, one row per real token, samples one after the other:
  ``token_path_weights`` ``[rows, paths]``, ``token_activations`` ``[rows, neurons]`` and
  ``token_counts`` ``[samples]`` (int64; sample ``s`` owns the rows ``offsets[s]:offsets[s + 1]``,
  ``offsets = [0, cumsum(token_counts)]``, and ``rows == sum(token_counts)``): ``alpha[s] =
  token_path_weights[rows of s]^T @ token_activations[rows of s]``, formed block by block on reading;
- ``scale`` ``[samples]`` (``coefficient / |r|``), ``const`` ``[samples, d_out]`` (reference
  convention only), ``labels`` ``[samples]``;
- ``left`` ``[paths, d_out, d_head]``, ``right`` ``[paths, d_head, neurons]``: the layer's per-head
  factors, once per file.

Every dataset carries HDF5's ``fletcher32`` checksum (chunked), and the file's attributes a
SHA-256 over all of them (:data:`ATTRS_CHECKSUM`, :func:`write_attrs` / :func:`read_attrs`, checked
whenever a file is opened): a flipped byte is a read error naming the file (:class:`CorruptFileError`),
never a wrong number.  Files written before the checksums read as they are.

Which form a file holds is chosen per layer (:func:`choose_form`): a token form whenever its bytes
per sample at the longest possible input, ``T * (paths + neurons)``, are fewer than ``alpha``'s
``paths * neurons``; ``T`` is the fixed token count (``"tokens"``) or the truncation bound of the
text (``max_tokens``, the profile's ``model.max_length``: ``"token_rows"``).  Shorter inputs only
shrink a token-row file, so the size checked before the data pass is a bound.

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

from ..storage.hdf5 import (
    _UNCLOSED, ATTRS_CHECKSUM, CorruptFileError, H5Dataset, H5Handle, checksummed, discard_h5, is_disk_full,
    read_attrs, write_attrs,
)
from .factorized import FactorizedEffects, HeadFactors
from .topk import TOPK_LAYOUT

__all__ = ["ALPHA_DTYPES", "ALPHA_FORMS", "choose_form", "FactorizedEffectsWriter", "open_factorized", "LAYOUT",
           "DenseLayoutError", "CorruptFileError", "H5Handle", "H5Dataset", "checksummed", "is_disk_full", "discard_h5",
           "ATTRS_CHECKSUM", "write_attrs", "read_attrs"]

LAYOUT = "factorized"
#: storage dtypes of ``alpha``
ALPHA_DTYPES = ("float32", "float16", "bfloat16", "float64")
#: neurons per chunk of ``alpha``
NEURON_CHUNK = 64
#: the stored forms of ``alpha`` (module docstring)
ALPHA_FORMS = ("alpha", "tokens", "token_rows")
#: bytes per chunk of the token-row datasets (their row count grows as batches arrive)
ROW_CHUNK_BYTES = 1 << 20
#: a token-row file's path weights up to this size are read once per reader and kept
PATH_WEIGHTS_CACHE_BYTES = 256 * 2**20
#: bytes of the zero-padded token blocks multiplied at once when ``alpha`` is rebuilt from token rows
PRODUCT_BYTES = 64 * 2**20


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


class _TokenRowsAlpha:
    """``alpha[samples, :, neurons]`` read from the token-row form (module docstring):
    ``path_weights`` ``[rows, P]``, ``activations`` ``[rows, N]`` (array-likes) and ``counts``
    ``[samples]``; each sample's product runs over its own (real) tokens only, in ``dtype`` on
    ``device`` (a torch tensor), a group of samples of at most :data:`PRODUCT_BYTES` at a time."""

    def __init__(self, path_weights, activations, counts: np.ndarray, dtype: torch.dtype = torch.float64,
                 device=None):
        counts = np.asarray(counts, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        rows, P = (int(x) for x in path_weights.shape)
        if tuple(activations.shape[:1]) != (rows,) or self.offsets[-1] != rows or (counts < 1).any():
            raise ValueError(f"token rows do not match the token counts: path weights {tuple(path_weights.shape)}, "
                             f"activations {tuple(activations.shape)}, {counts.size} samples holding "
                             f"{int(self.offsets[-1])} tokens")
        self.path_weights, self.activations, self.counts = path_weights, activations, counts
        self.dtype, self.device = dtype, torch.device(device or "cpu")
        self.shape = (int(counts.size), P, int(activations.shape[1]))
        c = getattr(activations, "chunks", None)
        self.chunks = None if c is None else (1, P, int(c[1]))
        itemsize = np.dtype(getattr(path_weights, "dtype", np.float32)).itemsize
        self._cached = None if rows * P * itemsize > PATH_WEIGHTS_CACHE_BYTES else False

    def _weights(self, r0: int, r1: int) -> np.ndarray:
        if self._cached is False:  # small enough: read once, for every later block
            self._cached = np.asarray(self.path_weights[:])
        if self._cached is not None:
            return self._cached[r0:r1]
        return np.asarray(self.path_weights[r0:r1])

    def _groups(self, s0: int, s1: int, width: int):
        """``(g0, g1)`` runs of samples whose zero-padded ``[samples, tokens, width]`` block takes at
        most :data:`PRODUCT_BYTES` (one sample at least)."""
        item = torch.empty(0, dtype=self.dtype).element_size()
        g0, longest = s0, 0
        for s in range(s0, s1):
            longest = max(longest, int(self.counts[s]))
            if s > g0 and (s + 1 - g0) * longest * width * item > PRODUCT_BYTES:
                yield g0, s
                g0, longest = s, int(self.counts[s])
        if s1 > g0:
            yield g0, s1

    def __getitem__(self, index):
        samples, paths, neurons = index
        if paths != slice(None):
            raise IndexError("the token form of alpha is read for every path at once")
        if not isinstance(samples, slice) or samples.step not in (None, 1):
            raise IndexError("the token-row form of alpha is read for a contiguous run of samples")
        s0, s1, _ = samples.indices(self.shape[0])
        s1 = max(s0, s1)
        P, N = self.shape[1], self.shape[2]
        k = len(range(*neurons.indices(N))) if isinstance(neurons, slice) else len(neurons)
        out = torch.empty(s1 - s0, P, k, dtype=self.dtype, device=self.device)
        for g0, g1 in self._groups(s0, s1, P + k):
            r0, r1 = int(self.offsets[g0]), int(self.offsets[g1])
            counts = torch.from_numpy(self.counts[g0:g1]).to(self.device)
            w = torch.as_tensor(self._weights(r0, r1)).to(self.device, self.dtype)  # [R, P]
            a = torch.as_tensor(np.asarray(self.activations[r0:r1, neurons])).to(self.device, self.dtype)  # [R, k]
            # each row into its sample's zero-padded block; the zeros add nothing to the products
            owner = torch.repeat_interleave(torch.arange(g1 - g0, device=self.device), counts)
            position = torch.arange(r1 - r0, device=self.device) - (torch.cumsum(counts, 0) - counts)[owner]
            T = int(self.counts[g0:g1].max())
            W = torch.zeros(g1 - g0, T, P, dtype=self.dtype, device=self.device)
            A = torch.zeros(g1 - g0, T, k, dtype=self.dtype, device=self.device)
            W[owner, position], A[owner, position] = w, a
            torch.bmm(W.transpose(1, 2), A, out=out[g0 - s0:g1 - s0])
        return out


class FactorizedEffectsWriter:
    """Streams factorized effects of ``n_samples`` samples into a new HDF5 file at ``path``.

    ``write(fe)`` appends one batch (a :class:`FactorizedEffects` from
    :meth:`oe_assets.lens.SecondOrderLens.factorized_from_capture`); ``close(labels, attrs)`` checks
    that every sample was written and adds labels and attributes.  ``compression``: keyword
    arguments of ``h5py.create_dataset`` (e.g. ``{"compression": "lzf"}``).

    ``form`` (:data:`ALPHA_FORMS`, or ``"auto"``: :func:`choose_form`) is how ``alpha`` is stored:
    ``"tokens"`` needs ``n_tokens`` (every input has that many tokens), ``"token_rows"`` takes the
    batches' token factors with their ``token_mask`` and stores the real tokens only;
    ``max_tokens`` bounds the real tokens of one input (a batch with a longer one is refused).  A write or close that
    fails (a full disk: ``OSError`` ENOSPC) closes every handle of the file before raising
    (:meth:`abort`); the caller removes the staging file."""

    def __init__(self, path: str | Path, n_samples: int, factors: HeadFactors, with_const: bool,
                 batch_size: int, alpha_dtype: str = "float32", compression: dict | None = None,
                 factor_dtype: torch.dtype = torch.float32, n_tokens: int | None = None,
                 max_tokens: int | None = None, form: str = "auto"):
        if alpha_dtype not in ALPHA_DTYPES:
            raise ValueError(f"alpha_dtype={alpha_dtype!r}; choose one of {ALPHA_DTYPES}")
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        self.path, self.n_samples, self.alpha_dtype = Path(path), n_samples, alpha_dtype
        self.factors, self.written, self.rows, self.max_tokens = factors, 0, 0, max_tokens
        #: how ``alpha`` is stored (:data:`ALPHA_FORMS`)
        self.form = _resolve_form(form, factors, n_tokens, max_tokens)
        P, N, d = factors.n_paths, factors.n_neurons, factors.d_out
        store = np.uint16 if alpha_dtype == "bfloat16" else np.dtype(alpha_dtype)
        self._forget()
        # no chunk cache: every batch write fills whole chunks, and nothing waits in memory for a
        # flush that a full disk would fail at close
        self.file = h5py.File(self.path, "w", rdcc_nbytes=0)
        try:
            b = min(n_samples, batch_size)
            create = self._create
            if self.form == "token_rows":
                item = np.dtype(store).itemsize
                # a batch fills several chunks: only its last one is written again by the next batch
                batch_rows = max(1, b * (max_tokens or 64) // 4)
                self.token_path_weights = self._create_rows("token_path_weights", P, store, item, batch_rows,
                                                            compression)
                self.token_activations = self._create_rows("token_activations", N, store, item, batch_rows,
                                                           compression, columns_per_chunk=min(N, NEURON_CHUNK))
                self.token_counts = create("token_counts", (n_samples,), np.int64, (b,))
            elif self.form == "tokens":
                self.path_weights = create("path_weights", (n_samples, P, n_tokens), store, (b, P, n_tokens),
                                           compression)
                self.activations = create("activations", (n_samples, n_tokens, N), store,
                                          (b, n_tokens, min(N, NEURON_CHUNK)), compression)
            else:
                self.alpha = create("alpha", (n_samples, P, N), store, (b, P, min(N, NEURON_CHUNK)), compression)
            self.scale = create("scale", (n_samples,), np.float64, (b,))
            self.const = create("const", (n_samples, d), np.float64, (b, d)) if with_const else None
            for name, value in (("left", factors.left), ("right", factors.right)):
                self._create_from(name, torch.as_tensor(value).to(factor_dtype).cpu().numpy(), compression)
        except BaseException:
            self.abort()
            raise

    def _create(self, name, shape, dtype, chunks, compression=None):
        return self.file.create_dataset(name, shape=shape, dtype=dtype, **checksummed(shape, chunks),
                                        **(compression or {}))

    def _create_rows(self, name, columns, dtype, itemsize, max_rows, compression, columns_per_chunk=None):
        """A ``[rows, columns]`` dataset that grows with every batch (at most ``max_rows`` rows and about
        :data:`ROW_CHUNK_BYTES` per chunk, with the ``fletcher32`` checksum)."""
        width = columns_per_chunk or columns
        rows = max(1, min(max_rows, ROW_CHUNK_BYTES // (width * itemsize)))
        return self.file.create_dataset(name, shape=(0, columns), maxshape=(None, columns), dtype=dtype,
                                        chunks=(rows, width), fletcher32=True, **(compression or {}))

    def _create_from(self, name, data: np.ndarray, compression=None):
        return self.file.create_dataset(name, data=data, **checksummed(data.shape), **(compression or {}))

    @staticmethod
    def expected_bytes(n_samples: int, factors: HeadFactors, with_const: bool, alpha_dtype: str = "float32",
                       n_tokens: int | None = None, factor_dtype: torch.dtype = torch.float32,
                       extra_bytes_per_sample: int = 0, max_tokens: int | None = None, form: str = "auto") -> int:
        """The size of the file before compression (at most, for token rows): ``n_samples`` x
        :meth:`bytes_per_sample`, plus the factors and 1 MiB + 1 % for HDF5's metadata and chunk
        checksums.  Compression only makes the file smaller."""
        per_sample = FactorizedEffectsWriter.bytes_per_sample(factors, with_const, alpha_dtype, n_tokens,
                                                              extra_bytes_per_sample, max_tokens, form)
        factor_item = torch.empty(0, dtype=factor_dtype).element_size()
        fixed = (factors.left.numel() + factors.right.numel()) * factor_item
        data = n_samples * per_sample + fixed
        return int(data + data // 100 + (1 << 20))

    @staticmethod
    def bytes_per_sample(factors: HeadFactors, with_const: bool, alpha_dtype: str = "float32",
                         n_tokens: int | None = None, extra_bytes_per_sample: int = 0, max_tokens: int | None = None,
                         form: str = "auto") -> int:
        """The stored bytes of one sample (at most, for token rows): ``alpha`` ``P*N`` or its token form
        ``T*(P + N)`` at ``alpha_dtype`` (``T`` = ``n_tokens``, or for token rows ``max_tokens``, plus
        the int64 token count), ``scale`` and ``const`` ``d_out`` in float64, ``labels`` and
        ``extra_bytes_per_sample`` (e.g. a ``[samples, d_out]`` float64 extra: ``8 * d_out``)."""
        P, N, d = factors.n_paths, factors.n_neurons, factors.d_out
        item = 2 if alpha_dtype == "bfloat16" else np.dtype(alpha_dtype).itemsize
        form = _resolve_form(form, factors, n_tokens, max_tokens)
        if form == "token_rows" and max_tokens is None:
            raise ValueError("the size of a token-row file needs max_tokens (the most tokens of one input)")
        T = n_tokens if form == "tokens" else max_tokens
        alpha = P * N if form == "alpha" else T * (P + N)
        counts = 8 if form == "token_rows" else 0
        return alpha * item + counts + 8 + (8 * d if with_const else 0) + 8 + extra_bytes_per_sample

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
        if self.form != "alpha" and fe.tokens is None:
            raise ValueError(f"{self.path}: the token form needs the batch's path weights and activations")
        try:
            if self.form == "token_rows":
                self._write_rows(s0, s1, *fe.tokens, fe.token_mask)
            elif self.form == "tokens":
                weights, activations = fe.tokens
                self.path_weights[s0:s1] = _encode(weights, self.alpha_dtype)
                self.activations[s0:s1] = _encode(activations, self.alpha_dtype)
            else:
                self.alpha[s0:s1] = _encode(torch.as_tensor(fe.alpha), self.alpha_dtype)
            self.scale[s0:s1] = fe.scale.double().cpu().numpy()
            if self.const is not None:
                self.const[s0:s1] = fe.const.double().cpu().numpy()
        except OSError:
            self.abort()
            raise
        self.written = s1

    def _write_rows(self, s0: int, s1: int, weights: torch.Tensor, activations: torch.Tensor,
                    mask: torch.Tensor | None) -> None:
        """Append the real tokens of a batch (``weights`` ``[b, P, T]``, ``activations`` ``[b, T, N]``,
        ``mask`` ``[b, T]``, None: every token real) as rows, and their counts."""
        b, P, T = weights.shape
        mask = torch.ones(b, T, dtype=torch.bool) if mask is None else torch.as_tensor(mask).bool().cpu()
        if tuple(mask.shape) != (b, T) or tuple(activations.shape[:2]) != (b, T):
            raise ValueError(f"{self.path}: token mask {tuple(mask.shape)}, path weights {tuple(weights.shape)} and "
                             f"activations {tuple(activations.shape)} do not match")
        counts = mask.sum(1)
        if (counts < 1).any():
            raise ValueError(f"{self.path}: a sample of the batch has no real token")
        if self.max_tokens is not None and int(counts.max()) > self.max_tokens:
            raise ValueError(f"{self.path}: a sample has {int(counts.max())} tokens, more than max_tokens="
                             f"{self.max_tokens} that the file's form and size were chosen for")
        keep = mask.to(weights.device)
        w_rows = weights.transpose(1, 2)[keep]  # [rows, P], sample by sample, tokens in order
        a_rows = activations[keep]  # [rows, N]
        r0, r1 = self.rows, self.rows + int(counts.sum())
        for ds, rows in ((self.token_path_weights, w_rows), (self.token_activations, a_rows)):
            ds.resize(r1, axis=0)
            ds[r0:r1] = _encode(rows, self.alpha_dtype)
        self.token_counts[s0:s1] = counts.numpy()
        self.rows = r1

    def close(self, labels: np.ndarray | None = None, attrs: dict[str, Any] | None = None,
              extras: dict[str, np.ndarray] | None = None) -> None:
        """Check that every sample was written, then add ``labels`` ``[samples]``, ``extras`` (named
        arrays that came from the same data pass, e.g. first-order sums) and ``attrs``; close."""
        try:
            if self.written != self.n_samples:
                raise RuntimeError(f"{self.path}: wrote {self.written} of {self.n_samples} samples")
            if labels is not None:
                self._create_from("labels", np.asarray(labels))
            for name, arr in (extras or {}).items():
                self._create_from(name, np.asarray(arr))
            write_attrs(self.file, {"layout": LAYOUT, "alpha_dtype": self.alpha_dtype,
                                    "alpha_form": self.form, **(attrs or {})})
            self.file.flush()  # a full disk fails here, while the file can still be closed cleanly
            self.file.close()
        except BaseException:
            self.abort()
            raise
        self.file = None
        self._forget()

    def abort(self) -> None:
        """Close without completing, deterministically (:func:`discard_h5`: the staging file is
        truncated, every dataset and the file closed, no error raised); the caller removes the file.
        Safe to call more than once."""
        file, self.file = self.file, None
        # the datasets close with the file, before their objects go
        if file is not None and not discard_h5(file, self.path):
            _UNCLOSED.append((file, self.alpha, self.path_weights, self.activations, self.scale, self.const,
                              self.token_path_weights, self.token_activations, self.token_counts))
        self._forget()

    def _forget(self) -> None:
        """Drop the dataset objects, so no h5py object of the closed file is used or collected later."""
        self.alpha = self.path_weights = self.activations = self.scale = self.const = None
        self.token_path_weights = self.token_activations = self.token_counts = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()


def choose_form(factors: HeadFactors, n_tokens: int | None = None, max_tokens: int | None = None) -> str:
    """How a layer's ``alpha`` is stored (:data:`ALPHA_FORMS`), the smaller per sample: with ``T``
    tokens the token form takes ``T * (paths + neurons)`` numbers against ``alpha``'s ``paths *
    neurons``.  ``n_tokens``: every input has that many tokens (``"tokens"``); else ``max_tokens``:
    the most tokens of one input (the text's truncation bound; ``"token_rows"``, which stores each
    input's real tokens only, so the bound is its largest sample).  Neither: ``"alpha"``."""
    P, N = factors.n_paths, factors.n_neurons
    for T, form in ((n_tokens, "tokens"), (max_tokens, "token_rows")):
        if T is not None:
            if int(T) < 1:
                raise ValueError(f"{'n_tokens' if form == 'tokens' else 'max_tokens'}={T!r} must be >= 1")
            return form if int(T) * (P + N) < P * N else "alpha"
    return "alpha"


def _resolve_form(form: str, factors: HeadFactors, n_tokens: int | None, max_tokens: int | None) -> str:
    if form == "auto":
        return choose_form(factors, n_tokens, max_tokens)
    if form not in ALPHA_FORMS:
        raise ValueError(f"form={form!r}; choose 'auto' or one of {ALPHA_FORMS}")
    if form == "tokens" and n_tokens is None:
        raise ValueError("form='tokens' needs n_tokens (every input's token count); text of varying length "
                         "takes form='token_rows'")
    return form


def check_layout(path: str | Path | H5Handle) -> None:
    """Raise :class:`DenseLayoutError` (naming the file) unless ``path`` is a factorized effects file."""
    if isinstance(path, H5Handle):
        return _check_layout(path)
    with H5Handle(path) as handle:
        _check_layout(handle)


def _check_layout(handle: H5Handle) -> None:
    f, path = handle.file, handle.path
    if handle.attrs.get("layout") == LAYOUT:
        return
    if handle.attrs.get("layout") == TOPK_LAYOUT:
        raise ValueError(
            f"{path} is a top-k effects file (storage.effects_mode: topk): it holds every sample's norms and each "
            f"neuron's top {handle.attrs.get('top_k')} samples, not every sample's effects; open it with "
            "oe_assets.lens.topk.open_topk, or set storage.effects_mode: stored and re-materialize the effects")
    if "effects" in f:
        raise DenseLayoutError(
            f"{path} holds second-order effects in the earlier dense layout (dataset 'effects' "
            f"{tuple(f['effects'].shape)}); this version reads the factorized layout only. Re-materialize "
            "second_order_effects and val_second_order_effects for this layer (Dagster UI, or "
            "`python -m oe_assets materialize`), then delete the old file")
    raise ValueError(f"{path} is not a factorized effects file (no layout attribute, datasets {sorted(f)})")


def open_factorized(path: str | Path | H5Handle, dtype: torch.dtype = torch.float64, device=None,
                    block_bytes: int | None = None, what: str | None = None) -> FactorizedEffects:
    """The effects of a file as :class:`FactorizedEffects` ``[samples, neurons, d_out]``, read lazily
    (``alpha`` block by block; ``scale``, ``const`` and the factors at once), all through one open
    handle (:class:`H5Handle`; pass one to share it, e.g. an :class:`~oe_assets.resources.store.H5Group`'s,
    or close it with a ``with`` block): a concurrent replacement of the file cannot mix two files.
    ``what`` names the asset in errors."""
    handle = path if isinstance(path, H5Handle) else H5Handle(path, what)
    check_layout(handle)
    f = handle.file
    alpha_dtype = handle.attrs.get("alpha_dtype", "float32")
    form = handle.attrs.get("alpha_form", "alpha")
    if form not in ALPHA_FORMS:
        raise ValueError(f"{handle.path}: alpha_form={form!r} is not a form this version reads {ALPHA_FORMS}")
    scale = handle.read("scale")
    const = handle.read("const") if "const" in f else None
    factors = HeadFactors(torch.from_numpy(handle.read("left")), torch.from_numpy(handle.read("right")))

    def dataset(name):
        ds = H5Dataset(handle, name)
        return _BFloat16Dataset(ds) if alpha_dtype == "bfloat16" else ds

    alpha: Any
    if form == "token_rows":
        alpha = _TokenRowsAlpha(dataset("token_path_weights"), dataset("token_activations"), handle.read("token_counts"),
                                dtype=dtype, device=device)
    elif form == "tokens":
        alpha = _TokenAlpha(dataset("path_weights"), dataset("activations"))
    else:
        alpha = dataset("alpha")
    kwargs = {} if block_bytes is None else {"block_bytes": block_bytes}
    return FactorizedEffects(alpha, scale, factors, const, dtype=dtype, device=device, **kwargs)
