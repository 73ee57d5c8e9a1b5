"""The real Dagster UI in headless Chromium: the asset graph shows every asset, one layer partition
is materialized from the UI's launch dialog, and the neuron report it writes opens in the browser.

Needs Debian's ``/usr/bin/chromium`` and the ``playwright`` Python package (never ``playwright
install``: the browser is the system one).  Without them the test is skipped, except under ``CI``
where it fails.  Screenshots go to ``test-artifacts/ui/`` (gitignored), with the webserver's log.

The temporary instance uses the ``DefaultRunCoordinator``: a run launched from the UI starts at
once in its own process (the default run launcher), so no ``dagster-daemon`` is started; that
also keeps the profile's automation sensor and schedule from launching runs of their own.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from oe_assets.definitions import LAYER_GROUPS, inputs_job, job_asset_keys, layers_job

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "ui"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

#: the asset selection typed into the lineage page: every layer-partitioned asset (the layers job's groups)
LAYERED_QUERY = " or ".join(f"group:{g}" for g in LAYER_GROUPS)
LAYER = "1"

SERVER_START_S = 90
RUN_TIMEOUT_S = 300
UI_TIMEOUT_MS = 30_000


def _need_browser():
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright package (pip install playwright)")
    if missing:
        reason = "UI browser test needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_profile(root: Path) -> Path:
    from helpers import tiny_bert_profile

    profile = tiny_bert_profile(root)
    path = root / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


def _write_instance_yaml(home: Path) -> None:
    """The project's pool limits, but runs launch immediately (no queue, so no daemon needed)."""
    home.mkdir(parents=True)
    project = REPO / "data" / "dagster_home" / "dagster.yaml"
    pools = ((yaml.safe_load(project.read_text()) or {}).get("concurrency") or {}).get("pools") if project.exists() else None
    config = {
        "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"},
        "telemetry": {"enabled": False},
    }
    if pools:
        config["concurrency"] = {"pools": pools}
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def _tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


@pytest.fixture(scope="module")
def ui_server():
    """A tiny BERT profile with its inputs materialized, and dagster-webserver serving it."""
    _need_browser()
    import dagster as dg

    from oe_assets.definitions import build_definitions

    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    tmp = Path(tempfile.mkdtemp(prefix="oe_ui_"))
    root, home = tmp / "config", tmp / "dagster_home"
    root.mkdir()
    log_path = ARTIFACTS / "webserver.log"
    instance = proc = log = None
    try:
        profile = _write_profile(root)
        _write_instance_yaml(home)

        # the unpartitioned inputs, in this process, into the instance the webserver serves
        instance = dg.DagsterInstance.from_config(str(home))
        defs = build_definitions(str(profile))
        result = defs.resolve_job_def(inputs_job.name).execute_in_process(instance=instance)
        assert result.success

        port = _free_port()
        env = {**os.environ, "DAGSTER_HOME": str(home), "OE_ASSETS_PROFILE": str(profile), "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        log = open(log_path, "wb")
        # its own process group: the code server, run workers and step processes all go with it
        proc = subprocess.Popen(
            [sys.executable, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", str(port),
             "-m", "oe_assets.definitions"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"dagster-webserver exited with {proc.returncode}:\n{_tail(log_path)}")
            try:
                with urllib.request.urlopen(base_url + "/server_info", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"dagster-webserver did not answer within {SERVER_START_S} s:\n{_tail(log_path)}")
            time.sleep(0.5)
        graph = defs.resolve_asset_graph()  # what the UI must show: every asset Dagster can materialize or observe
        yield {"url": base_url, "instance": instance, "store": root / "store", "log": log_path,
               "assets": sorted(k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).is_executable),
               "layered": job_asset_keys(defs, layers_job.name)}
    finally:
        if proc is not None:
            _stop(proc)
        if log is not None:
            log.close()
        if instance is not None:
            instance.dispose()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def page(ui_server):
    from playwright.sync_api import sync_playwright

    profile_dir = tempfile.mkdtemp(prefix="oe_ui_chromium_")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile_dir, executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1600, "height": 1200}, timeout=60_000)
        try:
            context.set_default_timeout(UI_TIMEOUT_MS)
            context.set_default_navigation_timeout(60_000)
            # the "join the community" dialog the UI opens on localhost: mark it as seen
            context.add_init_script("try { localStorage.setItem('communityNux', '1') } catch (e) {}")
            yield context.new_page()
        finally:
            context.close()
            shutil.rmtree(profile_dir, ignore_errors=True)


