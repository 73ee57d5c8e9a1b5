"""Stage inputs: the vocabulary and the dataset files (observed), text embeddings, the classifier,
representations."""


import numpy as np
import torch

import dagster as dg

from ..lens import project_texts, representations
from ..lens.batching import Progress
from ..datasources.text_datasets import load_string_list
from ..datasources.vocabulary import load_vocabulary, tokenizer_vocabulary, vocabulary_hash
from ..lens.zero_shot import imagenet_templates
from ..provenance import split_fingerprint, split_record
from ..resources.datasets import DatasetResource
from ..step_tags import model_step_tags
from ..resources.io_managers import H5Payload
from ..resources.model import AnalysisResource, ModelResource
from ..resources.store import ArtifactStore
from .common import CODE_VERSION, EAGER, array_metadata, md_table, profile_resources, provenance, timer


def read_descriptions(analysis: AnalysisResource, model: ModelResource) -> list[str]:
    """The vocabulary's descriptions: the configured file, or the tokenizer's whole words."""
    if analysis.vocabulary_path:
        return load_vocabulary(analysis.vocabulary_path)
    return tokenizer_vocabulary(model.load().tokenizer)


def load_npz_array(spec: str) -> np.ndarray:
    """``"file.npz:key"`` -> that array."""
    path, _, key = spec.rpartition(":")
    if not path or not key:
        raise ValueError(f"array spec {spec!r} must be 'file.npz:key'")
    data = np.load(path)
    if key not in data:
        raise ValueError(f"{path} has no array {key!r}; it holds {sorted(data.files)}")
    return data[key]


#: the model as a node of the lineage graph: every asset that runs it depends on it
model_asset = dg.AssetSpec(
    "model", group_name="inputs", kinds={"huggingface"},
    description="The Hugging Face model of the profile (ModelResource: hub id or local folder); an "
    "external asset so that lineage runs from the model and the vocabulary to layer_summary.",
)


@dg.observable_source_asset(
    group_name="inputs",
    description="The text-description file the sparse codes draw on (one description a line). Its "
    "data version is the content hash: a change re-materializes text_embeddings and every sparse_codes "
    "partition downstream.",
)
def vocabulary(analysis: AnalysisResource, model: ModelResource) -> dg.ObserveResult:
    descriptions = read_descriptions(analysis, model)
    return dg.ObserveResult(
        data_version=dg.DataVersion(vocabulary_hash(descriptions)),
        metadata={"path": analysis.vocabulary_path or "(tokenizer words)", "descriptions": len(descriptions),
                  "preview": dg.MetadataValue.md(", ".join(descriptions[:20]))},
    )


def _dataset_source(split: str) -> dg.SourceAsset:
    """The observable source asset ``<split>_data``: the dataset split the profile reads."""

    @dg.observable_source_asset(
        name=f"{split}_data", group_name="inputs",
        description=f"The {split} split of the profile's dataset (after subsampling).  Its data version is the "
        "split's order hash (every sample with its label, in order: a changed, added, removed or reordered "
        f"sample changes it), so the assets made from it show as stale when the file changes.",
    )
    def observe(dataset: DatasetResource) -> dg.ObserveResult:
        fingerprint = split_fingerprint(dataset.split(split))
        path = {"train": dataset.train_path, "val": dataset.val_path, "val_r": dataset.val_r_path}[split]
        return dg.ObserveResult(data_version=dg.DataVersion(fingerprint["order"]),
                                metadata={"path": str(path), **fingerprint})

    return observe


#: the dataset splits as observable source assets (``val_r_data`` only with ``dataset.val_r_path``)
train_data, val_data, val_r_data = (_dataset_source(s) for s in ("train", "val", "val_r"))


def _model_meta(model: ModelResource, analysis: AnalysisResource) -> dict:
    return {"model": model.source, "coefficient": analysis.coefficient}


@dg.asset(
    group_name="inputs", deps=[vocabulary, model_asset], io_manager_key="hdf5_io_manager", kinds={"pytorch", "hdf5"},
    code_version=CODE_VERSION, pool="gpu", op_tags=model_step_tags(), automation_condition=EAGER,
    description="Embeddings [descriptions, d_out] of the vocabulary, encoded by the model's text side "
    "(or given as file.npz:key).",
)
def text_embeddings(context: dg.AssetExecutionContext, model: ModelResource, analysis: AnalysisResource,
                    dataset: DatasetResource, store: ArtifactStore):
    meta: dict = {}
    with timer(meta):
        texts = read_descriptions(analysis, model)
        if analysis.text_embeddings_path:
            emb = load_npz_array(analysis.text_embeddings_path)
        else:
            loaded = model.load()
            encode = loaded.adapter.text_encoder(loaded.tokenizer)
            emb = project_texts(encode, texts, batch_size=max(model.batch_size, 256)).cpu().numpy()
        if emb.shape[0] != len(texts):
            raise ValueError(f"text embeddings have {emb.shape[0]} rows but the vocabulary has {len(texts)} descriptions")
    version = vocabulary_hash(texts)
    meta.update(array_metadata("embeddings", emb), vocabulary_version=version, **_model_meta(model, analysis),
                preview=dg.MetadataValue.md(", ".join(texts[:20])))
    context.add_output_metadata(meta)
    attrs = provenance(context, "text_embeddings", {}, profile_resources(model, dataset, analysis, store),
                       {"vocabulary": version})
    return H5Payload({"embeddings": emb, "texts": texts},
                     {"model": model.source, "vocabulary_version": version, "code_version": CODE_VERSION, **attrs})


