"""An independent check of the direct convention's paths (LayerNorm lists, head weights, readout)
for the language-model families: the real Hugging Face modules, run with every LayerNorm's sigma and
every attention pattern frozen at their clean values, are affine in a perturbation added to an MLP
layer's output.  With one later block and its MLP silenced, that affine map's one-head part (all
minus the same map with the block's attention silenced) must equal the lens's sum over neurons."""

import pytest
import torch

from conftest import padded_batch, tiny_bert, tiny_gpt2
from oe_assets.lens import SecondOrderLens, get_adapter


def frozen_model_run(model, adapter, batch, mlp_out: torch.nn.Module, delta, frozen):
    """The representation with ``delta`` added to ``mlp_out``'s output, LayerNorm sigmas and the
    attention probabilities taken from ``frozen`` (recorded when it is empty)."""
    recording = not frozen
    handles, calls = [], {"softmax": 0}
    for name, ln in model.named_modules():
        if isinstance(ln, torch.nn.LayerNorm):
            def forward(x, _ln=ln, _name=name):
                if recording:
                    frozen[_name] = torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + _ln.eps)
                return _ln.weight * (x - x.mean(-1, keepdim=True)) / frozen[_name] + _ln.bias
            ln.forward = forward
    softmax = torch.nn.functional.softmax

    def frozen_softmax(x, *args, **kwargs):
        key = f"attention {calls['softmax']}"
        calls["softmax"] += 1
        if recording:
            frozen[key] = softmax(x, *args, **kwargs)
        return frozen[key].to(x.dtype)

    if delta is not None:
        handles.append(mlp_out.register_forward_hook(lambda m, i, out: out + delta))
    torch.nn.functional.softmax = frozen_softmax
    try:
        with torch.no_grad():
            return adapter.forward(adapter.prepare_inputs(batch))
    finally:
        torch.nn.functional.softmax = softmax
        for h in handles:
            h.remove()
        for ln in model.modules():
            if isinstance(ln, torch.nn.LayerNorm):
                del ln.forward


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_direct_convention_equals_the_frozen_models_one_head_paths(family):
    model = (tiny_bert if family == "bert" else tiny_gpt2)(seed=21, layers=3, attn="eager")
    adapter = get_adapter(model)
    layer, last = 1, 2
    blocks = model.encoder.layer if family == "bert" else model.transformer.h
    mlp_out = blocks[layer].output.dense if family == "bert" else blocks[layer].mlp.c_proj
    with torch.no_grad():  # silence the later block's MLP: only attention paths remain
        later_mlp = blocks[last].output.dense if family == "bert" else blocks[last].mlp.c_proj
        later_mlp.weight.zero_()
        later_mlp.bias.zero_()
    batch = padded_batch(seed=22)
    lens = SecondOrderLens(adapter, layer, convention="direct")
    cap = lens.capture(batch)
    W_out, _ = adapter.mlp_out_weights(layer)
    delta = cap.activations @ W_out.T  # the layer's MLP output minus its bias

    frozen = {}
    r0 = frozen_model_run(model, adapter, batch, mlp_out, None, frozen)
    all_paths = frozen_model_run(model, adapter, batch, mlp_out, delta, frozen) - r0
    attn_out = blocks[last].attention.output.dense if family == "bert" else blocks[last].attn.c_proj
    saved = attn_out.weight.clone(), attn_out.bias.clone()
    with torch.no_grad():  # no head paths: only the residual (LayerNorm-only) path is left
        attn_out.weight.zero_()
        attn_out.bias.zero_()
    try:
        residual_only = frozen_model_run(model, adapter, batch, mlp_out, delta, frozen) - \
            frozen_model_run(model, adapter, batch, mlp_out, None, frozen)
    finally:
        with torch.no_grad():
            attn_out.weight.copy_(saved[0])
            attn_out.bias.copy_(saved[1])
    one_head = (all_paths - residual_only) * (100.0 / r0.norm(dim=-1, keepdim=True))
    lens_sum = lens.from_capture(cap).sum(1)
    assert one_head.abs().max() > 1e-3  # the check has something to compare
    assert ((lens_sum - one_head).abs().max() / one_head.abs().max()).item() <= 1e-8
