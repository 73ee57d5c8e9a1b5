"""Ablations of a layer's second-order effects, scored by a zero-shot classifier."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SCENARIOS", "AblationResult", "ablate", "top1_accuracy"]

SCENARIOS = (
    "baseline", "mean_ablate_all", "without_significant", "without_insignificant", "projected_to_pc",
)


@dataclass(frozen=True)
class AblationResult:
    """``logits`` ``{scenario: [samples, classes]}`` and ``accuracy`` ``{scenario: top-1 %}``."""

    logits: dict[str, np.ndarray]
    accuracy: dict[str, float]

    def table(self) -> list[dict]:
        return [{"scenario": s, "accuracy": self.accuracy[s]} for s in self.logits]


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Percentage of rows whose arg-max is the label."""
    return float(100.0 * np.mean(np.argmax(logits, axis=1) == np.asarray(labels)))


def ablate(
    representations: np.ndarray, effects, classifier: np.ndarray, labels: np.ndarray,
    means: np.ndarray, thresholds: np.ndarray, components: np.ndarray,
    reconstructions: np.ndarray | None = None,
) -> AblationResult:
    """The five scenarios on ``representations`` ``[S, d]`` (``coefficient * r / |r|``) with the
    layer's ``effects`` ``[S, N, d]``; ``means`` ``[N, d]`` (train), ``thresholds`` ``[N]``
    (``norms[:, 0]``), ``components`` ``[N, d]``; ``D = effects - means``:

    - ``baseline``: ``rep``;  ``mean_ablate_all``: ``base = rep - sum_n effects + sum_n means``;
    - ``without_significant``: ``base + sum_n D[n] [|D[n]| <= threshold_n]``;
    - ``without_insignificant``: ``base + sum_n D[n] [|D[n]| > threshold_n]``;
    - ``projected_to_pc``: ``base + sum_n (D[n] . pc_n) pc_n``;
    - with ``reconstructions`` ``[N, d]`` (the sparse codes' reconstruction of each PC), also
      ``sparse_reconstruction``: ``base + sum_n (D[n] . rhat_n) rhat_n``, ``rhat_n`` its unit vector.

    Logits are ``X @ classifier``.  Computed in float64, one block of samples at a time."""
    rep = np.asarray(representations, dtype=np.float64)
    S = rep.shape[0]
    if getattr(effects, "shape", None) is None or effects.shape[0] != S or effects.shape[2] != rep.shape[1]:
        raise ValueError(f"effects shape {getattr(effects, 'shape', None)} does not match representations {rep.shape}")
    labels = np.asarray(labels)
    if labels.shape != (S,):
        raise ValueError(f"labels must have shape ({S},), got {labels.shape}")
    means = np.asarray(means, dtype=np.float64)
    pcs = np.asarray(components, dtype=np.float64)
    thr = np.asarray(thresholds, dtype=np.float64)
    rhat = None
    if reconstructions is not None:
        rec = np.asarray(reconstructions, dtype=np.float64)
        rhat = rec / np.maximum(np.linalg.norm(rec, axis=1, keepdims=True), 1e-300)
    names = list(SCENARIOS) + (["sparse_reconstruction"] if rhat is not None else [])
    out = {k: np.empty((S, classifier.shape[1])) for k in names}
    W = np.asarray(classifier, dtype=np.float64)
    # samples per block: about 128 MiB of float64 effects at a time (several copies live at once)
    step = max(1, (128 * 2**20) // max(1, 8 * int(np.prod(effects.shape[1:]))))
    for s0 in range(0, S, step):
        s1 = min(S, s0 + step)
        E = np.asarray(effects[s0:s1], dtype=np.float64)
        r = rep[s0:s1]
        base = r - E.sum(axis=1) + means.sum(axis=0)
        D = E - means
        significant = np.linalg.norm(D, axis=-1) > thr  # [b, N]
        X = {
            "baseline": r,
            "mean_ablate_all": base,
            "without_significant": base + np.einsum("bn,bnd->bd", ~significant, D),
            "without_insignificant": base + np.einsum("bn,bnd->bd", significant, D),
            # (D[n] . pc_n) first, then the sum of pc_n scaled: never a 4-index contraction
            "projected_to_pc": base + np.einsum("bnd,nd->bn", D, pcs) @ pcs,
        }
        if rhat is not None:
            X["sparse_reconstruction"] = base + np.einsum("bnd,nd->bn", D, rhat) @ rhat
        for k in names:
            out[k][s0:s1] = X[k] @ W
    return AblationResult(out, {k: top1_accuracy(out[k], labels) for k in names})
