"""The math of oe_assets: plain torch / numpy, importable without Dagster.

- :class:`SecondOrderLens` / :func:`second_order_effects`: per-neuron second-order effects
  ``[batch, neurons, d_out]`` (fast path); :func:`slow_second_order_effects`: the literal yardstick;
- :class:`FirstOrderLens` / :func:`first_order_effects`: the direct path; :func:`replaced_mlp_representations`:
  the forward pass with an MLP layer's output replaced (total effects);
- :func:`representations`, :func:`zero_shot_classifier`, :func:`project_texts`;
- :func:`neuron_pca`, :func:`sparse_decompose`, :func:`top_descriptions`, :func:`ablate`.
"""

from .ablations import ALL_SCENARIOS, SCENARIOS, AblationResult, EffectSums, ablate, ablate_from_sums, top1_accuracy
from .adapters import ModelAdapter, get_adapter, register_adapter
from .first_order import FirstOrderLens, FirstOrderSums, first_order_effects, replaced_mlp_representations, token_mask
from .hooks import HookNeverFired, HookRegistry
from .pca import NeuronPCA, neuron_pca
from .second_order import CONVENTIONS, SecondOrderLens, second_order_effects
from .slow_path import slow_path_contributions, slow_second_order_effects
from .sparse import SparseCodes, nonzeros_by_magnitude, normalize_dictionary, sparse_decompose, top_descriptions
from .zero_shot import (
    clip_text_encoder, imagenet_classes, imagenet_templates, imagenet_wnids, project_texts,
    representations, zero_shot_classifier,
)

__all__ = [
    "ALL_SCENARIOS", "AblationResult", "CONVENTIONS", "EffectSums", "ablate_from_sums", "FirstOrderLens",
    "FirstOrderSums", "HookNeverFired",
    "HookRegistry", "ModelAdapter", "NeuronPCA",
    "SCENARIOS", "SecondOrderLens", "SparseCodes", "ablate", "clip_text_encoder", "get_adapter",
    "imagenet_classes", "imagenet_templates", "imagenet_wnids", "neuron_pca", "nonzeros_by_magnitude", "normalize_dictionary",
    "first_order_effects", "project_texts", "register_adapter", "replaced_mlp_representations",
    "representations", "second_order_effects", "token_mask",
    "slow_path_contributions", "slow_second_order_effects", "sparse_decompose", "top1_accuracy",
    "top_descriptions", "zero_shot_classifier",
]
