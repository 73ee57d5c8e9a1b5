"""The family tables (:mod:`oe_assets.lens.adapters.families`) against tiny models of each family built
from ``transformers`` config classes: every path resolves at every layer, every config key exists,
and the head layout, norm kind and attention details say what the modules are.  Mutated tables
(a typo in a path, a wrong key, a wrong layout) are reported, so the check cannot pass vacuously."""

from dataclasses import replace

import pytest
import torch
from conftest import DECODER_FAMILIES, tiny_bert, tiny_clip_vision, tiny_decoder, tiny_gpt2

from oe_assets.lens.adapters import ADAPTERS, DecoderLMAdapter, get_adapter
from oe_assets.lens.adapters.families import FAMILIES, Attention, Heads, Norms, layer_norm_style
from oe_assets.lens.adapters.generic import TableAdapter

LAYERS = 3


def build(family: str) -> list[torch.nn.Module]:
    """Tiny models of ``family``: the wrapped model and its bare body (both layouts an adapter reads)."""
    if family == "clip_vision":
        return [tiny_clip_vision(layers=LAYERS), tiny_clip_vision(layers=LAYERS, with_text=True)]
    if family == "gpt2":
        return [tiny_gpt2(layers=LAYERS), tiny_gpt2(layers=LAYERS, head=False)]
    if family == "bert":
        return [tiny_bert(layers=LAYERS)]
    model = tiny_decoder(family, layers=LAYERS)
    return [model, model.model]


def table_problems(table, model) -> list[str]:
    """What in ``table`` does not hold for ``model`` (empty: the table describes it)."""
    problems = []
    body = model
    for wrapper in table.wrappers:
        if hasattr(getattr(model, wrapper, None), table.blocks.split(".")[0]):
            body = getattr(model, wrapper)
            break
    config = body.config
    if config.model_type not in table.model_types:
        problems.append(f"model_type {config.model_type!r} not in {table.model_types}")
    for role, key in table.config_keys().items():
        if not hasattr(config, key) and role not in ("heads.n_kv_heads", "heads.head_dim"):
            problems.append(f"config key {role}={key!r} missing from {type(config).__name__}")
    n_layers = getattr(config, table.n_layers, None)
    if not isinstance(n_layers, int) or len(body.get_submodule(table.blocks)) != n_layers:
        problems.append(f"{table.n_layers}={n_layers!r} is not the length of {table.blocks}")
        return problems
    for role, template in table.paths().items():
        for layer in range(n_layers):
            try:
                body.get_submodule(template.format(layer=layer))
            except AttributeError:
                problems.append(f"{role} path {template!r} does not resolve at layer {layer}")
                break

    if problems:
        return problems
    H, D = getattr(config, table.heads.n_heads), getattr(config, table.d_model)
    Hkv = (getattr(config, table.heads.n_kv_heads, None) if table.heads.n_kv_heads else None) or H
    dh = (getattr(config, table.heads.head_dim, None) if table.heads.head_dim else None) or D // H
    d_mlp = getattr(config, table.d_mlp) or (table.d_mlp_multiple or 0) * D
    is_conv1d = lambda m: type(m).__name__ == "Conv1D"  # noqa: E731
    for layer in range(n_layers):
        at = lambda t: body.get_submodule(t.format(layer=layer))  # noqa: E731,B023
        out = at(table.mlp_out)
        expected = (d_mlp, D) if table.heads.orientation == "conv1d" else (D, d_mlp)
        if tuple(out.weight.shape) != expected:
            problems.append(f"mlp_out weight {tuple(out.weight.shape)}, table layout says {expected}")
        heads = table.heads
        projections = [at(heads.qkv)] if heads.qkv else [at(heads.q), at(heads.k), at(heads.v)]
        widths = [(H + 2 * Hkv) * dh] if heads.qkv else [H * dh, Hkv * dh, Hkv * dh]
        for module, width in zip(projections + [at(heads.o)], widths + [D]):
            conv = is_conv1d(module)
            if conv != (heads.orientation == "conv1d"):
                problems.append(f"{type(module).__name__} at layer {layer}: orientation is not {heads.orientation!r}")
            shape = (module.weight.shape[1] if conv else module.weight.shape[0])
            if shape != width:
                problems.append(f"{type(module).__name__} writes {shape} channels; the head layout says {width}")
        attn = at(table.attention)
        if heads.scale is not None and not hasattr(attn, heads.scale):
            problems.append(f"attention module has no score scale {heads.scale!r}")
        details = table.attention_details
        q_norm = getattr(attn, "q_norm", None)
        width = {None: None, "per_head": dh, "all_heads": H * dh}[details.qk_norm]
        if (None if q_norm is None else q_norm.weight.numel()) != width:
            problems.append(f"q_norm {type(q_norm).__name__}: qk_norm={details.qk_norm!r} says width {width}")
        if hasattr(attn, "sliding_window") != details.window_per_layer:
            problems.append(f"window_per_layer={details.window_per_layer} but the attention module "
                            f"{'has' if hasattr(attn, 'sliding_window') else 'has no'} sliding_window")
        cap = getattr(config, details.logit_softcapping) if details.logit_softcapping else None
        if getattr(attn, "attn_logit_softcapping", None) != cap:
            problems.append(f"logit_softcapping: the module caps at {getattr(attn, 'attn_logit_softcapping', None)}, "
                            f"the table reads {cap}")
        if details.query_pre_attn_scalar and attn.scaling != getattr(config, details.query_pre_attn_scalar) ** -0.5:
            problems.append("the score scale is not query_pre_attn_scalar ** -0.5")
        if details.rotary_per_layer_type and not hasattr(attn, "layer_type"):
            problems.append("rotary_per_layer_type, but the attention module has no layer_type")
        if details.rotary != hasattr(body, "rotary_emb"):
            problems.append(f"rotary={details.rotary}, but the body {'has' if details.rotary is False else 'has no'} rotary_emb")
    for role in ("attention_in", "mlp_in", "attention_out", "mlp_out", "final"):
        template = getattr(table.norms, role)
        if template is None:
            continue
        norm = body.get_submodule(template.format(layer=0))
        name = type(norm).__name__
        kind = ("layer_norm" if isinstance(norm, torch.nn.LayerNorm)
                else "rms_norm_offset" if name.startswith("Gemma") and name.endswith("RMSNorm")
                else "rms_norm" if name.endswith("RMSNorm") else name)
        if kind != table.norms.kind:
            problems.append(f"norm {role} is a {name}; the table says {table.norms.kind!r}")
    return problems


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_table_describes_a_tiny_model_of_its_family(family):
    table = FAMILIES[family]
    for model in build(family):
        assert table_problems(table, model) == [], type(model).__name__


