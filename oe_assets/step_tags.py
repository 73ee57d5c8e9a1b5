"""Where a step runs, as op tags: the steps that run the model (the assets and checks in pool ``gpu``)
carry :func:`model_step_tags`; the other steps carry none.  Dagster-free, so that the asset modules
and :mod:`oe_assets.distributed` read the same names.

- On the Celery workers (``dagster-celery``) a model step goes to the GPU workers' queue
  ``<OE_ASSETS_QUEUE>.gpu``; the other steps go to the general queue ``OE_ASSETS_QUEUE`` (default
  ``oe_assets``), on which every worker listens.
- On Kubernetes (``dagster-k8s``'s ``k8s_job_executor``) a model step's pod requests one GPU
  (``nvidia.com/gpu: 1``, the NVIDIA device plugin's resource); the other pods request none.
"""

from __future__ import annotations

import os

__all__ = ["CELERY_QUEUE_TAG", "K8S_CONFIG_TAG", "GPU_POD_CONFIG", "general_queue", "model_queue", "model_step_tags"]

#: dagster-celery's op tag: the Celery queue a step is sent to (else the run's default queue)
CELERY_QUEUE_TAG = "dagster-celery/queue"
#: dagster-k8s's op tag: the Kubernetes settings of the pod a step runs in
K8S_CONFIG_TAG = "dagster-k8s/config"
#: the pod settings of a step that runs the model: one GPU
GPU_POD_CONFIG = {"container_config": {"resources": {"limits": {"nvidia.com/gpu": 1}}}}


def general_queue() -> str:
    """The queue of the steps that do not run the model (``OE_ASSETS_QUEUE``, default ``oe_assets``)."""
    return os.environ.get("OE_ASSETS_QUEUE") or "oe_assets"


def model_queue(queue: str | None = None) -> str:
    """The queue of the steps that run the model: ``<general queue>.gpu``."""
    return (queue or general_queue()) + ".gpu"


def model_step_tags() -> dict:
    """The op tags of a step that runs the model (read from the environment when the definitions are
    built: the run's process and the workers share ``OE_ASSETS_QUEUE``)."""
    return {CELERY_QUEUE_TAG: model_queue(), K8S_CONFIG_TAG: GPU_POD_CONFIG}
