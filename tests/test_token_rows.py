"""Token-row storage of the effects of text of any length: only the real tokens' path weights and
activations are stored, and every consumer reads the same numbers as from ``alpha`` and the dense
yardstick (tiny Llama, GPT-2 and BERT, mixed lengths, right and left padding, float64)."""

import json

import h5py
import numpy as np
import pytest
import torch
from conftest import padded_batch, tiny_bert, tiny_decoder, tiny_gpt2

from oe_assets.lens import SecondOrderLens, neuron_pca
from oe_assets.lens.effects_file import (
    FactorizedEffectsWriter, choose_form, open_factorized, write_attrs,
)
from oe_assets.lens.factorized import DenseEffects, HeadFactors
from oe_assets.formats.official import export_merged

LENGTHS = (9, 3, 6, 4, 8, 2, 5)  # batches of 3: each padded to its own longest sample
BATCH = 3
LONGEST = max(LENGTHS)
MODELS = {"llama": lambda: tiny_decoder("llama", seed=3), "gpt2": lambda: tiny_gpt2(seed=3), "bert": lambda: tiny_bert(seed=3)}


def rel(got, expected):
    got, expected = np.asarray(got), np.asarray(expected)
    return np.abs(got - expected).max() / np.abs(expected).max()


def batches(padding: str):
    """Token batches of :data:`LENGTHS`, ``BATCH`` at a time, padded on the ``padding`` side."""
    out = []
    for i in range(0, len(LENGTHS), BATCH):
        lengths = LENGTHS[i:i + BATCH]
        b = padded_batch(seed=i, lengths=lengths)
        if padding == "left":  # the padding moved in front of each sample's tokens
            T = max(lengths)
            b = {k: torch.stack([torch.roll(v[j], T - n) for j, n in enumerate(lengths)]) for k, v in b.items()}
            assert b["attention_mask"][:, -1].all()
        out.append(b)
    return out


def write(path, lens, inputs, form, max_tokens=LONGEST):
    with FactorizedEffectsWriter(path, len(LENGTHS), lens.factors, lens.convention == "reference", batch_size=BATCH,
                                 alpha_dtype="float64", factor_dtype=torch.float64, max_tokens=max_tokens,
                                 form=form) as writer:
        for b in inputs:
            writer.write(lens.factorized(b))
        writer.close(labels=np.arange(len(LENGTHS)))
    return writer


@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("family", list(MODELS))
def test_token_rows_read_as_alpha_and_the_dense_effects(tmp_path, family, padding):
    model = MODELS[family]()
    inputs = batches(padding)
    for convention in SecondOrderLens(model, 0).adapter.conventions:
        lens = SecondOrderLens(model, 0, convention=convention)
        rows = write(tmp_path / f"{convention}_rows.h5", lens, inputs, "token_rows")
        write(tmp_path / f"{convention}_alpha.h5", lens, inputs, "alpha")
        assert rows.form == "token_rows"
        with h5py.File(tmp_path / f"{convention}_rows.h5") as f:
            assert f.attrs["alpha_form"] == "token_rows" and "alpha" not in f and "path_weights" not in f
            # padded positions are never stored: one row per real token
            assert f["token_activations"].shape == (sum(LENGTHS), lens.n_neurons)
            assert f["token_path_weights"].shape == (sum(LENGTHS), lens.factors.n_paths)
            assert f["token_counts"][:].tolist() == list(LENGTHS)
        tok = open_factorized(tmp_path / f"{convention}_rows.h5")
        alpha = open_factorized(tmp_path / f"{convention}_alpha.h5")
        dense_np = np.concatenate([lens(b).numpy() for b in inputs])
        dense = DenseEffects(dense_np)
        S, N, d = dense_np.shape
        assert tok.shape == alpha.shape == (S, N, d)
        assert rel(tok[:, :, :], dense_np) <= 1e-10
        assert rel(tok[2:5, [7, 1, 30], :], dense_np[2:5][:, [7, 1, 30]]) <= 1e-10
        rng = np.random.default_rng(0)
        centre = rng.normal(size=(N, d)) * np.abs(dense_np).mean()
        for ref in (alpha, dense):
            assert rel(tok.norms(), ref.norms()) <= 1e-10
            assert rel(tok.norms(centre), ref.norms(centre)) <= 1e-10
            assert rel(tok.mean(), dense_np.mean(0)) <= 1e-10
        # masked and projected sums about a centre, as the ablations ask for them
        mask = rng.random((S, N)) < 0.3
        U = rng.normal(size=(N, d))
        U /= np.linalg.norm(U, axis=1, keepdims=True)
        (m_tok, all_tok), (p_tok,) = tok.sums(masks=[mask, None], directions=[U], centre=centre)
        for ref in (alpha, dense):
            (m_ref, all_ref), (p_ref,) = ref.sums(masks=[mask, None], directions=[U], centre=centre)
            assert rel(m_tok, m_ref) <= 1e-10 and rel(all_tok, all_ref) <= 1e-10 and rel(p_tok, p_ref) <= 1e-10
        # PCA rows (each neuron's top samples, densified from the factors), as the PCA asset reads them
        pca_tok, pca_dense = neuron_pca(tok, top_k=3), neuron_pca(dense_np, top_k=3)
        assert rel(pca_tok.norms, pca_dense.norms) <= 1e-10 and rel(pca_tok.means, pca_dense.means) <= 1e-10
        assert rel(pca_tok.components, pca_dense.components) <= 1e-8  # unit vectors from an SVD
        # the top inputs of a report: the same samples in the same order
        np.testing.assert_array_equal(np.argsort(-tok.norms(), axis=0, kind="stable")[:3],
                                      np.argsort(-alpha.norms(), axis=0, kind="stable")[:3])
        # the official export densifies block by block
        merged = np.load(export_merged(tmp_path / f"{convention}_rows.h5", tmp_path / f"{convention}.npy",
                                       dtype=np.float64, block_bytes=4096))
        assert rel(merged, dense_np) <= 1e-10


