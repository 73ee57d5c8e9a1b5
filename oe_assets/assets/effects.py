"""Per-layer second-order effects, factorized, streamed into HDF5: one data pass for every layer of
a step."""

import time

import dagster as dg

import numpy as np

from ..lens import FirstOrderLens, FirstOrderSums, SecondOrderLens
from ..lens.ablations import EFFECT_SUMS_LAYOUT, EffectSums, effect_sums
from ..lens.batching import Progress, iter_factorized
from ..lens.effects_file import FactorizedEffectsWriter
from ..lens.topk import (
    TOPK_LAYOUT, EffectsMean, TopKEffectsWriter, as_stored, layer_groups, rounded_factors, running_top_bytes, topk_bytes,
)
from ..provenance import entry, split_record
from ..resources.datasets import DatasetResource
from ..step_tags import model_step_tags
from ..resources.model import AnalysisResource, ModelResource
from ..resources.store import ArtifactStore, H5Payload, StagedH5
from .common import (
    CODE_VERSION, profile_resources, provenance, reconstruction_dictionary, same_vocabulary, sparse_reconstructions,
)


#: attributes an effects file carries about its own form (layout, dtypes, kept samples), not about
#: the effects: files made from it do not inherit them
EFFECTS_FILE_ATTRS = ("layout", "alpha_dtype", "alpha_form", "top_k", "samples", "topk_dtype")


class _StagedLayers:
    """The staged effects files of a step's layers, written together batch by batch.  Used as a
    ``with`` block: when anything fails inside it, every writer is closed and every staged file of
    the step removed (not only the failing layer's), and a failed write (``OSError``: a full disk)
    becomes the store's error naming the file, the free and the ``needed`` space."""

    def __init__(self, context, store: ArtifactStore, needed: int):
        self.context, self.store, self.needed = context, store, needed
        self.staged: dict[str, StagedH5] = {}
        self.writers: dict = {}
        self.writing = None  # the file being written when a write fails

    def open(self, key: str, make_writer) -> None:
        """Stage layer ``key``'s file and open its writer, ``make_writer(path)``."""
        path = self.writing = self.store.stage(self.context.asset_key, key)
        self.staged[key] = StagedH5(path)
        self.writers[key] = make_writer(path)

    def write(self, layer: int, fe) -> None:
        self.writing = self.staged[str(layer)].path
        self.writers[str(layer)].write(fe)

    def close(self, key: str, lens, data, split: str, first_order: dict, made_from: dict, resources: dict,
              metadata: dict, file_attrs: dict | None = None) -> None:
        """Complete layer ``key``'s file with the labels, the first-order sums (``first_order``:
        ``{"first_order_sum": ..., "mlp_out_mean": ...}``), ``file_attrs`` and its provenance;
        ``metadata`` goes to the catalog beside the shape."""
        self.writing = self.staged[key].path
        self.writers.pop(key).close(labels=data.labels, extras=first_order, attrs=file_attrs)
        model, analysis = resources["model"], resources["analysis"]
        attrs = provenance(self.context, self.context.asset_key.to_user_string(), {}, resources,
                           {**made_from, "convention": lens.convention}, partition=key)
        shape = [len(data), lens.n_neurons, lens.d_out]
        self.staged[key].attrs = {"model": model.source, "layer": int(key), "coefficient": analysis.coefficient,
                                  "convention": lens.convention, "split": split, "shape": shape,
                                  "code_version": CODE_VERSION, **attrs}
        self.context.add_asset_metadata({"layer": int(key), "effects_shape": str(shape), **metadata}, partition_key=key)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None:
            return False
        for writer in self.writers.values():  # every handle closed before a file goes
            writer.abort()
        for value in self.staged.values():
            self.store.discard(value.path)
        if isinstance(exc, OSError) and self.writing is not None:
            keys = list(self.context.partition_keys)
            raise self.store.write_error(self.context.asset_key, keys, self.writing, exc, self.needed) from exc
        return False


def _first_order(first_order: FirstOrderSums) -> dict[int, dict]:
    """``{layer: {"first_order_sum": [samples, d_out], "mlp_out_mean": [d_model]}}`` of a finished pass."""
    sums, means = first_order.sums(), first_order.mlp_out_means()
    return {layer: {"first_order_sum": sums[layer], "mlp_out_mean": means[layer]} for layer in sums}


