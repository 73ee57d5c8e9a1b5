"""Per-layer analysis: PCA bases, sparse codes, ablation reports, and the cross-layer summary."""


import numpy as np
import pyarrow as pa

import dagster as dg

from ..lens.ablations import EFFECT_SUMS_LAYOUT
from ..lens import (
    ALL_SCENARIOS, EffectSums, ablate, ablate_from_sums, neuron_pca, nonzeros_by_magnitude,
    sparse_decompose, top_descriptions,
)
from ..plots import accuracy_against_layer, explained_variance_profile, markdown_image, significance_histogram
from ..reports import NeuronSection, render_report
from ..resources.datasets import DatasetResource
from ..provenance import entry, split_record
from ..resources.store import ArtifactStore, H5Payload, HTMLPage, open_effects, table_attrs, table_with_attrs
from ..resources.model import AnalysisResource, ModelResource
from ..models.loading import resolve_dtype
from .baselines import BASELINE_SCENARIOS
from .effects import EFFECTS_FILE_ATTRS, val_effects_asset
from .common import (  # noqa: F401 -- dense_codes, same_vocabulary: re-exported
    CODE_VERSION, EAGER, dense_codes, md_table, profile_resources, provenance, reconstruction_dictionary,
    same_vocabulary, sparse_reconstructions, timer,
)

ABLATION_SCHEMA = pa.schema([
    ("layer", pa.int64()), ("scenario", pa.string()), ("accuracy", pa.float64()), ("samples", pa.int64()),
    ("logits", pa.list_(pa.list_(pa.float64()))),
    # the layer's significance (the same on every row): the fraction of (val sample, neuron) pairs
    # whose centred effect norm exceeds the neuron's threshold, and the neurons above it on >= 1 sample
    ("significant_fraction", pa.float64()), ("significant_neurons", pa.int64()),
])
#: the per-layer findings of the summary, after the accuracy columns
FINDINGS = ("significant_fraction", "significant_neurons", "neurons", "pc1_explained_median")
#: the ImageNet-R accuracy columns of the summary (profiles with ``dataset.val_r_path``)
IMAGENET_R_COLUMNS = tuple(f"imagenet_r_{s}" for s in ALL_SCENARIOS)


def summary_schema(imagenet_r: bool = False) -> pa.Schema:
    """The columns of ``layer_summary``: layer, accuracies (ImageNet-R's after the baselines), findings."""
    accuracies = (*ALL_SCENARIOS, *BASELINE_SCENARIOS, *(IMAGENET_R_COLUMNS if imagenet_r else ()))
    return pa.schema(
        [("layer", pa.int64())] + [(s, pa.float64()) for s in accuracies]
        + [("significant_fraction", pa.float64()), ("significant_neurons", pa.int64()), ("neurons", pa.int64()),
           ("pc1_explained_median", pa.float64())])


SUMMARY_SCHEMA = summary_schema()


def table_schema(schema: pa.Schema) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(f.name, str(f.type)) for f in schema])