def _shot(page, name: str, full_page: bool = False) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


def _label_matches(label: str, key: str) -> bool:
    """A graph node shows a long key middle-truncated: ``second_or…_effects``."""
    if "…" not in label:
        return label == key
    head, _, tail = label.partition("…")
    return key.startswith(head) and key.endswith(tail) and len(head) + len(tail) < len(key)


def _check_asset_graph(page, url: str, assets: list[str]) -> None:
    page.goto(url + "/asset-groups")  # "Global asset lineage"
    page.get_by_text("Global asset lineage").first.wait_for()
    page.get_by_role("button", name=re.compile(r"Materialize all")).wait_for()
    page.locator("foreignObject").first.wait_for()  # the graph's nodes (groups, collapsed or not)
    # expand every group in the graph (the graph's settings menu: the last gear on the page)
    page.locator("button:has([aria-label='settings'])").last.click()
    toggle = page.get_by_role("menuitem", name=re.compile(r"(Expand|Collapse) all groups"))
    toggle.first.wait_for()
    if "Expand" in toggle.first.inner_text():
        toggle.first.click()
    page.keyboard.press("Escape")
    node_names = page.locator("foreignObject [class*='AssetNode_assetName']")
    node_names.first.wait_for()
    # and in the sidebar tree, where a node's title is the full key
    sidebar_carets = page.locator("button:has([aria-label='arrow_drop_down'][style*='rotate(-90deg)'])")
    for _ in range(20):
        if not sidebar_carets.count():
            break
        sidebar_carets.first.click()
        page.wait_for_timeout(200)
    page.locator("button:has([aria-label='zoom_out'])").first.click()  # the whole graph in view

    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    while True:
        labels = [t.strip() for t in node_names.all_inner_texts()]
        missing_graph = [k for k in assets if not any(_label_matches(t, k) for t in labels)]
        missing_sidebar = [k for k in assets if not page.locator(f"[title='{k}']").count()]
        if not missing_graph and not missing_sidebar or time.monotonic() > deadline:
            break
        if missing_graph:  # the graph renders only the nodes in view: zoom out further
            page.locator("button:has([aria-label='zoom_out'])").first.click()
        page.wait_for_timeout(500)
    _shot(page, "01_asset_graph")
    assert not missing_graph, f"graph nodes {labels} lack {missing_graph}"
    assert not missing_sidebar, f"sidebar lacks {missing_sidebar}"
    for k in assets:
        assert page.locator(f"[title='{k}']").first.is_visible(), k


def _launch_layer(page, url: str, layered: list[str]) -> str:
    """Filter the lineage to the layered assets, "Materialize all…", pick partition LAYER, launch."""
    page.goto(url + "/asset-groups~" + urllib.parse.quote(LAYERED_QUERY) + "/")
    page.get_by_text("neuron_report", exact=True).first.wait_for()
    page.get_by_role("button", name=re.compile(r"Materialize all")).click()
    dialog = page.get_by_role("dialog").filter(has_text="Partition selection")
    dialog.get_by_text(f"Launch runs to materialize {len(layered)} assets").wait_for()
    dialog.get_by_text("Select a partition or create one").click()
    page.get_by_role("menuitem").filter(has=page.get_by_text(LAYER, exact=True)).click()
    page.keyboard.press("Escape")  # closes the partition list, not the dialog
    page.get_by_placeholder("Filter partitions").wait_for(state="hidden")
    dialog.get_by_text("1 partition", exact=True).wait_for()
    launch = dialog.get_by_role("button", name="Launch 1 run")
    launch.wait_for()
    _shot(page, "02_launch_dialog")
    launch.click()
    toast = page.get_by_text(re.compile(r"^Launched run [0-9a-f]{8}"))
    toast.wait_for()
    link = page.locator("a[href*='/runs/']").filter(has_text="View").first
    href = link.get_attribute("href")
    match = re.search(r"/runs/([0-9a-f-]{36})", href or "")
    assert match, f"no run link in the toast: {href!r}"
    return match.group(1)


