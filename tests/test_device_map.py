"""Models larger than one device: ``model.device_map`` through Hugging Face accelerate.

On this CPU-only machine a model is split between the CPU and accelerate's disk offload (weights of the
"disk" blocks stay on the ``meta`` device and are loaded for each forward pass); the lens on it must give
the unsplit model's numbers, and keep each later block's factors where the block runs."""

import pytest
import torch
from conftest import padded_batch, tiny_bert, tiny_decoder, tiny_gpt2

from oe_assets.lens import FirstOrderLens, SecondOrderLens, neuron_pca
from oe_assets.lens.factorized import HeadFactors
from oe_assets.lens.placement import execution_device, is_dispatched
from oe_assets.models.loading import check_device_map, load_model, map_compute_device

pytest.importorskip("accelerate")

LENGTHS = (9, 6, 7)


def rel(a, b):
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return ((a - b).abs().max() / b.abs().max()).item()


# the blocks after the first two on disk, everything else on the CPU
SPLITS = {
    "llama": lambda n: {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu",
                        **{f"model.layers.{i}": "cpu" if i < 2 else "disk" for i in range(n)}},
    "gpt2": lambda n: {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.drop": "cpu",
                       "transformer.ln_f": "cpu", "lm_head": "cpu",
                       **{f"transformer.h.{i}": "cpu" if i < 2 else "disk" for i in range(n)}},
    "bert": lambda n: {"embeddings": "cpu", "pooler": "cpu",
                       **{f"encoder.layer.{i}": "cpu" if i < 2 else "disk" for i in range(n)}},
}
BUILDERS = {"llama": lambda: tiny_decoder("llama", seed=1), "gpt2": lambda: tiny_gpt2(seed=1),
            "bert": lambda: tiny_bert(seed=1)}


@pytest.fixture(scope="module", params=sorted(SPLITS))
def pair(request, tmp_path_factory):
    """``(family, unsplit, split)``: the same saved tiny model loaded whole and split CPU / disk."""
    family = request.param
    root = tmp_path_factory.mktemp(f"split-{family}")
    BUILDERS[family]().save_pretrained(root / "model")
    whole = load_model(str(root / "model"), dtype="float64", device="cpu")
    layers = whole.adapter.n_layers
    split = load_model(str(root / "model"), dtype="float64", device_map=SPLITS[family](layers),
                       offload_folder=str(root / "offload"))
    for lm in (whole, split):
        lm.model.set_attn_implementation("eager")
    return family, whole, split


def test_the_map_is_honoured_and_disk_blocks_stay_offloaded(pair):
    family, whole, split = pair
    assert not is_dispatched(whole.model) and is_dispatched(split.model)
    layers = whole.adapter.n_layers
    assert split.model.hf_device_map == SPLITS[family](layers)
    a = split.adapter
    SecondOrderLens(a, 0)  # reads every later block's weights
    last = a.model.get_submodule(a.block_name(layers - 1))
    # the lens loaded the disk blocks' weights only for the moment: they are offloaded again
    assert {p.device.type for p in last.parameters()} == {"meta"}
    assert {p.device.type for p in a.model.get_submodule(a.block_name(0)).parameters()} == {"cpu"}


@pytest.mark.parametrize("convention", ["direct", "reference"])
def test_split_model_gives_the_unsplit_effects_norms_and_pca(pair, convention):
    family, whole, split = pair
    if convention not in whole.adapter.conventions:
        pytest.skip(f"{family} has no {convention} convention")
    batch = padded_batch(seed=2, lengths=LENGTHS)
    for layer in (0, 1):
        ref = SecondOrderLens(whole.adapter, layer, convention=convention).factorized(batch)
        got = SecondOrderLens(split.adapter, layer, convention=convention).factorized(batch)
        assert torch.equal(torch.as_tensor(got.alpha), torch.as_tensor(ref.alpha)) or rel(got.alpha, ref.alpha) <= 1e-12
        assert rel(got.dense(), ref.dense()) <= 1e-10, (family, layer)
        assert rel(got.norms(), ref.norms()) <= 1e-10
        pca_ref, pca_got = neuron_pca(ref, top_k=2), neuron_pca(got, top_k=2)
        assert rel(pca_got.norms, pca_ref.norms) <= 1e-10
        # components up to sign (the sign rule is deterministic, so they agree exactly)
        assert rel(pca_got.components, pca_ref.components) <= 1e-10
        first_ref = FirstOrderLens(whole.adapter, layer)(batch)
        first_got = FirstOrderLens(split.adapter, layer)(batch)
        assert rel(first_got, first_ref) <= 1e-10


def test_factors_of_each_block_live_on_its_execution_device(pair):
    _, _, split = pair
    a = split.adapter
    lens = SecondOrderLens(a, 0)
    H = a.n_heads
    for i, blk in enumerate(lens.blocks):
        assert blk.device == execution_device(a.model, a.block_name(blk.index))
        assert lens.factors.devices[i * H:(i + 1) * H] == [blk.device] * H
        assert lens.factors.devices[i * H].type != "meta"