def stream_effects(context, split: str, model: ModelResource, analysis: AnalysisResource, dataset: DatasetResource,
                   store: ArtifactStore) -> dict[str, StagedH5]:
    """For every layer partition of the step: the factorized effects of the split (``alpha``
    ``[samples, J*H, neurons]``, ``scale``, ``const``, the layer's per-head factors; see
    :mod:`oe_assets.lens.effects_file`) in a staged HDF5 file, written batch by batch.  Each batch is
    decoded and run once for all the step's layers; the model is loaded once.  The same pass adds
    the first-order sums over neurons ``first_order_sum`` ``[samples, d_out]`` and the MLP output's
    mean ``mlp_out_mean`` ``[d_model]`` to each file (the inputs of ``first_order_effects``).

    The files' expected size is checked against the store's free space before the data pass; a
    write that fails anyway (a full disk) closes every file and removes every staged file of the
    step before raising the store's error naming the file, the free and the needed space."""
    t0 = time.perf_counter()
    loaded, data, keys, lenses, first_order, made_from = _step_pass(context, split, model, analysis, dataset)
    needed = sum(FactorizedEffectsWriter.expected_bytes(
        len(data), lenses[int(key)].factors, with_const=lenses[int(key)].convention == "reference",
        alpha_dtype=store.alpha_dtype, n_tokens=loaded.adapter.fixed_tokens, max_tokens=model.max_length,
        extra_bytes_per_sample=8 * lenses[int(key)].d_out) for key in keys)  # + first_order_sum
    store.require_free_space(context.asset_key, keys, needed)
    with _StagedLayers(context, store, needed) as files:
        for key in keys:
            lens = lenses[int(key)]
            files.open(key, lambda path, lens=lens: FactorizedEffectsWriter(
                path, len(data), lens.factors, with_const=lens.convention == "reference", batch_size=model.batch_size,
                alpha_dtype=store.alpha_dtype, compression=store.compression(),
                n_tokens=loaded.adapter.fixed_tokens, max_tokens=model.max_length))
        progress = Progress(len(data), f"layers {', '.join(keys)} {split} effects", log=context.log.info)
        batches = data.batches(loaded, model.batch_size, model.max_length)
        for _, effects in iter_factorized(lenses, batches, progress, on_capture=first_order.add):
            for layer, fe in effects.items():
                files.write(layer, fe)
        sums = _first_order(first_order)
        for key in keys:
            lens = lenses[int(key)]
            form = files.writers[key].form
            files.close(key, lens, data, split, sums[int(key)], made_from,
                        profile_resources(model, dataset, analysis, store),
                        {"alpha_form": form, "alpha_shape": str([len(data), lens.factors.n_paths, lens.n_neurons])})
    seconds = time.perf_counter() - t0
    shape = (len(data), lens.n_neurons, lens.d_out)
    context.log.info(f"layers {', '.join(keys)}: {split} effects of {len(data)} samples in one data pass, {seconds:.1f} s")
    context.add_output_metadata({
        "effects_shape": str(list(shape)), "layout": "factorized", "alpha_dtype": store.alpha_dtype,
        "rows": shape[0], "model": model.source, "layers": ", ".join(keys), "coefficient": analysis.coefficient,
        "convention": lens.convention, "data_passes": 1, "run_time_s": round(seconds, 3),
    })
    return files.staged


def _step_pass(context, split: str, model: ModelResource, analysis: AnalysisResource, dataset: DatasetResource):
    """What every data pass of a step starts from: ``(loaded model, split, layer keys, {layer:
    SecondOrderLens}, FirstOrderSums, the split's record)``."""
    loaded = model.load()
    data = dataset.split(split)
    keys = list(context.partition_keys)
    lenses = {int(key): SecondOrderLens(loaded.adapter, int(key), coefficient=analysis.coefficient,
                                        convention=analysis.convention, dense_cache_bytes=0) for key in keys}
    first_order = FirstOrderSums({layer: FirstOrderLens(loaded.adapter, layer, coefficient=analysis.coefficient)
                                  for layer in lenses})
    return loaded, data, keys, lenses, first_order, split_record(split, data)


def memory_budget() -> int:
    """Host memory the top-k mode's per-layer state may take: half of what the system has available
    now (``MemAvailable``; 8 GiB where it cannot be read)."""
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        available = 16 << 30
    return available // 2