def sparse_arrays(codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes ``[neurons, descriptions]`` -> ``indices``/``values`` ``[neurons, k]`` (largest |value|
    first, ``-1``/``0`` padding)."""
    idx = np.full((codes.shape[0], k), -1, dtype=np.int64)
    val = np.zeros((codes.shape[0], k))
    for n, row in enumerate(codes):
        nz = nonzeros_by_magnitude(row, k)
        idx[n, :len(nz)], val[n, :len(nz)] = nz, row[nz]
    return idx, val


def findings_table(rows: list[dict]) -> str:
    """The per-layer findings in Markdown: significance, the PC's explained variance, and the
    accuracy under the three mean ablations (second-order, first-order, total) next to the baseline."""
    pct = lambda v: "" if v is None else f"{100 * v:.2f}"  # noqa: E731
    acc = lambda v: "" if v is None else f"{v:.2f}"  # noqa: E731
    table = [{
        "layer": r["layer"],
        "significant (sample, neuron) pairs %": pct(r.get("significant_fraction")),
        "significant neurons": "" if r.get("significant_neurons") is None
        else f"{r['significant_neurons']} / {r.get('neurons') or '?'}",
        "median PC variance explained %": pct(r.get("pc1_explained_median")),
        "baseline acc %": acc(r.get("baseline")),
        "2nd-order mean ablation acc %": acc(r.get("mean_ablate_all")),
        "1st-order mean ablation acc %": acc(r.get("first_order_mean_ablation")),
        "total mean ablation acc %": acc(r.get("total_mean_ablation")),
    } for r in rows]
    return md_table(table) + (
        "\n\nSignificant pair: a val sample whose centred second-order effect norm exceeds the neuron's "
        "threshold (`norms[:, 0]`); significant neuron: one with at least one such val sample.")


def layer_meta(context, key: str, **metadata) -> None:
    """Metadata of one layer partition (a step may cover several layers)."""
    context.add_asset_metadata({"layer": int(key), **metadata}, partition_key=key)


def plot_links(path, name: str) -> dict:
    """Catalog links to a plot's PNG in the store: ``<name>_png`` (path) and ``<name>_url`` (file URL)."""
    path = path.resolve()
    return {f"{name}_png": dg.MetadataValue.path(str(path)), f"{name}_url": dg.MetadataValue.url(path.as_uri())}


def build_analysis_assets(partitions_def: dg.PartitionsDefinition, imagenet_r: bool = False,
                          topk: bool = False) -> list[dg.AssetsDefinition]:
    """The per-layer analysis assets and ``layer_summary``; with ``imagenet_r`` also ``ablation_report_r``;
    with ``topk`` (``storage.effects_mode: topk``) the ablations read ``val_effect_sums``."""
    val_effects = val_effects_asset(topk)
    layered = dict(partitions_def=partitions_def, code_version=CODE_VERSION,
                   backfill_policy=dg.BackfillPolicy.single_run())

    @dg.asset(group_name="analysis", io_manager_key="hdf5_io_manager", kinds={"numpy", "hdf5"},
              description="Rank-1 PCA of each neuron's effects: components [neurons, d_out] (unit, sign "
              "rule), norms [neurons, top_k] (ascending; norms[:, 0] is the significance threshold), "
              "means [neurons, d_out].  Reads the effects neuron block by neuron block.", **layered)
    def neuron_pcas(context: dg.AssetExecutionContext, analysis: AnalysisResource, model: ModelResource,
                    dataset: DatasetResource, store: ArtifactStore, second_order_effects: dict):
        out, meta, thresholds, explained = {}, {}, {}, {}
        with timer(meta):
            for key in context.partition_keys:
                attrs = provenance(context, "neuron_pcas",
                                   {entry("second_order_effects", key): second_order_effects[key].attrs},
                                   profile_resources(model, dataset, analysis, store), partition=key)
                effects = open_effects(second_order_effects[key], device=model.compute_device())
                pca = neuron_pca(effects, analysis.top_k,
                                 progress=lambda done, total, key=key: context.log.debug(
                                     f"layer {key}: PCA {done}/{total} neurons"))
                order = np.argsort(-pca.thresholds)[: analysis.report_neurons]
                layer_meta(context, key, preview=dg.MetadataValue.md(md_table(
                    [{"neuron": int(n), "threshold": float(pca.thresholds[n]), "max norm": float(pca.norms[n, -1])}
                     for n in order])))
                thresholds[key], explained[key] = pca.thresholds, pca.explained
                out[key] = H5Payload({"components": pca.components, "norms": pca.norms, "means": pca.means,
                                      "explained": pca.explained},
                                     {**{k: v for k, v in second_order_effects[key].attrs.items()
                                         if k not in EFFECTS_FILE_ATTRS},  # what the effects are, not their file's form
                                      "layer": int(key), "top_k": analysis.top_k, "code_version": CODE_VERSION, **attrs})
        for name, plot, alt in (("significance", significance_histogram(thresholds), "neuron significance per layer"),
                                ("explained_variance", explained_variance_profile(explained),
                                 "variance explained by each PC")):
            meta[name] = dg.MetadataValue.md(markdown_image(plot, alt))
            meta.update(plot_links(store.write_plot(context.asset_key, name, plot, list(context.partition_keys)), name))
        context.add_output_metadata({**meta, "components_shape": str(list(pca.components.shape)),
                                     "norms_shape": str(list(pca.norms.shape)), "rows": pca.components.shape[0],
                                     "top_k": analysis.top_k, "layers": ", ".join(context.partition_keys)})
        return out

    @dg.asset(group_name="analysis", io_manager_key="hdf5_io_manager", kinds={"scikitlearn", "hdf5"},
              automation_condition=EAGER,
              description="Sparse codes of each neuron's PC over the normalised text dictionary (OMP, "
              "`components` non-zeros): indices and values [neurons, components].", **layered)
    def sparse_codes(context: dg.AssetExecutionContext, analysis: AnalysisResource, model: ModelResource,
                     dataset: DatasetResource, store: ArtifactStore, neuron_pcas: dict, text_embeddings):
        texts = text_embeddings.read("texts")
        emb = text_embeddings.read("embeddings")
        out, meta = {}, {}
        with timer(meta):
            for key in context.partition_keys:
                pcas = neuron_pcas[key]
                attrs = provenance(context, "sparse_codes", {entry("neuron_pcas", key): pcas.attrs,
                                                             "text_embeddings": text_embeddings.attrs},
                                   profile_resources(model, dataset, analysis, store), partition=key)
                codes = sparse_decompose(pcas.read("components"), emb, analysis.components,
                                         coefficient=analysis.coefficient, device=model.compute_device(),
                                         dtype=resolve_dtype(analysis.sparse_dtype))
                max_nonzeros = np.count_nonzero(codes.codes, axis=1).max()
                idx, val = sparse_arrays(codes.codes, analysis.components)
                thresholds = pcas.read("norms")[:, 0]
                top = np.argsort(-thresholds)[: analysis.report_neurons]
                rows = [r for r in top_descriptions(codes.codes[top], texts, k=5)]
                for r in rows:
                    r["neuron"] = int(top[r["neuron"]])
                layer_meta(context, key, max_nonzeros=int(max_nonzeros),
                           preview=dg.MetadataValue.md(md_table(rows, ["neuron", "rank", "coefficient", "text"])))
                out[key] = H5Payload({"indices": idx, "values": val},
                                     {"layer": int(key), "components": analysis.components,
                                      "max_nonzeros": int(max_nonzeros), "descriptions": len(texts), "vocabulary_version":
                                      text_embeddings.attrs.get("vocabulary_version"), "code_version": CODE_VERSION,
                                      **attrs})
        context.add_output_metadata({**meta, "indices_shape": str(list(idx.shape)), "rows": idx.shape[0],
                                     "components": analysis.components, "descriptions": len(texts),
                                     "layers": ", ".join(context.partition_keys)})
        return out

    report = dict(group_name="analysis", io_manager_key="parquet_io_manager", kinds={"numpy", "parquet"},
                  automation_condition=EAGER, metadata={"dagster/column_schema": table_schema(ABLATION_SCHEMA)},
                  **layered)

    @dg.asset(description="Val accuracy and logits under the five ablation scenarios and the sparse-code "
              "reconstruction.", ins={"val_second_order_effects": dg.AssetIn(val_effects)}, **report)
    def ablation_report(context: dg.AssetExecutionContext, model: ModelResource, analysis: AnalysisResource,
                        dataset: DatasetResource, store: ArtifactStore, val_representations,
                        val_second_order_effects: dict, classifier, neuron_pcas: dict, sparse_codes: dict,
                        text_embeddings):
        return ablation_tables(context, profile_resources(model, dataset, analysis, store), val_representations,
                               val_second_order_effects,
                               classifier.read("classifier"), neuron_pcas, sparse_codes, text_embeddings,
                               classifier_attrs=classifier.attrs, effects_asset=val_effects)

    @dg.asset(group_name="reports", io_manager_key="html_io_manager", kinds={"html"},
              automation_condition=EAGER, deps=["train_data"],
              description="A static HTML report per layer: the most significant neurons (first "
              "`report_neurons`), each with its top sparse-code descriptions and its top inputs by "
              "second-order effect norm (image thumbnails or sentences).  Offline, no scripts.", **layered)
    def neuron_report(context: dg.AssetExecutionContext, analysis: AnalysisResource, model: ModelResource,
                      dataset: DatasetResource,
                      store: ArtifactStore, neuron_pcas: dict, sparse_codes: dict,
                      second_order_effects: dict, text_embeddings):
        texts = text_embeddings.read("texts")
        train = dataset.split("train")
        train_record = split_record("train", train)  # the effects' sample indices must point into it
        classes = dataset.classes()
        label = lambda y: classes[y] if 0 <= y < len(classes) else str(y)  # noqa: E731
        out, meta = {}, {}
        with timer(meta):
            for key in context.partition_keys:
                pcas, codes = neuron_pcas[key], sparse_codes[key]
                lineage = provenance(context, "neuron_report", {
                    entry("neuron_pcas", key): pcas.attrs, entry("sparse_codes", key): codes.attrs,
                    entry("second_order_effects", key): second_order_effects[key].attrs,
                    "text_embeddings": text_embeddings.attrs}, profile_resources(model, dataset, analysis, store),
                    train_record, partition=key)
                same_vocabulary(text_embeddings, codes, key)
                thresholds = pcas.read("norms")[:, 0]
                explained = pcas.read("explained")
                chosen = np.argsort(-thresholds)[: analysis.report_neurons]
                idx, val = codes.read("indices"), codes.read("values")
                effects = open_effects(second_order_effects[key], device=model.compute_device())
                norms = dict(zip(np.sort(chosen), effects.norms(neurons=np.sort(chosen)).T))  # only these neurons
                sections = []
                for n in chosen:
                    top = np.argsort(-norms[n])[:6]
                    sections.append(NeuronSection(
                        neuron=int(n), threshold=float(thresholds[n]), explained=float(explained[n]),
                        descriptions=[(texts[i], float(v)) for i, v in zip(idx[n], val[n]) if i >= 0],
                        inputs=[{"norm": float(norms[n][s]), "label": label(int(train.labels[s])), "text": train.describe(int(s)),
                                 "thumbnail": train.thumbnail(int(s))} for s in top]))
                attrs = second_order_effects[key].attrs
                path = store.path_for(context.asset_key, key, ".html").resolve()
                layer_meta(context, key, report=dg.MetadataValue.path(str(path)),
                           report_url=dg.MetadataValue.url(path.as_uri()))
                out[key] = HTMLPage(render_report(
                    f"Layer {key}: the {len(sections)} most significant neurons",
                    f"model {attrs.get('model')}, convention {attrs.get('convention')}, coefficient "
                    f"{attrs.get('coefficient')}; neurons ordered by significance (top-k norm threshold)", sections), lineage)
        context.add_output_metadata({**meta, "neurons": len(chosen), "layers": ", ".join(context.partition_keys)})
        return out

    assets = [neuron_pcas, sparse_codes, ablation_report, neuron_report]
    if imagenet_r:
        @dg.asset(description="ImageNet-R accuracy and logits under the ablation scenarios (the val_r split of "
                  "dataset.val_r_path): with imagenet_r_classes='subset' the classifier is restricted to the 200 "
                  "ImageNet-R classes (the standard 200-way protocol), with 'all' it is the full 1000-way one.",
                  **report)
        def ablation_report_r(context: dg.AssetExecutionContext, model: ModelResource, analysis: AnalysisResource,
                              dataset: DatasetResource, store: ArtifactStore, val_r_representations,
                              val_r_second_order_effects: dict, classifier, neuron_pcas: dict, sparse_codes: dict,
                              text_embeddings):
            return ablation_tables(context, profile_resources(model, dataset, analysis, store), val_r_representations,
                                   val_r_second_order_effects,
                                   imagenet_r_classifier(classifier.read("classifier"), dataset), neuron_pcas,
                                   sparse_codes, text_embeddings, split="val_r", classifier_attrs=classifier.attrs)

        assets.append(ablation_report_r)
    return assets + [build_layer_summary(imagenet_r)]


def imagenet_r_classifier(W: np.ndarray, dataset: DatasetResource) -> np.ndarray:
    """The classifier of the ImageNet-R evaluation: the 1000-way ImageNet classifier ``[d, 1000]``,
    restricted to the 200 ImageNet-R columns (``imagenet_r_classes="subset"``) or whole (``"all"``)."""
    if W.shape[1] != 1000:
        raise ValueError(f"the ImageNet-R evaluation needs the 1000-way ImageNet classifier (dataset.kind="
                         f"'image_folder', class_index='imagenet'); the classifier has {W.shape[1]} columns")
    columns = dataset.imagenet_r_columns()
    return W if columns is None else W[:, columns]


def ablation_tables(context, resources: dict, val_representations, effects_in: dict,
                    W: np.ndarray, neuron_pcas: dict, sparse_codes: dict, text_embeddings, split: str = "val",
                    classifier_attrs: dict | None = None, effects_asset: str | None = None) -> dict[str, pa.Table]:
    """Every layer partition's ablation table (:data:`ABLATION_SCHEMA`) of one evaluation split
    (``split``: ``val`` or ``val_r``): its representations, its effects (``effects_asset``, default
    ``<split>_second_order_effects``; in the top-k mode ``val_effect_sums``, the sums the ablations
    read, gathered in the val pass) and the classifier ``W`` its labels index; refused when these
    inputs were made from different data or settings (``resources``:
    :func:`~oe_assets.assets.common.profile_resources`)."""
    effects_asset = effects_asset or f"{split}_second_order_effects"
    model, analysis = resources["model"], resources["analysis"]
    reps, labels = val_representations.read("representations"), val_representations.read("labels")
    dictionary = reconstruction_dictionary(text_embeddings, float(val_representations.attrs.get("coefficient", 100.0)))
    out, meta = {}, {}
    with timer(meta):
        for key in context.partition_keys:
            pcas, codes = neuron_pcas[key], sparse_codes[key]
            attrs = provenance(context, context.asset_key.to_user_string(), {
                f"{split}_representations": val_representations.attrs,
                entry(effects_asset, key): effects_in[key].attrs,
                "classifier": classifier_attrs or {}, entry("neuron_pcas", key): pcas.attrs,
                entry("sparse_codes", key): codes.attrs, "text_embeddings": text_embeddings.attrs},
                resources, partition=key)
            same_vocabulary(text_embeddings, codes, key)
            if effects_in[key].attrs.get("layout") == EFFECT_SUMS_LAYOUT:  # top-k mode: the val pass's sums
                res = ablate_from_sums(reps, EffectSums.from_arrays(effects_in[key].read), W, labels)
            else:
                effects = open_effects(effects_in[key], device=model.compute_device())
                res = ablate(reps, effects, W, labels, pcas.read("means"), pcas.read("norms")[:, 0],
                             pcas.read("components"), reconstructions=sparse_reconstructions(codes, dictionary))
            out[key] = table_with_attrs(pa.Table.from_pylist(
                [{"layer": int(key), "scenario": s, "accuracy": res.accuracy[s], "samples": len(labels),
                  "logits": res.logits[s].tolist() if analysis.store_logits else None,
                  "significant_fraction": res.significant_fraction, "significant_neurons": res.significant_neurons}
                 for s in ALL_SCENARIOS], schema=ABLATION_SCHEMA), attrs)
            layer_meta(context, key, significant_fraction=res.significant_fraction,
                       significant_neurons=res.significant_neurons, preview=dg.MetadataValue.md(md_table(
                           [{"scenario": s, "accuracy %": res.accuracy[s]} for s in ALL_SCENARIOS])))
    context.add_output_metadata({**meta, "rows": len(ALL_SCENARIOS), "samples": len(labels),
                                 "classes": int(W.shape[1]), "layers": ", ".join(context.partition_keys)})
    return out


def build_layer_summary(imagenet_r: bool = False) -> dg.AssetsDefinition:
    """``layer_summary``; with ``imagenet_r`` it also reads ``ablation_report_r`` and adds the
    :data:`IMAGENET_R_COLUMNS`."""
    all_layers = lambda **metadata: dg.AssetIn(partition_mapping=dg.AllPartitionMapping(),  # noqa: E731
                                               metadata={"allow_missing_partitions": True, **metadata})
    ins = {"ablation_report": all_layers(columns=["scenario", "accuracy", "significant_fraction",
                                                  "significant_neurons"]),  # never the logits
           "total_effects": all_layers(columns=["scenario", "accuracy"]),
           "neuron_pcas": all_layers()}
    if imagenet_r:
        ins["ablation_report_r"] = all_layers(columns=["scenario", "accuracy"])
    schema = summary_schema(imagenet_r)
    accuracy_columns = [*ALL_SCENARIOS, *BASELINE_SCENARIOS, *(IMAGENET_R_COLUMNS if imagenet_r else ())]

    @dg.asset(group_name="summary", io_manager_key="parquet_io_manager", kinds={"parquet", "matplotlib"},
              code_version=CODE_VERSION, automation_condition=EAGER, ins=ins,
              metadata={"dagster/column_schema": table_schema(schema)},
              description="Every materialized layer's accuracies in one table: the second-order ablations and "
              "reconstruction, and side by side the three mean ablations (second-order `mean_ablate_all`, "
              "first-order, total); a plot of them against layer; and a findings table (significant "
              "(sample, neuron) pairs, significant neurons, median variance explained by the PC)."
              + (" With an ImageNet-R folder, its ablation accuracies too (`imagenet_r_*`)." if imagenet_r else ""))
    def layer_summary(context: dg.AssetExecutionContext, model: ModelResource, dataset: DatasetResource,
                      analysis: AnalysisResource, store: ArtifactStore, ablation_report: dict, total_effects: dict,
                      neuron_pcas: dict, **imagenet_r_report) -> pa.Table:
        report_r = imagenet_r_report.get("ablation_report_r", {})
        inputs = {}
        for name, by_layer in (("ablation_report", ablation_report), ("total_effects", total_effects),
                               ("ablation_report_r", report_r)):
            inputs.update({entry(name, k): table_attrs(t) for k, t in by_layer.items()})
        inputs.update({entry("neuron_pcas", k): g.attrs for k, g in neuron_pcas.items()})
        attrs = provenance(context, "layer_summary", inputs, profile_resources(model, dataset, analysis, store))
        rows = []
        for key in sorted(ablation_report, key=int):
            report = ablation_report[key].to_pylist()
            acc = {r["scenario"]: r["accuracy"] for r in report}
            if key in total_effects:
                acc.update({r["scenario"]: r["accuracy"] for r in total_effects[key].to_pylist()})
            if key in report_r:
                acc.update({f"imagenet_r_{r['scenario']}": r["accuracy"] for r in report_r[key].to_pylist()})
            explained = neuron_pcas[key].read("explained") if key in neuron_pcas else None
            rows.append({"layer": int(key), **{s: acc.get(s) for s in accuracy_columns},
                         "significant_fraction": report[0].get("significant_fraction") if report else None,
                         "significant_neurons": report[0].get("significant_neurons") if report else None,
                         "neurons": None if explained is None else len(explained),
                         "pc1_explained_median": None if explained is None else float(np.median(explained))})
        table = table_with_attrs(pa.Table.from_pylist(rows, schema=schema), attrs)
        plot = accuracy_against_layer(rows, accuracy_columns)
        context.add_output_metadata({
            **plot_links(store.write_plot(context.asset_key, "accuracy_against_layer", plot), "plot"),
            "rows": len(rows), "layers": ", ".join(str(r["layer"]) for r in rows),
            "preview": dg.MetadataValue.md(md_table(rows, ["layer", *accuracy_columns])),
            "findings": dg.MetadataValue.md(findings_table(rows)),
            "plot": dg.MetadataValue.md(markdown_image(plot, "accuracy against layer")),
        })
        return table

    return layer_summary

