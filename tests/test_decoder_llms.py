"""Decoder LLMs (Llama, Mistral, Qwen2, Qwen3, Phi-3, OLMo 2) behind the same lens: tiny random
models saved with ``save_pretrained`` and loaded back by ``load_model``, in float64."""

import pytest
import torch
from conftest import DECODER_FAMILIES, decoder_attention, padded_batch, tiny_decoder

from oe_assets.lens import (
    SecondOrderLens,
    get_adapter,
    slow_path_contributions,
    slow_second_order_effects,
)
from oe_assets.models.loading import load_model

LENGTHS = (9, 6, 7)  # the window of 5 (mistral, qwen2) is shorter than the sequences


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``family -> folder`` of each tiny model, written once per module."""
    root = tmp_path_factory.mktemp("decoders")
    out = {}
    for family in DECODER_FAMILIES:
        tiny_decoder(family, seed=1).save_pretrained(root / family)
        out[family] = root / family
    return out


def loaded(saved, family, attn="sdpa"):
    lm = load_model(str(saved[family]), dtype="float64", device="cpu")
    lm.model.set_attn_implementation(decoder_attention(family, attn))
    return lm


@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_load_model_detects_the_family_and_keeps_the_weights(saved, family):
    lm = loaded(saved, family)
    assert type(lm.model).__name__.endswith("ForCausalLM")
    own = ("phi3", "olmo2", "gemma2", "gemma3")
    assert lm.adapter.family == (family if family in own else "decoder_lm")
    built = tiny_decoder(family, seed=1)
    for (name, p), (_, q) in zip(built.state_dict().items(), lm.model.state_dict().items()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_fast_equals_slow_at_several_layers(saved, family):
    lm = loaded(saved, family)
    batch = padded_batch(seed=2, lengths=LENGTHS)
    for convention in lm.adapter.conventions:
        for layer in range(3):
            fast = SecondOrderLens(lm.adapter, layer, convention=convention)(batch)
            assert fast.shape == (3, 48, 32)
            slow = slow_second_order_effects(lm.adapter, batch, layer, convention=convention)
            assert rel(fast, slow) <= 1e-8, (convention, layer, rel(fast, slow))


@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_right_and_left_padding_give_the_effects_of_the_sample_alone(saved, family):
    lens = SecondOrderLens(loaded(saved, family).adapter, 1)
    batch = padded_batch(seed=4, lengths=LENGTHS)
    together = lens(batch)
    for i, n in enumerate(LENGTHS):
        ids, mask = batch["input_ids"][i], batch["attention_mask"][i]
        alone = lens({"input_ids": ids[None, :n], "attention_mask": mask[None, :n]})
        left = lens({"input_ids": torch.cat([ids[n:], ids[:n]])[None], "attention_mask": torch.cat([mask[n:], mask[:n]])[None]})
        assert rel(together[i:i + 1], alone) <= 1e-10
        if decoder_attention(family, "sdpa") == "eager":
            # transformers' eager attention itself can turn left padding into NaN (a padding
            # query with no key left), and Gemma 2 only runs eager: right padding only
            continue
        assert rel(left, alone) <= 1e-10


@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_sdpa_and_eager_agree(saved, family):
    batch = padded_batch(seed=10, lengths=LENGTHS)
    a = SecondOrderLens(loaded(saved, family, "eager").adapter, 1)(batch)
    b = SecondOrderLens(loaded(saved, family, "sdpa").adapter, 1)(batch)
    assert rel(a, b) <= 1e-6  # the models' eager softmax and RMSNorms run in float32


@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_recomputed_attention_equals_the_models_own(saved, family):
    """Rotary positions, grouped-query heads, q/k norms and biases, windows: the recomputed
    probabilities equal the model's eager attention at real query and key tokens."""
    lm = loaded(saved, family, "eager")
    batch = padded_batch(seed=14, lengths=LENGTHS)
    cap = lm.adapter.capture(batch, 0)
    with torch.no_grad():
        out = lm.model.model(**batch, position_ids=lm.adapter.positions(batch), output_attentions=True)
    mask = batch["attention_mask"].bool()
    for j in (1, 2, 3):
        for b in range(3):
            real = mask[b]
            ours, theirs = cap.attention[j][b][:, real][:, :, real], out.attentions[j][b][:, real][:, :, real]
            assert rel(ours, theirs) <= 1e-6, (j, b)
    windowed = {"mistral": (0, 1, 2, 3), "qwen2": (2, 3), "gemma2": (0, 2), "gemma3": (0, 2)}.get(family, ())
    for j in (1, 2, 3):  # the window is in force exactly at the windowed blocks
        assert (cap.attention[j][0, :, 8, :4] == 0).all() == (j in windowed)