def _groups(context, keys: list[str], layer_bytes: dict[str, int], what: str) -> list[list[str]]:
    """The step's layers in groups whose state fits :func:`memory_budget` (one set of data passes each)."""
    budget = memory_budget()
    groups = layer_groups(keys, layer_bytes, budget)
    if len(groups) > 1:
        context.log.info(f"layers {', '.join(keys)}: {what} takes {max(layer_bytes.values()) / 2**30:.2f} GiB a "
                         f"layer in memory, {budget / 2**30:.1f} GiB may be used: {len(groups)} groups of layers, "
                         "each with its own data passes")
    return groups


def _topk_dtype(store: ArtifactStore) -> str:
    """The storage dtype of a top-k file's norms and rows: float64 when the effects are kept in float64."""
    return "float64" if store.alpha_dtype == "float64" else "float32"


def stream_topk_effects(context, model: ModelResource, analysis: AnalysisResource, dataset: DatasetResource,
                        store: ArtifactStore) -> dict[str, StagedH5]:
    """The train effects in the top-k form (``storage.effects_mode: topk``; :mod:`oe_assets.lens.topk`):
    for every layer partition of the step, the norms ``|effects[s, n]|`` ``[samples, neurons]`` of
    every sample, the means ``[neurons, d_out]`` and each neuron's ``analysis.top_k`` samples with the
    largest centred norms (their indices, norms and centred effects ``[neurons, top_k, d_out]``), with
    the first-order sums of :func:`stream_effects`.  Two data passes over the split for a group of
    layers: the means, then the norms and the running top; the step's layers are grouped so that
    their running tops fit :func:`memory_budget`.  Each batch's effects are first rounded as an
    ``alpha``-form effects file stores them (``storage.alpha_dtype``, float32 factors:
    :func:`as_stored`).  Files are staged and appear atomically, as in :func:`stream_effects`."""
    t0 = time.perf_counter()
    loaded, data, keys, lenses, first_order, made_from = _step_pass(context, "train", model, analysis, dataset)
    factors = {layer: rounded_factors(lens.factors) for layer, lens in lenses.items()}
    dtype = _topk_dtype(store)
    needed = sum(topk_bytes(len(data), lenses[int(k)].n_neurons, lenses[int(k)].d_out, analysis.top_k, dtype)
                 + 8 * len(data) * lenses[int(k)].d_out for k in keys)  # + first_order_sum
    store.require_free_space(context.asset_key, keys, needed)
    stored = lambda layer, fe: as_stored(fe, store.alpha_dtype, factors[layer])  # noqa: E731
    groups = _groups(context, keys, {k: running_top_bytes(lenses[int(k)].n_neurons, lenses[int(k)].d_out,
                                                          analysis.top_k, dtype) for k in keys}, "the running top")
    with _StagedLayers(context, store, needed) as files:
        for group in groups:
            group_lenses = {int(k): lenses[int(k)] for k in group}
            group_first = FirstOrderSums({layer: first_order.lenses[layer] for layer in group_lenses})
            means = {layer: EffectsMean(factors[layer], device=model.compute_device()) for layer in group_lenses}
            progress = Progress(len(data), f"layers {', '.join(group)} train effects, pass 1 of 2 (means)",
                                log=context.log.info)
            for _, effects in iter_factorized(group_lenses, data.batches(loaded, model.batch_size, model.max_length),
                                              progress, on_capture=group_first.add):
                for layer, fe in effects.items():
                    means[layer].add(stored(layer, fe))
            for key in group:
                mean = means[int(key)].means()
                files.open(key, lambda path, mean=mean: TopKEffectsWriter(
                    path, len(data), mean, analysis.top_k, batch_size=model.batch_size, dtype=dtype))
            progress = Progress(len(data), f"layers {', '.join(group)} train effects, pass 2 of 2 (norms, top "
                                f"{analysis.top_k})", log=context.log.info)
            for _, effects in iter_factorized(group_lenses, data.batches(loaded, model.batch_size, model.max_length),
                                              progress):
                for layer, fe in effects.items():
                    files.write(layer, stored(layer, fe))
            sums = _first_order(group_first)
            for key in group:
                files.close(key, lenses[int(key)], data, "train", sums[int(key)], made_from,
                            profile_resources(model, dataset, analysis, store),
                            {"layout": TOPK_LAYOUT, "top_k": analysis.top_k}, file_attrs={"alpha_dtype": store.alpha_dtype})
    seconds = time.perf_counter() - t0
    lens = lenses[int(keys[-1])]
    shape = (len(data), lens.n_neurons, lens.d_out)
    context.log.info(f"layers {', '.join(keys)}: top-{analysis.top_k} train effects of {len(data)} samples in "
                     f"{2 * len(groups)} data passes, {seconds:.1f} s")
    context.add_output_metadata({
        "effects_shape": str(list(shape)), "layout": TOPK_LAYOUT, "top_k": analysis.top_k, "rows": shape[0],
        "model": model.source, "layers": ", ".join(keys), "coefficient": analysis.coefficient,
        "convention": lens.convention, "data_passes": 2 * len(groups), "run_time_s": round(seconds, 3),
    })
    return files.staged


