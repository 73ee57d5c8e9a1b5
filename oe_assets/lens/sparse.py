"""Sparse decomposition of neuron directions over a dictionary of text-description embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["batched_omp", "nonzeros_by_magnitude", "normalize_dictionary", "SparseCodes", "sparse_decompose", "top_descriptions"]


def nonzeros_by_magnitude(row: np.ndarray, k: int | None = None) -> np.ndarray:
    """Indices ``[nonzeros]`` of the non-zeros of the 1-D ``row`` (e.g. one neuron's codes,
    ``[descriptions]``), largest ``|value|`` first (ties keep index order), at most ``k`` of them
    (None: all)."""
    row = np.asarray(row)
    nz = np.flatnonzero(row)
    return nz[np.argsort(-np.abs(row[nz]), kind="stable")][:k]


def normalize_dictionary(text_embeddings: np.ndarray, coefficient: float = 100.0) -> np.ndarray:
    """``coefficient * (T - mean_i T[i]) / ||T - mean||_col``: centre ``[descriptions, d]`` on the
    mean description, then scale every embedding dimension (column) to norm ``coefficient``:
    ``[descriptions, d]``."""
    T = np.asarray(text_embeddings, dtype=np.float64)
    if T.ndim != 2 or T.shape[0] < 2:
        raise ValueError(f"text_embeddings must be [descriptions >= 2, d], got shape {T.shape}")
    centred = T - T.mean(axis=0, keepdims=True)
    col = np.linalg.norm(centred, axis=0, keepdims=True)
    if np.any(col == 0):
        raise ValueError("text_embeddings has a dimension that is constant over all descriptions")
    return coefficient * centred / col


@dataclass(frozen=True)
class SparseCodes:
    """``codes`` ``[neurons, descriptions]`` (at most ``components`` non-zeros per row) and the
    normalised ``dictionary`` ``[descriptions, d]`` they combine."""

    codes: np.ndarray
    dictionary: np.ndarray
    components: int

    def reconstruct(self) -> np.ndarray:
        """``codes @ dictionary``: ``[neurons, d]``."""
        return self.codes @ self.dictionary


def batched_omp(X, dictionary, components: int, block: int = 256, device=None,
                dtype: torch.dtype = torch.float64) -> np.ndarray:
    """Orthogonal matching pursuit in torch, batched over targets, on ``device``; the same algorithm
    as scikit-learn's ``orthogonal_mp``: ``components`` times, pick the atom most correlated with the
    residual, then refit the selected atoms by least squares.  ``X`` ``[targets, d]``, ``dictionary``
    ``[atoms, d]`` -> codes ``[targets, atoms]`` (numpy float64).

    No ``[atoms, atoms]`` Gram (30k descriptions: 3.6 GB) and no Gram of the selected atoms recomputed
    per iteration: the least-squares refit keeps a Cholesky factor ``L`` ``[targets, k, k]`` of the
    selected atoms' Gram and appends one row per iteration (``L w = A^T a_new``,
    ``l = sqrt(|a_new|^2 - |w|^2)``), in float64.  The correlations ``residual @ dictionary^T`` (the
    bulk of the work: ``targets x atoms x d`` per iteration) run in ``dtype``: float64 (default)
    picks the same atoms as scikit-learn; float32 is faster, and can differ where two atoms' correlations
    tie to float32 precision."""
    Dm = torch.as_tensor(np.asarray(dictionary), dtype=dtype, device=device)
    Xt = torch.as_tensor(np.asarray(X), dtype=torch.float64, device=Dm.device)
    n, K = Xt.shape[0], components
    codes = np.zeros((n, Dm.shape[0]))
    D64 = Dm.double()
    atom_sq = (D64 * D64).sum(1)  # |a|^2 of every atom
    for s0 in range(0, n, block):
        x = Xt[s0:s0 + block]
        b = x.shape[0]
        chosen = torch.empty(b, K, dtype=torch.long, device=Dm.device)
        L = torch.zeros(b, K, K, dtype=torch.float64, device=Dm.device)
        cov = torch.empty(b, K, dtype=torch.float64, device=Dm.device)  # a_i . x of the selected atoms
        # the selected atoms, appended in place (gathering them anew each iteration would move
        # [b, k, d] float64 twice an iteration)
        A = torch.empty(b, K, Dm.shape[1], dtype=torch.float64, device=Dm.device)
        residual = x
        for k in range(K):
            corr = torch.matmul(residual.to(dtype), Dm.T).abs_()
            if k:
                corr.scatter_(1, chosen[:, :k], -torch.inf)  # the residual is orthogonal to them already
            new = corr.max(dim=1).indices  # the first of equal maxima, as argmax, in one pass
            del corr
            chosen[:, k] = new
            a_new = D64[new]  # [b, d]
            A[:, k] = a_new
            if k:
                g = torch.bmm(A[:, :k], a_new[:, :, None])[..., 0]  # A^T a_new
                w = torch.linalg.solve_triangular(L[:, :k, :k], g[..., None], upper=False)[..., 0]
                L[:, k, :k] = w
                L[:, k, k] = torch.sqrt(torch.clamp(atom_sq[new] - (w * w).sum(1), min=1e-300))
            else:
                L[:, 0, 0] = torch.sqrt(atom_sq[new])
            cov[:, k] = (a_new * x).sum(1)
            Lk = L[:, :k + 1, :k + 1]
            y = torch.linalg.solve_triangular(Lk, cov[:, :k + 1, None], upper=False)
            gamma = torch.linalg.solve_triangular(Lk.transpose(1, 2), y, upper=True)[..., 0]  # [b, k+1]
            residual = x - torch.bmm(gamma[:, None, :], A[:, :k + 1])[:, 0]
        idx = chosen.cpu().numpy()
        codes[s0 + np.arange(b)[:, None], idx] = gamma.cpu().numpy()
    return codes


def sparse_decompose(
    directions: np.ndarray, text_embeddings: np.ndarray, components: int, coefficient: float = 100.0,
    transform_alpha: float | None = None, method: str = "auto", device=None,
    dtype: torch.dtype = torch.float64,
) -> SparseCodes:
    """Orthogonal matching pursuit of each row of ``directions`` ``[neurons, d]`` over the normalised
    text dictionary (``text_embeddings`` ``[descriptions, d]``): :class:`SparseCodes` with ``codes``
    ``[neurons, descriptions]``.  ``method="sklearn"``: scikit-learn's
    ``SparseCoder(transform_algorithm="omp", transform_n_nonzero_coefs=components)`` (the published
    path; it builds the full Gram matrix); ``"batched"``: :func:`batched_omp` (torch, on ``device``, its
    correlations in ``dtype``); ``"auto"``: sklearn up to 8192 descriptions on the CPU, else batched.

    ``transform_alpha`` is refused: with a number of non-zeros given, scikit-learn's OMP ignores it
    (the published code passed one that had no effect)."""
    if transform_alpha is not None:
        raise ValueError("transform_alpha has no effect on orthogonal matching pursuit with a fixed number of "
                         "non-zeros (scikit-learn ignores it); leave it unset and choose `components`")
    X = np.asarray(directions, dtype=np.float64)
    dictionary = normalize_dictionary(text_embeddings, coefficient)
    if X.ndim != 2 or X.shape[1] != dictionary.shape[1]:
        raise ValueError(
            f"directions has shape {X.shape}; expected [neurons, {dictionary.shape[1]}] to match the "
            "text embeddings' width"
        )
    if not 1 <= components <= dictionary.shape[0]:
        raise ValueError(f"components={components} must be in 1..{dictionary.shape[0]} (the number of descriptions)")
    if method not in ("auto", "sklearn", "batched"):
        raise ValueError(f"method={method!r}; choose 'auto', 'sklearn' or 'batched'")
    on_cpu = device is None or torch.device(device).type == "cpu"
    if method == "batched" or (method == "auto" and (dictionary.shape[0] > 8192 or not on_cpu)):
        return SparseCodes(batched_omp(X, dictionary, components, device=device, dtype=dtype), dictionary, components)
    from sklearn.decomposition import SparseCoder

    coder = SparseCoder(dictionary=dictionary, transform_algorithm="omp", transform_n_nonzero_coefs=components)
    return SparseCodes(coder.transform(X), dictionary, components)


def top_descriptions(codes: np.ndarray, texts: list[str], k: int | None = None) -> list[dict]:
    """Rows ``{neuron, rank, description_index, coefficient, text}``: each neuron's non-zero
    coefficients in ``codes`` ``[neurons, descriptions]`` (``texts``: one per description), largest
    magnitude first, at most ``k`` per neuron."""
    codes = np.asarray(codes)
    if codes.shape[1] != len(texts):
        raise ValueError(f"codes has {codes.shape[1]} descriptions but {len(texts)} texts were given")
    rows = []
    for n, row in enumerate(codes):
        for rank, i in enumerate(nonzeros_by_magnitude(row, k)):
            rows.append({"neuron": n, "rank": rank, "description_index": int(i),
                         "coefficient": float(row[i]), "text": texts[i]})
    return rows
