"""Second-order effects kept factorized: per-sample path weights times per-layer head directions.

The fast path (:mod:`.second_order`) writes every effect as

    effects[s, n, :] = scale[s] * ( sum_p alpha[s, p, n] M[n, p, :] + const[s, :] )      [samples, neurons, d_out]
    M[n, p, :]       = left[p] @ right[p, :, n]                                         p = (later block j, head h)

with ``alpha`` ``[samples, paths, neurons]`` (``paths = J*H``), ``scale`` ``[samples]``, ``const``
``[samples, d_out]`` (the reference convention's bias and mean shares; absent in the direct
convention) and the per-head factors ``left[p] = P^T L_out W_O[h]`` ``[paths, d_out, d_head]`` and
``right[p] = W_V[h] L_in W_out`` ``[paths, d_head, neurons]``.  Storing ``alpha`` instead of the
dense product is ``d_out / paths`` times smaller (about 3.9x at ViT-B/32 layer 0, 21x at layer 9),
and ``M`` itself (792 MiB at ViT-B/32 layer 0, about 32 GB at a Llama-3.2-1B shape) is only ever
formed one neuron block at a time.

:class:`FactorizedEffects` owns this form.  Like TransformerLens's ``FactoredMatrix`` it keeps the
product unmaterialized: ``effects[:, n0:n1, :]`` gives exactly the dense values of a neuron block,
and norms, masked sums and projected sums over neurons are computed from the factors.
:class:`DenseEffects` is the same interface over a dense ``[samples, neurons, d_out]`` array: the
yardstick the factorized results are tested against.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

__all__ = ["HeadFactors", "FactorizedEffects", "DenseEffects", "as_effects"]

#: default working-set bound of one dense block (samples x neurons x d_out) in the compute dtype
BLOCK_BYTES = 128 * 2**20


def _tensor(x, dtype: torch.dtype, device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(x), device=device).to(dtype)


def _positions(index, size: int) -> np.ndarray:
    """An int / slice / sequence / bool mask over an axis of ``size`` -> positions ``[k]``."""
    if isinstance(index, slice):
        return np.arange(size)[index]
    arr = np.asarray(index)
    if arr.dtype == bool:
        if arr.shape != (size,):
            raise IndexError(f"boolean index has shape {arr.shape}, the axis has {size}")
        return np.flatnonzero(arr)
    arr = arr.astype(np.int64).reshape(-1)
    if arr.size and (arr.min() < -size or arr.max() >= size):
        raise IndexError(f"index out of range for an axis of {size}")
    return np.where(arr < 0, arr + size, arr)


def _as_slice(pos: np.ndarray) -> slice | None:
    """A contiguous increasing run of positions as a slice (one read), else None."""
    if pos.size and np.all(np.diff(pos) == 1):
        return slice(int(pos[0]), int(pos[-1]) + 1)
    return None


def _read_alpha(alpha, samples: slice, neurons: np.ndarray) -> np.ndarray | torch.Tensor:
    """``alpha[samples, :, neurons]`` from an array, tensor or HDF5 dataset (h5py takes one
    increasing list per selection, so a neuron list is read sorted and unique, then reordered)."""
    run = _as_slice(neurons)
    if run is not None:
        return alpha[samples, :, run]
    if isinstance(alpha, torch.Tensor):
        return alpha[samples][:, :, torch.as_tensor(neurons, device=alpha.device)]
    if isinstance(alpha, np.ndarray):
        return alpha[samples][:, :, neurons]
    uniq, inverse = np.unique(neurons, return_inverse=True)
    block = alpha[samples, :, uniq.tolist()]
    if isinstance(block, torch.Tensor):  # a reader that forms alpha itself (token rows)
        return block[:, :, torch.as_tensor(inverse, device=block.device)]
    return np.asarray(block)[:, :, inverse]


class HeadFactors:
    """Per-head factors of one MLP layer's neuron directions.

    ``left`` ``[paths, d_out, d_head]`` (``P^T L_out W_O[h]``), ``right`` ``[paths, d_head, neurons]``
    (``W_V[h] L_in W_out``): ``M[n, p, :] = left[p] @ right[p, :, n]`` ``[neurons, paths, d_out]``.
    Grouped-query models repeat a key/value head's ``W_V`` for every query head that reads it.

    ``cache_bytes``: dense ``M`` is kept after its first use when it takes at most this many bytes
    (the lens's per-batch dense output reuses it); otherwise every block is formed on the fly.

    A model split over several devices gives one part per later block (:meth:`from_blocks`), each
    kept on its block's device: products are computed there and only their results move to the
    caller's device.  ``left`` / ``right`` of such factors are whole copies on the CPU (for storage).
    """

    def __init__(self, left, right, cache_bytes: int = 0):
        self._check(left, right)
        #: ``[(left, right)]`` per group of paths, in path order: one part, or one per later block
        #: when the blocks sit on different devices
        self.parts = [(left, right)]
        self.cache_bytes = cache_bytes
        self._dense: dict[tuple, torch.Tensor] = {}

    @staticmethod
    def _check(left, right) -> None:
        if left.shape[0] != right.shape[0] or left.shape[2] != right.shape[1]:
            raise ValueError(f"left {tuple(left.shape)} and right {tuple(right.shape)} are not per-head factors "
                             "[paths, d_out, d_head] and [paths, d_head, neurons]")

    @classmethod
    def from_blocks(cls, lefts: list, rights: list, cache_bytes: int = 0) -> "HeadFactors":
        """Factors from per-block parts ``lefts[j]`` ``[heads, d_out, d_head]``, ``rights[j]``
        ``[heads, d_head, neurons]``: concatenated when they share a device, else kept where they are."""
        if len({str(t.device) for t in lefts} | {str(t.device) for t in rights}) <= 1:
            return cls(torch.cat(lefts), torch.cat(rights), cache_bytes)
        out = cls(lefts[0], rights[0], cache_bytes)
        for left, right in zip(lefts[1:], rights[1:]):
            cls._check(left, right)
            if left.shape[1:] != lefts[0].shape[1:] or right.shape[1:] != rights[0].shape[1:]:
                raise ValueError("per-block factors differ in d_out, d_head or neurons")
            out.parts.append((left, right))
        return out

    @property
    def left(self):
        """``[paths, d_out, d_head]`` (one part as it is; several parts: a CPU copy)."""
        return self.parts[0][0] if len(self.parts) == 1 else torch.cat([p[0].cpu() for p in self.parts])

    @property
    def right(self):
        """``[paths, d_head, neurons]`` (one part as it is; several parts: a CPU copy)."""
        return self.parts[0][1] if len(self.parts) == 1 else torch.cat([p[1].cpu() for p in self.parts])

    @property
    def devices(self) -> list[torch.device]:
        """The device of every path's factors ``[paths]`` (where a split model's block put them)."""
        return [torch.device(getattr(left, "device", "cpu")) for left, _ in self.parts for _ in range(left.shape[0])]

    n_paths = property(lambda self: sum(int(left.shape[0]) for left, _ in self.parts))
    d_out = property(lambda self: int(self.parts[0][0].shape[1]))
    d_head = property(lambda self: int(self.parts[0][0].shape[2]))
    n_neurons = property(lambda self: int(self.parts[0][1].shape[2]))

    def _places(self, device):
        """``(path slice, left, right, compute device)`` per part: one part computes on ``device``,
        several parts each on their own device."""
        p0 = 0
        for left, right in self.parts:
            p1 = p0 + int(left.shape[0])
            yield slice(p0, p1), left, right, (device if len(self.parts) == 1 else left.device)
            p0 = p1

    def nbytes(self, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of the dense ``M`` in ``dtype``."""
        return self.n_neurons * self.n_paths * self.d_out * torch.empty(0, dtype=dtype).element_size()

    def block(self, neurons, dtype: torch.dtype, device=None) -> torch.Tensor:
        """``M[neurons]`` ``[len(neurons), paths, d_out]`` (``neurons``: slice or positions)."""
        key = (dtype, str(device))
        if key in self._dense:
            return self._dense[key][neurons if isinstance(neurons, slice) else torch.as_tensor(neurons)]
        if self.nbytes(dtype) <= self.cache_bytes:
            self._dense[key] = self._form(slice(None), dtype, device)
            return self.block(neurons, dtype, device)
        return self._form(neurons, dtype, device)

    def _form(self, neurons, dtype, device) -> torch.Tensor:
        out = []
        for _, left_part, right_part, at in self._places(device):
            left = _tensor(left_part, dtype, at)
            if isinstance(neurons, slice):
                right = right_part[:, :, neurons]
            else:
                pos = np.asarray(neurons)
                run = _as_slice(pos)
                right = right_part[:, :, run] if run is not None else _tensor(right_part, dtype, at)[:, :, pos]
            out.append(torch.einsum("pdk,pkn->npd", left, _tensor(right, dtype, at)).to(device))
        return out[0] if len(out) == 1 else torch.cat(out, dim=1)

    def contract(self, weights: torch.Tensor) -> torch.Tensor:
        """``sum_{p, n} weights[s, p, n] M[n, p, :]`` ``[samples, d_out]`` for ``weights``
        ``[samples, paths, neurons]``, through the factors (never ``M``): ``sum_p left[p] (right[p] w[s, p])``."""
        total = None
        for paths, left_part, right_part, at in self._places(weights.device):
            right = _tensor(right_part, weights.dtype, at)
            left = _tensor(left_part, weights.dtype, at)
            t = torch.einsum("spn,pkn->spk", weights[:, paths].to(at), right)
            part = torch.einsum("spk,pdk->sd", t, left).to(weights.device)
            total = part if total is None else total + part
        return total

    def along(self, directions: torch.Tensor) -> torch.Tensor:
        """``M[n, p, :] . u[n]`` ``[neurons, paths]`` for one direction ``u`` ``[neurons, d_out]``
        per neuron: ``right[p, :, n] . (left[p]^T u[n])``."""
        out = []
        for _, left_part, right_part, at in self._places(directions.device):
            left = _tensor(left_part, directions.dtype, at)
            right = _tensor(right_part, directions.dtype, at)
            lu = torch.einsum("pdk,nd->pkn", left, directions.to(at))
            out.append(torch.einsum("pkn,pkn->np", lu, right).to(directions.device))
        return out[0] if len(out) == 1 else torch.cat(out, dim=1)


