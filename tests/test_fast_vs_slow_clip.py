"""The fast path equals the literal per-head path on random tiny CLIP models, for every layer."""

import pytest
import torch

from conftest import tiny_clip_vision
from oe_assets.lens import SecondOrderLens, get_adapter, slow_path_contributions, slow_second_order_effects


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("convention", ["reference", "direct"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_every_layer_float64(convention, attn):
    model = tiny_clip_vision(seed=1, layers=4, attn=attn)
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for layer in range(3):
        lens = SecondOrderLens(model, layer, convention=convention)
        fast = lens(x)
        slow = slow_second_order_effects(model, x, layer, convention=convention)
        assert fast.shape == (3, 64, 24)
        assert rel(fast, slow) <= 1e-10, (layer, rel(fast, slow))


def test_attention_implementation_does_not_matter():
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    eager = SecondOrderLens(tiny_clip_vision(seed=2, attn="eager"), 1)(x)
    sdpa = SecondOrderLens(tiny_clip_vision(seed=2, attn="sdpa"), 1)(x)
    # not bit-equal: HF's eager forward itself runs softmax in float32, which moves later states
    assert rel(eager, sdpa) <= 1e-6


def test_clip_model_through_vision_tower():
    model = tiny_clip_vision(seed=3, with_text=True)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    fast = SecondOrderLens(model, 0)(x)
    assert fast.shape == (2, 64, 24)
    assert rel(fast, slow_second_order_effects(model, x, 0)) <= 1e-10
    # the capture's representation is the model's own image embedding
    cap = get_adapter(model).capture(x, 0)
    with torch.no_grad():
        emb = model.visual_projection(model.vision_model(pixel_values=x).pooler_output)
    assert rel(cap.representation, emb) <= 1e-12


def test_direct_convention_is_linear_in_the_mlp_output():
    """Summed over neurons, the direct effects equal the path applied to the whole MLP output."""
    model = tiny_clip_vision(seed=4)
    adapter = get_adapter(model)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    lens = SecondOrderLens(model, 1, convention="direct")
    cap = lens.capture(x)
    W_out, _ = adapter.mlp_out_weights(1)
    whole = (cap.activations @ W_out.T)[:, :, None, :]
    assert rel(lens.from_capture(cap).sum(1), slow_path_contributions(adapter, cap, 1, whole)[:, 0]) <= 1e-10


def test_float32_close_to_float64():
    model = tiny_clip_vision(seed=5)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    e64 = SecondOrderLens(model, 0)(x)
    e32 = SecondOrderLens(model.to(torch.float32), 0)(x.float())
    assert e32.dtype == torch.float32
    assert rel(e32.double(), e64) <= 1e-4


def test_bad_inputs_are_named():
    model = tiny_clip_vision(seed=6)
    with pytest.raises(ValueError, match="mlp_layer=3 is out of range"):
        SecondOrderLens(model, 3)
    with pytest.raises(ValueError, match="convention='nope'"):
        SecondOrderLens(model, 0, convention="nope")
    with pytest.raises(ValueError, match="pixel_values has shape"):
        SecondOrderLens(model, 0)(torch.zeros(2, 3, 8, 8))
    with pytest.raises(TypeError, match="no second-order adapter for Linear"):
        SecondOrderLens(torch.nn.Linear(2, 2), 0)
