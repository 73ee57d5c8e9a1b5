"""Sparse decomposition of neuron directions over a dictionary of text-description embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


def batched_omp(X: np.ndarray, dictionary: np.ndarray, components: int, block: int = 512) -> np.ndarray:
    """Orthogonal matching pursuit without the ``[atoms, atoms]`` Gram matrix, for large
    dictionaries (a 30k-description Gram is 7 GB).  Same algorithm as scikit-learn's
    ``orthogonal_mp``: ``components`` times, pick the atom most correlated with the residual, then
    refit the selected atoms by least squares.  ``X`` ``[targets, d]``, ``dictionary``
    ``[atoms, d]`` -> codes ``[targets, atoms]``."""
    X = np.asarray(X, dtype=np.float64)
    Dm = np.asarray(dictionary, dtype=np.float64)
    codes = np.zeros((X.shape[0], Dm.shape[0]))
    for s0 in range(0, X.shape[0], block):
        x = X[s0:s0 + block]
        n = x.shape[0]
        rows = np.arange(n)
        chosen = np.zeros((n, 0), dtype=np.int64)
        residual, coef = x.copy(), np.zeros((n, 0))
        for _ in range(components):
            corr = np.abs(residual @ Dm.T)
            corr[rows[:, None], chosen] = -np.inf  # residual is orthogonal to them already
            chosen = np.concatenate([chosen, corr.argmax(axis=1)[:, None]], axis=1)
            A = Dm[chosen]  # [n, k, d]
            gram = A @ A.transpose(0, 2, 1)
            coef = np.linalg.solve(gram, (A @ x[:, :, None]))[..., 0]  # [n, k]
            residual = x - np.einsum("nk,nkd->nd", coef, A)
        codes[s0 + rows[:, None], chosen] = coef
    return codes


def sparse_decompose(
    directions: np.ndarray, text_embeddings: np.ndarray, components: int, coefficient: float = 100.0,
    transform_alpha: float = 1e-4, method: str = "auto",
) -> SparseCodes:
    """Orthogonal matching pursuit of each row of ``directions`` ``[neurons, d]`` over the normalised
    text dictionary (``text_embeddings`` ``[descriptions, d]``): :class:`SparseCodes` with ``codes``
    ``[neurons, descriptions]``.  ``method="sklearn"``: scikit-learn's
    ``SparseCoder(transform_algorithm="omp", transform_n_nonzero_coefs=components)`` (the published
    path; it builds the full Gram matrix); ``"batched"``: :func:`batched_omp` (no Gram); ``"auto"``:
    sklearn up to 8192 descriptions."""
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
    if method == "batched" or (method == "auto" and dictionary.shape[0] > 8192):
        return SparseCodes(batched_omp(X, dictionary, components), dictionary, components)
    from sklearn.decomposition import SparseCoder

    coder = SparseCoder(
        dictionary=dictionary, transform_algorithm="omp", transform_n_nonzero_coefs=components,
        transform_alpha=transform_alpha,
    )
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
