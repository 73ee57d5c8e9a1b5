"""First-order (direct) effects of MLP neurons, and the total effect of an MLP layer.

First order: neuron ``n`` of MLP layer ``l`` writes ``a[b,t,n] W_out[:, n]`` into the stream at token
``t``; along the residual stream alone (no later sublayer), with every LayerNorm on that path frozen
at its forward-pass statistics (the ``"direct"`` convention of :mod:`oe_assets.lens.second_order`:
``v -> gamma * (v - mean(v)) / sigma[b, t]``, no beta), it reaches the representation as

    fo[b, n] = coefficient / |r[b]| * beta[b, n] * D[:, n]                        [batch, neurons, d_out]

    beta[b, n] = sum_q w[b, q] s[b, q] a[b, pos_q, n]                            [batch, neurons]
    D          = P^T L W_out                                                     [d_out, neurons]

with ``w`` the readout pooling over query positions ``pos_q``, ``s`` the product of ``1/sigma`` of
the norms of :meth:`ModelAdapter.layer_norms_after_mlp` at the queries (pre-LN families: the final
norm; BERT: the MLP's own and every later stream norm), ``L`` their linear part
(:func:`~oe_assets.lens.second_order.layer_norm_map`) and ``P`` the projection.  Summed over neurons
(what a first-order mean ablation needs): ``sum_n fo[b, n] = scale[b] * beta[b] @ D^T`` ``[batch, d_out]``.

Total: :func:`replaced_mlp_representations` runs the real forward pass with layer ``l``'s MLP output
(the output of the adapter's ``mlp_out_pattern`` module, ``[batch, tokens, d_model]``) replaced by a
fixed vector, everything downstream recomputed.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from .adapters import Capture, ModelAdapter, get_adapter
from .adapters.base import lens_dtype
from .placement import execution_device, materialized
from .second_order import LayerLens, _outside_blocks, layer_norm_map

__all__ = ["FirstOrderLens", "FirstOrderSums", "first_order_effects", "replaced_mlp_representations", "token_mask"]


class FirstOrderLens(LayerLens):
    """First-order effects of one MLP layer's neurons (module docstring), built once per model and
    layer.  ``lens(inputs)``: ``[batch, neurons, d_out]``; :meth:`summed_from_capture`: the sum over
    neurons ``[batch, d_out]`` without the dense tensor."""

    def __init__(self, model: torch.nn.Module | ModelAdapter, mlp_layer: int, coefficient: float = 100.0,
                 pooling: str | None = None, compute_dtype: torch.dtype | None = None):
        self.adapter = a = get_adapter(model, pooling)
        self.dtype = lens_dtype(a.dtype, compute_dtype) if compute_dtype is not None else a.lens_dtype
        a.check_layer(mlp_layer)
        if not coefficient > 0:
            raise ValueError(f"coefficient must be positive, got {coefficient!r}")
        self.mlp_layer, self.coefficient = mlp_layer, float(coefficient)
        self.norms = a.layer_norms_after_mlp(mlp_layer)
        # a model split over devices: the directions live on the MLP's block device, from weights loaded
        # for the moment where accelerate offloads them
        dev = execution_device(a.model, a.block_name(mlp_layer))
        with torch.no_grad(), materialized(a.model, [a.block_name(mlp_layer), *self.norms, *_outside_blocks(a)]):
            W_out = a.mlp_out_weights(mlp_layer)[0].to(dev, self.dtype)
            D = layer_norm_map(a, self.norms, "direct", dev, self.dtype) @ W_out  # [d_model, N]
            P = a.projection()
            #: ``D`` ``[d_out, neurons]``: each neuron's direction in the output space
            self.directions = D if P is None else P.to(dev, self.dtype).T @ D

    def capture(self, inputs: Any) -> Capture:
        return self.adapter.capture(inputs, self.mlp_layer)

    def __call__(self, inputs: Any) -> torch.Tensor:
        return self.from_capture(self.capture(inputs))

    @torch.no_grad()
    def weights(self, cap: Capture) -> torch.Tensor:
        """``scale[b] * beta[b, n]`` ``[batch, neurons]``: each neuron's coefficient on its direction."""
        cap = cap.to(self.dtype)
        s = cap.ln_scale_queries(self.norms) * cap.readout.to(cap.activations.device)  # [B, Q]: w / sigma
        a = cap.activations[:, cap.query_positions.to(cap.activations.device), :]  # [B, Q, N]
        beta = torch.einsum("bq,bqn->bn", s.to(a.dtype), a)
        return beta * (self.coefficient / cap.representation.norm(dim=-1).to(a.device))[:, None]

    @torch.no_grad()
    def from_capture(self, cap: Capture) -> torch.Tensor:
        """``[batch, neurons, d_out]`` first-order effects of a :class:`Capture` of this layer."""
        weights = self.weights(cap)
        return weights[:, :, None] * self.directions.T[None].to(weights.device)

    @torch.no_grad()
    def summed_from_capture(self, cap: Capture) -> torch.Tensor:
        """``sum_n fo[b, n]`` ``[batch, d_out]``."""
        weights = self.weights(cap)
        return weights @ self.directions.T.to(weights.device)



