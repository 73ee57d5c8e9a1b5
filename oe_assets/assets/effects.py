"""Per-layer second-order effect tensors, streamed into HDF5 batch by batch."""


import h5py
import numpy as np
import torch

import dagster as dg

from ..lens import SecondOrderLens
from ..lens.batching import Progress
from ..resources.datasets import DatasetResource
from ..resources.io_managers import HDF5IOManager, StagedH5
from ..resources.model import AnalysisResource, ModelResource
from .common import CODE_VERSION, discard, timer


def stream_effects(context, split: str, model: ModelResource, analysis: AnalysisResource, dataset: DatasetResource,
                   hdf5_io_manager: dg.ResourceParam[HDF5IOManager]) -> dict[str, StagedH5]:
    """For every layer partition of the step: run the lens over the split and write its effects
    ``[samples, neurons, d_out]`` into a staged HDF5 file, one batch at a time (never the whole
    tensor in memory).  The model is loaded once for all the step's layers."""
    loaded = model.load()
    data = dataset.split(split)
    out: dict[str, StagedH5] = {}
    # bfloat16 has no numpy dtype: such models store float32 effects
    torch_store = torch.float32 if loaded.adapter.dtype == torch.bfloat16 else loaded.adapter.dtype
    dtype = np.dtype(str(torch_store).replace("torch.", ""))
    try:
        for key in context.partition_keys:
            layer = int(key)
            meta: dict = {}
            path = hdf5_io_manager.stage(context.asset_key, key)
            out[key] = StagedH5(path)
            with timer(meta), torch.no_grad():
                lens = SecondOrderLens(loaded.adapter, layer, coefficient=analysis.coefficient,
                                       convention=analysis.convention)
                shape = (len(data), lens.n_neurons, lens.d_out)
                progress = Progress(len(data), f"layer {layer} {split} effects", log=context.log.info)
                with h5py.File(path, "w") as f:
                    # one batch of samples per chunk (each batch write fills whole chunks: no
                    # read-modify-write of compressed chunks), 16 neurons wide for the PCA's blocks
                    ds = f.create_dataset("effects", shape=shape, dtype=dtype,
                                          chunks=(min(shape[0], model.batch_size), min(shape[1], 16), shape[2]),
                                          **hdf5_io_manager.compression())
                    start = 0
                    for batch in data.batches(loaded, model.batch_size, model.max_length):
                        effects = lens(batch).to(torch_store).cpu().numpy()
                        ds[start:start + len(effects)] = effects
                        start += len(effects)
                        progress.update(len(effects))
                    f.create_dataset("labels", data=data.labels)
                    if start != len(data):
                        raise RuntimeError(f"wrote {start} of {len(data)} samples")
            context.log.info(f"layer {layer}: effects {shape} in {meta['run_time_s'].value:.1f} s")
            context.add_asset_metadata({"layer": layer, "run_time_s": meta["run_time_s"]}, partition_key=key)
            out[key] = StagedH5(path, {"model": model.source, "layer": layer, "coefficient": analysis.coefficient,
                                       "convention": lens.convention, "split": split, "shape": list(shape),
                                       "code_version": CODE_VERSION})
    except BaseException:
        for staged in out.values():  # every layer of the step, not only the one that failed
            discard(staged.path)
        raise
    context.add_output_metadata({
        "effects_shape": str(list(shape)), "effects_dtype": str(dtype), "rows": shape[0], "model": model.source,
        "layers": ", ".join(context.partition_keys), "coefficient": analysis.coefficient,
        "convention": lens.convention,
    })
    return out


def build_effect_assets(partitions_def: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    common = dict(group_name="second_order", partitions_def=partitions_def, io_manager_key="hdf5_io_manager",
                  kinds={"pytorch", "hdf5"}, code_version=CODE_VERSION, pool="gpu",
                  backfill_policy=dg.BackfillPolicy.single_run())

    @dg.asset(deps=["train_representations", "model"], description="Per-neuron second-order effects [train samples, "
              "neurons, d_out] of one MLP layer through every later attention head (fast path).", **common)
    def second_order_effects(context: dg.AssetExecutionContext, model: ModelResource, analysis: AnalysisResource,
                             dataset: DatasetResource, hdf5_io_manager: dg.ResourceParam[HDF5IOManager]):
        return stream_effects(context, "train", model, analysis, dataset, hdf5_io_manager)

    @dg.asset(deps=["val_representations", "model"], description="Per-neuron second-order effects [val samples, "
              "neurons, d_out] of one MLP layer, for the ablations.", **common)
    def val_second_order_effects(context: dg.AssetExecutionContext, model: ModelResource,
                                 analysis: AnalysisResource, dataset: DatasetResource,
                                 hdf5_io_manager: dg.ResourceParam[HDF5IOManager]):
        return stream_effects(context, "val", model, analysis, dataset, hdf5_io_manager)

    return [second_order_effects, val_second_order_effects]