class FactorizedEffects:
    """Effects ``[samples, neurons, d_out]`` held as ``scale * (alpha . M + const)`` (module docstring).

    ``alpha`` ``[samples, paths, neurons]``, ``scale`` ``[samples]`` and ``const`` ``[samples, d_out]``
    (or None) may be torch tensors, numpy arrays or lazily read HDF5 datasets; ``factors`` is a
    :class:`HeadFactors`.  Results are computed in ``dtype`` (float64 by default: the analysis
    stages' precision) on ``device``, ``block_bytes`` of dense values at a time at most.
    """

    def __init__(self, alpha, scale, factors: HeadFactors, const=None, dtype: torch.dtype = torch.float64,
                 device=None, block_bytes: int = BLOCK_BYTES, tokens: tuple | None = None,
                 token_mask: torch.Tensor | None = None):
        S, P, N = (int(s) for s in alpha.shape)
        if (P, N) != (factors.n_paths, factors.n_neurons):
            raise ValueError(f"alpha has shape {tuple(alpha.shape)} but the factors have {factors.n_paths} paths "
                             f"and {factors.n_neurons} neurons")
        if tuple(scale.shape) != (S,):
            raise ValueError(f"scale has shape {tuple(scale.shape)}, expected ({S},)")
        if const is not None and tuple(const.shape) != (S, factors.d_out):
            raise ValueError(f"const has shape {tuple(const.shape)}, expected ({S}, {factors.d_out})")
        self.alpha, self.factors = alpha, factors
        #: optional token form of ``alpha``: ``(path_weights [samples, paths, tokens], activations
        #: [samples, tokens, neurons])`` with ``alpha = path_weights @ activations`` (smaller to store
        #: when there are fewer tokens than paths)
        self.tokens = tokens
        #: ``[samples, tokens]`` bool: the real tokens of ``tokens`` (padding is False), or None when
        #: every token is real; the token-row file form stores the real tokens only
        self.token_mask = token_mask
        self.dtype, self.device, self.block_bytes = dtype, torch.device(device or "cpu"), block_bytes
        self.scale = _tensor(scale, dtype, self.device)
        self.const = None if const is None else _tensor(const, dtype, self.device)

    # ---- sizes ----------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """``(samples, neurons, d_out)``."""
        return (int(self.alpha.shape[0]), self.factors.n_neurons, self.factors.d_out)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def n_paths(self) -> int:
        return self.factors.n_paths

    @property
    def chunks(self) -> tuple[int, int, int] | None:
        """Chunk sizes along the effects' ``(samples, neurons, d_out)`` axes, from the stored ``alpha``'s
        ``[samples, paths, neurons]`` chunks (``d_out`` whole), for block readers such as
        :func:`oe_assets.lens.neuron_pca` (whole chunks per block: each is read once)."""
        c = getattr(self.alpha, "chunks", None)
        return None if not c else (int(c[0]), int(c[2]), self.shape[2])

    def _sample_step(self, neurons: int) -> int:
        item = torch.empty(0, dtype=self.dtype).element_size()
        per_sample = max(neurons * (self.shape[2] + self.n_paths), self.n_paths * self.shape[1]) * item
        step = max(1, self.block_bytes // max(1, per_sample))
        c = self.chunks
        return step if c is None else max(c[0], step // c[0] * c[0])

    def _neuron_step(self, samples: int) -> int:
        """Neurons per block: a block holds their ``alpha`` for ``samples`` samples, their directions
        ``M`` ``[k, P, d_out]`` and Gram matrices ``[k, P, P]``."""
        item = torch.empty(0, dtype=self.dtype).element_size()
        P = self.n_paths
        step = max(1, self.block_bytes // max(1, (samples * P + P * self.shape[2] + P * P) * item))
        c = self.chunks
        return step if c is None else max(c[1], step // c[1] * c[1])

    def _alpha(self, samples: slice, neurons: np.ndarray) -> torch.Tensor:
        return _tensor(_read_alpha(self.alpha, samples, neurons), self.dtype, self.device)

    # ---- dense blocks ---------------------------------------------------------------------
    def dense_block(self, samples=slice(None), neurons=slice(None)) -> torch.Tensor:
        """Exactly the dense effects ``[len(samples), len(neurons), d_out]`` of a block (torch,
        ``dtype``)."""
        S, N, _ = self.shape
        s_pos, n_pos = _positions(samples, S), _positions(neurons, N)
        run = _as_slice(s_pos)
        M = self.factors.block(_as_slice(n_pos) or n_pos, self.dtype, self.device)  # [k, P, d]
        if run is None:  # arbitrary sample positions: read them one at a time
            return torch.cat([self.dense_block(slice(int(s), int(s) + 1), n_pos) for s in s_pos]) \
                if s_pos.size else torch.empty(0, n_pos.size, self.shape[2], dtype=self.dtype, device=self.device)
        a = self._alpha(run, n_pos)  # [s, P, k]
        # one GEMM per neuron over contiguous operands, written straight into a contiguous [s, k, d]
        out = torch.empty(a.shape[0], n_pos.size, self.shape[2], dtype=self.dtype, device=self.device)
        torch.bmm(a.permute(2, 0, 1).contiguous(), M, out=out.permute(1, 0, 2))
        if self.const is not None:
            out += self.const[run, None, :]
        return out.mul_(self.scale[run, None, None])

    def __getitem__(self, index) -> np.ndarray:
        """``effects[samples, neurons, dims]`` as a numpy array, like indexing the dense tensor
        (a notebook's ``effects[:, n0:n1, :]`` keeps working)."""
        index = index if isinstance(index, tuple) else (index,)
        if len(index) > 3:
            raise IndexError(f"effects are 3-dimensional, got {len(index)} indices")
        samples, neurons, dims = (tuple(index) + (slice(None),) * 3)[:3]
        squeeze = [i for i, x in enumerate((samples, neurons)) if isinstance(x, (int, np.integer))]
        block = self.dense_block(samples, neurons)[:, :, dims].cpu().numpy()
        return block.squeeze(axis=tuple(squeeze)) if squeeze else block

    def __array__(self, dtype=None, copy=None):
        out = self[:, :, :]
        return out if dtype is None else out.astype(dtype)

    def dense(self) -> torch.Tensor:
        """The whole dense tensor ``[samples, neurons, d_out]`` (small inputs only: notebooks, tests,
        the lens's per-batch output)."""
        return self.dense_block()

    # ---- statistics over neurons ----------------------------------------------------------
    def mean(self) -> np.ndarray:
        """``mean_s effects[s, n]`` ``[neurons, d_out]``: ``mean_s (scale alpha)[s, :, n] . M[n]`` plus
        ``mean_s scale[s] const[s]``."""
        S, N, d = self.shape
        weighted = torch.zeros(self.n_paths, N, dtype=self.dtype, device=self.device)
        for s0 in range(0, S, self._sample_step(1)):
            run = slice(s0, min(S, s0 + self._sample_step(1)))
            weighted += torch.einsum("s,spn->pn", self.scale[run], self._alpha(run, np.arange(N)))
        weighted /= S
        out = torch.empty(N, d, dtype=self.dtype, device=self.device)
        step = self._neuron_step(1)
        for n0 in range(0, N, step):
            n1 = min(N, n0 + step)
            out[n0:n1] = torch.einsum("pn,npd->nd", weighted[:, n0:n1],
                                      self.factors.block(slice(n0, n1), self.dtype, self.device))
        if self.const is not None:
            out += (self.scale[:, None] * self.const).mean(0)
        return out.cpu().numpy()

    def norms(self, centre=None, neurons=slice(None),
              progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """``|effects[s, n] - centre[n]|`` ``[samples, len(neurons)]`` (``centre`` ``[len(neurons),
        d_out]``: one row per selected neuron, or None), one neuron block at a time, without forming
        it (see :meth:`_block_norms`)."""
        S, N, _ = self.shape
        n_pos = _positions(neurons, N)
        c = None if centre is None else _tensor(centre, self.dtype, self.device)
        out = np.empty((S, n_pos.size))
        shifted = self._shifted_const()
        for i0, sel, a in self._neuron_blocks(n_pos):
            block_c = None if c is None else c[i0:i0 + sel.size]
            out[:, i0:i0 + sel.size] = self._block_norms(a, sel, block_c, shifted)[0].T.cpu().numpy()
            if progress is not None:
                progress(i0 + sel.size, n_pos.size)
        return out

    def top_rows(self, centre, top_k: int, neurons=slice(None)):
        """For every selected neuron ``n``, its ``top_k`` samples by ``|effects[s, n] - centre[n]|``
        (``centre`` ``[len(neurons), d_out]``), in neuron blocks; yields ``(first, count, norms, rows)``
        per block (the PCA's input): ``norms`` ``[count, top_k]`` (ascending), ``rows``
        ``[count, top_k, d_out]`` (those centred effects)."""
        for i0, count, _, norms, rows in self.top_samples(centre, top_k, neurons):
            yield i0, count, norms, rows

    def top_samples(self, centre, top_k: int, neurons=slice(None)):
        """:meth:`top_rows` with the samples: yields ``(first, count, samples, norms, rows)``,
        ``samples`` ``[count, top_k]`` (int64 positions in this object, in the order of ``norms``;
        equal norms are ordered by position, so the larger positions are kept)."""
        S, N, _ = self.shape
        if not 1 <= top_k <= S:
            raise ValueError(f"top_k={top_k!r} must be in 1..{S} (the number of samples)")
        n_pos = _positions(neurons, N)
        c = _tensor(centre, self.dtype, self.device)
        shifted = self._shifted_const()
        for i0, sel, a in self._neuron_blocks(n_pos):
            block_c = c[i0:i0 + sel.size]
            norms, y, M = self._block_norms(a, sel, block_c, shifted)  # [k, S]
            top = torch.sort(norms, dim=1, stable=True).indices[:, S - top_k:]  # ascending norms
            y_top = torch.take_along_dim(y, top[:, :, None], dim=1)  # [k, top_k, P]
            rows = torch.bmm(y_top, M)  # [k, top_k, d]
            if self.const is not None:
                rows += (self.scale[:, None] * self.const)[top]
            rows -= block_c[:, None, :]
            yield i0, sel.size, top, torch.take_along_dim(norms, top, dim=1), rows

    def _neuron_blocks(self, n_pos: np.ndarray):
        """``(first, positions, alpha [S, P, k])`` over neuron blocks: each block's ``alpha`` is read
        once for every sample (whole chunks)."""
        step = self._neuron_step(self.shape[0])
        for i0 in range(0, n_pos.size, step):
            sel = n_pos[i0:i0 + step]
            yield i0, sel, self._alpha(slice(None), sel)

    def _shifted_const(self):
        """``(w [S, d_out], left^T w [S, P, d_head])`` for ``w[s] = scale[s] const[s]``, or None."""
        if self.const is None:
            return None
        w = self.scale[:, None] * self.const
        return w, torch.einsum("sd,pdk->spk", w, _tensor(self.factors.left, self.dtype, self.device))

    def _block_norms(self, a: torch.Tensor, sel: np.ndarray, c: torch.Tensor | None, shifted):
        """Norms ``[k, S]`` of a neuron block's centred effects from its Gram matrices, never the block.

        With ``y[s, p] = scale[s] alpha[s, p, n]``, ``w[s] = scale[s] const[s]``, ``G = M[n] M[n]^T``
        ``[P, P]``: ``|y M[n] + w - c|^2 = y^T G y + 2 y . (M[n] w - M[n] c) + |w - c|^2``, where
        ``M[n] w = right[:, :, n] . (left^T w)`` uses the factors.  That is ``P^2 + P d_head`` operations
        per (sample, neuron) against ``P d_out`` for the dense block (5.8x fewer at ViT-B/32 layer 9).
        Also returns ``y`` ``[k, S, P]`` and ``M[sel]`` ``[k, P, d]`` for the caller's top rows."""
        M = self.factors.block(_as_slice(sel) or sel, self.dtype, self.device)  # [k, P, d]
        y = (a * self.scale[:, None, None]).permute(2, 0, 1).contiguous()  # [k, S, P]
        sq = (torch.bmm(y, torch.bmm(M, M.transpose(1, 2))) * y).sum(-1)  # y^T G y: [k, S]
        if shifted is not None:
            w, lw = shifted
            right = _tensor(self.factors.right[:, :, _as_slice(sel) or sel], self.dtype, self.device)
            Mw = torch.einsum("spk,pkn->nsp", lw, right)  # M[n] w[s]: [k, S, P]
            sq += 2 * (y * Mw).sum(-1) + (w * w).sum(-1)[None, :]
            if c is not None:
                sq -= 2 * (c @ w.T)  # 2 w . c: [k, S]
        if c is not None:
            Mc = torch.einsum("npd,nd->np", M, c)  # [k, P]
            sq += -2 * (y * Mc[:, None, :]).sum(-1) + (c * c).sum(-1)[:, None]
        # the expansion can round a zero norm to a tiny negative
        return torch.sqrt(torch.clamp(sq, min=0)), y, M

    def masked_sum(self, mask=None, centre=None) -> np.ndarray:
        """``sum_n mask[s, n] (effects[s, n] - centre[n])`` ``[samples, d_out]`` (``mask`` ``[samples,
        neurons]``, None: every neuron; ``centre`` ``[neurons, d_out]`` or None).  Through the factors,
        never a dense block:
        ``scale[s] (sum_p left[p] sum_n right[p, :, n] mask alpha[s, p, n] + const[s] sum_n mask)``."""
        return self.sums(masks=[mask], centre=centre)[0][0]

    def projected_sum(self, directions, centre=None) -> np.ndarray:
        """``sum_n ((effects[s, n] - centre[n]) . u[n]) u[n]`` ``[samples, d_out]`` for one direction
        ``u = directions`` ``[neurons, d_out]`` per neuron (``centre`` ``[neurons, d_out]`` or None),
        from ``M[n] . u[n]`` ``[neurons, paths]`` (never a dense block)."""
        return self.sums(directions=[directions], centre=centre)[1][0]

    def sums(self, masks=(), directions=(), centre=None) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Every :meth:`masked_sum` of ``masks`` (each ``[samples, neurons]`` or None) and every
        :meth:`projected_sum` of ``directions`` (each ``[neurons, d_out]``), all about the same
        ``centre``, from one read of ``alpha``: ``([masked ...], [projected ...])``, each ``[samples,
        d_out]``.  Reading and widening ``alpha`` is most of the cost of each sum, so the ablations
        ask for theirs together (``bench_published_setting.py``)."""
        S, N, d = self.shape
        c = None if centre is None else _tensor(centre, self.dtype, self.device)
        Us = [_tensor(u, self.dtype, self.device) for u in directions]
        for U in Us:
            if tuple(U.shape) != (N, d):
                raise ValueError(f"directions have shape {tuple(U.shape)}, expected ({N}, {d})")
        Mu = torch.stack([self.factors.along(U) for U in Us]) if Us else None  # [J, N, P]
        shifts = None if c is None or not Us else torch.stack([(c * U).sum(1) for U in Us])  # [J, N]
        masked = [np.empty((S, d)) for _ in masks]
        projected = [np.empty((S, d)) for _ in Us]
        step = self._sample_step(0)
        for s0 in range(0, S, step):
            run = slice(s0, min(S, s0 + step))
            a = self._alpha(run, np.arange(N))  # [s, P, N]
            for out, mask in zip(masked, masks):
                if mask is None:
                    total, count = self.factors.contract(a), torch.full((a.shape[0], 1), float(N), dtype=self.dtype,
                                                                        device=self.device)
                else:
                    m = _tensor(np.asarray(mask[run]), self.dtype, self.device)
                    total, count = self.factors.contract(a * m[:, None, :]), m.sum(1, keepdim=True)
                if self.const is not None:
                    total += count * self.const[run]
                total *= self.scale[run, None]
                if c is not None:
                    total -= c.sum(0) if mask is None else m @ c
                out[run] = total.cpu().numpy()
            if Us:
                coef = torch.einsum("spn,jnp->jsn", a, Mu)  # [J, s, N]
                if self.const is not None:
                    coef += torch.stack([self.const[run] @ U.T for U in Us])
                coef *= self.scale[None, run, None]
                if shifts is not None:
                    coef -= shifts[:, None, :]
                for out, U, cf in zip(projected, Us, coef):
                    out[run] = (cf @ U).cpu().numpy()
        return masked, projected

    def __repr__(self):
        return (f"FactorizedEffects(shape={self.shape}, paths={self.n_paths}, const={self.const is not None}, "
                f"dtype={self.dtype})")


class DenseEffects:
    """The :class:`FactorizedEffects` interface over a dense ``[samples, neurons, d_out]`` array
    (numpy, torch or HDF5), computed literally on sample blocks in float64: the slow yardstick."""

    def __init__(self, effects, block_bytes: int = BLOCK_BYTES):
        shape = tuple(int(s) for s in getattr(effects, "shape", ()))
        if len(shape) != 3:
            raise ValueError(f"effects must be [samples, neurons, d_out], got shape {shape}")
        self.effects, self.shape, self.block_bytes = effects, shape, block_bytes

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        block = self.effects[index]
        return block.detach().cpu().numpy() if isinstance(block, torch.Tensor) else np.asarray(block)

    def _blocks(self):
        step = max(1, self.block_bytes // max(1, 8 * self.shape[1] * self.shape[2]))
        for s0 in range(0, self.shape[0], step):
            s1 = min(self.shape[0], s0 + step)
            yield slice(s0, s1), np.asarray(self[s0:s1], dtype=np.float64)

    def mean(self) -> np.ndarray:
        """``mean_s effects[s, n]`` ``[neurons, d_out]``."""
        return sum(E.sum(0) for _, E in self._blocks()) / self.shape[0]

    def norms(self, centre=None, neurons=slice(None), progress=None) -> np.ndarray:
        """``|effects[s, n] - centre[n]|`` ``[samples, len(neurons)]`` (``centre`` ``[len(neurons),
        d_out]`` or None); ``progress`` is not called."""
        n_pos = _positions(neurons, self.shape[1])
        out = np.empty((self.shape[0], n_pos.size))
        for run, E in self._blocks():
            E = E[:, n_pos]
            out[run] = np.linalg.norm(E if centre is None else E - np.asarray(centre), axis=-1)
        return out

    def masked_sum(self, mask=None, centre=None) -> np.ndarray:
        """``sum_n mask[s, n] (effects[s, n] - centre[n])`` ``[samples, d_out]`` (``mask``
        ``[samples, neurons]`` or None, ``centre`` ``[neurons, d_out]`` or None)."""
        out = np.empty((self.shape[0], self.shape[2]))
        for run, E in self._blocks():
            D = E if centre is None else E - np.asarray(centre, dtype=np.float64)
            m = np.ones(D.shape[:2]) if mask is None else np.asarray(mask[run], dtype=np.float64)
            out[run] = np.einsum("bn,bnd->bd", m, D)
        return out

    def projected_sum(self, directions, centre=None) -> np.ndarray:
        """``sum_n ((effects[s, n] - centre[n]) . u[n]) u[n]`` ``[samples, d_out]`` for
        ``directions`` ``[neurons, d_out]`` (``centre`` ``[neurons, d_out]`` or None)."""
        U = np.asarray(directions, dtype=np.float64)
        out = np.empty((self.shape[0], self.shape[2]))
        for run, E in self._blocks():
            D = E if centre is None else E - np.asarray(centre, dtype=np.float64)
            out[run] = np.einsum("bnd,nd->bn", D, U) @ U  # (D[n] . u_n) first: never a 4-index contraction
        return out

    def sums(self, masks=(), directions=(), centre=None) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """``([masked_sum(m, centre) for m in masks], [projected_sum(u, centre) for u in directions])``,
        one literal sum after the other."""
        return ([self.masked_sum(m, centre) for m in masks], [self.projected_sum(u, centre) for u in directions])


def as_effects(effects: Any) -> FactorizedEffects | DenseEffects:
    """``effects`` as an object with ``norms`` / ``masked_sum`` / ``projected_sum``: a
    :class:`FactorizedEffects` as it is, any dense ``[samples, neurons, d_out]`` array wrapped."""
    if isinstance(effects, (FactorizedEffects, DenseEffects)):
        return effects
    return DenseEffects(effects)
