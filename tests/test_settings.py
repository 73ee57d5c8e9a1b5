"""Settings declared once per asset (``oe_assets.settings.READS``), and everything derived from it.

- The declaration is complete: the tiny BERT graph is materialized once with every resource field
  read inside an asset logged; each field an asset reads that changes a number must be in that
  asset's own provenance record (under its setting's name, or as the data fingerprint it stands for).
  Dropping a setting from the declaration fails here, independently of the declaration itself.
- Resume is derived from it: for every declared setting, a profile holding another value reruns
  exactly the assets that declare it and everything downstream of them.
- Provenance is derived from it: for every declared setting, a consumer whose inputs' lineage holds
  another value than the profile's is refused, naming the setting and exactly the stale files.
"""

import sys
import warnings
from pathlib import Path

import dagster as dg
import pytest
import yaml

from oe_assets import __main__ as cli
from oe_assets import resume
from oe_assets.definitions import build_definitions
from oe_assets.provenance import ProvenanceError, check, entry, own_record
from oe_assets.resources import model as model_module
from oe_assets.resources.datasets import DatasetResource
from oe_assets.resources.model import AnalysisResource, ModelResource
from oe_assets.resources.store import ArtifactStore
from oe_assets.settings import DERIVED, READS, SECTIONS, all_settings, current_values, default
from helpers import tiny_bert_profile

warnings.filterwarnings("ignore")

RESOURCE_SECTIONS = {ModelResource: "model", DatasetResource: "dataset", AnalysisResource: "analysis",
                     ArtifactStore: "storage"}
#: fields read that never change a number (device placement, batching, workers, where files go)
NO_NUMBERS = {"model.device", "model.batch_size", "dataset.num_workers", "storage.base_dir",
              "storage.effects_compression",
              # placement over devices (tests/test_device_map.py: split = unsplit)
              "model.device_map", "model.max_memory", "model.offload_folder"}
#: fields read for catalog metadata or previews only, by these assets
PREVIEW_ONLY = {("neuron_pcas", "analysis.report_neurons"), ("sparse_codes", "analysis.report_neurons"),
                ("text_embeddings", "analysis.coefficient"), ("classifier", "analysis.coefficient")}
#: fields that stand for data identified by content in the record, not by the setting's value
AS_DATA = {"dataset.train_path": "train.order", "dataset.val_path": "val.order", "dataset.val_r_path": "val_r.order",
           "analysis.vocabulary_path": "vocabulary", "analysis.templates_path": "analysis.templates",
           "dataset.classes_path": "dataset.classes"}