@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_representation_and_classifier_are_the_models_own(saved, family):
    lm = loaded(saved, family)
    batch = padded_batch(seed=7, lengths=LENGTHS)
    r = lm.adapter.capture(batch, 0).representation
    with torch.no_grad():
        logits = lm.model(**batch, position_ids=lm.adapter.positions(batch)).logits
    last = batch["attention_mask"].sum(1) - 1
    assert rel(r @ lm.adapter.unembedding().T, logits[torch.arange(3), last]) <= 1e-12


@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_direct_sum_over_neurons_is_the_whole_mlp_output(saved, family):
    adapter = loaded(saved, family).adapter
    batch = padded_batch(seed=6, lengths=LENGTHS)
    lens = SecondOrderLens(adapter, 0, convention="direct")
    cap = lens.capture(batch)
    W_out, _ = adapter.mlp_out_weights(0)
    whole = (cap.activations @ W_out.T)[:, :, None, :]
    assert rel(lens.from_capture(cap).sum(1), slow_path_contributions(adapter, cap, 0, whole)[:, 0]) <= 1e-10


def test_neurons_are_gated_products_and_heads_share_key_value_heads():
    model = tiny_decoder("llama", seed=3)
    adapter = get_adapter(model)
    batch = padded_batch(seed=5, lengths=LENGTHS)
    mlp = model.model.layers[1].mlp
    seen = {}
    handle = mlp.register_forward_pre_hook(lambda m, args: seen.update(z=args[0]))
    try:
        cap = adapter.capture(batch, 1)
    finally:
        handle.remove()
    z = seen["z"]  # the MLP input: post_attention_layernorm of the stream
    assert rel(cap.activations, mlp.act_fn(mlp.gate_proj(z)) * mlp.up_proj(z)) <= 1e-15
    w = adapter.attention_weights(2)
    kv = model.model.layers[2].self_attn.v_proj.weight.view(2, 8, 32)
    for h in range(4):  # query head h reads key/value head h // (H / H_kv)
        assert torch.equal(w.W_v[h], kv[h // 2])


def test_reference_convention_and_errors():
    plain = get_adapter(tiny_decoder("qwen3", seed=8))
    batch = padded_batch(seed=9, lengths=LENGTHS)
    # no biases anywhere and RMSNorms have no mean or beta to share: reference = direct
    assert rel(SecondOrderLens(plain, 1, convention="reference")(batch),
               SecondOrderLens(plain, 1, convention="direct")(batch)) <= 1e-12
    biased = get_adapter(tiny_decoder("llama", seed=8))
    assert rel(SecondOrderLens(biased, 1, convention="reference")(batch),
               SecondOrderLens(biased, 1, convention="direct")(batch)) > 1e-3  # the bias shares count
    with pytest.raises(ValueError, match="convention='reference' is not defined for olmo2"):
        SecondOrderLens(tiny_decoder("olmo2"), 0, convention="reference")
    with pytest.raises(ValueError, match="pooling='mean'"):
        SecondOrderLens(tiny_decoder("llama"), 0, pooling="mean")
    with pytest.raises(ValueError, match="mlp_layer=3 is out of range"):
        SecondOrderLens(tiny_decoder("mistral"), 3)


def test_base_models_work_too(tmp_path):
    full = tiny_decoder("llama", seed=11)
    full.model.save_pretrained(tmp_path / "base")
    lm = load_model(str(tmp_path / "base"), dtype="float64", device="cpu")
    assert type(lm.model).__name__ == "LlamaModel"
    batch = padded_batch(seed=12, lengths=LENGTHS)
    assert rel(SecondOrderLens(lm.adapter, 0)(batch), SecondOrderLens(full, 0)(batch)) <= 1e-12
    assert torch.equal(lm.adapter.unembedding(), full.model.embed_tokens.weight)