def val_effects_asset(topk: bool) -> str:
    """The asset holding what the ablations read of the val effects: the effects themselves, or in the
    top-k mode their sums."""
    return "val_effect_sums" if topk else "val_second_order_effects"


def stream_effect_sums(context, model: ModelResource, analysis: AnalysisResource, dataset: DatasetResource,
                       store: ArtifactStore, neuron_pcas: dict, sparse_codes: dict, text_embeddings) -> dict[str, H5Payload]:
    """The val pass of the top-k mode: instead of the val effects, what the ablations read of them
    (:class:`~oe_assets.lens.ablations.EffectSums`, about the train PCA's means, thresholds and
    components and the sparse codes' reconstructions), batch by batch in one data pass for a group of
    layers (grouped to fit :func:`memory_budget`), with the first-order sums.  Each batch is rounded
    as an ``alpha``-form effects file stores it (:func:`as_stored`).  Per layer ``[val samples,
    d_out]``: ``total``, ``significant_sum``, ``projected``, ``reconstructed``, ``first_order_sum``;
    ``significant`` ``[val samples, neurons]``; ``mlp_out_mean`` ``[d_model]``; ``labels``."""
    t0 = time.perf_counter()
    loaded, data, keys, lenses, first_order, made_from = _step_pass(context, "val", model, analysis, dataset)
    factors = {layer: rounded_factors(lens.factors) for layer, lens in lenses.items()}
    for key in keys:  # before the pass: codes of another vocabulary would waste it
        same_vocabulary(text_embeddings, sparse_codes[key], key)
    dictionary = reconstruction_dictionary(text_embeddings, analysis.coefficient)
    S = len(data)
    per_layer = {k: (4 * S * lenses[int(k)].d_out * 8 + S * lenses[int(k)].n_neurons  # the sums, the pairs
                     + 3 * lenses[int(k)].n_neurons * lenses[int(k)].d_out * 8) for k in keys}  # the PCA's arrays
    store.require_free_space(context.asset_key, keys, sum(5 * S * lenses[int(k)].d_out * 8 + S * lenses[int(k)].n_neurons
                                                          for k in keys))  # the sums, first-order sums, pairs
    out = {}
    for group in _groups(context, keys, per_layer, "the val sums"):
        group_lenses = {int(k): lenses[int(k)] for k in group}
        group_first = FirstOrderSums({layer: first_order.lenses[layer] for layer in group_lenses})
        pcas = {int(k): (neuron_pcas[k].read("means"), neuron_pcas[k].read("norms")[:, 0],
                         neuron_pcas[k].read("components"), sparse_reconstructions(sparse_codes[k], dictionary))
                for k in group}
        parts: dict[int, list[EffectSums]] = {layer: [] for layer in group_lenses}
        progress = Progress(S, f"layers {', '.join(group)} val effect sums", log=context.log.info)
        for _, effects in iter_factorized(group_lenses, data.batches(loaded, model.batch_size, model.max_length),
                                          progress, on_capture=group_first.add):
            for layer, fe in effects.items():
                parts[layer].append(effect_sums(as_stored(fe, store.alpha_dtype, factors[layer]), *pcas[layer]))
        first_order_sums = _first_order(group_first)
        for key in group:
            sums = EffectSums.concat(parts.pop(int(key)))
            inputs = {entry("neuron_pcas", key): neuron_pcas[key].attrs,
                      entry("sparse_codes", key): sparse_codes[key].attrs, "text_embeddings": text_embeddings.attrs}
            attrs = provenance(context, context.asset_key.to_user_string(), inputs,
                               profile_resources(model, dataset, analysis, store),
                               {**made_from, "convention": lenses[int(key)].convention}, partition=key)
            out[key] = H5Payload({**sums.arrays(), **first_order_sums[int(key)], "labels": np.asarray(data.labels)},
                                 {"layout": EFFECT_SUMS_LAYOUT, "model": model.source, "layer": int(key),
                                  "coefficient": analysis.coefficient, "convention": lenses[int(key)].convention,
                                  "split": "val", "code_version": CODE_VERSION, **attrs})
            context.add_asset_metadata({"layer": int(key), "samples": S,
                                        "significant_fraction": sums.significant_fraction}, partition_key=key)
    seconds = time.perf_counter() - t0
    context.add_output_metadata({"layout": EFFECT_SUMS_LAYOUT, "rows": S, "layers": ", ".join(keys),
                                 "run_time_s": round(seconds, 3)})
    return out


