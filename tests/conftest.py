import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

#: the official implementation's outputs on the tiny CLIP ViT, shipped with the tests (a copy of
#: ``../shared/reference/clip_vit_tiny``: test_reference_fixture.py checks they are equal)
REFERENCE = Path(__file__).resolve().parent / "fixtures" / "clip_vit_tiny"
#: the original beside the checkout, where there is one (developers and CI)
SHARED_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "clip_vit_tiny"


def _need_reference():
    if not (REFERENCE / "expected.npz").is_file():  # shipped in the repository: missing means a broken checkout
        pytest.fail(f"the reference outputs are missing from {REFERENCE} (tracked in git: restore them with "
                    f"`git checkout -- {REFERENCE.relative_to(REFERENCE.parents[2])}`)")


@pytest.fixture(scope="session")
def reference():
    _need_reference()
    return np.load(REFERENCE / "expected.npz"), json.loads((REFERENCE / "meta.json").read_text())


@pytest.fixture(scope="session")
def reference_model():
    from transformers import CLIPVisionModelWithProjection

    _need_reference()
    return CLIPVisionModelWithProjection.from_pretrained(REFERENCE / "model", dtype=torch.float64).eval()


def tiny_clip_vision(seed=0, layers=4, dtype=torch.float64, attn="sdpa", with_text=False):
    """A random CLIP model built from config classes (no download)."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                  image_size=16, patch_size=4, projection_dim=24, hidden_act="quick_gelu")
    if with_text:
        cfg = CLIPConfig(
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             vocab_size=64, max_position_embeddings=16, eos_token_id=2, bos_token_id=1,
                             pad_token_id=0, projection_dim=24),
            vision_config=vision, projection_dim=24,
        )
        model = CLIPModel(cfg)
    else:
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**vision))
    # random LayerNorm affine parameters, so the tests exercise them
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.normal_(1.0, 0.2)
                mod.bias.normal_(0.0, 0.2)
    model.set_attn_implementation(attn)
    return model.to(dtype).eval()


def _random_layer_norms(model, dtype):
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.normal_(1.0, 0.2)
                mod.bias.normal_(0.0, 0.2)
    return model.to(dtype).eval()


def tiny_bert(seed=0, layers=4, dtype=torch.float64, attn="sdpa"):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=32)
    model = BertModel(cfg)
    model.set_attn_implementation(attn)
    return _random_layer_norms(model, dtype)


def tiny_gpt2(seed=0, layers=4, dtype=torch.float64, head=True, attn="sdpa"):
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=60, n_embd=32, n_layer=layers, n_head=4, n_positions=32, n_inner=64,
                     bos_token_id=0, eos_token_id=0)
    model = (GPT2LMHeadModel if head else GPT2Model)(cfg)
    model.set_attn_implementation(attn)
    return _random_layer_norms(model, dtype)


def padded_batch(seed=0, lengths=(9, 6, 4), vocab=60):
    """Right-padded token batch of mixed lengths."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(3, vocab, (len(lengths), T), generator=g)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = 0
    return {"input_ids": ids, "attention_mask": mask}


CORPUS = [
    "the cat sat on the mat", "a dog ran in the park", "stocks fell as markets closed",
    "the team won the final match", "rain and wind are expected tomorrow", "bake the bread for an hour",
    "the court ruled on the case", "planets orbit the distant star", "sports music weather cooking",
]


