"""Sparse decomposition of neuron directions over a dictionary of text-description embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["normalize_dictionary", "SparseCodes", "sparse_decompose", "top_descriptions"]


def normalize_dictionary(text_embeddings: np.ndarray, coefficient: float = 100.0) -> np.ndarray:
    """``coefficient * (T - mean_i T[i]) / ||T - mean||_col``: centre ``[descriptions, d]`` on the
    mean description, then scale every embedding dimension (column) to norm ``coefficient``."""
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


def sparse_decompose(
    directions: np.ndarray, text_embeddings: np.ndarray, components: int, coefficient: float = 100.0,
    transform_alpha: float = 1e-4,
) -> SparseCodes:
    """Orthogonal matching pursuit of each row of ``directions`` ``[neurons, d]`` over the normalised
    text dictionary, through scikit-learn's ``SparseCoder(transform_algorithm="omp",
    transform_n_nonzero_coefs=components)``."""
    from sklearn.decomposition import SparseCoder

    X = np.asarray(directions, dtype=np.float64)
    dictionary = normalize_dictionary(text_embeddings, coefficient)
    if X.ndim != 2 or X.shape[1] != dictionary.shape[1]:
        raise ValueError(
            f"directions has shape {X.shape}; expected [neurons, {dictionary.shape[1]}] to match the "
            "text embeddings' width"
        )
    if not 1 <= components <= dictionary.shape[0]:
        raise ValueError(f"components={components} must be in 1..{dictionary.shape[0]} (the number of descriptions)")
    coder = SparseCoder(
        dictionary=dictionary, transform_algorithm="omp", transform_n_nonzero_coefs=components,
        transform_alpha=transform_alpha,
    )
    return SparseCodes(coder.transform(X), dictionary, components)


def top_descriptions(codes: np.ndarray, texts: list[str], k: int | None = None) -> list[dict]:
    """Rows ``{neuron, rank, description_index, coefficient, text}``: each neuron's non-zero
    coefficients, largest magnitude first, at most ``k`` per neuron."""
    codes = np.asarray(codes)
    if codes.shape[1] != len(texts):
        raise ValueError(f"codes has {codes.shape[1]} descriptions but {len(texts)} texts were given")
    rows = []
    for n, row in enumerate(codes):
        nz = np.flatnonzero(row)
        order = nz[np.argsort(-np.abs(row[nz]), kind="stable")][:k]
        for rank, i in enumerate(order):
            rows.append({"neuron": n, "rank": rank, "description_index": int(i),
                         "coefficient": float(row[i]), "text": texts[i]})
    return rows
