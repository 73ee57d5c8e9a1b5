"""Asset checks, blocking where a failure should stop downstream assets.

Each check is a plain function over arrays (``check_*``) wrapped by a Dagster asset check that
reads the materialized files of the partitions it covers."""

from typing import Callable

import numpy as np
import torch

import dagster as dg

from ..lens import SecondOrderLens, slow_second_order_effects
from ..lens.topk import TopKEffects
from ..resources.datasets import DatasetResource
from ..step_tags import model_step_tags
from ..resources.store import ArtifactStore, open_effects
from ..resources.model import AnalysisResource, ModelResource


def check_norms(reps: np.ndarray, coefficient: float, rtol: float = 1e-4) -> tuple[bool, dict]:
    norms = np.linalg.norm(reps, axis=1)
    err = float(np.abs(norms - coefficient).max() / coefficient) if len(norms) else 0.0
    return err <= rtol, {"max_relative_error": err}


def check_unit_columns(W: np.ndarray, tol: float = 1e-4) -> tuple[bool, dict]:
    err = float(np.abs(np.linalg.norm(W, axis=0) - 1).max())
    return err <= tol, {"max_norm_error": err}


def check_pca(components: np.ndarray, effects, means: np.ndarray, top_k: int, n_neurons: int = 16) -> tuple[bool, dict]:
    """Unit rows, and the sign rule on the first ``n_neurons`` neurons: more than ``top_k // 2`` of
    the top-``k`` centred samples project positively, or (a tie) exactly ``k - k // 2``."""
    norm_err = float(np.abs(np.linalg.norm(components, axis=1) - 1).max())
    n = min(n_neurons, components.shape[0])
    if isinstance(effects, TopKEffects):  # the file holds each neuron's top centred rows themselves
        tops = np.concatenate([rows.numpy() for *_, rows in effects.top_samples(effects.mean(), top_k, np.arange(n))])
    else:
        block = np.asarray(effects[:, :n, :], dtype=np.float64) - means[None, :n]
    bad = []
    for i in range(n):
        if isinstance(effects, TopKEffects):
            rows, top = tops[i], slice(None)
        else:
            rows = block[:, i]
            top = np.argsort(np.linalg.norm(rows, axis=1), kind="stable")[-top_k:]
        positive = int((rows[top] @ components[i] > 0).sum())
        if positive < top_k - top_k // 2:
            bad.append(i)
    return norm_err <= 1e-6 and not bad, {"max_norm_error": norm_err, "sign_rule_violations": len(bad)}


def check_sparsity(indices: np.ndarray, values: np.ndarray, components: int,
                   coder_nonzeros: int | None = None, n_descriptions: int | None = None) -> tuple[bool, dict]:
    """Stored sparse codes (``indices`` / ``values`` ``[neurons, k]``, ``-1`` / ``0`` padding) are
    well formed: at most ``components`` non-zeros per neuron, in the stored arrays and, when given,
    in the coder's own output before it was stored (``coder_nonzeros``); every index a description
    (``0 <= i < n_descriptions`` when given) or ``-1``; no description twice in a neuron's code; and a
    value is non-zero exactly where its index is not ``-1``."""
    indices, values = np.asarray(indices), np.asarray(values)
    if indices.shape != values.shape or indices.ndim != 2:
        return False, {"max_nonzeros": -1, "shape_mismatch": 1}
    worst = max(int((values != 0).sum(axis=1).max(initial=0)), coder_nonzeros or 0)
    used = indices >= 0
    high = n_descriptions if n_descriptions is not None else np.iinfo(np.int64).max
    out_of_range = int(((indices < -1) | (indices >= high)).sum())
    ordered = np.sort(np.where(used, indices, -1 - np.arange(indices.shape[1])), axis=1)  # padding never repeats
    duplicates = int((np.diff(ordered, axis=1) == 0).sum())
    padding_mismatch = int((used != (values != 0)).sum())
    ok = worst <= components and not out_of_range and not duplicates and not padding_mismatch
    return bool(ok), {"max_nonzeros": worst, "out_of_range": out_of_range, "duplicates": duplicates,
                      "padding_mismatch": padding_mismatch}


#: how closely a stored file can equal the slow path, by the storage dtype of its path weights
STORED_RTOL = {"float64": 0.0, "float32": 1e-5, "float16": 1e-2, "bfloat16": 5e-2}