def tiny_bpe_tokenizer(vocab_size=400):
    """A byte-level BPE tokenizer trained here on a few sentences (GPT-2 style, no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 5, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    return fast


#: the decoder-LLM families of the tests: each config exercises one more feature
DECODER_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2", "gemma2", "gemma3")


def tiny_decoder(family, seed=0, layers=4, dtype=torch.float64, attn="sdpa"):
    """A random decoder LLM (no download) with grouped-query attention (4 query heads, 2 key/value
    heads), random RMSNorm weights (q/k norms too) and random biases, so that no term can hide:

    - llama: biases on q/k/v/o and on ``down_proj`` (``attention_bias``, ``mlp_bias``);
    - mistral: a sliding window of 5 tokens;
    - qwen2: q/k/v biases; a sliding window of 5 on layers 2 and 3 only;
    - qwen3: per-head q/k norms, ``head_dim`` 12 (not ``hidden_size / heads``);
    - phi3: fused ``qkv_proj`` / ``gate_up_proj``, rotary positions on half of each head;
    - olmo2: RMSNorms after the sublayers, q/k norms over all heads;
    - gemma2: ``1 + weight`` RMSNorms before and after the sublayers, soft-capped attention scores,
      a window of 5 on layers 0 and 2 (eager attention only: its sdpa path cannot soft-cap);
    - gemma3: as gemma2 without soft-capping, with per-head q/k norms and a rotary base per layer type."""
    import transformers

    torch.manual_seed(seed)
    common = {"vocab_size": 60, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": layers,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
              "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": False}
    gemma_layers = ["sliding_attention", "full_attention"] * (layers // 2) + ["sliding_attention"] * (layers % 2)
    extra = {
        "llama": {"attention_bias": True, "mlp_bias": True},
        "mistral": {"sliding_window": 5},
        "qwen2": {"use_sliding_window": True, "sliding_window": 5, "max_window_layers": 2},
        "qwen3": {"head_dim": 12},
        "phi3": {"partial_rotary_factor": 0.5},
        "olmo2": {},
        "gemma2": {"head_dim": 8, "query_pre_attn_scalar": 10, "attn_logit_softcapping": 3.0,
                   "final_logit_softcapping": None, "sliding_window": 5, "layer_types": gemma_layers},
        "gemma3": {"head_dim": 8, "query_pre_attn_scalar": 10, "sliding_window": 5, "layer_types": gemma_layers},
    }[family]
    config_cls, model_cls = {
        "llama": ("LlamaConfig", "LlamaForCausalLM"), "mistral": ("MistralConfig", "MistralForCausalLM"),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"), "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
        "phi3": ("Phi3Config", "Phi3ForCausalLM"), "olmo2": ("Olmo2Config", "Olmo2ForCausalLM"),
        "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"), "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
    }[family]
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**common, **extra))
    with torch.no_grad():
        for mod in model.modules():
            if type(mod).__name__.endswith("RMSNorm"):
                mod.weight.normal_(1.0, 0.2)
            elif isinstance(mod, torch.nn.Linear) and mod.bias is not None:
                mod.bias.normal_(0.0, 0.2)
    model.set_attn_implementation(decoder_attention(family, attn))
    return model.to(dtype).eval()


def decoder_attention(family, attn):
    """The attention implementation to run: Gemma 2 has no sdpa path (it soft-caps scores)."""
    return "eager" if family == "gemma2" else attn


@pytest.fixture(scope="module")
def reference_graph(tmp_path_factory):
    """The reference CLIP graph, layers 0-2 and the summary, materialized once per module that uses it."""
    import dagster as dg

    from helpers import layer_range, run_job
    from oe_assets.definitions import build_definitions, inputs_job, layers_job, summary_job
    from oe_assets.resources import model as model_module

    _need_reference()
    base = tmp_path_factory.mktemp("clip_reference")
    defs = build_definitions("clip_reference", base_dir=str(base))
    instance = dg.DagsterInstance.ephemeral()
    loads = []
    original = model_module.load_model
    model_module._CACHE.clear()
    model_module.load_model = lambda *a, **k: loads.append(a) or original(*a, **k)
    try:
        run_job(defs, inputs_job, instance)
        result = run_job(defs, layers_job, instance, tags=layer_range(0, 2))
        run_job(defs, summary_job, instance)
    finally:
        model_module.load_model = original
    return defs, instance, base, result, loads
