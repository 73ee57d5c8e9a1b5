"""An independent check of the direct convention's paths (norm lists, head weights, readout) for
every family: the real Hugging Face modules, run with every norm's sigma and every attention
pattern frozen at their clean values, are affine in a perturbation added to an MLP layer's output.

For an MLP layer ``l`` and a later block ``j`` (up to three blocks later) the model is first cut
down so that block ``j``'s heads are the only one-head paths left: the MLPs of every block after
``l`` and the attention outputs of every block after ``l`` other than ``j`` are set to zero.  The
lens of that model then only has block ``j``'s terms (the other blocks' ``W_O`` are zero), while
their norms stay on the path (BERT's stream LayerNorms still divide by sigma, a silenced pre-norm
branch still reads a normed stream).  The frozen model's one-head part (all paths minus the same
map with block ``j``'s attention silenced too: the residual, norm-only path) must equal the lens
summed over neurons.

Nothing here reads the adapters' norm lists: the norms are found by module type (``LayerNorm``
centres, ``*RMSNorm`` does not), the silenced modules by the Hugging Face module tree.
:func:`test_dropping_any_norm_from_an_adapters_paths_breaks_the_check` runs the mutations: with one
norm removed from ``layer_norms_before_head`` or ``layer_norms_after_head`` (BERT's intermediate
``_stream_norms``, GPT-2's ``ln_1`` / ``ln_f``, CLIP's ``layer_norm1`` / ``post_layernorm``, the
decoders' ``input_layernorm`` / ``norm``, OLMo 2's and Gemma's post-sublayer norms) the check fails
by far more than its bar.
"""

from contextlib import contextmanager

import pytest
import torch
from conftest import (
    DECODER_FAMILIES,
    padded_batch,
    tiny_bert,
    tiny_clip_vision,
    tiny_decoder,
    tiny_gpt2,
)

from oe_assets.lens import SecondOrderLens, get_adapter

FAMILIES = ("bert", "gpt2", "clip_vision", *DECODER_FAMILIES)
#: (MLP layer, later block) in 4-layer models: the next block and blocks two and three layers later
PAIRS = ((0, 1), (0, 2), (0, 3), (1, 3))


def build(family):
    builders = {"bert": tiny_bert, "gpt2": tiny_gpt2, "clip_vision": tiny_clip_vision}
    if family in builders:  # eager attention: its softmax is what the check freezes
        return builders[family](seed=21, layers=4, attn="eager")
    return tiny_decoder(family, seed=21, layers=4, attn="eager")


def inputs_for(family):
    if family == "clip_vision":
        return {"pixel_values": torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(22),
                                            dtype=torch.float64)}
    return padded_batch(seed=22, lengths=(9, 6, 7))


def mlp_and_attention_outputs(model, family, k):
    """The Linear/Conv1D modules writing block ``k``'s MLP and attention outputs."""
    if family == "bert":
        layer = model.encoder.layer[k]
        return layer.output.dense, layer.attention.output.dense
    if family == "gpt2":
        layer = model.transformer.h[k]
        return layer.mlp.c_proj, layer.attn.c_proj
    if family == "clip_vision":
        layer = model.vision_model.encoder.layers[k]
        return layer.mlp.fc2, layer.self_attn.out_proj
    layer = model.model.layers[k]
    return layer.mlp.down_proj, layer.self_attn.o_proj


def silence(module):
    with torch.no_grad():
        module.weight.zero_()
        if module.bias is not None:
            module.bias.zero_()


def norms(model):
    """``(name, module, centred, gain)`` of every norm: LayerNorms centre, RMSNorms do not; Gemma's
    RMSNorms store their gain minus one."""
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.LayerNorm):
            yield name, mod, True, mod.weight
        elif type(mod).__name__.endswith("RMSNorm"):
            yield name, mod, False, 1.0 + mod.weight if type(mod).__name__.startswith("Gemma") else mod.weight


@contextmanager
def linearised(model, frozen=None):
    """Every norm and softmax computes in the model's dtype (the decoders' modules would round
    through float32).  With ``frozen``, norm sigmas and attention probabilities are recorded into
    it when it is empty and replayed from it otherwise: the model becomes affine in its stream."""
    recording = frozen is not None and not frozen
    calls = {"softmax": 0}
    softmax = torch.nn.functional.softmax
    patched = []
    for name, mod, centred, gain in norms(model):
        eps = getattr(mod, "variance_epsilon", None) or mod.eps

        def forward(x, _mod=mod, _name=name, _centred=centred, _eps=eps, _gain=gain):
            v = x - x.mean(-1, keepdim=True) if _centred else x
            sigma = torch.sqrt(v.pow(2).mean(-1, keepdim=True) + _eps)
            if frozen is not None:
                if recording:
                    frozen[_name] = sigma
                sigma = frozen[_name]
            out = _gain * v / sigma
            return out if getattr(_mod, "bias", None) is None else out + _mod.bias
        mod.forward = forward
        patched.append(mod)

    def exact_softmax(x, dim=None, *args, **kwargs):
        kwargs.pop("dtype", None)  # eager attention asks for float32
        probs = softmax(x, dim, *args, **kwargs)
        if frozen is None:
            return probs
        key = f"attention {calls['softmax']}"
        calls["softmax"] += 1
        if recording:
            frozen[key] = probs
        return frozen[key]

    torch.nn.functional.softmax = exact_softmax
    try:
        yield
    finally:
        torch.nn.functional.softmax = softmax
        for mod in patched:
            del mod.forward