#: neurons the fast = slow check compares per layer, spread over the layer: the slow path's
#: per-neuron token tensors are its cost, and the check must stay a small part of the effects pass
CHECK_NEURONS = 16


def check_neurons(n_neurons: int, count: int = CHECK_NEURONS) -> np.ndarray:
    """``count`` neuron indices spread evenly over ``0..n_neurons - 1``, first and last included."""
    return np.unique(np.linspace(0, n_neurons - 1, count).astype(int))


def check_fast_equals_slow(lens: SecondOrderLens, batch, stored, rtol: float,
                           file_rtol: float | None = None, neurons=None, capture=None) -> tuple[bool, dict]:
    """The fast path equals the literal slow path on ``batch`` to ``rtol``, and the stored file
    (``stored``: effects whose first samples are the batch's, dense or factorized) to ``file_rtol``
    (default ``rtol``); over ``neurons`` (indices; None: every neuron).  Give the lens
    ``dense_cache_bytes=0`` to form only those neurons' directions; ``capture``: the batch's
    :class:`~oe_assets.lens.adapters.Capture` of the lens's layer, shared by both paths (one forward
    pass of the batch for every layer checked)."""
    idx = np.arange(lens.n_neurons) if neurons is None else np.asarray(neurons)
    with torch.no_grad():
        fast = lens.factorized(batch) if capture is None else lens.factorized_from_capture(capture)
        n = fast.shape[0]
        fast = torch.from_numpy(fast[:, idx, :])  # only these neurons' dense values are formed
        slow = slow_second_order_effects(lens.adapter, batch, lens.mlp_layer, lens.coefficient, lens.convention,
                                         neurons=torch.as_tensor(idx), capture=capture)
    slow = slow.double()
    scale = float(slow.abs().max())
    err_fast = float((fast - slow).abs().max()) / scale
    if isinstance(stored, TopKEffects):  # every sample's norms are what a top-k file holds of the batch
        norms = np.linalg.norm(slow.cpu().numpy(), axis=-1)
        err_file = float(np.abs(stored.norms(neurons=idx)[:n] - norms).max()) / max(float(norms.max()), 1e-300)
    else:
        stored = np.asarray(stored[:n, idx, :])  # the batch's samples: a lazy file reads just those
        err_file = float(np.abs(stored - slow.cpu().numpy()).max()) / scale
    file_rtol = rtol if file_rtol is None else file_rtol
    return err_fast <= rtol and err_file <= file_rtol, {"fast_vs_slow": err_fast, "file_vs_slow": err_file}


def fast_equals_slow_layers(adapter, batch, layers: list[int], coefficient: float, convention: str | None,
                            stored: Callable[[int], tuple]) -> tuple[bool, dict]:
    """:func:`check_fast_equals_slow` for every layer of ``layers`` as the blocking check runs it: one
    forward pass of ``batch`` shared by both paths and every layer, the :func:`check_neurons`, the
    tolerance by model dtype and by the stored file's ``alpha_dtype`` (``stored(layer)`` ->
    ``(effects, alpha_dtype)``).  Returns whether all pass and the worst errors."""
    with torch.no_grad():
        captures = adapter.capture_layers(batch, layers) if layers else {}
    rtol = 1e-8 if adapter.dtype == torch.float64 else 1e-3
    results = []
    for layer in layers:
        lens = SecondOrderLens(adapter, layer, coefficient, convention, dense_cache_bytes=0)
        effects, alpha_dtype = stored(layer)
        results.append(check_fast_equals_slow(lens, batch, effects, rtol, max(rtol, STORED_RTOL[alpha_dtype]),
                                              check_neurons(lens.n_neurons), captures[layer]))
    worst = {k: max(r[1][k] for r in results) for k in ("fast_vs_slow", "file_vs_slow")} if results else {}
    return all(r[0] for r in results), worst


def _result(ok_meta: tuple[bool, dict], what: str) -> dg.AssetCheckResult:
    ok, meta = ok_meta
    return dg.AssetCheckResult(passed=bool(ok), metadata={k: float(v) for k, v in meta.items()},
                               description=what if ok else f"FAILED: {what}")


def _layers(context, store: ArtifactStore, key: str) -> list[str]:
    keys = list(context.partition_keys) if context.has_partition_key or context.has_partition_key_range else []
    return keys or store.partitions(key)  # not run over partitions: every materialized layer


