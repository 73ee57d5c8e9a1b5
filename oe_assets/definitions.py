"""The Dagster definitions: every stage an asset, partitioned by layer, with checks, IO managers, one
model resource, the vocabulary schedule and the automation sensor.

The profile comes from ``OE_ASSETS_PROFILE`` (a name in ``oe_assets/profiles/`` or a YAML path;
default ``demo``).  ``dagster dev`` loads ``defs`` through ``workspace.yaml``.
"""

from __future__ import annotations

import os

import dagster as dg

from .assets.analysis import build_analysis_assets
from .assets.checks import build_checks
from .assets.effects import build_effect_assets
from .assets.inputs import (
    classifier, model_asset, text_embeddings, train_representations, val_representations, vocabulary,
)
from .profiles import load_profile
from .resources.datasets import DatasetResource
from .resources.io_managers import HDF5IOManager, HTMLIOManager, ParquetIOManager
from .resources.store import ArtifactStore
from .resources.model import AnalysisResource, ModelResource, model_layers

#: the job the schedule runs: observe the vocabulary file (its data version is the content hash)
observe_vocabulary_job = dg.define_asset_job("observe_vocabulary", selection=dg.AssetSelection.keys("vocabulary"))


def build_definitions(profile: str | dict | None = None, base_dir: str | None = None) -> dg.Definitions:
    """Definitions for a profile (name, YAML path, or an already loaded dict)."""
    cfg = profile if isinstance(profile, dict) else load_profile(profile or os.environ.get("OE_ASSETS_PROFILE", "demo"))
    model = ModelResource(**cfg["model"])
    layers = dg.StaticPartitionsDefinition(model_layers(model.source))
    store = ArtifactStore(**{**cfg["storage"], "base_dir": base_dir or cfg["storage"].get("base_dir", "data/materialized")})
    assets = [model_asset, vocabulary, text_embeddings, classifier, train_representations, val_representations,
              *build_effect_assets(layers), *build_analysis_assets(layers)]
    return dg.Definitions(
        assets=assets,
        asset_checks=build_checks(layers),
        jobs=[observe_vocabulary_job],
        schedules=[dg.ScheduleDefinition(name="observe_vocabulary_schedule", job=observe_vocabulary_job,
                                         cron_schedule="*/10 * * * *",
                                         default_status=dg.DefaultScheduleStatus.RUNNING)],
        sensors=[dg.AutomationConditionSensorDefinition(
            "vocabulary_automation", target=dg.AssetSelection.all(),
            default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=30)],
        resources={
            "model": model,
            "dataset": DatasetResource(**cfg["dataset"]),
            "analysis": AnalysisResource(**cfg.get("analysis", {})),
            "store": store,
            "hdf5_io_manager": HDF5IOManager(store=store),
            "parquet_io_manager": ParquetIOManager(store=store),
            "html_io_manager": HTMLIOManager(store=store),
        },
    )


defs = build_definitions()
