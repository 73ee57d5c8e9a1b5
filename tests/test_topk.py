"""The top-k form of the effects (two data passes: the means, then every sample's norms and each
neuron's top samples) against the stored factorized path on tiny Llama, GPT-2 and BERT: the same
norms, the same top-k sets and the same PCA."""

import h5py
import numpy as np
import pytest
import torch
from conftest import padded_batch, tiny_bert, tiny_decoder, tiny_gpt2

from oe_assets.lens import SecondOrderLens, ablate, neuron_pca
from oe_assets.lens.ablations import EffectSums, ablate_from_sums, effect_sums
from oe_assets.lens.effects_file import FactorizedEffectsWriter, open_factorized
from oe_assets.lens.topk import EffectsMean, TopKEffectsWriter, as_stored, open_topk, rounded_factors, topk_bytes

LENGTHS = (9, 3, 6, 4, 8, 2, 5, 7, 6, 3, 9, 4, 5)  # batches of 4: the top of a neuron spans batches
BATCH = 4
TOP_K = 5
MODELS = {"llama": lambda: tiny_decoder("llama", seed=5), "gpt2": lambda: tiny_gpt2(seed=5),
          "bert": lambda: tiny_bert(seed=5)}


def batches():
    return [padded_batch(seed=i, lengths=LENGTHS[i:i + BATCH]) for i in range(0, len(LENGTHS), BATCH)]


def stored(path, lens, inputs, alpha_dtype):
    """The stored path: the whole split's factorized effects in one file."""
    factor_dtype = torch.float64 if alpha_dtype == "float64" else torch.float32
    with FactorizedEffectsWriter(path, len(LENGTHS), lens.factors, lens.convention == "reference", batch_size=BATCH,
                                 alpha_dtype=alpha_dtype, factor_dtype=factor_dtype, form="alpha") as writer:
        for b in inputs:
            writer.write(lens.factorized(b))
        writer.close()
    return open_factorized(path)


def topk(path, lens, inputs, alpha_dtype, dtype, top_k=TOP_K):
    """The top-k mode: pass 1 the means, pass 2 the norms and the top samples."""
    factors = rounded_factors(lens.factors, torch.float64 if alpha_dtype == "float64" else torch.float32)
    mean = EffectsMean(factors)
    for b in inputs:
        mean.add(as_stored(lens.factorized(b), alpha_dtype, factors))
    with TopKEffectsWriter(path, len(LENGTHS), mean.means(), top_k, batch_size=BATCH, dtype=dtype) as writer:
        for b in inputs:
            writer.write(as_stored(lens.factorized(b), alpha_dtype, factors))
        writer.close(labels=np.arange(len(LENGTHS)))
    return open_topk(path)


def pc_angle_error(a, b):
    """max over neurons of 1 - |cos| between two sets of unit components [neurons, d]."""
    return float(np.max(1 - np.abs(np.sum(a * b, axis=1))))


@pytest.mark.parametrize("family", list(MODELS))
@pytest.mark.parametrize("alpha_dtype, dtype, tol", [("float64", "float64", 1e-10), ("float32", "float32", 1e-6)])
def test_topk_mode_gives_the_stored_paths_norms_top_sets_and_pca(tmp_path, family, alpha_dtype, dtype, tol):
    model = MODELS[family]()
    inputs = batches()
    for convention in SecondOrderLens(model, 0).adapter.conventions:
        lens = SecondOrderLens(model, 0, convention=convention)
        full = stored(tmp_path / f"{convention}_stored.h5", lens, inputs, alpha_dtype)
        top = topk(tmp_path / f"{convention}_topk.h5", lens, inputs, alpha_dtype, dtype)
        S, N, d = full.shape
        assert top.shape == (S, N, d)
        means = full.mean()
        assert np.abs(top.mean() - means).max() <= 1e-12 * np.abs(means).max()
        # every sample's norm, for the reports' top inputs
        norms = full.norms()
        assert np.abs(top.norms() - norms).max() <= tol * norms.max()
        pick = [7, 1, N - 1, 7]
        assert np.abs(top.norms(neurons=pick) - norms[:, pick]).max() <= tol * norms.max()
        # each neuron's top samples by centred norm: the same sets, in the same order
        expected = np.concatenate([s.cpu().numpy() for _, _, s, _, _ in full.top_samples(means, TOP_K)])
        np.testing.assert_array_equal(top.top_indices(), expected)
        # the PCA read from the top-k file
        a, b = neuron_pca(full, TOP_K), neuron_pca(top, TOP_K)
        assert pc_angle_error(a.components, b.components) <= tol
        assert np.abs(a.components - b.components).max() <= 10 * tol  # the same sign rule
        assert np.abs(a.norms - b.norms).max() <= min(tol, 1e-9) * a.norms.max()
        assert np.abs(a.explained - b.explained).max() <= tol
        np.testing.assert_allclose(a.means, b.means, rtol=0, atol=1e-12 * np.abs(a.means).max())
        # a smaller top_k is the tail of the stored top
        c, e = neuron_pca(full, 2), neuron_pca(top, 2)
        assert pc_angle_error(c.components, e.components) <= tol


