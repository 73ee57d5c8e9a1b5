"""Factorized effects equal the dense computation: blocks, norms, sums, PCA, ablations, files.

The yardstick is the literal per-head slow path's dense ``[samples, neurons, d_out]`` tensor,
wrapped in :class:`DenseEffects` (plain numpy on sample blocks), on the reference CLIP, tiny BERT
and tiny GPT-2, both conventions, float64."""

import h5py
import numpy as np
import pytest
import torch

from conftest import padded_batch, tiny_bert, tiny_clip_vision, tiny_gpt2
from oe_assets.lens import SecondOrderLens, ablate, get_adapter, neuron_pca, slow_second_order_effects
from oe_assets.lens.batching import collect_factorized
from oe_assets.lens.effects_file import DenseLayoutError, FactorizedEffectsWriter, open_factorized
from oe_assets.lens.factorized import DenseEffects, FactorizedEffects, HeadFactors

RTOL = 1e-6  # the bar; observed errors are about 1e-14


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _clip_inputs(n=12, seed=0):
    return torch.randn(n, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _text_inputs(seed):
    return padded_batch(seed=seed, lengths=(9, 6, 4, 8, 3, 7, 9, 5, 2, 6))


CASES = {
    # the official reference CLIP and its own images (from ../shared)
    "reference-clip-reference": ("reference_model", "reference", None),
    "reference-clip-direct": ("reference_model", "direct", None),
    "clip-reference": (lambda: tiny_clip_vision(seed=3, layers=4), "reference", _clip_inputs),
    "clip-direct": (lambda: tiny_clip_vision(seed=3, layers=4), "direct", _clip_inputs),
    "bert-direct": (lambda: tiny_bert(seed=5), "direct", _text_inputs),
    "gpt2-reference": (lambda: tiny_gpt2(seed=6), "reference", _text_inputs),
    "gpt2-direct": (lambda: tiny_gpt2(seed=6), "direct", _text_inputs),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    build, convention, inputs = CASES[request.param]
    if build == "reference_model":
        model = request.getfixturevalue("reference_model")
        batch = torch.from_numpy(request.getfixturevalue("reference")[0]["train_images"][:12])
    else:
        model = build()
        batch = inputs(seed=11)
    layer = 1
    lens = SecondOrderLens(model, layer, convention=convention, dense_cache_bytes=0)
    fe = lens.factorized(batch)
    dense = slow_second_order_effects(model, batch, layer, convention=convention).numpy()
    return lens, fe, dense, batch


def test_dense_blocks_equal_the_slow_path(case):
    _, fe, dense, _ = case
    assert fe.shape == dense.shape
    assert (fe.const is None) == (fe.factors.n_paths and case[0].convention == "direct")
    assert rel(fe[:, :, :], dense) <= RTOL
    assert rel(fe[:, 5:17, :], dense[:, 5:17]) <= RTOL
    assert rel(fe[[7, 2, 3], :, :], dense[[7, 2, 3]]) <= RTOL
    assert rel(fe[:, [40, 3, 11], :], dense[:, [40, 3, 11]]) <= RTOL
    assert rel(fe[4, 9], dense[4, 9]) <= RTOL
    assert rel(fe[2:5, 3:9, 1:4], dense[2:5, 3:9, 1:4]) <= RTOL


def test_statistics_over_neurons_equal_the_dense_ones(case):
    _, fe, dense, _ = case
    ref = DenseEffects(dense)
    rng = np.random.default_rng(0)
    S, N, d = dense.shape
    centre = rng.normal(size=(N, d)) * np.abs(dense).mean()
    mask = rng.random((S, N)) > 0.5
    U = rng.normal(size=(N, d))
    U /= np.linalg.norm(U, axis=1, keepdims=True)
    assert rel(fe.mean(), dense.mean(0)) <= RTOL
    assert rel(fe.norms(), np.linalg.norm(dense, axis=-1)) <= RTOL
    assert rel(fe.norms(centre=centre), ref.norms(centre=centre)) <= RTOL
    assert rel(fe.norms(centre=centre[[9, 1]], neurons=[9, 1]), ref.norms(centre[[9, 1]], neurons=[9, 1])) <= RTOL
    assert rel(fe.masked_sum(), dense.sum(1)) <= RTOL
    assert rel(fe.masked_sum(mask, centre=centre), ref.masked_sum(mask, centre=centre)) <= RTOL
    assert rel(fe.projected_sum(U, centre=centre), ref.projected_sum(U, centre=centre)) <= RTOL
    # small blocks: the block loops themselves (several sample and neuron steps) give the same
    small = FactorizedEffects(fe.alpha, fe.scale, fe.factors, fe.const, block_bytes=4096)
    assert rel(small.norms(centre=centre), ref.norms(centre=centre)) <= RTOL
    assert rel(small.masked_sum(mask, centre=centre), ref.masked_sum(mask, centre=centre)) <= RTOL
    assert rel(small.projected_sum(U, centre=centre), ref.projected_sum(U, centre=centre)) <= RTOL
    assert rel(small.mean(), dense.mean(0)) <= RTOL
    # several sums from one read of alpha (what the ablations use), each equal to its own slow sum
    V = rng.normal(size=(N, d))
    for effects in (fe, small):
        (whole, part, rest), (along_u, along_v) = effects.sums([None, mask, ~mask], [U, V], centre=centre)
        assert rel(whole, ref.masked_sum(None, centre=centre)) <= RTOL
        assert rel(part, ref.masked_sum(mask, centre=centre)) <= RTOL
        assert rel(rest, ref.masked_sum(~mask, centre=centre)) <= RTOL
        assert rel(along_u, ref.projected_sum(U, centre=centre)) <= RTOL
        assert rel(along_v, ref.projected_sum(V, centre=centre)) <= RTOL
    assert rel(fe.sums([mask], [V])[1][0], ref.projected_sum(V)) <= RTOL  # no centre


def test_pca_and_ablations_equal_the_dense_ones(case):
    _, fe, dense, _ = case
    S, N, d = dense.shape
    pca_f, pca_d = neuron_pca(fe, 4), neuron_pca(dense, 4)
    assert rel(pca_f.components, pca_d.components) <= RTOL
    assert rel(pca_f.norms, pca_d.norms) <= RTOL and rel(pca_f.means, pca_d.means) <= RTOL
    rng = np.random.default_rng(1)
    reps = rng.normal(size=(S, d)) * 0.1  # small: the effects decide the logits
    W = rng.normal(size=(d, 5))
    labels = rng.integers(0, 5, S)
    recon = pca_d.components + 0.3 * rng.normal(size=(N, d))
    # thresholds strictly between samples' norms (as train thresholds are for val samples): the PCA's
    # own thresholds are sample norms, where the last bit decides `>`
    thresholds = np.median(DenseEffects(dense).norms(centre=pca_d.means), axis=0)
    res_f = ablate(reps, fe, W, labels, pca_d.means, thresholds, pca_d.components, reconstructions=recon)
    res_d = ablate(reps, dense, W, labels, pca_d.means, thresholds, pca_d.components, reconstructions=recon)
    for scenario in res_d.logits:
        assert rel(res_f.logits[scenario], res_d.logits[scenario]) <= RTOL, scenario
        assert res_f.accuracy[scenario] == res_d.accuracy[scenario]
    # the scenarios differ from each other: the comparison is not vacuous
    assert rel(res_d.logits["without_significant"], res_d.logits["without_insignificant"]) > 1e-3


def test_one_data_pass_for_several_layers_equals_one_pass_per_layer():
    model = tiny_gpt2(seed=8, layers=4)
    adapter = get_adapter(model)
    batches = [padded_batch(seed=1), padded_batch(seed=2, lengths=(5, 8))]
    lenses = {layer: SecondOrderLens(adapter, layer) for layer in (0, 1, 2)}
    calls = []
    handle = model.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    together = collect_factorized(lenses, batches)
    handle.remove()
    assert len(calls) == len(batches)  # one forward per batch, not one per layer
    for layer, lens in lenses.items():
        alone = np.concatenate([lens(b).numpy() for b in batches[:1]])
        assert rel(together[layer][:3], alone) <= 1e-12
        second = lens(batches[1]).numpy()
        assert rel(together[layer][3:], second) <= 1e-12


@pytest.mark.parametrize("alpha_dtype,bound", [("float32", 1e-5), ("float16", 5e-3), ("bfloat16", 5e-2)])
def test_effects_file_round_trip(tmp_path, case, alpha_dtype, bound):
    lens, fe, dense, batch = case
    path = tmp_path / "layer.h5"
    with FactorizedEffectsWriter(path, fe.shape[0], lens.factors, fe.const is not None, batch_size=4,
                                 alpha_dtype=alpha_dtype) as writer:
        for s0 in range(0, fe.shape[0], 4):  # batches of 4, as a data pass writes them
            writer.write(FactorizedEffects(fe.alpha[s0:s0 + 4], fe.scale[s0:s0 + 4], fe.factors,
                                           None if fe.const is None else fe.const[s0:s0 + 4]))
        writer.close(labels=np.arange(fe.shape[0]), attrs={"layer": 1})
    loaded = open_factorized(path)
    assert loaded.shape == dense.shape and loaded.chunks[0] == 4
    err = rel(loaded[:, :, :], dense)
    assert err <= bound, err
    with h5py.File(path) as f:
        assert "effects" not in f and f.attrs["layer"] == 1 and f.attrs["alpha_dtype"] == alpha_dtype


def test_writer_refuses_a_short_file_and_the_old_dense_layout(tmp_path):
    fe = FactorizedEffects(torch.ones(2, 3, 4), torch.ones(2), HeadFactors(torch.ones(3, 5, 2), torch.ones(3, 2, 4)))
    writer = FactorizedEffectsWriter(tmp_path / "short.h5", 5, fe.factors, False, batch_size=2)
    writer.write(fe)
    with pytest.raises(RuntimeError, match="wrote 2 of 5 samples"):
        writer.close()
    old = tmp_path / "old.h5"
    with h5py.File(old, "w") as f:
        f.create_dataset("effects", data=np.zeros((2, 4, 5), dtype=np.float32))
    with pytest.raises(DenseLayoutError, match=r"old\.h5.*dense layout.*Re-materialize"):
        open_factorized(old)


def test_shapes_are_checked():
    factors = HeadFactors(torch.ones(3, 5, 2), torch.ones(3, 2, 4))
    with pytest.raises(ValueError, match="alpha has shape"):
        FactorizedEffects(torch.ones(2, 4, 4), torch.ones(2), factors)
    with pytest.raises(ValueError, match="const has shape"):
        FactorizedEffects(torch.ones(2, 3, 4), torch.ones(2), factors, const=torch.ones(2, 4))
    with pytest.raises(ValueError, match="per-head factors"):
        HeadFactors(torch.ones(3, 5, 2), torch.ones(2, 2, 4))


def test_slow_path_on_a_neuron_subset_equals_its_columns(case):
    lens, _, dense, batch = case
    idx = [3, 40, 7]
    sub = slow_second_order_effects(lens.adapter, batch, lens.mlp_layer, convention=lens.convention, neurons=idx)
    assert rel(sub.numpy(), dense[:, idx]) <= 1e-12


@pytest.mark.parametrize("convention", ["reference", "direct"])
@pytest.mark.parametrize("alpha_dtype,bound", [("float32", 1e-5), ("bfloat16", 5e-2)])
def test_token_form_file_when_tokens_are_fewer_than_paths(tmp_path, convention, alpha_dtype, bound):
    model = tiny_clip_vision(seed=4, layers=6)  # layer 0: 5 later blocks x 4 heads = 20 paths, 17 tokens
    lens = SecondOrderLens(model, 0, convention=convention)
    x = _clip_inputs(n=8, seed=3)
    dense = slow_second_order_effects(model, x, 0, convention=convention).numpy()
    T = get_adapter(model).fixed_tokens
    assert T == 17 < lens.factors.n_paths
    path = tmp_path / "tokens.h5"
    with FactorizedEffectsWriter(path, 8, lens.factors, convention == "reference", batch_size=4,
                                 alpha_dtype=alpha_dtype, n_tokens=T, form="tokens") as writer:
        for s0 in (0, 4):
            writer.write(lens.factorized(x[s0:s0 + 4]))
        writer.close()
    with h5py.File(path) as f:
        assert f.attrs["alpha_form"] == "tokens" and "alpha" not in f
        assert f["activations"].shape == (8, 17, 64) and f["path_weights"].shape == (8, 20, 17)
    loaded = open_factorized(path)
    assert rel(loaded[:, :, :], dense) <= bound
    assert rel(loaded.norms(), np.linalg.norm(dense, axis=-1)) <= bound
    assert rel(loaded.masked_sum(), dense.sum(1)) <= bound