def test_per_block_factor_parts_compute_like_the_concatenated_factors():
    """Factors kept as one part per block (a split model's form) give the concatenated form's
    dense block, contraction and projection exactly."""
    g = torch.Generator().manual_seed(0)
    lefts = [torch.randn(2, 5, 3, generator=g, dtype=torch.float64) for _ in range(3)]
    rights = [torch.randn(2, 3, 7, generator=g, dtype=torch.float64) for _ in range(3)]
    whole = HeadFactors(torch.cat(lefts), torch.cat(rights))
    parts = HeadFactors(lefts[0], rights[0])
    parts.parts += list(zip(lefts[1:], rights[1:]))
    assert parts.n_paths == 6 and torch.equal(parts.left, whole.left) and torch.equal(parts.right, whole.right)
    assert rel(parts.block(slice(1, 5), torch.float64), whole.block(slice(1, 5), torch.float64)) <= 1e-15
    assert rel(parts.block([6, 0, 3], torch.float64), whole.block([6, 0, 3], torch.float64)) <= 1e-15
    w = torch.randn(4, 6, 7, generator=g, dtype=torch.float64)
    assert rel(parts.contract(w), whole.contract(w)) <= 1e-14
    u = torch.randn(7, 5, generator=g, dtype=torch.float64)
    assert rel(parts.along(u), whole.along(u)) <= 1e-14
    # from_blocks concatenates parts that share a device (one part, the fast form)
    assert len(HeadFactors.from_blocks(lefts, rights).parts) == 1


def test_bad_device_maps_are_refused_by_name():
    with pytest.raises(ValueError, match="device_map='everywhere'"):
        check_device_map("everywhere")
    with pytest.raises(ValueError, match="empty map"):
        check_device_map({})
    with pytest.raises(ValueError, match="max_memory sizes an automatic"):
        check_device_map({"model": 0}, {0: "1GiB"})
    with pytest.raises(ValueError, match="model.max_memory="):
        check_device_map("auto", "10GiB")
    assert map_compute_device({"model.embed_tokens": "cpu", "model.layers.0": 1}) == torch.device("cuda", 1)
    assert map_compute_device({"model": "cpu"}) == torch.device("cpu")


def test_offload_settings_without_a_device_map_are_refused(tmp_path):
    tiny_gpt2(seed=0).save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="go with model.device_map"):
        load_model(str(tmp_path / "m"), dtype="float64", device="cpu", max_memory={"cpu": "1GiB"})


def test_model_resource_passes_the_placement_through(tmp_path):
    """A profile's ``model.device_map`` / ``max_memory`` / ``offload_folder`` reach ``from_pretrained``
    and give the unsplit effects; a GPU key given as a string (as JSON gives it) is read as that GPU,
    and one the machine lacks is refused by name."""
    from oe_assets.resources.model import ModelResource

    tiny_gpt2(seed=3).save_pretrained(tmp_path / "m")
    if not torch.cuda.is_available():
        gpu = ModelResource(source=str(tmp_path / "m"), dtype="float64", device_map="auto", max_memory={"0": "1GiB"})
        with pytest.raises(ValueError, match="name GPU 0, but this machine has 0 GPU"):
            gpu.load()  # the string key "0" was read as GPU 0
    # an explicit map through the resource: dispatched as given (disk blocks offloaded), the same effects
    resource = ModelResource(source=str(tmp_path / "m"), dtype="float64", device_map=SPLITS["gpt2"](4),
                             offload_folder=str(tmp_path / "offload"))
    lm = resource.load()
    assert is_dispatched(lm.model) and lm.model.hf_device_map == SPLITS["gpt2"](4)
    assert resource.compute_device() == torch.device("cpu")
    # "auto" within a CPU budget loads as well (on a machine without GPUs: all on the CPU)
    auto = ModelResource(source=str(tmp_path / "m"), dtype="float64", device_map="auto", max_memory={"cpu": "2GiB"})
    whole = ModelResource(source=str(tmp_path / "m"), dtype="float64", device="cpu").load()
    assert len({id(whole), id(lm), id(auto.load())}) == 3  # each placement its own cached model
    batch = padded_batch(seed=5, lengths=LENGTHS)
    expected = SecondOrderLens(whole.adapter, 1)(batch)
    assert rel(SecondOrderLens(lm.adapter, 1)(batch), expected) <= 1e-12
    assert rel(SecondOrderLens(auto.load().adapter, 1)(batch), expected) <= 1e-12


def test_offloaded_unembedding_gives_the_same_classifier_and_vocabulary(tmp_path):
    """A causal LM's label directions are unembedding rows: with ``lm_head`` on disk they are read from
    the offloaded weights, equal to the unsplit model's."""
    tiny_decoder("llama", seed=4).save_pretrained(tmp_path / "m")
    whole = load_model(str(tmp_path / "m"), dtype="float64", device="cpu")
    device_map = {**SPLITS["llama"](whole.adapter.n_layers), "lm_head": "disk"}
    split = load_model(str(tmp_path / "m"), dtype="float64", device_map=device_map, offload_folder=str(tmp_path / "off"))
    assert split.model.lm_head.weight.device.type == "meta"
    ids = {"a": 3, "b": 7, "c": 11}

    def tok(text, add_special_tokens=False):  # one token per name, ids within the tiny vocabulary
        return {"input_ids": [ids[text.strip()]]}

    names = ["a", "b", "c"]
    got = split.adapter.zero_shot_classifier(tok, names, None)
    assert got.device.type == "cpu" and torch.equal(got, whole.adapter.zero_shot_classifier(tok, names, None))
    kept, rows = split.adapter.unembedding_vocabulary(tok, names)
    kept_ref, rows_ref = whole.adapter.unembedding_vocabulary(tok, names)
    assert kept == kept_ref and torch.equal(rows, rows_ref)
    assert split.model.lm_head.weight.device.type == "meta"  # offloaded again
