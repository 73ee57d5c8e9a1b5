"""Per-layer baselines for the second-order ablations: the layer's first-order (direct) effects and
its total effect (the MLP output replaced by its train mean in the real forward pass)."""

import numpy as np
import pyarrow as pa
import torch

import dagster as dg

from ..lens import FirstOrderLens, representations, replaced_mlp_representations, token_mask, top1_accuracy
from ..lens.batching import Progress
from ..resources.datasets import DatasetResource
from ..resources.model import AnalysisResource, ModelResource
from ..resources.store import H5Payload
from .common import CODE_VERSION, EAGER, md_table, timer

#: the scenarios of ``total_effects``, in report order
BASELINE_SCENARIOS = ("first_order_mean_ablation", "total_mean_ablation")
BASELINE_SCHEMA = pa.schema([
    ("layer", pa.int64()), ("scenario", pa.string()), ("accuracy", pa.float64()),
    ("mean_change", pa.float64()), ("samples", pa.int64()),
])


def _first_order_pass(context, split: str, lenses: dict[int, FirstOrderLens], loaded, data, model: ModelResource,
                      with_mlp_mean: bool):
    """One data pass for every layer of ``lenses``: ``{layer: sum_n fo [samples, d_out]}`` and, with
    ``with_mlp_mean``, ``{layer: the mean MLP output [d_model]}`` over samples and real tokens."""
    adapter = loaded.adapter
    layers = sorted(lenses)
    sums = {layer: [] for layer in layers}
    act_sum = {layer: 0.0 for layer in layers}
    tokens = 0.0
    progress = Progress(len(data), f"layers {', '.join(map(str, layers))} {split} first-order effects",
                        log=context.log.info)
    for batch in data.batches(loaded, model.batch_size, model.max_length):
        caps = adapter.capture_layers(batch, layers)
        for layer in layers:
            cap = caps[layer]
            sums[layer].append(lenses[layer].summed_from_capture(cap).double().cpu().numpy())
            if with_mlp_mean:
                mask = token_mask(batch, cap.activations)
                act_sum[layer] = act_sum[layer] + torch.einsum("bt,btn->n", mask, cap.activations).double().cpu()
        if with_mlp_mean:
            tokens += float(mask.sum())
        progress.update(int(caps[layers[0]].activations.shape[0]))
    out = {layer: np.concatenate(sums[layer]) for layer in layers}
    means = {}
    if with_mlp_mean:
        for layer in layers:
            W_out, b_out = adapter.mlp_out_weights(layer)
            mean_act = (act_sum[layer] / tokens).to(W_out.device, W_out.dtype)
            means[layer] = (W_out @ mean_act + b_out).double().cpu().numpy()
    return out, means


def build_baseline_assets(partitions_def: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    layered = dict(group_name="analysis", partitions_def=partitions_def, code_version=CODE_VERSION, pool="gpu",
                   backfill_policy=dg.BackfillPolicy.single_run())

    @dg.asset(io_manager_key="hdf5_io_manager", kinds={"pytorch", "hdf5"},
              deps=["train_representations", "val_representations", "model"],
              description="First-order (direct) effects of the layer's neurons, a_n W_out[:, n] through the "
              "frozen norms after the MLP, the readout and the projection, scaled by coefficient / |r|; stored "
              "summed over neurons: val_sum [val samples, d_out], train_mean_sum [d_out] (the train mean of "
              "that sum), and mlp_out_mean [d_model] (the MLP output's mean over train samples and tokens).  "
              "One train and one val data pass for every layer of the step.", **layered)
    def first_order_effects(context: dg.AssetExecutionContext, model: ModelResource, analysis: AnalysisResource,
                            dataset: DatasetResource):
        loaded = model.load()
        keys = list(context.partition_keys)
        out, meta = {}, {}
        with timer(meta), torch.no_grad():
            lenses = {int(k): FirstOrderLens(loaded.adapter, int(k), coefficient=analysis.coefficient) for k in keys}
            train, mlp_mean = _first_order_pass(context, "train", lenses, loaded, dataset.split("train"), model, True)
            val_data = dataset.split("val")
            val, _ = _first_order_pass(context, "val", lenses, loaded, val_data, model, False)
            for key in keys:
                layer = int(key)
                train_mean = train[layer].mean(axis=0)
                change = np.linalg.norm(val[layer] - train_mean, axis=1)
                context.add_asset_metadata({"layer": layer, "val_sum_shape": str(list(val[layer].shape)),
                                            "mean_change": float(change.mean())}, partition_key=key)
                out[key] = H5Payload({"val_sum": val[layer], "train_mean_sum": train_mean,
                                      "mlp_out_mean": mlp_mean[layer]},
                                     {"model": model.source, "layer": layer, "coefficient": analysis.coefficient,
                                      "norms": ", ".join(lenses[layer].norms), "code_version": CODE_VERSION})
        context.add_output_metadata({**meta, "rows": len(val_data), "layers": ", ".join(keys), "data_passes": 2})
        return out

    @dg.asset(io_manager_key="parquet_io_manager", kinds={"pytorch", "parquet"}, automation_condition=EAGER,
              deps=["model"],
              description="Val accuracy and mean representation change |X - rep| under the layer's first-order "
              "mean ablation (rep - sum_n fo + train mean of sum_n fo) and total mean ablation (the MLP output "
              "replaced by its train mean over samples and tokens inside the real forward pass, everything "
              "downstream recomputed).", **layered)
    def total_effects(context: dg.AssetExecutionContext, model: ModelResource, analysis: AnalysisResource,
                      dataset: DatasetResource, val_representations, classifier, first_order_effects: dict):
        reps, labels = val_representations.read("representations"), val_representations.read("labels")
        W = classifier.read("classifier")
        coefficient = float(val_representations.attrs.get("coefficient", analysis.coefficient))
        loaded = model.load()
        data = dataset.split("val")
        out, meta = {}, {}
        with timer(meta), torch.no_grad():
            for key in context.partition_keys:
                fo = first_order_effects[key]
                X_fo = reps - fo.read("val_sum") + fo.read("train_mean_sum")
                replacement = torch.as_tensor(fo.read("mlp_out_mean"))
                progress = Progress(len(data), f"layer {key} total mean ablation", log=context.log.info)
                X_total = []
                for batch in data.batches(loaded, model.batch_size, model.max_length):
                    r = replaced_mlp_representations(loaded.adapter, batch, int(key), replacement)
                    X_total.append(representations(r, coefficient).double().cpu().numpy())
                    progress.update(r.shape[0])
                X = {"first_order_mean_ablation": X_fo, "total_mean_ablation": np.concatenate(X_total)}
                rows = [{"layer": int(key), "scenario": s, "accuracy": top1_accuracy(X[s] @ W, labels),
                         "mean_change": float(np.linalg.norm(X[s] - reps, axis=1).mean()), "samples": len(labels)}
                        for s in BASELINE_SCENARIOS]
                out[key] = pa.Table.from_pylist(rows, schema=BASELINE_SCHEMA)
                context.add_asset_metadata({"layer": int(key), "preview": dg.MetadataValue.md(md_table(
                    rows, ["scenario", "accuracy", "mean_change"]))}, partition_key=key)
        context.add_output_metadata({**meta, "rows": len(BASELINE_SCENARIOS), "samples": len(labels),
                                     "layers": ", ".join(context.partition_keys)})
        return out

    return [first_order_effects, total_effects]