def first_order_effects(model: torch.nn.Module, inputs: Any, mlp_layer: int, coefficient: float = 100.0,
                        pooling: str | None = None) -> torch.Tensor:
    """One-call form of :class:`FirstOrderLens`: ``[batch, neurons, d_out]``."""
    return FirstOrderLens(model, mlp_layer, coefficient, pooling)(inputs)


class FirstOrderSums:
    """Accumulates over a data pass, for every layer of ``lenses`` (``{layer: FirstOrderLens}``), the
    sum over neurons of the first-order effects ``[samples, d_out]`` and the MLP output's mean over
    samples and real tokens ``[d_model]`` (what first-order and total mean ablations need).  Feed it
    ``add(batch, {layer: Capture})`` per batch, e.g. as ``iter_factorized``'s ``on_capture``."""

    def __init__(self, lenses: Mapping[int, "FirstOrderLens"]):
        self.lenses = dict(lenses)
        self._sums = {layer: [] for layer in self.lenses}
        self._act = {layer: 0.0 for layer in self.lenses}
        self._tokens = 0.0

    @torch.no_grad()
    def add(self, batch: Any, caps: Mapping[int, Capture]) -> None:
        mask = None
        for layer, lens in self.lenses.items():
            cap = caps[layer]
            self._sums[layer].append(lens.summed_from_capture(cap).double().cpu().numpy())
            acts = cap.activations.to(lens.dtype)
            mask = token_mask(batch, acts)
            self._act[layer] = self._act[layer] + torch.einsum("bt,btn->n", mask, acts).double().cpu()
        self._tokens += float(mask.sum())

    def sums(self) -> dict[int, np.ndarray]:
        """``{layer: sum_n fo [samples, d_out]}``."""
        return {layer: np.concatenate(parts) for layer, parts in self._sums.items()}

    @torch.no_grad()
    def mlp_out_means(self) -> dict[int, np.ndarray]:
        """``{layer: mean MLP output [d_model]}``: ``W_out mean(a) + b_out`` over samples and real tokens."""
        out = {}
        for layer, lens in self.lenses.items():
            a = lens.adapter
            with materialized(a.model, [a.block_name(layer)]):
                W_out, b_out = (t.to(lens.dtype) for t in a.mlp_out_weights(layer))
                mean_act = (self._act[layer] / self._tokens).to(W_out.device, lens.dtype)
                out[layer] = (W_out @ mean_act + b_out).double().cpu().numpy()
        return out


def token_mask(inputs: Any, activations: torch.Tensor) -> torch.Tensor:
    """``[batch, tokens]`` 1 for the real tokens of ``inputs`` (its ``attention_mask`` when it has one,
    else every token), matching ``activations`` ``[batch, tokens, ...]``."""
    mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    if mask is None:
        return torch.ones(activations.shape[:2], dtype=activations.dtype, device=activations.device)
    return torch.as_tensor(mask).to(device=activations.device, dtype=activations.dtype)


@torch.no_grad()
def replaced_mlp_representations(model: torch.nn.Module | ModelAdapter, inputs: Any, mlp_layer: int,
                                 replacement: torch.Tensor | None, pooling: str | None = None) -> torch.Tensor:
    """The unnormalised representation ``r`` ``[batch, d_out]`` of ``inputs`` when MLP ``mlp_layer``'s
    output (module ``mlp_out_pattern``, ``[batch, tokens, d_model]``) is replaced by ``replacement``
    (``[d_model]``: the same vector at every token; or the full ``[batch, tokens, d_model]``) inside
    the real forward pass (None: unchanged)."""
    a = get_adapter(model, pooling)
    prepared = a.prepare_inputs(inputs)
    if replacement is None:
        return a.forward(prepared)
    module = a.model.get_submodule(a.mlp_out_pattern.replace("*", str(mlp_layer)))
    value = torch.as_tensor(replacement).to(device=a.device, dtype=a.dtype)

    def replace(mod, args, output):  # on the output's device: a split model runs the layer on its own
        return value.to(output.device).expand_as(output).clone()

    handle = module.register_forward_hook(replace)
    try:
        return a.forward(prepared)
    finally:
        handle.remove()

