"""Half-precision weights (bfloat16 / float16) with the lens math in float32: the forward pass runs
in the weights' dtype, the factors and path weights in the lens's compute dtype."""

import copy

import pytest
import torch
from conftest import padded_batch, tiny_decoder

from oe_assets.lens import SecondOrderLens
from oe_assets.lens.first_order import FirstOrderLens
from oe_assets.models.loading import load_model

LENGTHS = (9, 6, 7)


def frob(got, expected):
    """Relative Frobenius error."""
    return ((got.double() - expected.double()).norm() / expected.double().norm()).item()


@pytest.fixture(scope="module")
def models():
    """``{dtype: the same tiny Llama}``: weights rounded to bfloat16 and float16 once, then held in
    that dtype and as exact float32 / float64 copies of the rounded weights."""
    base = tiny_decoder("llama", seed=3, layers=4, dtype=torch.float32).eval()
    out = {}
    for half in (torch.bfloat16, torch.float16):
        rounded = copy.deepcopy(base).to(half)
        out[half] = {dt: copy.deepcopy(rounded).to(dt) for dt in (half, torch.float32, torch.float64)}
    return out


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layer", [0, 2])
def test_half_weights_with_a_float32_lens_equal_a_float32_lens_on_the_rounded_weights(models, half, layer):
    batch = padded_batch(seed=4, lengths=LENGTHS)
    lens = SecondOrderLens(models[half][half], layer, convention="direct")
    wide = SecondOrderLens(models[half][torch.float32], layer, convention="direct")
    assert lens.dtype == torch.float32 and lens.factors.left.dtype == torch.float32
    # the factors come from the same rounded weights, widened before any arithmetic
    assert torch.equal(lens.factors.left, wide.factors.left)
    assert torch.equal(lens.factors.right, wide.factors.right)
    cap = lens.capture(batch)  # the forward pass in half precision
    assert cap.activations.dtype == half
    # the lens's own statistics of a half-precision stream are float32
    assert all(a.dtype == torch.float32 for a in cap.attention.values())
    assert all(s.dtype == torch.float32 for s in cap.ln_std.values())
    got = lens.factorized_from_capture(cap)
    expected = wide.factorized_from_capture(cap.to(torch.float32))
    assert got.alpha.dtype == torch.float32
    assert frob(got.dense(), expected.dense()) <= 1e-6
    first, first_wide = FirstOrderLens(models[half][half], layer), FirstOrderLens(models[half][torch.float32], layer)
    assert torch.equal(first.directions, first_wide.directions)
    assert frob(first.summed_from_capture(cap), first_wide.summed_from_capture(cap.to(torch.float32))) <= 1e-6


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_float32_lens_error_against_float64_math_is_far_below_a_half_precision_lens(models, half):
    """The same half-precision forward pass, its lens math in float32 against float64 on the same
    rounded weights: under 1e-5; the same math in the weights' dtype misses that bound by far."""
    batch = padded_batch(seed=5, lengths=LENGTHS)
    bound = 1e-5
    for layer in (0, 1, 2):
        lens = SecondOrderLens(models[half][half], layer)
        cap = lens.capture(batch)
        exact = SecondOrderLens(models[half][torch.float64], layer).factorized_from_capture(cap.to(torch.float64)).dense()
        err = frob(lens.factorized_from_capture(cap).dense(), exact)
        assert err <= bound, (layer, err)
        in_half = SecondOrderLens(models[half][half], layer, compute_dtype=half)
        assert in_half.dtype == half
        err_half = frob(in_half.factorized_from_capture(cap).dense(), exact)
        assert err_half > 30 * bound, (layer, err_half)


def test_the_whole_pass_in_bfloat16_is_close_to_float64_on_the_rounded_weights(models):
    """End to end (the forward pass too): bfloat16 weights with a float32 lens against a float64
    forward pass and lens on the same weights; the error is the forward pass's rounding."""
    batch = padded_batch(seed=6, lengths=LENGTHS)
    got = SecondOrderLens(models[torch.bfloat16][torch.bfloat16], 1)(batch)
    assert got.dtype == torch.float32
    exact = SecondOrderLens(models[torch.bfloat16][torch.float64], 1)(batch)
    assert frob(got, exact) <= 0.05


def test_load_model_takes_a_compute_dtype(tmp_path):
    tiny_decoder("llama", seed=1, dtype=torch.float32).save_pretrained(tmp_path / "llama")
    folder = str(tmp_path / "llama")
    lm = load_model(folder, dtype="bfloat16", device="cpu")
    assert lm.adapter.dtype == torch.bfloat16 and SecondOrderLens(lm.adapter, 0).dtype == torch.float32
    lm64 = load_model(folder, dtype="bfloat16", device="cpu", compute_dtype="float64")
    assert SecondOrderLens(lm64.adapter, 0).dtype == torch.float64
    assert FirstOrderLens(lm64.adapter, 0).directions.dtype == torch.float64
    full = load_model(folder, dtype="float32", device="cpu")
    assert SecondOrderLens(full.adapter, 0).dtype == torch.float32
    with pytest.raises(ValueError, match="dtype='float8'"):
        load_model(folder, dtype="bfloat16", device="cpu", compute_dtype="float8")
