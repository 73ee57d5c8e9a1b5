"""Per-layer baselines for the second-order ablations: the layer's first-order (direct) effects and
its total effect (the MLP output replaced by its train mean in the real forward pass)."""

import numpy as np
import pyarrow as pa
import torch

import dagster as dg

from ..lens import representations, replaced_mlp_representations, top1_accuracy
from ..lens.batching import Progress
from ..resources.datasets import DatasetResource
from ..step_tags import model_step_tags
from ..resources.model import AnalysisResource, ModelResource
from ..provenance import entry, split_record
from ..resources.store import ArtifactStore, H5Payload, table_with_attrs
from .effects import val_effects_asset
from .common import CODE_VERSION, EAGER, md_table, profile_resources, provenance, timer

#: the scenarios of ``total_effects``, in report order
BASELINE_SCENARIOS = ("first_order_mean_ablation", "total_mean_ablation")
BASELINE_SCHEMA = pa.schema([
    ("layer", pa.int64()), ("scenario", pa.string()), ("accuracy", pa.float64()),
    ("mean_change", pa.float64()), ("samples", pa.int64()),
])


def build_baseline_assets(partitions_def: dg.PartitionsDefinition, topk: bool = False) -> list[dg.AssetsDefinition]:
    """``first_order_effects`` (from the effects files' first-order sums; with ``topk``, the val ones
    from ``val_effect_sums``) and ``total_effects``."""
    val_effects = val_effects_asset(topk)
    layered = dict(group_name="analysis", partitions_def=partitions_def, code_version=CODE_VERSION, pool="gpu",
                   op_tags=model_step_tags(),
                   backfill_policy=dg.BackfillPolicy.single_run())

    @dg.asset(io_manager_key="hdf5_io_manager", kinds={"numpy", "hdf5"},
              description="First-order (direct) effects of the layer's neurons, a_n W_out[:, n] through the "
              "frozen norms after the MLP, the readout and the projection, scaled by coefficient / |r|; stored "
              "summed over neurons: val_sum [val samples, d_out], train_mean_sum [d_out] (the train mean of "
              "that sum), and mlp_out_mean [d_model] (the MLP output's mean over train samples and tokens).  "
              "Computed in the effects' own data pass (read here from their files: no model run).",
              ins={"val_second_order_effects": dg.AssetIn(val_effects)}, **layered)
    def first_order_effects(context: dg.AssetExecutionContext, model: ModelResource, analysis: AnalysisResource,
                            dataset: DatasetResource, store: ArtifactStore, second_order_effects: dict,
                            val_second_order_effects: dict):
        out, meta = {}, {}
        with timer(meta):
            for key in context.partition_keys:
                train, val = second_order_effects[key], val_second_order_effects[key]
                attrs = provenance(context, "first_order_effects",
                                   {entry("second_order_effects", key): train.attrs,
                                    entry(val_effects, key): val.attrs},
                                   profile_resources(model, dataset, analysis, store), partition=key)
                for group in (train, val):
                    if "first_order_sum" not in group.names:
                        raise ValueError(f"{group.path} has no first-order sums (written by an earlier version); "
                                         f"re-materialize second_order_effects and {val_effects}")
                val_sum, train_mean = val.read("first_order_sum"), train.read("first_order_sum").mean(axis=0)
                change = np.linalg.norm(val_sum - train_mean, axis=1)
                context.add_asset_metadata({"layer": int(key), "val_sum_shape": str(list(val_sum.shape)),
                                            "mean_change": float(change.mean())}, partition_key=key)
                out[key] = H5Payload({"val_sum": val_sum, "train_mean_sum": train_mean,
                                      "mlp_out_mean": train.read("mlp_out_mean")},
                                     {"model": train.attrs.get("model"), "layer": int(key),
                                      "coefficient": train.attrs.get("coefficient"), "code_version": CODE_VERSION,
                                      **attrs})
        context.add_output_metadata({**meta, "layers": ", ".join(context.partition_keys), "data_passes": 0})
        return out

    @dg.asset(io_manager_key="parquet_io_manager", kinds={"pytorch", "parquet"}, automation_condition=EAGER,
              deps=["model", "val_data"],
              description="Val accuracy and mean representation change |X - rep| under the layer's first-order "
              "mean ablation (rep - sum_n fo + train mean of sum_n fo) and total mean ablation (the MLP output "
              "replaced by its train mean over samples and tokens inside the real forward pass, everything "
              "downstream recomputed).", **layered)
    def total_effects(context: dg.AssetExecutionContext, model: ModelResource, analysis: AnalysisResource,
                      dataset: DatasetResource, store: ArtifactStore, val_representations, classifier,
                      first_order_effects: dict):
        reps, labels = val_representations.read("representations"), val_representations.read("labels")
        W = classifier.read("classifier")
        coefficient = float(val_representations.attrs.get("coefficient", analysis.coefficient))
        loaded = model.load()
        data = dataset.split("val")
        made_from = split_record("val", data)
        out, meta = {}, {}
        with timer(meta), torch.no_grad():
            for key in context.partition_keys:
                fo = first_order_effects[key]
                attrs = provenance(context, "total_effects", {
                    "val_representations": val_representations.attrs, "classifier": classifier.attrs,
                    entry("first_order_effects", key): fo.attrs}, profile_resources(model, dataset, analysis, store),
                    made_from, partition=key)
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
                out[key] = table_with_attrs(pa.Table.from_pylist(rows, schema=BASELINE_SCHEMA), attrs)
                context.add_asset_metadata({"layer": int(key), "preview": dg.MetadataValue.md(md_table(
                    rows, ["scenario", "accuracy", "mean_change"]))}, partition_key=key)
        context.add_output_metadata({**meta, "rows": len(BASELINE_SCENARIOS), "samples": len(labels),
                                     "layers": ", ".join(context.partition_keys)})
        return out

    return [first_order_effects, total_effects]