def test_token_rows_are_the_smaller_file_on_text(tmp_path):
    model = tiny_decoder("llama", seed=3)
    lens = SecondOrderLens(model, 0)  # 3 later blocks x 4 heads = 12 paths, 48 neurons
    inputs = batches("right")
    write(tmp_path / "rows.h5", lens, inputs, "token_rows")
    write(tmp_path / "alpha.h5", lens, inputs, "alpha")
    with h5py.File(tmp_path / "rows.h5") as f:
        stored = f["token_path_weights"].size + f["token_activations"].size
    with h5py.File(tmp_path / "alpha.h5") as f:
        assert stored == sum(LENGTHS) * (12 + 48) < f["alpha"].size == len(LENGTHS) * 12 * 48


def test_the_form_is_chosen_per_layer_by_size():
    factors = HeadFactors(torch.ones(20, 5, 2), torch.ones(20, 2, 64))  # 20 paths x 64 neurons = 1280
    # token rows when max_tokens * (20 + 64) < 1280, i.e. up to 15 tokens
    assert choose_form(factors, max_tokens=15) == "token_rows" and choose_form(factors, max_tokens=16) == "alpha"
    assert choose_form(factors, n_tokens=15) == "tokens" and choose_form(factors, n_tokens=16) == "alpha"
    assert choose_form(factors) == "alpha"
    for T in (1, 8, 15, 16, 40):
        sizes = {form: FactorizedEffectsWriter.expected_bytes(100, factors, False, max_tokens=T, form=form)
                 for form in ("alpha", "token_rows")}
        auto = FactorizedEffectsWriter.expected_bytes(100, factors, False, max_tokens=T)
        assert auto == min(sizes.values()), (T, sizes, auto)
    # on a model: layer 0 has 12 paths (token rows up to 9 tokens), layer 2 has 4 (up to 3)
    model = tiny_decoder("llama", seed=3)
    forms = {layer: choose_form(SecondOrderLens(model, layer).factors, max_tokens=9) for layer in (0, 2)}
    assert forms == {0: "token_rows", 2: "alpha"}
    assert choose_form(SecondOrderLens(model, 2).factors, max_tokens=3) == "token_rows"


def test_token_rows_errors(tmp_path):
    model = tiny_gpt2(seed=3)
    lens = SecondOrderLens(model, 0)
    with pytest.raises(ValueError, match="more than max_tokens=8"):
        write(tmp_path / "long.h5", lens, batches("right"), "token_rows", max_tokens=8)
    with pytest.raises(ValueError, match="form='tokens' needs n_tokens"):
        FactorizedEffectsWriter(tmp_path / "t.h5", 2, lens.factors, False, 2, form="tokens")
    with pytest.raises(ValueError, match="form='rows'"):
        FactorizedEffectsWriter(tmp_path / "t.h5", 2, lens.factors, False, 2, form="rows")
    with pytest.raises(ValueError, match="needs max_tokens"):
        FactorizedEffectsWriter.expected_bytes(2, lens.factors, False, form="token_rows")
    fe = lens.factorized(batches("right")[0])
    fe.tokens = None
    writer = FactorizedEffectsWriter(tmp_path / "n.h5", 3, lens.factors, fe.const is not None, 3, form="token_rows",
                                     max_tokens=9)
    with pytest.raises(ValueError, match="needs the batch's path weights"):
        writer.write(fe)
    writer.abort()


def test_files_without_a_form_attribute_read_as_alpha(tmp_path):
    """Factorized files written before the form was recorded hold ``alpha``."""
    lens = SecondOrderLens(tiny_gpt2(seed=3), 1)
    inputs = batches("right")
    write(tmp_path / "old.h5", lens, inputs, "alpha")
    with h5py.File(tmp_path / "old.h5", "r+") as f:
        del f.attrs["alpha_form"]
        write_attrs(f, {})  # the attributes' checksum over what is left
    old = open_factorized(tmp_path / "old.h5")
    assert rel(old[:, :, :], np.concatenate([lens(b).numpy() for b in inputs])) <= 1e-10


