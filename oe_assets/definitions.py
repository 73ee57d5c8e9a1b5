"""The Dagster definitions: every stage an asset, partitioned by layer, with checks, IO managers, one
model resource, the observation schedules of the vocabulary and the dataset files, and the automation
sensor.

The profile comes from ``OE_ASSETS_PROFILE`` (a name in ``oe_assets/profiles/`` or a YAML path;
default ``demo``).  ``dagster dev`` loads ``defs`` through ``workspace.yaml``.
"""

from __future__ import annotations

import os

import dagster as dg

from .assets.analysis import build_analysis_assets
from .assets.baselines import build_baseline_assets
from .assets.checks import build_checks
from .assets.effects import build_effect_assets
from .assets.inputs import (
    classifier, model_asset, text_embeddings, train_data, train_representations, val_data, val_r_data,
    val_r_representations, val_representations, vocabulary,
)
from .profiles import load_profile
from .profiles.validation import validate_profile
from .resources.datasets import DatasetResource
from .resources.io_managers import HDF5IOManager, HTMLIOManager, ParquetIOManager
from .resources.store import ArtifactStore
from .resources.model import AnalysisResource, ModelResource, model_layers

#: the job the schedule runs: observe the vocabulary file (its data version is the content hash)
observe_vocabulary_job = dg.define_asset_job("observe_vocabulary", selection=dg.AssetSelection.keys("vocabulary"))
#: the job that observes the dataset files (``train_data``, ``val_data``, ``val_r_data``: data version = order hash)
OBSERVE_DATASETS = "observe_datasets"
#: the observation jobs, run by their schedules and by ``python -m oe_assets materialize`` before its runs
OBSERVE_JOBS = ("observe_vocabulary", OBSERVE_DATASETS)

#: the asset groups of the layer-partitioned assets (every asset outside them is unpartitioned)
LAYER_GROUPS = ("second_order", "analysis", "reports")
#: the three runs that materialize the whole graph, in order (``python -m oe_assets materialize``):
#: the unpartitioned inputs (not the observed vocabulary, not the external model), every
#: layer-partitioned asset over a layer range in one run (tags ``dagster/asset_partition_range_start``
#: / ``_end``: the model loads once), then the cross-layer summary.  Checks run with their assets.
inputs_job = dg.define_asset_job(
    "materialize_inputs", selection=dg.AssetSelection.groups("inputs").materializable(),
    description="The unpartitioned inputs: text embeddings, classifier, train and val representations.")
layers_job = dg.define_asset_job(
    "materialize_layers", selection=dg.AssetSelection.groups(*LAYER_GROUPS),
    description="Every layer-partitioned asset; launch over a partition range for one run over many layers.")
summary_job = dg.define_asset_job(
    "materialize_summary", selection=dg.AssetSelection.groups("summary"),
    description="The cross-layer summary of whatever layers are materialized.")
MATERIALIZE_JOBS = (inputs_job, layers_job, summary_job)


def layer_range_tags(first: str, last: str) -> dict[str, str]:
    """Run tags that make one run of :data:`layers_job` cover layers ``first..last``."""
    return {"dagster/asset_partition_range_start": str(first), "dagster/asset_partition_range_end": str(last)}


def job_asset_keys(defs: dg.Definitions, job: str) -> list[str]:
    """The asset keys (user strings) a job materializes, in topological order."""
    graph = defs.resolve_asset_graph()
    keys = defs.resolve_job_def(job).asset_layer.selected_asset_keys
    return [k.to_user_string() for k in graph.toposorted_asset_keys if k in keys]


def build_definitions(profile: str | dict | None = None, base_dir: str | None = None,
                      executor: dg.ExecutorDefinition | None = None) -> dg.Definitions:
    """Definitions for a profile (name, YAML path, or an already loaded dict), validated first
    (:func:`oe_assets.profiles.validation.validate_profile`: a broken profile raises a
    ``ProfileError``, a ``ValueError`` naming each bad key and its value).  ``executor``: the jobs'
    executor (None: Dagster's default; :mod:`oe_assets.distributed` passes the Celery executor)."""
    name = profile if isinstance(profile, dict) else (profile or os.environ.get("OE_ASSETS_PROFILE", "demo"))
    cfg = name if isinstance(name, dict) else load_profile(name)
    validate_profile(cfg, "profile" if isinstance(name, dict) else f"profile {str(name)!r}")
    model = ModelResource(**cfg["model"])
    layers = dg.StaticPartitionsDefinition(model_layers(model.source))
    store = ArtifactStore(**{**cfg["storage"], "base_dir": base_dir or cfg["storage"].get("base_dir", "data/materialized")})
    dataset = DatasetResource(**cfg["dataset"])
    imagenet_r = bool(dataset.val_r_path)  # the ImageNet-R assets, next to the val ones
    topk = store.effects_mode == "topk"  # the top-k form of the train effects, the val pass after the PCA
    observe_datasets_job = dg.define_asset_job(
        OBSERVE_DATASETS, selection=dg.AssetSelection.keys("train_data", "val_data", *(["val_r_data"] if imagenet_r else [])),
        description="Observe the dataset files: a changed file marks the assets made from it stale.")
    sources = [train_data, val_data, *([val_r_data] if imagenet_r else [])]
    assets = [model_asset, vocabulary, *sources, text_embeddings, classifier, train_representations,
              val_representations, *([val_r_representations] if imagenet_r else []),
              *build_effect_assets(layers, imagenet_r, topk), *build_analysis_assets(layers, imagenet_r, topk),
              *build_baseline_assets(layers, topk)]
    return dg.Definitions(
        assets=assets,
        asset_checks=build_checks(layers),
        jobs=[observe_vocabulary_job, observe_datasets_job, *MATERIALIZE_JOBS],
        executor=executor,
        schedules=[dg.ScheduleDefinition(name="observe_vocabulary_schedule", job=observe_vocabulary_job,
                                         cron_schedule="*/10 * * * *",
                                         default_status=dg.DefaultScheduleStatus.RUNNING),
                   dg.ScheduleDefinition(name="observe_datasets_schedule", job=observe_datasets_job,
                                         cron_schedule="5 * * * *",  # hourly: large image folders are listed
                                         default_status=dg.DefaultScheduleStatus.RUNNING)],
        sensors=[dg.AutomationConditionSensorDefinition(
            "vocabulary_automation", target=dg.AssetSelection.all(),
            default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=30)],
        resources={
            "model": model,
            "dataset": dataset,
            "analysis": AnalysisResource(**cfg.get("analysis", {})),
            "store": store,
            "hdf5_io_manager": HDF5IOManager(store=store),
            "parquet_io_manager": ParquetIOManager(store=store),
            "html_io_manager": HTMLIOManager(store=store),
        },
    )


defs = build_definitions()
