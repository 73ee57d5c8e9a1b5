"""PCA over HDF5-backed arrays, the zero-shot classifier, sparse-code tables, bad input."""

import h5py
import numpy as np
import pytest
import torch

from conftest import tiny_clip_vision
from oe_assets.lens import (
    ablate, clip_text_encoder, imagenet_classes, imagenet_templates, imagenet_wnids, neuron_pca, project_texts,
    sparse_decompose, top_descriptions, zero_shot_classifier,
)


def test_pca_reads_hdf5_block_by_block(tmp_path):
    rng = np.random.default_rng(0)
    effects = rng.normal(size=(40, 37, 6)) * rng.uniform(0.1, 3, size=(1, 37, 1))
    with h5py.File(tmp_path / "e.h5", "w") as f:
        f.create_dataset("effects", data=effects, chunks=(40, 5, 6))
    in_memory = neuron_pca(effects, 10)
    calls = []
    with h5py.File(tmp_path / "e.h5", "r") as f:
        lazy = neuron_pca(f["effects"], 10, block_size=8, progress=lambda done, total: calls.append(done))
    assert calls == [8, 16, 24, 32, 37]
    for field in ("components", "norms", "means"):
        np.testing.assert_array_equal(getattr(lazy, field), getattr(in_memory, field))
    # unit components, ascending norms, the sign rule
    np.testing.assert_allclose(np.linalg.norm(lazy.components, axis=1), 1.0)
    assert (np.diff(lazy.norms, axis=1) >= 0).all()
    centred = effects - effects.mean(0)
    for n in range(37):
        top = np.argsort(np.linalg.norm(centred[:, n], axis=1))[-10:]
        assert (centred[top, n] @ lazy.components[n] > 0).sum() >= 5  # ties (5 of 10) keep the negation


def test_pca_bad_input():
    with pytest.raises(ValueError, match="effects must be"):
        neuron_pca(np.zeros((3, 4)), 2)
    with pytest.raises(ValueError, match="top_k=9"):
        neuron_pca(np.zeros((3, 4, 2)), 9)


class _Tokenizer:
    """A whitespace tokenizer over a fixed vocabulary (ids < 64), enough for a tiny CLIP text tower."""

    def __init__(self):
        self.vocab = {}

    def __call__(self, texts, padding=True, truncation=True, max_length=16, return_tensors="pt"):
        ids = [[1] + [3 + self.vocab.setdefault(w, len(self.vocab) % 60) for w in t.split()][: max_length - 2] + [2]
               for t in texts]
        width = max(map(len, ids))
        return {
            "input_ids": torch.tensor([i + [0] * (width - len(i)) for i in ids]),
            "attention_mask": torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids]),
        }


def test_zero_shot_classifier_from_clip_text_tower():
    model = tiny_clip_vision(seed=0, with_text=True)
    encode = clip_text_encoder(model, _Tokenizer())
    classes, templates = ["cat", "dog", "red car"], ["a photo of a {}.", "a drawing of the {}."]
    W = zero_shot_classifier(encode, classes, templates)
    assert W.shape == (24, 3)
    torch.testing.assert_close(W.norm(dim=0), torch.ones(3, dtype=W.dtype))
    # column c is the normalised mean of the normalised prompt embeddings
    emb = encode([t.format("dog") for t in templates])
    mean = (emb / emb.norm(dim=-1, keepdim=True)).mean(0)
    torch.testing.assert_close(W[:, 1], mean / mean.norm())
    texts = [f"word{i} thing" for i in range(7)]
    torch.testing.assert_close(project_texts(encode, texts, batch_size=3), encode(texts))
    with pytest.raises(ValueError, match="templates"):
        zero_shot_classifier(encode, classes, ["no placeholder"])


def test_package_data():
    assert len(imagenet_classes()) == 1000 and len(imagenet_wnids()) == 1000
    assert len(imagenet_templates()) == 80 and all("{}" in t for t in imagenet_templates())


def test_top_descriptions_and_sparse_errors():
    codes = np.array([[0.0, -2.0, 0.5], [1.0, 0.0, 0.0]])
    rows = top_descriptions(codes, ["a", "b", "c"])
    assert [(r["neuron"], r["text"], r["coefficient"]) for r in rows] == [(0, "b", -2.0), (0, "c", 0.5), (1, "a", 1.0)]
    with pytest.raises(ValueError, match="expected \\[neurons, 4\\]"):
        sparse_decompose(np.zeros((2, 3)), np.random.default_rng(0).normal(size=(5, 4)), 2)
    with pytest.raises(ValueError, match="components=9"):
        sparse_decompose(np.zeros((2, 4)), np.random.default_rng(0).normal(size=(5, 4)), 9)


def test_ablation_shapes_are_checked():
    with pytest.raises(ValueError, match="does not match"):
        ablate(np.zeros((3, 4)), np.zeros((2, 5, 4)), np.zeros((4, 2)), np.zeros(3), np.zeros((5, 4)),
               np.zeros(5), np.zeros((5, 4)))


