"""The parts of oe_assets.distributed that need no servers: cutting layers into runs, freeing the pool
slots of ended runs."""

import dagster as dg
import pytest

from oe_assets.distributed import layer_spans
from oe_assets.recovery import free_ended_run_slots
from helpers import one_step_job


def test_layer_spans_cut_ceil_l_over_n_layers_per_run():
    need = ("second_order_effects",)
    layers = [str(i) for i in range(11)]
    cuts = layer_spans([(layers, need)], 8)  # ceil(11 / 8) = 2 layers a run
    assert [c for c, _ in cuts] == [layers[i:i + 2] for i in range(0, 11, 2)]
    assert [c for c, _ in layer_spans([(layers, need)], 1)] == [layers]
    # spans needing other assets stay apart; the size counts the layers of all of them
    other = ("neuron_report",)
    cuts = layer_spans([(["0", "1", "2"], need), (["3"], other)], 2)
    assert cuts == [(["0", "1"], need), (["2"], need), (["3"], other)]
    assert layer_spans([], 4) == []


def test_free_ended_run_slots_frees_only_ended_runs():
    """A run whose Celery worker died ends failed with its step's slot still claimed: freed here; the
    slot of a run that has not ended stays."""

    one_step = one_step_job()
    with dg.instance_for_test() as instance:
        storage = instance.event_log_storage
        assert storage.supports_global_concurrency_limits
        storage.set_concurrency_slots("gpu", 2)
        ended = one_step.execute_in_process(instance=instance).run_id
        live = instance.create_run_for_job(one_step).run_id
        instance.handle_run_event(live, dg.DagsterEvent("PIPELINE_START", one_step.name))  # started, not ended
        assert storage.claim_concurrency_slot("gpu", ended, "nothing").is_claimed
        assert storage.claim_concurrency_slot("gpu", live, "nothing").is_claimed
        lines = []
        assert free_ended_run_slots(instance, lines.append) == [ended]
        assert lines == [f"freed the pool slots of run {ended} (SUCCESS): the run has ended"]
        assert {s.run_id for s in storage.get_concurrency_info("gpu").claimed_slots} == {live}


def _nodes_by_job():
    from oe_assets.definitions import build_definitions

    defs = build_definitions("demo")
    return {job.name: list(job.nodes) for job in defs.resolve_all_job_defs()}


def test_model_steps_and_only_they_carry_the_gpu_queue_and_pod_tags():
    """Every step in pool gpu (the steps that run the model) goes to the GPU workers' queue and asks
    Kubernetes for one GPU; no other step carries either tag."""
    import json

    from oe_assets.step_tags import CELERY_QUEUE_TAG, GPU_POD_CONFIG, K8S_CONFIG_TAG, general_queue, model_queue

    assert model_queue() == general_queue() + ".gpu"
    model, other = set(), set()
    for job, nodes in _nodes_by_job().items():
        for node in nodes:
            tags = node.tags
            if node.definition.pool == "gpu":
                model.add(node.name)
                assert tags.get(CELERY_QUEUE_TAG) == model_queue(), (job, node.name, tags)
                assert json.loads(tags[K8S_CONFIG_TAG]) == GPU_POD_CONFIG, (job, node.name, tags)
            else:
                other.add(node.name)
                assert CELERY_QUEUE_TAG not in tags and K8S_CONFIG_TAG not in tags, (job, node.name, tags)
    assert GPU_POD_CONFIG["container_config"]["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert {"second_order_effects", "val_second_order_effects", "train_representations", "val_representations",
            "text_embeddings", "classifier", "second_order_effects_fast_path_equals_slow_path"} <= model
    assert {"vocabulary", "train_data", "neuron_pcas", "sparse_codes", "layer_summary"} <= other


def test_dagster_k8s_reads_one_gpu_for_exactly_the_model_steps():
    """dagster-k8s's own reading of the op tags: a GPU limit on the model steps' containers, none elsewhere."""
    k8s = pytest.importorskip("dagster_k8s.job")
    for job, nodes in _nodes_by_job().items():
        for node in nodes:
            config = k8s.get_user_defined_k8s_config(node.tags)
            limits = (config.container_config.get("resources") or {}).get("limits")
            assert limits == ({"nvidia.com/gpu": 1} if node.definition.pool == "gpu" else None), (job, node.name)


def test_general_worker_takes_no_gpu(capsys):
    from oe_assets.distributed import worker_main

    assert worker_main(0, general=True) == 2
    assert "--general takes no --gpu" in capsys.readouterr().err
