"""Ablations of a layer's second-order effects, scored by a zero-shot classifier."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .factorized import as_effects

__all__ = ["ALL_SCENARIOS", "RECONSTRUCTION", "SCENARIOS", "AblationResult", "ablate", "top1_accuracy"]

SCENARIOS = (
    "baseline", "mean_ablate_all", "without_significant", "without_insignificant", "projected_to_pc",
)
#: the scenario :func:`ablate` adds when given the sparse codes' reconstructions
RECONSTRUCTION = "sparse_reconstruction"
#: every scenario, in report order: the five ablations, then the reconstruction
ALL_SCENARIOS = (*SCENARIOS, RECONSTRUCTION)


@dataclass(frozen=True)
class AblationResult:
    """``logits`` ``{scenario: [samples, classes]}`` and ``accuracy`` ``{scenario: top-1 %}``;
    ``significant`` ``[samples, neurons]``: the (sample, neuron) pairs whose centred effect norm
    ``|effects - means|`` exceeds the neuron's threshold (what ``without_significant`` removes)."""

    logits: dict[str, np.ndarray]
    accuracy: dict[str, float]
    significant: np.ndarray | None = None

    @property
    def significant_fraction(self) -> float | None:
        """The fraction of (sample, neuron) pairs above the threshold."""
        return None if self.significant is None else float(np.mean(self.significant))

    @property
    def significant_neurons(self) -> int | None:
        """The number of significant neurons: those above their threshold on at least one sample."""
        return None if self.significant is None else int(np.count_nonzero(self.significant.any(axis=0)))

    def table(self) -> list[dict]:
        return [{"scenario": s, "accuracy": self.accuracy[s]} for s in self.logits]


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Percentage of rows of ``logits`` ``[samples, classes]`` whose arg-max is the label
    (``labels`` ``[samples]``)."""
    return float(100.0 * np.mean(np.argmax(logits, axis=1) == np.asarray(labels)))


def ablate(
    representations: np.ndarray, effects, classifier: np.ndarray, labels: np.ndarray,
    means: np.ndarray, thresholds: np.ndarray, components: np.ndarray,
    reconstructions: np.ndarray | None = None,
) -> AblationResult:
    """The five scenarios on ``representations`` ``[samples, d]`` (``coefficient * r / |r|``) with the
    layer's ``effects`` ``[samples, neurons, d]`` (a :class:`~oe_assets.lens.factorized.FactorizedEffects`,
    or any dense array); ``classifier`` ``[d, classes]``, ``labels`` ``[samples]``, ``means``
    ``[neurons, d]`` (train), ``thresholds`` ``[neurons]`` (``norms[:, 0]``), ``components``
    ``[neurons, d]``; ``D = effects - means``:

    - ``baseline``: ``rep``;  ``mean_ablate_all``: ``base = rep - sum_n effects + sum_n means``;
    - ``without_significant``: ``base + sum_n D[n] [|D[n]| <= threshold_n]``;
    - ``without_insignificant``: ``base + sum_n D[n] [|D[n]| > threshold_n]``;
    - ``projected_to_pc``: ``base + sum_n (D[n] . pc_n) pc_n``;
    - with ``reconstructions`` ``[neurons, d]`` (the sparse codes' reconstruction of each PC), also
      ``sparse_reconstruction``: ``base + sum_n (D[n] . rhat_n) rhat_n``, ``rhat_n`` its unit vector.

    Logits are ``X @ classifier`` ``[samples, classes]``.  Computed in float64 from the effects'
    norms and their masked and projected sums over neurons, all sums from one read of the effects
    (:meth:`FactorizedEffects.sums`; ``sum_n D[n] [|D[n]| <= threshold_n]`` as ``sum_n D[n]`` less the
    significant part): factorized effects are never densified beyond one neuron block."""
    rep = np.asarray(representations, dtype=np.float64)
    S = rep.shape[0]
    effects = as_effects(effects)
    if effects.shape[0] != S or effects.shape[2] != rep.shape[1]:
        raise ValueError(f"effects shape {effects.shape} does not match representations {rep.shape}")
    labels = np.asarray(labels)
    if labels.shape != (S,):
        raise ValueError(f"labels must have shape ({S},), got {labels.shape}")
    means = np.asarray(means, dtype=np.float64)
    pcs = np.asarray(components, dtype=np.float64)
    thr = np.asarray(thresholds, dtype=np.float64)
    W = np.asarray(classifier, dtype=np.float64)
    significant = effects.norms(centre=means) > thr  # [S, N]
    directions = [pcs]
    if reconstructions is not None:
        rec = np.asarray(reconstructions, dtype=np.float64)
        directions.append(rec / np.maximum(np.linalg.norm(rec, axis=1, keepdims=True), 1e-300))
    # one read of the effects for every sum: D summed over all neurons and over the significant ones
    (all_d, significant_d), projected = effects.sums([None, significant], directions, centre=means)
    base = rep - all_d  # rep - sum_n effects + sum_n means
    X = {
        "baseline": rep,
        "mean_ablate_all": base,
        "without_significant": base + (all_d - significant_d),
        "without_insignificant": base + significant_d,
        "projected_to_pc": base + projected[0],
    }
    if reconstructions is not None:
        X[RECONSTRUCTION] = base + projected[1]
    logits = {k: x @ W for k, x in X.items()}
    return AblationResult(logits, {k: top1_accuracy(v, labels) for k, v in logits.items()}, np.asarray(significant))