def test_graph_stores_text_as_token_rows_where_they_are_smaller(tmp_path):
    """The whole graph on a tiny BERT whose texts are cut at 7 tokens: layer 0 (8 paths x 64 neurons:
    7 x 72 < 512) is stored as token rows, layer 1 (4 paths: 7 x 68 > 256) as alpha; the checks (fast =
    slow against the stored file), the PCA, ablations and reports run on both."""
    from helpers import materialize_graph, tiny_bert_profile
    from transformers import AutoTokenizer

    from oe_assets.resources import model as model_module
    from oe_assets.resources.io_managers import H5Group, open_effects

    profile = tiny_bert_profile(tmp_path)
    profile["model"]["max_length"] = 7
    defs, instance, store = materialize_graph(profile)
    tok = AutoTokenizer.from_pretrained(profile["model"]["source"])
    texts = [json.loads(line)["text"] for line in open(profile["dataset"]["train_path"])]
    batch = tok(texts, padding=True, truncation=True, max_length=7, return_tensors="pt")
    lengths = batch["attention_mask"].sum(1).tolist()
    assert min(lengths) < max(lengths) == 7  # mixed lengths, some cut
    with h5py.File(store / "second_order_effects" / "0.h5") as f:
        assert f.attrs["alpha_form"] == "token_rows" and "alpha" not in f
        assert f["token_activations"].shape[0] == sum(lengths) and f["token_counts"][:].tolist() == lengths
    with h5py.File(store / "second_order_effects" / "1.h5") as f:
        assert f.attrs["alpha_form"] == "alpha"
    adapter = next(v for k, v in model_module._CACHE.items() if k[0] == profile["model"]["source"]).adapter
    for layer in (0, 1):
        lens = SecondOrderLens(adapter, layer)
        stored = open_effects(H5Group(store / "second_order_effects" / f"{layer}.h5"))
        assert rel(stored[:, :, :], lens(batch).numpy()) <= 1e-6  # float32 storage
        assert (store / "neuron_pcas" / f"{layer}.h5").exists() and (store / "ablation_report" / f"{layer}.parquet").exists()


def test_token_rows_are_multiplied_in_bounded_groups(tmp_path, monkeypatch):
    """A small product bound splits the samples into groups (one sample each at the least) without
    changing a number; the reader computes in the dtype asked for."""
    import oe_assets.lens.effects_file as effects_file

    lens = SecondOrderLens(tiny_gpt2(seed=3), 0)
    inputs = batches("left")
    write(tmp_path / "rows.h5", lens, inputs, "token_rows")
    whole = open_factorized(tmp_path / "rows.h5")[:, :, :]
    item, width = 8, lens.factors.n_paths + lens.n_neurons
    for bound, groups in ((1, len(LENGTHS)), (LONGEST * width * item * 2, None)):
        monkeypatch.setattr(effects_file, "PRODUCT_BYTES", bound)
        fe = open_factorized(tmp_path / "rows.h5")
        seen = list(fe.alpha._groups(0, len(LENGTHS), width))
        assert seen[0][0] == 0 and seen[-1][1] == len(LENGTHS) and all(a[1] == b[0] for a, b in zip(seen, seen[1:]))
        assert len(seen) == groups if groups else 1 < len(seen) < len(LENGTHS)
        np.testing.assert_array_equal(fe[:, :, :], whole)
        assert rel(fe.norms(), np.linalg.norm(whole, axis=-1)) <= 1e-12
    single = open_factorized(tmp_path / "rows.h5", dtype=torch.float32)
    assert single.alpha[0:2, :, slice(None)].dtype == torch.float32
    assert rel(single[:, :, :], whole) <= 1e-5


@pytest.mark.parametrize("alpha_dtype,bound", [("float32", 1e-6), ("float16", 2e-3), ("bfloat16", 1e-2)])
def test_token_rows_in_every_storage_dtype(tmp_path, alpha_dtype, bound):
    lens = SecondOrderLens(tiny_gpt2(seed=3), 0)
    inputs = batches("right")
    dense = np.concatenate([lens(b).numpy() for b in inputs])
    with FactorizedEffectsWriter(tmp_path / "rows.h5", len(LENGTHS), lens.factors, True, BATCH, alpha_dtype=alpha_dtype,
                                 max_tokens=LONGEST, form="token_rows") as writer:
        for b in inputs:
            writer.write(lens.factorized(b))
        writer.close()
    fe = open_factorized(tmp_path / "rows.h5")
    assert rel(fe[:, :, :], dense) <= bound and rel(fe.norms(), np.linalg.norm(dense, axis=-1)) <= bound
