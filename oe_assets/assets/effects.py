"""Per-layer second-order effects, factorized, streamed into HDF5: one data pass for every layer of
a step."""

import time

import dagster as dg

from ..lens import FirstOrderLens, FirstOrderSums, SecondOrderLens
from ..lens.batching import Progress, iter_factorized
from ..lens.effects_file import FactorizedEffectsWriter
from ..provenance import split_record
from ..resources.datasets import DatasetResource
from ..step_tags import model_step_tags
from ..resources.model import AnalysisResource, ModelResource
from ..resources.store import ArtifactStore, StagedH5
from .common import CODE_VERSION, profile_resources, provenance


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
    loaded = model.load()
    data = dataset.split(split)
    keys = list(context.partition_keys)
    t0 = time.perf_counter()
    lenses = {int(key): SecondOrderLens(loaded.adapter, int(key), coefficient=analysis.coefficient,
                                        convention=analysis.convention, dense_cache_bytes=0) for key in keys}
    first_order = FirstOrderSums({layer: FirstOrderLens(loaded.adapter, layer, coefficient=analysis.coefficient)
                                  for layer in lenses})
    made_from = split_record(split, data)
    needed = sum(FactorizedEffectsWriter.expected_bytes(
        len(data), lenses[int(key)].factors, with_const=lenses[int(key)].convention == "reference",
        alpha_dtype=store.alpha_dtype, n_tokens=loaded.adapter.fixed_tokens, max_tokens=model.max_length,
        extra_bytes_per_sample=8 * lenses[int(key)].d_out) for key in keys)  # + first_order_sum
    store.require_free_space(context.asset_key, keys, needed)
    staged: dict[str, StagedH5] = {}
    writers: dict[str, FactorizedEffectsWriter] = {}
    writing = None  # the file being written when a write fails
    try:
        for key in keys:
            lens = lenses[int(key)]
            path = writing = store.stage(context.asset_key, key)
            staged[key] = StagedH5(path)
            writers[key] = FactorizedEffectsWriter(
                path, len(data), lens.factors, with_const=lens.convention == "reference", batch_size=model.batch_size,
                alpha_dtype=store.alpha_dtype, compression=store.compression(),
                n_tokens=loaded.adapter.fixed_tokens, max_tokens=model.max_length)
        progress = Progress(len(data), f"layers {', '.join(keys)} {split} effects", log=context.log.info)
        batches = data.batches(loaded, model.batch_size, model.max_length)
        for _, effects in iter_factorized(lenses, batches, progress, on_capture=first_order.add):
            for layer, fe in effects.items():
                writing = staged[str(layer)].path
                writers[str(layer)].write(fe)
        fo_sums, mlp_means = first_order.sums(), first_order.mlp_out_means()
        for key in keys:
            lens = lenses[int(key)]
            shape = (len(data), lens.n_neurons, lens.d_out)
            writing = staged[key].path
            form = writers[key].form
            writers.pop(key).close(labels=data.labels, extras={"first_order_sum": fo_sums[int(key)],
                                                               "mlp_out_mean": mlp_means[int(key)]})
            attrs = provenance(context, context.asset_key.to_user_string(), {},
                               profile_resources(model, dataset, analysis, store),
                               {**made_from, "convention": lens.convention}, partition=key)
            staged[key].attrs = {"model": model.source, "layer": int(key), "coefficient": analysis.coefficient,
                                 "convention": lens.convention, "split": split, "shape": list(shape),
                                 "code_version": CODE_VERSION, **attrs}
            context.add_asset_metadata({"layer": int(key), "effects_shape": str(list(shape)), "alpha_form": form,
                                        "alpha_shape": str([len(data), lens.factors.n_paths, lens.n_neurons])},
                                       partition_key=key)
    except BaseException as exc:
        for writer in writers.values():  # every handle closed before a file goes
            writer.abort()
        for value in staged.values():  # every layer of the step, not only the one that failed
            store.discard(value.path)
        if isinstance(exc, OSError) and writing is not None:
            raise store.write_error(context.asset_key, keys, writing, exc, needed) from exc
        raise
    seconds = time.perf_counter() - t0
    context.log.info(f"layers {', '.join(keys)}: {split} effects of {len(data)} samples in one data pass, {seconds:.1f} s")
    context.add_output_metadata({
        "effects_shape": str(list(shape)), "layout": "factorized", "alpha_dtype": store.alpha_dtype,
        "rows": shape[0], "model": model.source, "layers": ", ".join(keys), "coefficient": analysis.coefficient,
        "convention": lens.convention, "data_passes": 1, "run_time_s": round(seconds, 3),
    })
    return staged


def _effects_asset(name: str, split: str, upstream: str, description: str, common: dict) -> dg.AssetsDefinition:
    """The factorized effects asset ``name`` of one split, on top of its representations ``upstream``."""

    @dg.asset(name=name, deps=[upstream, "model", f"{split}_data"], description=description, **common)
    def effects(context: dg.AssetExecutionContext, model: ModelResource, analysis: AnalysisResource,
                dataset: DatasetResource, store: ArtifactStore):
        return stream_effects(context, split, model, analysis, dataset, store)

    return effects


def build_effect_assets(partitions_def: dg.PartitionsDefinition, imagenet_r: bool = False) -> list[dg.AssetsDefinition]:
    """The train and val effects; with ``imagenet_r`` also ``val_r_second_order_effects`` (the
    ImageNet-R split of ``dataset.val_r_path``)."""
    common = dict(group_name="second_order", partitions_def=partitions_def, io_manager_key="hdf5_io_manager",
                  kinds={"pytorch", "hdf5"}, code_version=CODE_VERSION, pool="gpu", op_tags=model_step_tags(),
                  backfill_policy=dg.BackfillPolicy.single_run())
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
