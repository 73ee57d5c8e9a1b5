"""Every private Dagster name oe_assets uses, in one place.

Dagster's private modules (``dagster._...``) change between minor releases without notice. The
project imports them only here, each with why it is needed and what public API is missing, so an
incompatible Dagster fails at import with a message naming the Dagster version and the symbol, and
``tests/test_dagster_private.py`` checks that each name still behaves as the project uses it.
The supported Dagster range is pinned in ``pyproject.toml`` (``SUPPORTED_DAGSTER``).

Used by the product (imported when this module is imported):

- ``DATA_VERSION_TAG``: the tag under which an observation or materialization event records its
  data version. ``oe_assets.resume`` reads the latest observed version of the observable source
  assets from ``EventLogRecord.asset_observation.tags``. Public alternative: the
  ``AssetObservation.data_version`` property reads the same tag, but it is not marked public API.
- ``SqliteRunStorage``: ``oe_assets.recovery`` trusts a pid from a run's engine events only on a
  local SQLite instance (a shared Postgres instance may hold runs of other hosts). No public API
  says which storage backs an instance; see :func:`run_storage_is_sqlite`.
- ``JobDefinition.asset_layer`` (:func:`asset_code_versions`): the code version of every asset of the
  running job, for the provenance check; no public accessor works in every way assets run.
- ``check_captured_interrupt``: while a run waits for a pool slot, Dagster captures Ctrl-C (the run's
  process defers SIGINT until a step boundary); ``oe_assets.recovery`` polls this to stop the wait
  and fail the run. No public API exposes the captured interrupt.

Used by the Celery path (:mod:`oe_assets.distributed`, the ``[distributed]`` extra; imported when called):

- ``dagster_celery.executor._submit_task`` (:func:`celery_submit_step`): how dagster-celery's executor
  sends a step to a worker; the project's executor wraps what it returns (:func:`step_failure_event`).
  No public alternative: ``CeleryExecutor.execute`` passes it to the loop itself.
- ``StepFailureData`` and ``serializable_error_info_from_exc_info`` (:func:`step_failure_event`): a
  step's failure event, for a step whose Celery task failed outside the step (its worker process was
  killed).  dagster-celery's loop keeps such a task's error aside, stops submitting steps and, with
  steps left, polls without end (a run that never finishes, at full CPU); as the step's own failure
  event it ends the step like any failed step (its pool slot freed, the run failed at its end).

Used only by the tests (loaded on first access, so the product never imports Dagster's test
utilities): see ``TEST_SUPPORT``.
"""

from __future__ import annotations

import importlib

import dagster

__all__ = ["SUPPORTED_DAGSTER", "DATA_VERSION_TAG", "SqliteRunStorage", "check_captured_interrupt",
           "run_storage_is_sqlite", "asset_code_versions", "celery_submit_step", "step_failure_event", "TEST_SUPPORT"]

#: the Dagster releases oe_assets is tested with; keep equal to the pin in pyproject.toml
SUPPORTED_DAGSTER = ">=1.13,<1.14"


def _incompatible(symbol: str, why: str, error: Exception) -> ImportError:
    return ImportError(f"oe_assets needs dagster{SUPPORTED_DAGSTER}; dagster {dagster.__version__} has no usable "
                       f"{symbol} ({why}): {error}")


try:
    from dagster._core.definitions.data_version import DATA_VERSION_TAG
except ImportError as e:  # pragma: no cover - only on an incompatible Dagster
    raise _incompatible("dagster._core.definitions.data_version.DATA_VERSION_TAG",
                        "the observed data version of a source asset", e) from e
try:
    from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
except ImportError as e:  # pragma: no cover
    raise _incompatible("dagster._core.storage.runs.sqlite.sqlite_run_storage.SqliteRunStorage",
                        "whether an instance's runs are local", e) from e
try:
    from dagster._utils.interrupts import check_captured_interrupt
except ImportError as e:  # pragma: no cover
    raise _incompatible("dagster._utils.interrupts.check_captured_interrupt",
                        "Ctrl-C while a run waits for a pool slot", e) from e


def run_storage_is_sqlite(instance: dagster.DagsterInstance) -> bool:
    """Whether ``instance`` keeps its runs in SQLite (a local instance). The instance may wrap its
    run storage (``_storage``: private attribute of Dagster's storage wrapper)."""
    storage = getattr(instance.run_storage, "_storage", instance.run_storage)
    return isinstance(storage, SqliteRunStorage)


def asset_code_versions(context: dagster.AssetExecutionContext) -> dict[str, str | None]:
    """The code version of every asset of the running job's asset graph, by asset name, so a
    consumer can refuse inputs made by other code (``JobDefinition.asset_layer``: not public API;
    ``context.repository_def`` is public but unset when assets run through ``dagster.materialize``)."""
    graph = context.job_def.asset_layer.asset_graph
    return {key.to_user_string(): graph.get(key).code_version for key in graph.get_all_asset_keys()}


def celery_submit_step():
    """dagster-celery's submission of one step to a worker: ``(app, plan_context, step, queue, priority,
    known_state) -> AsyncResult`` (``dagster_celery.executor._submit_task``)."""
    try:
        from dagster_celery.executor import _submit_task
    except ImportError as e:
        raise _incompatible("dagster_celery.executor._submit_task", "sending a step to a Celery worker", e) from e
    return _submit_task


def step_failure_event(step_context, exc_info, message: str) -> dagster.DagsterEvent:
    """The ``STEP_FAILURE`` event of the step of ``step_context`` (an orchestration context's
    ``for_step``), with the error of ``exc_info``; creating it logs it to the run's event log."""
    try:
        from dagster._core.execution.plan.objects import StepFailureData
        from dagster._utils.error import serializable_error_info_from_exc_info
    except ImportError as e:
        raise _incompatible("dagster._core.execution.plan.objects.StepFailureData", "a step's failure event", e) from e
    error = serializable_error_info_from_exc_info(exc_info)
    return dagster.DagsterEvent.step_failure_event(step_context, StepFailureData(error=error, user_failure_data=None),
                                                   message=message)


#: test-only names: name -> (module, why); resolved on first access through ``__getattr__``
TEST_SUPPORT = {
    "StaleStatus": ("dagster._core.definitions.data_version",
                    "an asset's stale status (MISSING, STALE, FRESH) as the UI shows it; the public API has no reader"),
    "CachingStaleStatusResolver": ("dagster._core.definitions.data_version",
                                   "computes the stale status the UI shows, for the tests that compare against it"),
    "LoadingContextForTest": ("dagster._core.loader", "the loading context CachingStaleStatusResolver needs"),
    "EngineEventData": ("dagster._core.events",
                        "an engine event carrying a pid, as Dagster's run worker reports it (recovery tests)"),
    "create_run_for_test": ("dagster._core.test_utils",
                            "a run record in a chosen status without executing it (recovery tests)"),
    "capture_interrupts": ("dagster._utils.interrupts",
                           "the context Dagster's executor holds Ctrl-C in; checks check_captured_interrupt"),
}


def __getattr__(name: str):
    if name not in TEST_SUPPORT:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, why = TEST_SUPPORT[name]
    try:
        value = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise _incompatible(f"{module}.{name}", why, e) from e
    globals()[name] = value
    return value
