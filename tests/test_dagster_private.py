"""The private Dagster names oe_assets relies on (all in ``oe_assets/dagster_private.py``) still exist
and behave as the project uses them, and the installed Dagster is in the range pinned in pyproject.toml.
A failure names the Dagster version and the symbol."""

import importlib.util
import os
import signal
import sys
import tomllib
import types
from importlib.metadata import version
from pathlib import Path

import dagster as dg
import pytest
from packaging.requirements import Requirement

from oe_assets import dagster_private
from oe_assets.dagster_private import SUPPORTED_DAGSTER, TEST_SUPPORT

ROOT = Path(__file__).resolve().parents[1]
DAGSTER = f"dagster {dg.__version__}"


def test_the_installed_dagster_is_in_the_pinned_range():
    deps = {(r := Requirement(d)).name: r.specifier for d in tomllib.loads((ROOT / "pyproject.toml").read_text())
            ["project"]["dependencies"]}
    for name in ("dagster", "dagster-webserver"):
        assert str(deps[name]) == str(Requirement(f"dagster{SUPPORTED_DAGSTER}").specifier), \
            f"pyproject.toml pins {name}{deps[name]}, oe_assets.dagster_private.SUPPORTED_DAGSTER says {SUPPORTED_DAGSTER}"
        assert deps[name].contains(version(name)), \
            f"{name} {version(name)} is outside the tested range {deps[name]} (check oe_assets/dagster_private.py)"


def test_data_version_tag_is_where_an_observation_records_its_data_version():
    @dg.observable_source_asset
    def source():
        return dg.DataVersion("v-123")

    instance = dg.DagsterInstance.ephemeral()
    defs = dg.Definitions(assets=[source], jobs=[dg.define_asset_job("observe", [source])])
    assert defs.resolve_job_def("observe").execute_in_process(instance=instance).success  # as oe_assets.resume does
    tags = instance.fetch_observations(dg.AssetKey("source"), limit=1).records[0].asset_observation.tags
    assert tags.get(dagster_private.DATA_VERSION_TAG) == "v-123", \
        f"{DAGSTER}: the observed data version is no longer under DATA_VERSION_TAG={dagster_private.DATA_VERSION_TAG!r}: {tags}"


def test_run_storage_is_sqlite_tells_a_local_instance_from_another():
    with dg.instance_for_test() as local:
        assert dagster_private.run_storage_is_sqlite(local), \
            f"{DAGSTER}: a SQLite instance's run storage {type(local.run_storage)} is not taken for SqliteRunStorage"
    assert not dagster_private.run_storage_is_sqlite(dg.DagsterInstance.ephemeral())


def test_check_captured_interrupt_sees_ctrl_c_held_by_dagster():
    assert dagster_private.check_captured_interrupt() is False
    with dagster_private.capture_interrupts():
        os.kill(os.getpid(), signal.SIGINT)
        assert dagster_private.check_captured_interrupt() is True, \
            f"{DAGSTER}: check_captured_interrupt does not report a Ctrl-C Dagster held"
    assert dagster_private.check_captured_interrupt() is False


def test_stale_status_as_the_ui_shows_it():
    @dg.asset(code_version="1")
    def thing():
        return 1

    instance = dg.DagsterInstance.ephemeral()
    defs = dg.Definitions(assets=[thing])

    def status():
        resolver = dagster_private.CachingStaleStatusResolver(instance, defs.resolve_asset_graph(),
                                                              dagster_private.LoadingContextForTest(instance))
        return resolver.get_status(dg.AssetKey("thing"))

    assert status() == dagster_private.StaleStatus.MISSING
    dg.materialize([thing], instance=instance)
    assert status() == dagster_private.StaleStatus.FRESH


def test_an_engine_event_with_a_pid_is_read_back_as_recovery_reads_it():
    instance = dg.DagsterInstance.ephemeral()
    run = dagster_private.create_run_for_test(instance, job_name="job", status=dg.DagsterRunStatus.STARTED)
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
    instance.report_engine_event("started", run, dagster_private.EngineEventData.in_process(4242))
    records = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=50).records
    pids = [str(r.event_log_entry.dagster_event.engine_event_data.metadata["pid"].value) for r in records]  # as recovery reads it
    assert "4242" in pids, f"{DAGSTER}: EngineEventData.in_process no longer records the pid as metadata 'pid'"


@pytest.mark.parametrize("name", sorted(TEST_SUPPORT))
def test_every_test_support_name_resolves(name):
    assert getattr(dagster_private, name) is not None


def test_an_incompatible_dagster_fails_at_import_naming_the_version_and_the_symbol(monkeypatch):
    # a Dagster whose interrupts module lacks check_captured_interrupt
    monkeypatch.setitem(sys.modules, "dagster._utils.interrupts", types.ModuleType("dagster._utils.interrupts"))
    spec = importlib.util.spec_from_file_location("dagster_private_probe", dagster_private.__file__)
    with pytest.raises(ImportError) as e:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert f"dagster {dg.__version__} has no usable dagster._utils.interrupts.check_captured_interrupt" in str(e.value)
    assert f"oe_assets needs dagster{SUPPORTED_DAGSTER}" in str(e.value)


def test_a_missing_test_support_name_fails_naming_the_symbol(monkeypatch):
    monkeypatch.setitem(TEST_SUPPORT, "NoSuchThing", ("dagster._core.events", "a probe"))
    with pytest.raises(ImportError, match=rf"dagster {dg.__version__} has no usable dagster\._core\.events\.NoSuchThing"):
        dagster_private.NoSuchThing  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'Unknown'"):
        dagster_private.Unknown  # noqa: B018


def test_asset_code_versions_reads_every_asset_of_the_running_job():
    seen = {}

    @dg.asset(code_version="7")
    def upstream():
        return 1

    @dg.asset(code_version="3", deps=[upstream])
    def downstream(context: dg.AssetExecutionContext):
        seen.update(dagster_private.asset_code_versions(context))

    dg.materialize([upstream, downstream], selection=["downstream"], instance=dg.DagsterInstance.ephemeral(),
                   resources={"io_manager": dg.mem_io_manager})
    assert seen == {"upstream": "7", "downstream": "3"}, f"{DAGSTER}: JobDefinition.asset_layer changed"


def test_dagster_celery_submits_a_step_as_the_celery_path_wraps_it():
    """The Celery path wraps what dagster-celery's step submission returns (oe_assets.distributed._StepTask)."""
    pytest.importorskip("dagster_celery")
    import inspect

    from dagster_celery import core_execution_loop

    submit = dagster_private.celery_submit_step()
    assert list(inspect.signature(submit).parameters) == ["app", "plan_context", "step", "queue", "priority",
                                                          "known_state"], DAGSTER
    loop = inspect.getsource(core_execution_loop.core_celery_execution_loop)
    # the loop reads a submitted step's task through exactly these: ready, get (its errors), revoke
    assert "result.ready()" in loop and "result.get()" in loop and "result.revoke()" in loop, DAGSTER
