"""BERT-style encoders and GPT-2-style causal LMs behind the same lens."""

import pytest
import torch

from conftest import padded_batch, tiny_bert, tiny_gpt2
from oe_assets.lens import SecondOrderLens, get_adapter, slow_path_contributions, slow_second_order_effects

CASES = [
    ("bert", "direct", "mean"),
    ("bert", "direct", "cls"),
    ("gpt2", "reference", None),
    ("gpt2", "direct", None),
]


def build(family, **kw):
    return tiny_bert(**kw) if family == "bert" else tiny_gpt2(**kw)


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("family,convention,pooling", CASES)
def test_fast_equals_slow_on_padded_batches(family, convention, pooling):
    model = build(family, seed=1)
    batch = padded_batch(seed=2)
    for layer in range(3):
        lens = SecondOrderLens(model, layer, convention=convention, pooling=pooling)
        fast = lens(batch)
        assert fast.shape == (3, 64, 32)
        slow = slow_second_order_effects(model, batch, layer, convention=convention, pooling=pooling)
        assert rel(fast, slow) <= 1e-8, (layer, rel(fast, slow))


@pytest.mark.parametrize("family,convention,pooling", CASES)
def test_padding_does_not_change_effects(family, convention, pooling):
    model = build(family, seed=3)
    batch = padded_batch(seed=4, lengths=(9, 5, 7))
    lens = SecondOrderLens(model, 1, convention=convention, pooling=pooling)
    together = lens(batch)
    for i, n in enumerate((9, 5, 7)):
        alone = lens({"input_ids": batch["input_ids"][i:i + 1, :n], "attention_mask": batch["attention_mask"][i:i + 1, :n]})
        assert rel(together[i:i + 1], alone) <= 1e-10


@pytest.mark.parametrize("family,pooling", [("bert", "mean"), ("bert", "cls"), ("gpt2", None)])
def test_direct_sum_over_neurons_is_the_whole_mlp_output(family, pooling):
    model = build(family, seed=5)
    adapter = get_adapter(model, pooling)
    batch = padded_batch(seed=6)
    lens = SecondOrderLens(adapter, 0, convention="direct")
    cap = lens.capture(batch)
    W_out, _ = adapter.mlp_out_weights(0)
    whole = (cap.activations @ W_out.T)[:, :, None, :]  # the layer's MLP output minus its bias
    assert rel(lens.from_capture(cap).sum(1), slow_path_contributions(adapter, cap, 0, whole)[:, 0]) <= 1e-10


def test_representations_are_the_models_own():
    batch = padded_batch(seed=7)
    bert = tiny_bert(seed=8)
    with torch.no_grad():
        hidden = bert(**batch).last_hidden_state
    mask = batch["attention_mask"].double()
    mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert rel(get_adapter(bert).capture(batch, 0).representation, mean) <= 1e-12
    assert rel(get_adapter(bert, "cls").capture(batch, 0).representation, hidden[:, 0]) <= 1e-12
    gpt = tiny_gpt2(seed=9)
    with torch.no_grad():
        hidden = gpt.transformer(**batch).last_hidden_state
    last = batch["attention_mask"].sum(1) - 1
    assert rel(get_adapter(gpt).capture(batch, 0).representation, hidden[torch.arange(3), last]) <= 1e-12


def test_eager_and_sdpa_agree_and_bare_models_work():
    batch = padded_batch(seed=10)
    for family in ("bert", "gpt2"):
        a = SecondOrderLens(build(family, seed=11, attn="eager"), 1, convention="direct")(batch)
        b = SecondOrderLens(build(family, seed=11, attn="sdpa"), 1, convention="direct")(batch)
        assert rel(a, b) <= 1e-6  # eager's own softmax runs in float32
    bare = tiny_gpt2(seed=12, head=False)
    assert SecondOrderLens(bare, 0)(batch).shape == (3, 64, 32)


def test_language_model_errors():
    bert, gpt = tiny_bert(), tiny_gpt2()
    with pytest.raises(ValueError, match="convention='reference' is not defined for bert"):
        SecondOrderLens(bert, 0, convention="reference")
    with pytest.raises(ValueError, match="pooling='max'"):
        SecondOrderLens(bert, 0, pooling="max")
    with pytest.raises(TypeError, match="mapping with 'input_ids'"):
        SecondOrderLens(gpt, 0)(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        SecondOrderLens(gpt, 0)({"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 4)})
    with pytest.raises(ValueError, match="no tokens"):
        SecondOrderLens(gpt, 0)({"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.zeros(2, 3)})


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_recomputed_attention_equals_the_models_own(family):
    """The capture recomputes attention from the attention input; it must equal what the model's
    eager attention returns at real (non-padding) query tokens."""
    model = build(family, seed=13, attn="eager")
    batch = padded_batch(seed=14)
    cap = get_adapter(model).capture(batch, 0)
    body = model.transformer if family == "gpt2" else model
    with torch.no_grad():
        out = body(**batch, output_attentions=True)
    mask = batch["attention_mask"].bool()
    for j in (1, 2, 3):
        ours, theirs = cap.attention[j], out.attentions[j]
        for b in range(3):
            real = mask[b]
            assert rel(ours[b][:, real][:, :, real], theirs[b][:, real][:, :, real].double()) <= 1e-6


def test_gpt2_left_padding_matches_right_padding():
    model = tiny_gpt2(seed=15)
    right = padded_batch(seed=16, lengths=(9, 5))
    ids, mask = right["input_ids"].clone(), right["attention_mask"].clone()
    ids[1] = torch.cat([ids[1, 5:], ids[1, :5]])  # move the padding to the left
    mask[1] = torch.cat([mask[1, 5:], mask[1, :5]])
    lens = SecondOrderLens(model, 1)
    assert rel(lens({"input_ids": ids, "attention_mask": mask})[1], lens(right)[1]) <= 1e-10