def test_batched_omp_equals_sklearn(reference):
    d, meta = reference
    for layer in (0, 2):
        fast = sparse_decompose(d[f"pca_layer{layer}"], d["text_embeddings"], meta["components"], method="batched")
        np.testing.assert_allclose(fast.codes, d[f"sparse_codes_layer{layer}"], atol=1e-12)
    rng = np.random.default_rng(1)
    T, X = rng.normal(size=(1500, 48)), rng.normal(size=(90, 48))
    a = sparse_decompose(X, T, 12, method="batched").codes
    b = sparse_decompose(X, T, 12, method="sklearn").codes
    assert ((a != 0) == (b != 0)).all()
    np.testing.assert_allclose(a, b, atol=1e-10)
    assert (np.count_nonzero(a, axis=1) == 12).all()


def test_pca_explained_variance():
    rng = np.random.default_rng(3)
    effects = rng.normal(size=(30, 4, 5))
    pca = neuron_pca(effects, 8)
    for n in range(4):
        c = effects[:, n] - effects[:, n].mean(0)
        rows = c[np.argsort(np.linalg.norm(c, axis=1))[-8:]]
        s = np.linalg.svd(rows, compute_uv=False)
        assert np.isclose(pca.explained[n], s[0] ** 2 / (s ** 2).sum())


def test_ablation_scenarios_on_a_hand_built_example():
    """Two samples, two neurons, d = 2, identity classifier (logits = the ablated representation);
    every number below is worked out by hand from the formulas in :func:`ablate`."""
    from oe_assets.lens import ALL_SCENARIOS, ablate

    rep = np.array([[3.0, 1.0], [1.0, 3.5]])
    labels = np.array([0, 1])
    effects = np.array([[[2.0, 0.0], [0.0, 0.5]],    # sample 0: neuron 0, neuron 1
                        [[0.5, 0.2], [0.0, 3.0]]])   # sample 1
    means = np.array([[0.0, 1.0], [0.0, 0.0]])
    # D = effects - means: |D[0,0]| = sqrt(5) > 1.5 and |D[1,1]| = 3 > 1 significant; |D[0,1]| = 0.5,
    # |D[1,0]| = sqrt(0.89) insignificant
    thresholds = np.array([1.5, 1.0])
    components = np.array([[0.6, 0.8], [0.0, 1.0]])
    reconstructions = np.array([[2.0, 0.0], [0.0, 5.0]])  # unit vectors (1, 0) and (0, 1)
    res = ablate(rep, effects, np.eye(2), labels, means, thresholds, components, reconstructions=reconstructions)
    expected = {
        "baseline": [[3.0, 1.0], [1.0, 3.5]],
        # rep - sum_n effects + sum_n means
        "mean_ablate_all": [[1.0, 1.5], [0.5, 1.3]],
        # rep - the significant D
        "without_significant": [[1.0, 2.0], [1.0, 0.5]],
        # rep - the insignificant D
        "without_insignificant": [[3.0, 0.5], [0.5, 4.3]],
        # mean ablation + (D . pc) pc: 0.4 (0.6, 0.8) + 0.5 (0, 1); -0.34 (0.6, 0.8) + 3 (0, 1)
        "projected_to_pc": [[1.24, 2.32], [0.296, 4.028]],
        # mean ablation + (D . rhat) rhat: 2 (1, 0) + 0.5 (0, 1); 0.5 (1, 0) + 3 (0, 1)
        "sparse_reconstruction": [[3.0, 2.0], [1.0, 4.3]],
    }
    accuracy = {"baseline": 100.0, "mean_ablate_all": 50.0, "without_significant": 0.0,
                "without_insignificant": 100.0, "projected_to_pc": 50.0, "sparse_reconstruction": 100.0}
    assert tuple(res.logits) == ALL_SCENARIOS
    for s in ALL_SCENARIOS:
        np.testing.assert_allclose(res.logits[s], expected[s], rtol=0, atol=1e-12, err_msg=s)
    assert res.accuracy == accuracy


def test_torch_omp_in_float32_and_transform_alpha_refused():
    """The torch coder's float32 correlations pick scikit-learn's atoms on well-separated data and its
    coefficients agree to float32 precision; transform_alpha (ignored by OMP) is refused."""
    rng = np.random.default_rng(3)
    T = rng.normal(size=(300, 16))
    X = rng.normal(size=(20, 16))
    ref = sparse_decompose(X, T, 5, method="sklearn").codes
    fast = sparse_decompose(X, T, 5, method="batched", dtype=torch.float32).codes
    assert ((ref != 0) == (fast != 0)).all()
    assert np.abs(fast - ref).max() <= 1e-4 * np.abs(ref).max()
    with pytest.raises(ValueError, match="transform_alpha has no effect"):
        sparse_decompose(X, T, 5, transform_alpha=1e-4)
