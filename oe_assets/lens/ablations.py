"""Ablations of a layer's second-order effects, scored by a zero-shot classifier."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .factorized import as_effects

__all__ = ["ALL_SCENARIOS", "RECONSTRUCTION", "SCENARIOS", "EFFECT_SUMS_LAYOUT", "AblationResult", "EffectSums", "ablate",
           "ablate_from_sums", "effect_sums", "top1_accuracy"]

SCENARIOS = (
    "baseline", "mean_ablate_all", "without_significant", "without_insignificant", "projected_to_pc",
)
#: the scenario :func:`ablate` adds when given the sparse codes' reconstructions
RECONSTRUCTION = "sparse_reconstruction"
#: every scenario, in report order: the five ablations, then the reconstruction
ALL_SCENARIOS = (*SCENARIOS, RECONSTRUCTION)
#: the ``layout`` attribute of a file holding a split's :class:`EffectSums` (:meth:`EffectSums.arrays`)
EFFECT_SUMS_LAYOUT = "effect_sums"
#: the arrays of :class:`EffectSums`, in field order
_SUM_FIELDS = ("total", "significant_sum", "projected", "reconstructed", "significant")


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


@dataclass(frozen=True)
class EffectSums:
    """What the ablations read of a split's effects ``[samples, neurons, d]``, with ``D = effects -
    means``: ``total`` ``sum_n D[n]`` and ``significant_sum`` ``sum_n D[n] [|D[n]| > threshold_n]``,
    ``projected`` ``sum_n (D[n] . pc_n) pc_n`` and ``reconstructed`` (the same along the sparse
    reconstruction's unit vectors, or None), each ``[samples, d]``; ``significant`` ``[samples,
    neurons]`` bool.  Computed from all the effects at once (:func:`effect_sums`) or batch by batch
    during the val pass and joined (:meth:`concat`): the ablations need nothing else of the effects."""

    total: np.ndarray
    significant_sum: np.ndarray
    projected: np.ndarray
    reconstructed: np.ndarray | None
    significant: np.ndarray

    def __len__(self) -> int:
        return self.total.shape[0]

    @property
    def significant_fraction(self) -> float:
        """The fraction of (sample, neuron) pairs above the threshold."""
        return float(np.mean(self.significant))

    def arrays(self) -> dict[str, np.ndarray]:
        """The named arrays to store (``reconstructed`` only when present); :meth:`from_arrays` reads
        them back."""
        return {name: getattr(self, name) for name in _SUM_FIELDS if getattr(self, name) is not None}

    @staticmethod
    def from_arrays(read) -> "EffectSums":
        """The sums from ``read(name)`` (e.g. an HDF5 group's reader) of the :meth:`arrays` names;
        ``read`` raises KeyError for an absent ``reconstructed``."""
        values = {}
        for name in _SUM_FIELDS:
            try:
                values[name] = np.asarray(read(name))
            except KeyError:
                if name != "reconstructed":
                    raise
                values[name] = None
        values["significant"] = values["significant"].astype(bool)
        return EffectSums(**values)

    @staticmethod
    def concat(parts: list["EffectSums"]) -> "EffectSums":
        """Consecutive batches' sums as one."""
        if not parts:
            raise ValueError("no sums to join")
        join = lambda name: None if getattr(parts[0], name) is None else np.concatenate(  # noqa: E731
            [getattr(p, name) for p in parts])
        return EffectSums(*(join(name) for name in ("total", "significant_sum", "projected", "reconstructed",
                                                    "significant")))


def effect_sums(effects, means: np.ndarray, thresholds: np.ndarray, components: np.ndarray,
                reconstructions: np.ndarray | None = None) -> EffectSums:
    """:class:`EffectSums` of ``effects`` ``[samples, neurons, d]`` (factorized or dense: a whole split
    or one batch of it) about the train ``means`` ``[neurons, d]``, ``thresholds`` ``[neurons]`` and
    ``components`` ``[neurons, d]``; with ``reconstructions`` ``[neurons, d]`` also along their unit
    vectors.  The norms, then every sum from one read of the effects (:meth:`FactorizedEffects.sums`)."""
    effects = as_effects(effects)
    means = np.asarray(means, dtype=np.float64)
    thr = np.asarray(thresholds, dtype=np.float64)
    directions = [np.asarray(components, dtype=np.float64)]
    if reconstructions is not None:
        rec = np.asarray(reconstructions, dtype=np.float64)
        directions.append(rec / np.maximum(np.linalg.norm(rec, axis=1, keepdims=True), 1e-300))
    significant = np.asarray(effects.norms(centre=means) > thr)  # [S, N]
    (total, significant_sum), projected = effects.sums([None, significant], directions, centre=means)
    return EffectSums(total, significant_sum, projected[0], projected[1] if reconstructions is not None else None,
                      significant)


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
    (:func:`effect_sums`; ``sum_n D[n] [|D[n]| <= threshold_n]`` as ``sum_n D[n]`` less the
    significant part): factorized effects are never densified beyond one neuron block."""
    rep = np.asarray(representations, dtype=np.float64)
    effects = as_effects(effects)
    if effects.shape[0] != rep.shape[0] or effects.shape[2] != rep.shape[1]:
        raise ValueError(f"effects shape {effects.shape} does not match representations {rep.shape}")
    return ablate_from_sums(rep, effect_sums(effects, means, thresholds, components, reconstructions), classifier,
                            labels)


def ablate_from_sums(representations: np.ndarray, sums: EffectSums, classifier: np.ndarray,
                     labels: np.ndarray) -> AblationResult:
    """:func:`ablate` from the effects' :class:`EffectSums` (e.g. gathered during the val pass, when
    the effects themselves are never stored)."""
    rep = np.asarray(representations, dtype=np.float64)
    S = rep.shape[0]
    if sums.total.shape != rep.shape:
        raise ValueError(f"the effects' sums have shape {sums.total.shape}, the representations {rep.shape}")
    labels = np.asarray(labels)
    if labels.shape != (S,):
        raise ValueError(f"labels must have shape ({S},), got {labels.shape}")
    W = np.asarray(classifier, dtype=np.float64)
    all_d, significant_d = sums.total, sums.significant_sum
    base = rep - all_d  # rep - sum_n effects + sum_n means
    X = {
        "baseline": rep,
        "mean_ablate_all": base,
        "without_significant": base + (all_d - significant_d),
        "without_insignificant": base + significant_d,
        "projected_to_pc": base + sums.projected,
    }
    if sums.reconstructed is not None:
        X[RECONSTRUCTION] = base + sums.reconstructed
    logits = {k: x @ W for k, x in X.items()}
    return AblationResult(logits, {k: top1_accuracy(v, labels) for k, v in logits.items()}, sums.significant)