@dg.asset(
    group_name="inputs", io_manager_key="hdf5_io_manager", kinds={"pytorch", "hdf5"}, code_version=CODE_VERSION,
    pool="gpu", op_tags=model_step_tags(), deps=[model_asset],
    description="Zero-shot classifier [d_out, classes]: class names x templates through the model's text "
    "side, normalised per prompt, averaged per class, unit columns (causal LMs: label unembeddings).",
)
def classifier(context: dg.AssetExecutionContext, model: ModelResource, analysis: AnalysisResource,
               dataset: DatasetResource, store: ArtifactStore):
    meta: dict = {}
    with timer(meta):
        classes = dataset.classes()
        if analysis.classifier_path:
            W = load_npz_array(analysis.classifier_path)
        else:
            templates = imagenet_templates() if analysis.templates_path in (None, "imagenet") else \
                load_string_list(analysis.templates_path, "prompt template", "{}")
            loaded = model.load()
            W = loaded.adapter.zero_shot_classifier(loaded.tokenizer, classes, templates).cpu().numpy()
        if W.shape[1] != len(classes):
            raise ValueError(f"classifier has {W.shape[1]} columns but the dataset has {len(classes)} classes")
    meta.update(array_metadata("classifier", W), classes=len(classes), **_model_meta(model, analysis),
                preview=dg.MetadataValue.md(", ".join(classes[:20])))
    context.add_output_metadata(meta)
    attrs = provenance(context, "classifier", {}, profile_resources(model, dataset, analysis, store),
                       {"classes": len(classes)})
    return H5Payload({"classifier": W, "classes": classes},
                     {"model": model.source, "code_version": CODE_VERSION, **attrs})


def _representations(context, split: str, model: ModelResource, analysis: AnalysisResource, dataset: DatasetResource,
                     store: ArtifactStore):
    meta: dict = {}
    with timer(meta), torch.no_grad():
        loaded = model.load()
        data = dataset.split(split)
        progress = Progress(len(data), f"{split} representations", log=context.log.info)
        reps = []
        for batch in data.batches(loaded, model.batch_size, model.max_length):
            r = loaded.adapter.forward(loaded.adapter.prepare_inputs(batch))
            reps.append(representations(r, analysis.coefficient).cpu().numpy())
            progress.update(r.shape[0])
        reps = np.concatenate(reps)
    meta.update(array_metadata("representations", reps), **_model_meta(model, analysis),
                preview=dg.MetadataValue.md(md_table([{"sample": i, "label": int(data.labels[i]),
                                                       "input": data.describe(i)[:80]} for i in range(min(5, len(data)))])))
    context.add_output_metadata(meta)
    attrs = provenance(context, f"{split}_representations", {}, profile_resources(model, dataset, analysis, store),
                       split_record(split, data))
    return H5Payload({"representations": reps, "labels": data.labels,
                      "inputs": [data.describe(i) for i in range(len(data))]},
                     {"model": model.source, "coefficient": analysis.coefficient, "split": split,
                      "code_version": CODE_VERSION, **attrs})


@dg.asset(group_name="inputs", io_manager_key="hdf5_io_manager", kinds={"pytorch", "hdf5"},
          code_version=CODE_VERSION, pool="gpu", op_tags=model_step_tags(), deps=[model_asset, train_data],
          description="coefficient * r / |r| of every train sample, with labels and inputs.")
def train_representations(context: dg.AssetExecutionContext, model: ModelResource, analysis: AnalysisResource,
                          dataset: DatasetResource, store: ArtifactStore):
    return _representations(context, "train", model, analysis, dataset, store)


@dg.asset(group_name="inputs", io_manager_key="hdf5_io_manager", kinds={"pytorch", "hdf5"},
          code_version=CODE_VERSION, pool="gpu", op_tags=model_step_tags(), deps=[model_asset, val_data],
          description="coefficient * r / |r| of every val sample, with labels and inputs.")
def val_representations(context: dg.AssetExecutionContext, model: ModelResource, analysis: AnalysisResource,
                        dataset: DatasetResource, store: ArtifactStore):
    return _representations(context, "val", model, analysis, dataset, store)


@dg.asset(group_name="inputs", io_manager_key="hdf5_io_manager", kinds={"pytorch", "hdf5"},
          code_version=CODE_VERSION, pool="gpu", op_tags=model_step_tags(), deps=[model_asset, val_r_data],
          description="coefficient * r / |r| of every ImageNet-R sample (dataset.val_r_path, stride val_stride), "
          "with labels (0..199 with imagenet_r_classes='subset', the 1000 ImageNet indices with 'all') and inputs.")
def val_r_representations(context: dg.AssetExecutionContext, model: ModelResource, analysis: AnalysisResource,
                          dataset: DatasetResource, store: ArtifactStore):
    return _representations(context, "val_r", model, analysis, dataset, store)