def _per_layer(context, store: ArtifactStore, key: str, check) -> tuple[bool, list[dict]]:
    """Run ``check(layer, group)`` on every layer file of asset ``key`` the check covers."""
    results = [check(layer, store.open_h5(key, layer)) for layer in _layers(context, store, key)]
    return all(ok for ok, _ in results), [meta for _, meta in results]


def build_checks(partitions_def) -> list:
    @dg.asset_check(asset="train_representations", blocking=True,
                    description="Every representation has norm equal to the coefficient.")
    def representation_norms(store: ArtifactStore, analysis: AnalysisResource):
        reps = store.open_h5("train_representations").read("representations")
        return _result(check_norms(reps, analysis.coefficient), "norms equal the coefficient")

    @dg.asset_check(asset="classifier", blocking=True, pool="gpu", op_tags=model_step_tags(),
                    description="Classifier columns have unit norm.")
    def classifier_unit_columns(store: ArtifactStore, model: ModelResource):
        W = store.open_h5("classifier").read("classifier")
        if not model.load().adapter.unit_classifier:  # causal LMs: label unembeddings are raw logit directions
            return dg.AssetCheckResult(passed=True, description="causal-LM classifier: raw unembedding rows")
        return _result(check_unit_columns(W), "unit columns")

    @dg.asset_check(asset="second_order_effects", blocking=True, partitions_def=partitions_def, pool="gpu",
                    op_tags=model_step_tags(),
                    description="On the first train samples, the fast path and the stored file equal the "
                    "literal slow path.")
    def fast_path_equals_slow_path(context: dg.AssetCheckExecutionContext, store: ArtifactStore,
                                   model: ModelResource, analysis: AnalysisResource, dataset: DatasetResource):
        loaded = model.load()
        batch = next(iter(dataset.split("train").batches(loaded, 2, model.max_length)))
        layers = _layers(context, store, "second_order_effects")

        def stored(layer: int):
            group = store.open_h5("second_order_effects", str(layer))
            # the coarser of the path weights' dtype and, in a top-k file, its norms' dtype sets the tolerance
            dtypes = (group.attrs.get("alpha_dtype", "float32"), group.attrs.get("topk_dtype", "float64"))
            return open_effects(group), max(dtypes, key=STORED_RTOL.__getitem__)

        ok, worst = fast_equals_slow_layers(loaded.adapter, batch, [int(k) for k in layers], analysis.coefficient,
                                            analysis.convention, stored)
        return _result((ok, worst), f"fast = slow on 2 samples, layers {layers}")

    @dg.asset_check(asset="neuron_pcas", blocking=True, partitions_def=partitions_def,
                    description="PCA components are unit norm and follow the sign rule.")
    def pca_unit_and_sign(context: dg.AssetCheckExecutionContext, store: ArtifactStore,
                          analysis: AnalysisResource):
        def check(layer, pcas):
            effects = store.open_effects("second_order_effects", layer)
            return check_pca(pcas.read("components"), effects, pcas.read("means"), int(pcas.attrs["top_k"]))

        ok, metas = _per_layer(context, store, "neuron_pcas", check)
        return _result((ok, {"layers_checked": len(metas),
                             "sign_rule_violations": sum(m["sign_rule_violations"] for m in metas)}),
                       "unit components, sign rule")

    @dg.asset_check(asset="sparse_codes", blocking=True, partitions_def=partitions_def,
                    description="Sparse codes have at most `components` non-zeros per neuron, indices into "
                    "the vocabulary, no repeated description, and zero values exactly at the padding.")
    def sparse_codes_sparsity(context: dg.AssetCheckExecutionContext, store: ArtifactStore,
                              analysis: AnalysisResource):
        ok, metas = _per_layer(context, store, "sparse_codes", lambda layer, codes: check_sparsity(
            codes.read("indices"), codes.read("values"), analysis.components, int(codes.attrs["max_nonzeros"]),
            int(codes.attrs["descriptions"])))
        worst = {k: max((m.get(k, 0) for m in metas), default=0)
                 for k in ("max_nonzeros", "out_of_range", "duplicates", "padding_mismatch")}
        return _result((ok, worst), f"at most {analysis.components} non-zeros, valid and distinct indices")

    return [representation_norms, classifier_unit_columns, fast_path_equals_slow_path, pca_unit_and_sign,
            sparse_codes_sparsity]
