"""The literal per-head path: the yardstick for the fast path in :mod:`.second_order`.

It follows the published stage list step by step, per later block and per head (a head axis of the
token tensors ``[batch, tokens, heads, neurons, d_model]``).  It shares only the forward-pass capture
with the fast path; none of the factored algebra.  Use it on small models or single samples.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .adapters import Capture, ModelAdapter, get_adapter

__all__ = ["slow_second_order_effects", "slow_path_contributions"]


def _frozen_layer_norms(x: torch.Tensor, adapter: ModelAdapter, cap: Capture, names: list[str],
                        positions: Callable[[torch.Tensor], torch.Tensor]):
    """Apply ``v -> gamma * (v - mean(v)) / sigma[b, token]`` for each LayerNorm in ``names``
    (``v -> gamma * v / sigma[b, token]`` for an RMSNorm); ``x``: ``[batch, tokens, K, d_model]``;
    ``positions``: ``cap.at_keys`` or ``cap.at_queries``."""
    for name in names:
        p = adapter.layer_norm(name)
        sigma = positions(cap.ln_std[name])
        centred = x - x.mean(-1, keepdim=True) if p.centred else x
        x = p.weight * centred / sigma[:, :, None, None]
    return x


def _readout(x: torch.Tensor, adapter: ModelAdapter, cap: Capture) -> torch.Tensor:
    """Pool ``[batch, queries, K, d_model]`` over queries and project: ``[batch, K, d_out]``."""
    pooled = torch.einsum("bq,bqkd->bkd", cap.readout, x)
    P = adapter.projection()
    return pooled if P is None else pooled @ P


#: elements of one later block's per-head token tensor ``[batch, queries, heads, K, d_model]``: the
#: neurons (K) are taken in chunks that keep it near this size
CHUNK_ELEMENTS = 2**24


def _chunks(batch: int, tokens: int, heads: int, d_model: int, k: int) -> list[slice]:
    step = max(1, CHUNK_ELEMENTS // max(1, batch * tokens * heads * d_model))
    return [slice(k0, min(k, k0 + step)) for k0 in range(0, k, step)]


@torch.no_grad()
def slow_path_contributions(
    adapter: ModelAdapter, cap: Capture, mlp_layer: int, contributions: torch.Tensor, coefficient: float = 100.0
) -> torch.Tensor:
    """Direct convention for arbitrary stream contributions ``[batch, tokens, K, d_model]`` written
    at MLP layer ``mlp_layer`` (``cap`` a :class:`Capture` of that layer): ``[batch, K, d_out]``,
    summed over every later block and head: each head's value and token mixing (a head axis), the
    block's output ``sum_h W_o[h] y_h``, its frozen LayerNorms and the readout, on chunks of the K
    contributions."""
    B, T, K, D = contributions.shape
    parts = []
    for ks in _chunks(B, T, adapter.n_heads, D, K):
        total = None
        for j in adapter.later_blocks(mlp_layer):
            w = adapter.attention_weights(j)
            u = _frozen_layer_norms(contributions[:, :, ks], adapter, cap,
                                    adapter.layer_norms_before_head(mlp_layer, j), cap.at_keys)
            v = torch.einsum("btkd,hed->bthke", u, w.W_v)  # v_h = W_v[h] u: [B, T, H, k, dh]
            y = torch.einsum("bhqt,bthke->bqhke", cap.attention[j], v)  # each head's token mixing
            o = torch.einsum("bqhke,hde->bqkd", y, w.W_o)  # the block's output: sum_h W_o[h] y_h
            # the frozen LayerNorms after the block are linear: applied to the heads' sum, not per head
            o = _frozen_layer_norms(o, adapter, cap, adapter.layer_norms_after_head(j), cap.at_queries)
            e = _readout(o, adapter, cap)
            total = e if total is None else total + e
        parts.append(total)
    return torch.cat(parts, dim=1) * (coefficient / cap.representation.norm(dim=-1))[:, None, None]


@torch.no_grad()
def _slow_reference(adapter: ModelAdapter, cap: Capture, mlp_layer: int, coefficient: float,
                    neurons: torch.Tensor) -> torch.Tensor:
    W2, b2 = adapter.mlp_out_weights(mlp_layer)
    N, L, H = adapter.d_mlp, adapter.n_layers, adapter.n_heads  # N: every neuron shares the biases
    B, T = cap.activations.shape[:2]
    parts = []
    for ks in _chunks(B, T, H, W2.shape[0], len(neurons)):
        a, W2k = cap.activations[..., neurons[ks]], W2[:, neurons[ks]]
        total = None
        for j in adapter.later_blocks(mlp_layer):
            (ln_in,), (ln_f,) = adapter.layer_norms_before_head(mlp_layer, j), adapter.layer_norms_after_head(j)
            ln1, lnf = adapter.layer_norm(ln_in), adapter.layer_norm(ln_f)
            mu, sigma = cap.ln_mean[ln_in], cap.ln_std[ln_in]
            mu_f, sigma_f = cap.at_queries(cap.ln_mean[ln_f]), cap.at_queries(cap.ln_std[ln_f])
            c = (1 + 2 * j) * N
            c_f = (1 + 2 * j) * (1 + 2 * L) * H * N
            w = adapter.attention_weights(j)
            # as the published stage list does: per-neuron MLP output, then the LayerNorm (the same
            # for every head), then per head (a head axis) its value, mixing and output
            u = a[..., None] * W2k.T + b2 / N  # [B, T, k, D]
            z = ln1.weight * (u - mu[..., None, None] / c) / sigma[..., None, None] + ln1.bias / c
            v = torch.einsum("btkd,hed->bthke", z, w.W_v) + w.b_v[:, None, :] / c  # [B, T, H, k, dh]
            y = torch.einsum("bhqt,bthke->bqhke", cap.attention[j], v)  # each head's token mixing
            o = torch.einsum("bqhke,hde->bqhkd", y, w.W_o) + w.b_o / (c * H)  # [B, Q, H, k, D]
            fin = lnf.weight * (o - mu_f[..., None, None, None] / c_f) / sigma_f[..., None, None, None] + lnf.bias / c_f
            Q = fin.shape[1]
            e = _readout(fin.reshape(B, Q, H * fin.shape[3], -1), adapter, cap).reshape(B, H, fin.shape[3], -1).sum(1)
            total = e if total is None else total + e
        parts.append(total)
    return torch.cat(parts, dim=1) * (coefficient / cap.representation.norm(dim=-1))[:, None, None]


@torch.no_grad()
def slow_second_order_effects(
    model: torch.nn.Module | ModelAdapter,
    inputs: Any,
    mlp_layer: int,
    coefficient: float = 100.0,
    convention: str | None = None,
    pooling: str | None = None,
    neurons=None,
    capture: Capture | None = None,
) -> torch.Tensor:
    """Per-head literal second-order effects ``[batch, neurons, d_out]`` (same conventions as
    :class:`oe_assets.lens.SecondOrderLens`); with ``neurons`` (indices), of those neurons only
    ``[batch, len(neurons), d_out]`` (the per-neuron token tensors are the slow part).  ``capture``:
    a :class:`Capture` of ``mlp_layer`` for ``inputs`` already taken (the forward pass it shares with
    the fast path), else one is taken."""
    adapter = get_adapter(model, pooling)
    convention = convention or adapter.default_convention
    if convention not in adapter.conventions:
        raise ValueError(f"convention={convention!r} is not available for {adapter.family}")
    cap = adapter.capture(inputs, mlp_layer) if capture is None else capture
    neurons = torch.arange(adapter.d_mlp) if neurons is None else torch.as_tensor(neurons, dtype=torch.long)
    neurons = neurons.to(cap.activations.device)
    if convention == "reference":
        return _slow_reference(adapter, cap, mlp_layer, coefficient, neurons)
    W_out, _ = adapter.mlp_out_weights(mlp_layer)
    contributions = cap.activations[..., neurons, None] * W_out[:, neurons].T  # [B, T, n, D]
    return slow_path_contributions(adapter, cap, mlp_layer, contributions, coefficient)