def _effects_asset(name: str, split: str, upstream: str, description: str, common: dict,
                   topk: bool = False) -> dg.AssetsDefinition:
    """The factorized effects asset ``name`` of one split, on top of its representations ``upstream``
    (``topk``: the train effects in the top-k form)."""

    @dg.asset(name=name, deps=[upstream, "model", f"{split}_data"], description=description, **common)
    def effects(context: dg.AssetExecutionContext, model: ModelResource, analysis: AnalysisResource,
                dataset: DatasetResource, store: ArtifactStore):
        if topk:
            return stream_topk_effects(context, model, analysis, dataset, store)
        return stream_effects(context, split, model, analysis, dataset, store)

    return effects


def build_effect_assets(partitions_def: dg.PartitionsDefinition, imagenet_r: bool = False,
                        topk: bool = False) -> list[dg.AssetsDefinition]:
    """The train and val effects; with ``imagenet_r`` also ``val_r_second_order_effects`` (the
    ImageNet-R split of ``dataset.val_r_path``).  With ``topk`` (``storage.effects_mode: topk``) the
    train effects in the top-k form and, instead of the val effects, ``val_effect_sums`` (after the
    PCA and the sparse codes)."""
    common = dict(group_name="second_order", partitions_def=partitions_def, io_manager_key="hdf5_io_manager",
                  kinds={"pytorch", "hdf5"}, code_version=CODE_VERSION, pool="gpu", op_tags=model_step_tags(),
                  backfill_policy=dg.BackfillPolicy.single_run())
    if topk:
        return [
            _effects_asset("second_order_effects", "train", "train_representations",
                           "Per-neuron second-order effects of one MLP layer, top-k form (storage.effects_mode: "
                           "topk): norms [train samples, neurons] of every sample, means [neurons, d_out], and each "
                           "neuron's top_k samples by centred norm with their centred effects [neurons, top_k, "
                           "d_out].  Two data passes.", common, topk=True),
            _effect_sums_asset(common),
        ]
    assets = [
        _effects_asset("second_order_effects", "train", "train_representations",
                       "Per-neuron second-order effects [train samples, neurons, d_out] of one MLP layer through every "
                       "later attention head (fast path), stored factorized: alpha [samples, J*H, neurons] and the "
                       "layer's per-head factors.", common),
        _effects_asset("val_second_order_effects", "val", "val_representations",
                       "Per-neuron second-order effects [val samples, neurons, d_out] of one MLP layer (factorized), "
                       "for the ablations.", common),
    ]
    if imagenet_r:
        assets.append(_effects_asset(
            "val_r_second_order_effects", "val_r", "val_r_representations",
            "Per-neuron second-order effects [ImageNet-R samples, neurons, d_out] of one MLP layer (factorized), "
            "for the ImageNet-R ablations.", common))
    return assets


def _effect_sums_asset(common: dict) -> dg.AssetsDefinition:
    @dg.asset(name="val_effect_sums", deps=["val_representations", "model", "val_data"],
              description="Top-k mode: the val pass after the PCA and the sparse codes, keeping what the ablations "
              "read of the val effects: sums over neurons [val samples, d_out] (all, significant, projected on the "
              "PC and on the sparse reconstruction) and the significant (sample, neuron) pairs.", **common)
    def val_effect_sums(context: dg.AssetExecutionContext, model: ModelResource, analysis: AnalysisResource,
                        dataset: DatasetResource, store: ArtifactStore, neuron_pcas: dict, sparse_codes: dict,
                        text_embeddings):
        return stream_effect_sums(context, model, analysis, dataset, store, neuron_pcas, sparse_codes, text_embeddings)

    return val_effect_sums