def frozen_run(model, adapter, batch, mlp_out, delta, frozen):
    """The representation with ``delta`` added to ``mlp_out``'s output, sigmas and attention
    probabilities from ``frozen`` (recorded when it is empty)."""
    handle = None if delta is None else mlp_out.register_forward_hook(lambda m, i, out: out + delta)
    try:
        with linearised(model, frozen), torch.no_grad():
            return adapter.forward(adapter.prepare_inputs(batch))
    finally:
        if handle is not None:
            handle.remove()


def linearization_error(family, layer, block, mutate=None):
    """``(relative error, scale)`` between the lens summed over neurons and the frozen model's
    one-head paths through ``block`` for a perturbation at MLP ``layer``; ``mutate(adapter)`` may
    alter the adapter the lens uses (the frozen model never reads it)."""
    model = build(family)
    adapter = get_adapter(model)
    n_layers = adapter.n_layers
    for k in range(layer + 1, n_layers):
        later_mlp, later_attention = mlp_and_attention_outputs(model, family, k)
        silence(later_mlp)
        if k != block:
            silence(later_attention)
    batch = inputs_for(family)
    if mutate:
        mutate(adapter)
    lens = SecondOrderLens(adapter, layer, convention="direct")
    with linearised(model):
        cap = lens.capture(batch)
    W_out, _ = adapter.mlp_out_weights(layer)
    delta = cap.activations @ W_out.T  # the layer's MLP output minus its bias
    mlp_out, _ = mlp_and_attention_outputs(model, family, layer)

    frozen = {}
    r0 = frozen_run(model, adapter, batch, mlp_out, None, frozen)
    all_paths = frozen_run(model, adapter, batch, mlp_out, delta, frozen) - r0
    silence(mlp_and_attention_outputs(model, family, block)[1])  # no head paths: the residual path alone
    residual_only = frozen_run(model, adapter, batch, mlp_out, delta, frozen) - \
        frozen_run(model, adapter, batch, mlp_out, None, frozen)
    one_head = (all_paths - residual_only) * (100.0 / r0.norm(dim=-1, keepdim=True))
    lens_sum = lens.from_capture(cap).sum(1)
    scale = one_head.abs().max().item()
    return ((lens_sum - one_head).abs().max() / scale).item(), scale


@pytest.mark.parametrize("layer,block", PAIRS)
@pytest.mark.parametrize("family", FAMILIES)
def test_direct_convention_equals_the_frozen_models_one_head_paths(family, layer, block):
    error, scale = linearization_error(family, layer, block)
    assert scale > 1e-3  # the check has something to compare
    assert error <= 1e-8, error


def _drop(method, victim):
    """Mutate an adapter: ``method`` (a path-list method) loses the norm whose name ends in ``victim``."""
    def mutate(adapter):
        original = getattr(adapter, method)

        def mutated(*args):
            names = original(*args)
            kept = [n for n in names if not n.endswith(victim)]
            mutate.dropped |= len(kept) < len(names)
            return kept
        setattr(adapter, method, mutated)
    mutate.dropped = False
    return mutate


MUTATIONS = [
    ("bert", 0, 2, "layer_norms_before_head", "layer.1.attention.output.LayerNorm"),  # an intermediate _stream_norms
    ("bert", 0, 2, "layer_norms_before_head", "layer.1.output.LayerNorm"),
    ("bert", 0, 2, "layer_norms_before_head", "layer.0.output.LayerNorm"),
    ("bert", 0, 2, "layer_norms_after_head", "layer.3.output.LayerNorm"),
    ("bert", 0, 2, "layer_norms_after_head", "layer.2.attention.output.LayerNorm"),
    ("gpt2", 0, 2, "layer_norms_before_head", "h.2.ln_1"),
    ("gpt2", 0, 2, "layer_norms_after_head", "ln_f"),
    ("clip_vision", 0, 2, "layer_norms_before_head", "layers.2.layer_norm1"),
    ("clip_vision", 0, 2, "layer_norms_after_head", "post_layernorm"),
    ("llama", 0, 2, "layer_norms_before_head", "layers.2.input_layernorm"),
    ("qwen3", 0, 2, "layer_norms_after_head", "model.norm"),
    ("olmo2", 0, 2, "layer_norms_before_head", "layers.0.post_feedforward_layernorm"),
    ("olmo2", 0, 2, "layer_norms_after_head", "layers.2.post_attention_layernorm"),
    ("olmo2", 0, 2, "layer_norms_after_head", "model.norm"),
    ("gemma2", 0, 2, "layer_norms_before_head", "layers.0.post_feedforward_layernorm"),
    ("gemma2", 0, 2, "layer_norms_before_head", "layers.2.input_layernorm"),
    ("gemma3", 0, 2, "layer_norms_after_head", "layers.2.post_attention_layernorm"),
    ("gemma3", 0, 2, "layer_norms_after_head", "model.norm"),
]


@pytest.mark.parametrize("family,layer,block,method,victim", MUTATIONS)
def test_dropping_any_norm_from_an_adapters_paths_breaks_the_check(family, layer, block, method, victim):
    mutate = _drop(method, victim)
    error, _ = linearization_error(family, layer, block, mutate)
    assert mutate.dropped  # the victim was on a path of the lens
    assert error > 1e-3, error
