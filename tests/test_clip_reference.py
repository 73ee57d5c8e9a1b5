"""The CLIP pipeline reproduces the official implementation's outputs on the tiny reference model."""

import numpy as np
import pytest
import torch

from oe_assets.lens import (
    SCENARIOS, SecondOrderLens, ablate, neuron_pca, representations, second_order_effects, sparse_decompose,
)

LAYERS = [0, 1, 2]


def rel_err(got, expected):
    got = got.detach().cpu().double().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    return np.abs(got - expected).max() / np.abs(expected).max()


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("split", ["train", "val"])
def test_effects_float64(reference, reference_model, layer, split):
    d, meta = reference
    lens = SecondOrderLens(reference_model, layer, coefficient=meta["coefficient"])
    effects = lens(torch.from_numpy(d[f"{split}_images"]))
    assert effects.shape == d[f"{split}_second_order_layer{layer}"].shape
    assert effects.dtype == torch.float64
    assert rel_err(effects, d[f"{split}_second_order_layer{layer}"]) <= 1e-5


@pytest.mark.parametrize("layer", LAYERS)
def test_effects_float32_one_call(reference, reference_model, layer):
    d, meta = reference
    model32 = reference_model.to(torch.float32)
    try:
        effects = second_order_effects(model32, torch.from_numpy(d["val_images"]), layer)
        assert effects.dtype == torch.float32
        assert rel_err(effects, d[f"val_second_order_layer{layer}"]) <= 1e-3
    finally:
        reference_model.to(torch.float64)


def test_representations(reference, reference_model):
    d, meta = reference
    with torch.no_grad():
        emb = reference_model(pixel_values=torch.from_numpy(d["train_images"])).image_embeds
    assert rel_err(emb, d["train_image_embeds"]) <= 1e-5
    assert rel_err(representations(emb, meta["coefficient"]), d["train_representations"]) <= 1e-5


@pytest.mark.parametrize("layer", LAYERS)
def test_pca_sparse_and_ablations(reference, reference_model, layer):
    d, meta = reference
    pca = neuron_pca(d[f"train_second_order_layer{layer}"], meta["top_k"], block_size=100)
    assert rel_err(pca.components, d[f"pca_layer{layer}"]) <= 1e-12
    assert rel_err(pca.norms, d[f"pca_norms_layer{layer}"]) <= 1e-12
    assert rel_err(pca.means, d[f"neuron_means_layer{layer}"]) <= 1e-12

    codes = sparse_decompose(pca.components, d["text_embeddings"], meta["components"])
    assert rel_err(codes.codes, d[f"sparse_codes_layer{layer}"]) <= 1e-8
    assert (np.count_nonzero(codes.codes, axis=1) <= meta["components"]).all()

    # the whole chain from our own effects, not the reference's
    lens = SecondOrderLens(reference_model, layer)
    val = torch.from_numpy(d["val_images"])
    with torch.no_grad():
        emb = reference_model(pixel_values=val).image_embeds
    result = ablate(
        representations(emb, meta["coefficient"]).numpy(), lens(val).numpy(), d["classifier"], d["val_labels"],
        pca.means, pca.thresholds, pca.components, reconstructions=codes.reconstruct(),
    )
    expected = dict(zip(meta["ablation_rows"], d[f"ablation_logits_layer{layer}"]))
    # The official output stores the two threshold scenarios under each other's labels: its row
    # "without_significant" is rep - sum of D over *insignificant* neurons.  We follow the
    # definitions (seed and reference README) and check each scenario against the row that holds it.
    official_row = dict(zip(SCENARIOS, SCENARIOS))
    official_row["without_significant"], official_row["without_insignificant"] = (
        "without_insignificant", "without_significant")
    for scenario in SCENARIOS:
        assert rel_err(result.logits[scenario], expected[official_row[scenario]]) <= 1e-5, scenario
    np.testing.assert_allclose([result.accuracy[s] for s in SCENARIOS], d[f"ablation_acc_layer{layer}"])
    assert "sparse_reconstruction" in result.logits
    assert not np.allclose(result.logits["sparse_reconstruction"], result.logits["mean_ablate_all"])