def _asset_reading() -> str | None:
    """The asset whose body (an AssetExecutionContext in a frame) reads a field now; None outside
    assets and inside the settings module (the provenance record itself reads every setting)."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.endswith(("oe_assets/settings.py", "oe_assets/resume.py")):
            return None
        context = frame.f_locals.get("context")
        if isinstance(context, dg.AssetExecutionContext):
            return context.asset_key.to_user_string()
        frame = frame.f_back
    return None


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """The tiny BERT graph (layers 0 and 1) materialized by the CLI, with the (asset, field) pairs
    every asset read."""
    return _logged_graph(tmp_path_factory.mktemp("settings"))


@pytest.fixture(scope="module")
def topk_graph(tmp_path_factory):
    """The same in the top-k mode (``storage.effects_mode: topk``: another graph)."""
    return _logged_graph(tmp_path_factory.mktemp("settings_topk"), {"effects_mode": "topk"})


def _logged_graph(root: Path, storage: dict | None = None):
    prof = tiny_bert_profile(root)
    prof["storage"].update(storage or {})
    path = root / "profile.yaml"
    path.write_text(yaml.safe_dump(prof))
    reads: set[tuple[str, str]] = set()
    originals = {}
    for cls, section in RESOURCE_SECTIONS.items():
        fields = set(cls.model_fields)

        def logging_getattribute(self, name, _section=section, _fields=fields, _cls=cls):
            if name in _fields:
                asset = _asset_reading()
                if asset is not None:
                    reads.add((asset, f"{_section}.{name}"))
            return originals[_cls](self, name)

        originals[cls] = cls.__getattribute__
        cls.__getattribute__ = logging_getattribute
    mp = pytest.MonkeyPatch()
    mp.setenv("DAGSTER_HOME", str(root / "dagster_home"))
    try:
        model_module._CACHE.clear()
        assert cli.main(["materialize", "--profile", str(path)]) == 0
    finally:
        for cls, original in originals.items():
            cls.__getattribute__ = original
        mp.undo()
    return root, path, prof, reads


def _defs(graph):
    return build_definitions(str(graph[1]))


def _records(defs) -> dict[str, dict]:
    """entry -> own record of every file of the graph."""
    files = resume._Files(defs)
    out = {}
    for key in defs.resolve_asset_graph().toposorted_asset_keys:
        node = defs.resolve_asset_graph().get(key)
        if not node.is_materializable or key.to_user_string() == "model":
            continue
        for p in (node.partitions_def.get_partition_keys() if node.partitions_def else [None]):
            attrs = files.read(key, p)
            assert isinstance(attrs, dict), (key, p, attrs)
            out[entry(key.to_user_string(), p)] = own_record(attrs, entry(key.to_user_string(), p))
    return out


# ---------------------------------------------------------------- the declaration
def test_every_asset_declares_its_settings_in_dependency_order(graph):
    defs = _defs(graph)
    asset_graph = defs.resolve_asset_graph()
    materializable = [k.to_user_string() for k in asset_graph.toposorted_asset_keys
                      if asset_graph.get(k).is_materializable and k.to_user_string() != "model"]
    assert set(materializable) <= set(READS), set(materializable) - set(READS)
    order = list(READS)
    for key in asset_graph.toposorted_asset_keys:
        for parent in asset_graph.get(key).parent_keys:
            if parent.to_user_string() in READS and key.to_user_string() in READS:
                assert order.index(parent.to_user_string()) < order.index(key.to_user_string()), (parent, key)
    for setting in all_settings():
        section, name = setting.split(".", 1)
        assert section in SECTIONS and (setting in DERIVED or default(setting) is not None or name), setting


#: fields read by an asset that records them as a derived setting
AS_DERIVED = {("second_order_effects", "analysis.top_k"): "storage.topk_samples"}


@pytest.mark.parametrize("mode", ["stored", "topk"])
def test_each_field_an_asset_reads_is_in_its_provenance_record(request, mode):
    """The independent check of the declaration: what the assets actually read, in both storage modes."""
    graph = request.getfixturevalue("graph" if mode == "stored" else "topk_graph")
    *_, reads = graph
    records = _records(_defs(graph))
    assert {a for a, _ in reads} >= {"text_embeddings", "classifier", "val_representations", "second_order_effects",
                                     "neuron_pcas", "sparse_codes", "ablation_report", "neuron_report"}
    if mode == "topk":
        assert ("second_order_effects", "analysis.top_k") in reads and "val_effect_sums" in {a for a, _ in reads}
    missing = []
    for asset, field in sorted(reads):
        if field in NO_NUMBERS or (asset, field) in PREVIEW_ONLY:
            continue
        name = AS_DERIVED.get((asset, field), AS_DATA.get(field, field))
        for e, record in records.items():
            if e.split("[")[0] == asset and name not in record:
                missing.append(f"{e} reads {field} but its record has no {name}")
    assert not missing, "\n".join(missing)


def test_defaults_live_in_the_resources_only():
    from oe_assets.profiles import validation

    source = Path(validation.__file__).read_text()
    for setting in ("top_k", "components", "coefficient"):
        assert f'"{setting}": ' not in source, f"validation restates the default of analysis.{setting}"
    assert default("analysis.components") == AnalysisResource.model_fields["components"].default


# ---------------------------------------------------------------- resume, derived
def _downstream(defs, assets: set[str]) -> set[str]:
    asset_graph = defs.resolve_asset_graph()
    out = set(assets)
    for key in asset_graph.toposorted_asset_keys:
        if any(p.to_user_string() in out for p in asset_graph.get(key).parent_keys):
            out.add(key.to_user_string())
    return out


def _plan(defs, graph):
    root = graph[0]
    mp = pytest.MonkeyPatch()
    mp.setenv("DAGSTER_HOME", str(root / "dagster_home"))
    try:
        with dg.DagsterInstance.get() as instance:
            keys = [k for k in defs.resolve_asset_graph().toposorted_asset_keys
                    if k.to_user_string() in READS]
            layers = defs.resolve_asset_graph().get(dg.AssetKey("neuron_pcas")).partitions_def.get_partition_keys()
            return resume.plan_materialization(defs, instance, keys, layers)
    finally:
        mp.undo()


def test_nothing_changed_nothing_runs(graph):
    plan = _plan(_defs(graph), graph)
    assert not plan.run, plan.lines()


@pytest.mark.parametrize("setting", all_settings())
def test_a_changed_setting_reruns_exactly_its_readers_and_downstream(graph, setting, monkeypatch):
    defs = _defs(graph)
    real = resume.current_values

    def changed(resources, settings=None, cache=None):
        values = real(resources, settings, cache)
        if setting in values:
            values[setting] = f"<another {setting}>"
        return values

    monkeypatch.setattr(resume, "current_values", changed)
    plan = _plan(defs, graph)
    readers = {a for a, ss in READS.items() if setting in ss}
    expected = _downstream(defs, readers) & {k.to_user_string() for k in plan.order}
    assert {k.to_user_string() for k in plan.run} == expected
    for key, reasons in plan.run.items():
        if key.to_user_string() in readers:
            assert all(f"{setting} " in r for r in reasons.values()), reasons


# ---------------------------------------------------------------- provenance, derived
def _inputs_of(defs, consumer: str, layer: str = "0") -> dict[str, dict]:
    """The file attributes a consumer's check reads: each direct input's file."""
    asset_graph = defs.resolve_asset_graph()
    files = resume._Files(defs)
    out = {}
    for parent in asset_graph.get(dg.AssetKey(consumer)).parent_keys:
        pnode = asset_graph.get(parent)
        if not pnode.is_materializable or parent.to_user_string() == "model":
            continue
        p = layer if pnode.partitions_def is not None else None
        out[entry(parent.to_user_string(), p)] = files.read(parent, p)
    return out


@pytest.mark.parametrize("setting", all_settings())
def test_a_partial_rerun_mixing_values_is_refused_naming_the_setting_and_the_stale_files(graph, setting):
    defs = _defs(graph)
    resources = resume.profile_resources(defs)
    readers = {a for a, ss in READS.items() if setting in ss}
    records = _records(defs)
    # a consumer downstream of every reader present in the graph: layer_summary, else the report
    consumer = "layer_summary" if not readers <= {"neuron_report"} else None
    if consumer is None or not any(e.split("[")[0] in readers for e in records):
        pytest.skip(f"no asset downstream of {sorted(readers)} in this graph")
    current = current_values(resources)
    current[setting] = f"<another {setting}>"
    with pytest.raises(ProvenanceError) as e:
        check(consumer, _inputs_of(defs, consumer), {}, "2", current)
    msg = str(e.value)
    assert f"- {setting}: " in msg, msg
    # the stale files: the readers' and every file made from them, in dependency order
    advice = msg.splitlines()[-1]
    lineage_entries = set()
    for attrs in _inputs_of(defs, consumer).values():
        lineage_entries |= set(attrs["provenance"]["records"])
    affected = _downstream(defs, readers)
    stale = [e for e in records if e.split("[")[0] in affected and e in lineage_entries]
    assert stale, (setting, readers)
    named = advice.split("Re-materialize ", 1)[1].split(" (the stale", 1)[0].split(", ")
    described = [s if "[" not in s else f"{s.split('[')[0]} layer {s.split('[')[1][:-1]}" for s in stale]
    assert sorted(named) == sorted(described), (named, described)
    order = list(READS)
    ranks = [order.index(n.split(" layer ")[0]) for n in named]
    assert ranks == sorted(ranks), named
