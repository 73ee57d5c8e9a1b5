"""The parts of oe_assets.distributed that need no servers: cutting layers into runs, freeing the pool
slots of ended runs."""

import dagster as dg

from oe_assets.distributed import layer_spans
from oe_assets.recovery import free_ended_run_slots


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

    @dg.op
    def nothing():
        return None

    @dg.job
    def one_step():
        nothing()

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