def _wait_for_run(page, ui_server, run_id: str) -> None:
    from dagster import DagsterRunStatus

    instance = ui_server["instance"]
    page.goto(ui_server["url"] + f"/runs/{run_id}")
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        run = instance.get_run_by_id(run_id)
        if run is not None and run.status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE,
                                              DagsterRunStatus.CANCELED):
            break
        if time.monotonic() > deadline:
            _shot(page, "03_run_timeout")
            pytest.fail(f"run {run_id} not finished after {RUN_TIMEOUT_S} s "
                        f"(status {run and run.status}):\n{_tail(ui_server['log'])}")
        time.sleep(2)
    if run.status != DagsterRunStatus.SUCCESS:
        errors = [e.message for e in instance.all_logs(run_id)
                  if e.level >= logging.ERROR or (e.dagster_event and e.dagster_event.is_step_failure)]
        _shot(page, "03_run_failed")
        pytest.fail(f"run {run_id} ended {run.status}: {errors[-5:]}\n{_tail(ui_server['log'])}")
    assert run.tags.get("dagster/partition") == LAYER
    assert {k.to_user_string() for k in run.asset_selection or ()} == set(ui_server["layered"])
    # the run page (live) shows the success too
    page.get_by_text("Success", exact=True).first.wait_for(timeout=60_000)
    page.get_by_text(f"partition: {LAYER}").first.wait_for()
    _shot(page, "03_run_success")


def _report_path_from_asset_page(page, url: str) -> tuple[str, int | None]:
    page.goto(url + "/assets/neuron_report")
    row = page.locator("tr").filter(has=page.locator("td", has_text=re.compile(r"^report$")))
    row.first.wait_for()
    value = row.first.locator("td").last.inner_text().strip()
    neurons_row = page.locator("tr").filter(has=page.locator("td", has_text=re.compile(r"^neurons$")))
    neurons = int(neurons_row.first.locator("td").last.inner_text().strip()) if neurons_row.count() else None
    _shot(page, "04_neuron_report_asset")
    return value, neurons


def test_ui_graph_launch_layer_and_open_neuron_report(ui_server, page):
    try:
        _drive_ui(page, ui_server)
    except BaseException:
        try:
            _shot(page, "failure")
        except Exception:
            pass
        raise


def _drive_ui(page, ui_server):
    url, store = ui_server["url"], ui_server["store"]
    _check_asset_graph(page, url, ui_server["assets"])

    run_id = _launch_layer(page, url, ui_server["layered"])
    _wait_for_run(page, ui_server, run_id)
    for asset in ("second_order_effects", "val_second_order_effects", "neuron_pcas", "sparse_codes"):
        assert (store / asset / f"{LAYER}.h5").is_file(), asset
        assert not (store / asset / "0.h5").exists(), asset  # only the chosen partition ran
    assert (store / "ablation_report" / f"{LAYER}.parquet").is_file()

    expected = store / "neuron_report" / f"{LAYER}.html"
    shown, neurons = _report_path_from_asset_page(page, url)
    assert Path(shown) == expected and expected.is_file(), (shown, expected)

    page.goto(expected.as_uri())
    sections = page.locator("section")
    sections.first.wait_for()
    headings = [h.strip() for h in sections.locator("h2, h3").all_inner_texts()]
    assert sections.count() >= 1 and len(headings) == sections.count(), headings
    assert all("neuron" in h.lower() for h in headings), headings
    if neurons is not None:
        assert sections.count() == neurons
    assert "neuron" in page.locator("h1").first.inner_text().lower()
    _shot(page, "05_neuron_report", full_page=True)
