"""First-order effects against a literal per-neuron loop, and the total (MLP-output replacement)
forward pass."""

import numpy as np
import pytest
import torch

from conftest import padded_batch, tiny_bert, tiny_clip_vision, tiny_decoder, tiny_gpt2
from oe_assets.lens import FirstOrderLens, get_adapter, replaced_mlp_representations


def literal_first_order(model, inputs, layer, coefficient=100.0):
    """``[batch, neurons, d_out]`` by a loop over samples and neurons: each neuron's write
    ``a[b,t,n] W_out[:, n]`` pushed through each norm on its direct path by hand (``gamma * (v -
    mean v) / sigma``, sigma recorded from the norm's input in a plain forward pass), pooled by the
    readout and projected."""
    a = get_adapter(model)
    names = a.layer_norms_after_mlp(layer)
    prepared = a.prepare_inputs(inputs)
    seen, handles = {}, []
    for name in names:
        def pre(mod, args, kwargs, name=name):
            seen[name] = (args[0] if args else next(iter(kwargs.values()))).detach().clone()
        handles.append(a.model.get_submodule(name).register_forward_pre_hook(pre, with_kwargs=True))
    mlp = a.model.get_submodule(a.mlp_out_pattern.replace("*", str(layer)))
    handles.append(mlp.register_forward_pre_hook(lambda mod, args: seen.__setitem__("act", args[0].detach().clone())))
    with torch.no_grad():
        rep = a.forward(prepared)
    for h in handles:
        h.remove()
    positions, weights = a.readout(prepared)
    W_out, _ = a.mlp_out_weights(layer)
    P = a.projection()
    act = seen["act"]
    B, T, N = act.shape
    out = np.zeros((B, N, a.d_out))
    for b in range(B):
        for n in range(N):
            total = torch.zeros(a.d_model, dtype=act.dtype)
            for qi, t in enumerate(positions.tolist()):
                v = act[b, t, n] * W_out[:, n]
                for name in names:
                    p = a.layer_norm(name)
                    x = seen[name][b, t] if seen[name].dim() == 3 else seen[name][b]  # a pooled-only norm
                    if p.centred:
                        v = p.weight * (v - v.mean()) / torch.sqrt(x.var(unbiased=False) + p.eps)
                    else:
                        v = p.weight * v / torch.sqrt(x.pow(2).mean() + p.eps)
                total = total + weights[b, qi] * v
            e = total if P is None else total @ P
            out[b, n] = (coefficient / rep[b].norm() * e).detach().numpy()
    return out


MODELS = {
    "clip": (lambda: tiny_clip_vision(layers=3),
             lambda: torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)),
    "bert": (lambda: tiny_bert(layers=3), lambda: padded_batch(lengths=(7, 4))),
    "gpt2": (lambda: tiny_gpt2(layers=3), lambda: padded_batch(lengths=(7, 4))),
    "olmo2": (lambda: tiny_decoder("olmo2", layers=3), lambda: padded_batch(lengths=(7, 4))),
    "gemma2": (lambda: tiny_decoder("gemma2", layers=3), lambda: padded_batch(lengths=(7, 4))),
}


@pytest.mark.parametrize("family", sorted(MODELS))
@pytest.mark.parametrize("layer", [0, 1])
def test_first_order_equals_literal_loop(family, layer):
    build, make_inputs = MODELS[family]
    model, inputs = build(), make_inputs()
    lens = FirstOrderLens(model, layer)
    got = lens(inputs).numpy()
    expected = literal_first_order(model, inputs, layer)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())
    summed = lens.summed_from_capture(lens.capture(inputs)).numpy()
    np.testing.assert_allclose(summed, expected.sum(1), rtol=1e-9, atol=1e-9 * np.abs(expected).max())


def test_bert_first_order_path_crosses_every_later_stream_norm():
    a = get_adapter(tiny_bert(layers=3))
    assert a.layer_norms_after_mlp(0) == [
        "encoder.layer.0.output.LayerNorm", "encoder.layer.1.attention.output.LayerNorm",
        "encoder.layer.1.output.LayerNorm", "encoder.layer.2.attention.output.LayerNorm",
        "encoder.layer.2.output.LayerNorm"]
    assert get_adapter(tiny_clip_vision(layers=3)).layer_norms_after_mlp(1) == ["vision_model.post_layernorm"]


@pytest.mark.parametrize("family", ["clip", "bert"])
def test_replacing_the_mlp_output(family):
    build, make_inputs = MODELS[family]
    model, inputs = build(), make_inputs()
    a = get_adapter(model)
    baseline = replaced_mlp_representations(a, inputs, 1, None)
    seen = {}
    mlp = model.get_submodule(a.mlp_out_pattern.replace("*", "1"))
    h = mlp.register_forward_hook(lambda mod, args, out: seen.__setitem__("out", out.detach().clone()))
    with torch.no_grad():
        a.forward(a.prepare_inputs(inputs))
    h.remove()
    exact = replaced_mlp_representations(a, inputs, 1, seen["out"])  # the exact output: nothing changes
    torch.testing.assert_close(exact, baseline, rtol=1e-12, atol=1e-12)
    mean = seen["out"].mean(dim=(0, 1))
    ablated = replaced_mlp_representations(a, inputs, 1, mean)
    assert ablated.shape == baseline.shape and (ablated - baseline).abs().max() > 1e-3
    assert not mlp._forward_hooks  # the hook is gone afterwards