def test_topk_file_layout_and_refusals(tmp_path):
    model = tiny_gpt2(seed=2)
    lens = SecondOrderLens(model, 1)
    inputs = batches()
    top = topk(tmp_path / "t.h5", lens, inputs, "float32", "float32", top_k=3)
    S, N, d = top.shape
    with h5py.File(tmp_path / "t.h5") as f:
        assert f.attrs["layout"] == "topk" and f.attrs["top_k"] == 3
        assert f["norms"].shape == (S, N) and f["norms"].dtype == np.float32
        assert f["topk_indices"].shape == (N, 3) and f["topk_effects"].shape == (N, 3, d)
        assert "alpha" not in f and "token_activations" not in f
        # ascending centred norms, distinct samples per neuron
        assert np.all(np.diff(f["topk_norms"][:], axis=1) >= 0)
        assert all(len(set(row)) == 3 for row in f["topk_indices"][:])
        assert f["labels"][:].tolist() == list(range(S))
    assert topk_bytes(S, N, d, 3) == S * N * 4 + N * d * 8 + N * 3 * 16 + N * 3 * d * 4
    with pytest.raises(ValueError, match="holds the top 3 samples"):
        neuron_pca(top, 4)
    with pytest.raises(ValueError, match="not norms about another centre"):
        top.norms(centre=top.mean())
    with pytest.raises(ValueError, match="own means"):
        next(top.top_rows(top.mean() + 1, 2))
    # an incomplete pass leaves no file that reads as complete
    mean = EffectsMean(lens.factors)
    mean.add(lens.factorized(inputs[0]))
    writer = TopKEffectsWriter(tmp_path / "partial.h5", S, mean.means(), 3, batch_size=BATCH)
    writer.write(lens.factorized(inputs[0]))
    with pytest.raises(RuntimeError, match=f"wrote {BATCH} of {S} samples"):
        writer.close()
    with pytest.raises(ValueError, match="top_k=0"):
        TopKEffectsWriter(tmp_path / "bad.h5", S, mean.means(), 0)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_ablations_from_the_val_pass_sums_equal_ablations_on_the_stored_val_effects(tmp_path, family):
    """Top-k mode stores no val effects: the ablations' sums are gathered batch by batch during the
    val pass, given the train PCA, and score as the stored val effects do."""
    model = MODELS[family]()
    lens = SecondOrderLens(model, 1)
    train = batches()
    val = [padded_batch(seed=100 + i, lengths=n) for i, n in enumerate([(5, 8, 3), (9, 2), (4, 6, 7)])]
    pca = neuron_pca(topk(tmp_path / "train.h5", lens, train, "float64", "float64"), TOP_K)
    full_val = stored_split(tmp_path / "val.h5", lens, val)
    S, N, d = full_val.shape
    rng = np.random.default_rng(1)
    rep = rng.normal(size=(S, d))
    W, labels = rng.normal(size=(d, 3)), rng.integers(0, 3, S)
    recon = pca.components + 0.3 * rng.normal(size=pca.components.shape)
    # thresholds at the median val norm, so that both sides of the threshold are populated
    thresholds = np.median(full_val.norms(centre=pca.means), axis=0)
    expected = ablate(rep, full_val, W, labels, pca.means, thresholds, pca.components, reconstructions=recon)
    sums = EffectSums.concat([effect_sums(lens.factorized(b), pca.means, thresholds, pca.components, recon)
                              for b in val])
    got = ablate_from_sums(rep, sums, W, labels)
    assert 0 < got.significant_fraction < 1
    np.testing.assert_array_equal(got.significant, expected.significant)
    for scenario, logits in expected.logits.items():
        assert np.abs(got.logits[scenario] - logits).max() <= 1e-10 * np.abs(logits).max(), scenario
    assert got.accuracy == expected.accuracy
    with pytest.raises(ValueError, match="sums have shape"):
        ablate_from_sums(rep[:-1], sums, W, labels[:-1])


def stored_split(path, lens, inputs):
    n = sum(int(b["input_ids"].shape[0]) for b in inputs)
    with FactorizedEffectsWriter(path, n, lens.factors, lens.convention == "reference", batch_size=3,
                                 alpha_dtype="float64", factor_dtype=torch.float64, form="alpha") as writer:
        for b in inputs:
            writer.write(lens.factorized(b))
        writer.close()
    return open_factorized(path)