@pytest.mark.parametrize("family,mutation", [
    ("llama", lambda t: replace(t, norms=replace(t.norms, attention_in="layers.{layer}.input_layer_norm"))),
    ("bert", lambda t: replace(t, mlp_out="encoder.layer.{layer}.intermediate.dense")),
    ("gpt2", lambda t: replace(t, d_model="hidden_dim")),
    ("gpt2", lambda t: replace(t, heads=replace(t.heads, orientation="linear"))),
    ("qwen3", lambda t: replace(t, attention_details=replace(t.attention_details, qk_norm="all_heads"))),
    ("olmo2", lambda t: replace(t, attention_details=replace(t.attention_details, qk_norm=None))),
    ("mistral", lambda t: replace(t, attention_details=replace(t.attention_details, window_per_layer=True))),
    ("gemma2", lambda t: replace(t, attention_details=replace(t.attention_details, logit_softcapping=None))),
    ("gemma2", lambda t: replace(t, norms=replace(t.norms, kind="rms_norm"))),
    ("phi3", lambda t: replace(t, heads=replace(t.heads, n_kv_heads=None))),
    ("clip_vision", lambda t: replace(t, n_layers="num_layers")),
    ("bert", lambda t: replace(t, attention_details=replace(t.attention_details, rotary=True))),
])
def test_a_wrong_table_is_reported(family, mutation):
    model = build(family)[0]
    assert table_problems(mutation(FAMILIES[family]), model)


def test_every_table_is_read_by_exactly_one_adapter_and_every_decoder_loads_its_model_types():
    tabled = [a for a in ADAPTERS if issubclass(a, TableAdapter)]
    assert len(tabled) == len(ADAPTERS)
    read = [t.family for a in tabled for t in a.tables]
    assert sorted(read) == sorted(FAMILIES)
    for adapter in tabled:
        assert adapter.model_types == tuple(t for table in adapter.tables for t in table.model_types)
        assert {table.norms.style for table in adapter.tables} == {adapter.layer_norm_style}
        if issubclass(adapter, DecoderLMAdapter):
            assert set(adapter.causal_lm_classes) == set(adapter.model_types)


@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_a_decoder_adapter_reads_its_models_table(family):
    a = get_adapter(tiny_decoder(family, layers=2))
    assert a.table is FAMILIES[family]


def test_layer_norm_styles_are_named_and_the_old_names_handled():
    assert layer_norm_style("pre+post") == "pre_and_post_sublayer"
    with pytest.raises(ValueError, match="'post' is ambiguous: 'post_residual'.*'post_sublayer'"):
        layer_norm_style("post")
    with pytest.raises(ValueError, match="layer_norm_style='sandwich'"):
        Norms("sandwich", "rms_norm")
    assert Norms("pre+post", "rms_norm_offset", attention_in="a", mlp_in="b", attention_out="c", mlp_out="d",
                 final="e").style == "pre_and_post_sublayer"
    with pytest.raises(ValueError, match="a 'post_sublayer' layout has no attention_in norm"):
        Norms("post_sublayer", "rms_norm", attention_in="a", attention_out="c", mlp_out="d", final="e")
    with pytest.raises(ValueError, match="either q, k and v or one fused qkv"):
        Heads("n_head", o="o", q="q", qkv="qkv")
    with pytest.raises(ValueError, match="qk_norm='per_token'"):
        Attention(qk_norm="per_token")
