"""Second-order effects of MLP neurons through later attention heads: the fast path.

For MLP layer ``l`` and every later block ``j > l`` and head ``h``, a neuron ``n`` writes
``a[b,t,n] W_out[:, n]`` into the stream at token ``t``; the path to the representation is linear
once LayerNorm statistics and attention probabilities are frozen at their forward-pass values, so

    effect[b, n] = coefficient / |r[b]| * ( sum_{j,h} alpha[b, jh, n] M[n, jh] + const[b] )

    alpha[b, jh, n] = sum_t Atil[b, jh, t] a[b, t, n]                  [batch, J*H, neurons]
    Atil[b, jh, t]  = s_in_j[b, t] * sum_q w[b, q] s_out_j[b, q] A_jh[b, q, t]
    M[n, jh]        = P^T L_out_j W_O[h] W_V[h] L_in_j W_out[:, n]     [neurons, J*H, d_out]
                    = left[jh] @ right[jh, :, n]     left [J*H, d_out, d_head], right [J*H, d_head, neurons]

with ``w`` the readout pooling over query tokens, ``s_in`` / ``s_out`` the products of ``1/sigma``
of the frozen LayerNorms before / after the head, ``L_in`` / ``L_out`` their linear parts and ``P``
the output projection.  The per-head factors ``left``/``right`` are computed once per model and
layer; per batch the work is one batched matrix product for ``alpha`` (never a ``[batch, tokens,
neurons, d_model]`` tensor).  :meth:`SecondOrderLens.factorized` returns the effects in that form
(:class:`oe_assets.lens.factorized.FactorizedEffects`: ``alpha``, ``scale = coefficient / |r|``,
``const`` and the factors); ``lens(inputs)`` densifies it.

Conventions (what the LayerNorm means and the biases contribute):

- ``"reference"`` (pre-LN only; the published CLIP method, number for number).  With
  ``c_j = (1 + 2j) N`` and ``c_fj = (1 + 2j)(1 + 2L) H N``::

      u   = a[b,t,n] W_out[:, n] + b_out / N
      z   = g_j * (u - mu_j[b,t] / c_j) / sigma_j[b,t] + beta_j / c_j
      v   = W_V[h] z + b_V[h] / c_j
      y   = sum_t A_jh[b,q,t] v
      o   = W_O[h] y + b_O / (c_j H)
      e   = P^T sum_q w[b,q] (g_f * (o - mu_f[b,q] / c_fj) / sigma_f[b,q] + beta_f / c_fj)

  so ``L_in = diag(g_j)``, ``L_out = diag(g_f)`` and the shares of means and biases give ``const``.
- ``"direct"`` (every family): only the neuron's own term counts.  Each frozen LayerNorm acts as
  ``v -> gamma * (v - mean(v)) / sigma[b, t]`` (no beta), the head as ``W_O[h] A W_V[h]`` (no biases),
  so ``L = prod diag(gamma) (I - 11^T / d_model)`` and ``const = 0``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

from .adapters import AttentionWeights, Capture, ModelAdapter, get_adapter
from .adapters.base import lens_dtype
from .factorized import FactorizedEffects, HeadFactors
from .placement import execution_device, materialized

__all__ = ["SecondOrderLens", "second_order_effects", "layer_norm_map", "CONVENTIONS"]

CONVENTIONS = ("reference", "direct")


def layer_norm_map(adapter: ModelAdapter, names: list[str], convention: str, device=None,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
    """The linear part ``[d_model, d_model]`` of the frozen LayerNorms ``names`` applied in order:
    ``diag(gamma)`` for the reference convention, ``prod diag(gamma) (I - 11^T/d)`` for direct
    (``diag(gamma)`` for an RMSNorm, which does not centre); on ``device`` (default: the model's), in
    ``dtype`` (default: the model's)."""
    D = adapter.d_model
    device = adapter.device if device is None else device
    dtype = dtype or adapter.dtype
    eye = torch.eye(D, dtype=dtype, device=device)
    centre = eye - 1.0 / D
    out = eye
    for name in names:
        p = adapter.layer_norm(name)
        gamma = p.weight.to(device, dtype)  # a split model keeps each norm on its own block's device
        # an RMSNorm (centred=False) never subtracts a mean: its linear part is diag(gamma) alone
        step = torch.diag(gamma) if convention == "reference" or not p.centred else gamma[:, None] * centre
        out = step @ out
    return out


def _to(value, device, dtype=None):
    return value.to(device, dtype) if isinstance(value, torch.Tensor) else value


def _outside_blocks(adapter: ModelAdapter) -> list[str]:
    """Top-level modules outside the stack of blocks (a projection, another tower), whose weights the
    lens may read besides the blocks' and the listed norms'."""
    stack = adapter.attention_pattern.split("*")[0].rstrip(".")
    return [n for n, _ in adapter.model.named_children() if not (stack == n or stack.startswith(n + "."))]


@dataclass
class _ReferenceShares:
    """One later block's constant terms in the reference convention (module docstring), each
    ``[heads, d_out]`` or ``[d_out]``: the shares of the MLP output bias, of the pre-head LayerNorm
    mean, of the value bias and pre-head LayerNorm beta, of the head output bias, and the final
    LayerNorm's gain and bias; ``c`` and ``c_final`` are the share denominators ``c_j``, ``c_fj``."""

    out_bias_share: torch.Tensor
    mean_share: torch.Tensor
    value_bias: torch.Tensor
    head_bias: torch.Tensor
    final_gain: torch.Tensor
    final_bias: torch.Tensor
    c: int
    c_final: int


@dataclass
class _Block:
    index: int
    ln_in: list[str]
    ln_out: list[str]
    #: the device the block computes on (one of several when the model is split over devices)
    device: torch.device


class LayerLens:
    """What every lens of one MLP layer shares: the model's adapter (``self.adapter``), its sizes and
    the compute dtype ``self.dtype`` (factors, path weights: :func:`~oe_assets.lens.adapters.lens_dtype`,
    float32 for half-precision weights unless the adapter or the lens names another)."""

    adapter: ModelAdapter
    dtype: torch.dtype

    @property
    def n_neurons(self) -> int:
        return self.adapter.d_mlp

    @property
    def d_out(self) -> int:
        return self.adapter.d_out


class SecondOrderLens(LayerLens):
    """Second-order effects of one MLP layer's neurons, built once per model and layer.

    ``lens(inputs)`` returns ``[batch, neurons, d_out]`` (see the module docstring for the formula);
    ``lens.factorized(inputs)`` the same effects unmaterialized.  ``dense_cache_bytes``: the dense
    directions ``M`` are kept for later batches when they fit (792 MiB at ViT-B/32 layer 0).
    ``inputs`` is what the family's model takes: ``pixel_values`` ``[batch, 3, height, width]`` for
    CLIP, a tokenizer's output (``input_ids``, ``attention_mask``: ``[batch, tokens]``) for language
    models.  ``compute_dtype``: the dtype of the factors and path weights (None: the adapter's
    :attr:`~oe_assets.lens.adapters.ModelAdapter.lens_dtype`, float32 for bfloat16 / float16 weights);
    the forward pass runs in the weights' dtype and its capture is cast to it.
    """

    def __init__(
        self,
        model: torch.nn.Module | ModelAdapter,
        mlp_layer: int,
        coefficient: float = 100.0,
        convention: str | None = None,
        pooling: str | None = None,
        dense_cache_bytes: int = 2 * 2**30,
        compute_dtype: torch.dtype | None = None,
    ):
        self.dense_cache_bytes = dense_cache_bytes
        self.adapter = get_adapter(model, pooling)
        a = self.adapter
        self.dtype = lens_dtype(a.dtype, compute_dtype) if compute_dtype is not None else a.lens_dtype
        a.check_layer(mlp_layer)
        convention = convention or a.default_convention
        if convention not in CONVENTIONS:
            raise ValueError(f"convention={convention!r}; choose one of {CONVENTIONS}")
        if convention not in a.conventions:
            raise ValueError(
                f"convention={convention!r} is not defined for {a.family} ({a.layer_norm_style}-LayerNorm); "
                f"available: {a.conventions}"
            )
        if not coefficient > 0:
            raise ValueError(f"coefficient must be positive, got {coefficient!r}")
        self.mlp_layer, self.coefficient, self.convention = mlp_layer, float(coefficient), convention
        self.blocks = [
            _Block(j, a.layer_norms_before_head(mlp_layer, j), a.layer_norms_after_head(j),
                   execution_device(a.model, a.block_name(j)))
            for j in a.later_blocks(mlp_layer)
        ]
        with torch.no_grad():
            self._precompute()

    # ------------------------------------------------------------------ one-time work
    def _precompute(self) -> None:
        a, conv, dt = self.adapter, self.convention, self.dtype
        # a model split over devices: each block's factors are computed and kept on the block's device,
        # its weights loaded for the moment (accelerate's CPU / disk offload keeps them on "meta")
        mlp_block = a.block_name(self.mlp_layer)
        lefts, rights = [], []
        self._const = []
        for blk in self.blocks:
            dev = blk.device
            with materialized(a.model, [mlp_block, a.block_name(blk.index), *blk.ln_in, *blk.ln_out,
                                        *_outside_blocks(a)]):
                W_out, b_out = (t.to(dev, dt) for t in a.mlp_out_weights(self.mlp_layer))
                P = a.projection()
                P = None if P is None else P.to(dev, dt)
                w = a.attention_weights(blk.index)
                w = AttentionWeights(**{f.name: _to(getattr(w, f.name), dev, dt) for f in fields(w)})
                L_in = layer_norm_map(a, blk.ln_in, conv, dev, dt)
                L_out = layer_norm_map(a, blk.ln_out, conv, dev, dt)
                self._block_factors(blk, w, L_in, L_out, W_out, b_out, P, lefts, rights)
        # the dense M [neurons, J*H, d_out] is kept for the per-batch dense output only while it is small
        self.factors = HeadFactors.from_blocks(lefts, rights, cache_bytes=self.dense_cache_bytes)

    def _block_factors(self, blk, w, L_in, L_out, W_out, b_out, P, lefts, rights) -> None:
        a, conv = self.adapter, self.convention
        H, N = a.n_heads, a.d_mlp
        left = torch.einsum("ed,hdk->hek", L_out, w.W_o)  # [H, D, dh]
        if P is not None:
            left = torch.einsum("de,hdk->hek", P, left)  # [H, d_out, dh]
        value_in = torch.einsum("hkd,de->hke", w.W_v, L_in)  # [H, dh, D]: W_V[h] L_in
        lefts.append(left)
        rights.append(value_in @ W_out)  # [H, dh, N]
        if conv == "reference":
            (ln_in,), (ln_out,) = blk.ln_in, blk.ln_out
            dev = left.device
            beta_in = a.layer_norm(ln_in).bias.to(dev, self.dtype)  # its weight is already in L_in
            g_f = a.layer_norm(ln_out).weight.to(dev, self.dtype)
            beta_f = a.layer_norm(ln_out).bias.to(dev, self.dtype)
            proj = (lambda x: x) if P is None else (lambda x: x @ P)
            self._const.append(_ReferenceShares(
                out_bias_share=torch.einsum("hek,hk->he", left, value_in @ (b_out / N)),
                mean_share=torch.einsum("hek,hk->he", left, value_in @ torch.ones_like(b_out)),
                value_bias=torch.einsum("hek,hk->e", left, torch.einsum("hkd,d->hk", w.W_v, beta_in) + w.b_v),
                head_bias=proj(g_f * w.b_o), final_gain=proj(g_f), final_bias=proj(beta_f),
                c=(1 + 2 * blk.index) * N, c_final=(1 + 2 * blk.index) * (1 + 2 * a.n_layers) * H * N,
            ))

    # ------------------------------------------------------------------ per batch
    def capture(self, inputs: Any) -> Capture:
        """Run the model once with hooks (see :meth:`ModelAdapter.capture`)."""
        return self.adapter.capture(inputs, self.mlp_layer)

    def __call__(self, inputs: Any) -> torch.Tensor:
        """``[batch, neurons, d_out]`` dense effects of ``inputs`` (in the lens's compute dtype)."""
        return self.from_capture(self.capture(inputs))

    def factorized(self, inputs: Any) -> FactorizedEffects:
        """The effects of ``inputs`` in factorized form (no dense ``[batch, neurons, d_out]``)."""
        return self.factorized_from_capture(self.capture(inputs))

    @torch.no_grad()
    def from_capture(self, cap: Capture) -> torch.Tensor:
        """``[batch, neurons, d_out]`` dense effects from a :class:`Capture` of this layer."""
        return self.factorized_from_capture(cap, dtype=self.dtype).dense()

    @torch.no_grad()
    def factorized_from_capture(self, cap: Capture, dtype: torch.dtype | None = None) -> FactorizedEffects:
        """:class:`FactorizedEffects` ``[batch, neurons, d_out]`` of a :class:`Capture` of this layer:
        ``alpha`` ``[batch, J*H, neurons]``, ``scale`` ``[batch]``, ``const`` ``[batch, d_out]``
        (reference convention) and the layer's :class:`HeadFactors`; ``alpha`` and the path weights in
        the lens's compute dtype (the capture is cast to it), the results in ``dtype`` (default
        float64) when densified."""
        cap = cap.to(self.dtype)
        out = cap.activations.device  # a split model: each block's part is computed on its device, gathered here
        path_weights, alphas, const = [], [], None
        acts = {str(out): cap.activations}  # the activations copied once to each block device
        for i, blk in enumerate(self.blocks):
            dev = cap.attention[blk.index].device
            readout = cap.readout.to(dev)
            s_out = cap.ln_scale_queries(blk.ln_out, dev) * readout  # [B, Q]: w / sigma_f
            s_in = cap.ln_scale_keys(blk.ln_in, dev)  # [B, T]
            At = torch.einsum("bhqt,bq->bht", cap.attention[blk.index], s_out) * s_in[:, None, :]
            if dev != out:
                if str(dev) not in acts:
                    acts[str(dev)] = cap.activations.to(dev)
                alphas.append((i, torch.bmm(At, acts[str(dev)]).to(out)))  # [B, H, N]
            path_weights.append(At.to(out))
            if self.convention == "reference":
                k = self._const[i]
                mu_in = cap.ln_mean[blk.ln_in[0]].to(dev)
                mu_f = cap.at_queries(cap.ln_mean[blk.ln_out[0]]).to(dev)
                w_over_sigma_f = s_out.sum(-1)  # sum_q w / sigma_f
                w_mu_over_sigma_f = (s_out * mu_f).sum(-1)  # sum_q w mu_f / sigma_f
                attn_mass = At.sum(-1)  # [B, H]: sum_t Atil
                attn_mean_in = (At * mu_in[:, None, :]).sum(-1)  # [B, H]: sum_t Atil mu_in
                H = At.shape[1]
                term = (
                    attn_mass @ k.out_bias_share - attn_mean_in @ k.mean_share / k.c
                    + w_over_sigma_f[:, None] * (k.value_bias + k.head_bias) / k.c
                    + H * (readout.sum(-1)[:, None] * k.final_bias - w_mu_over_sigma_f[:, None] * k.final_gain) / k.c_final
                ).to(out)
                const = term if const is None else const + term
        Atil = torch.cat(path_weights, dim=1)  # [B, J*H, T]
        if alphas:  # blocks on other devices: their rows of alpha were formed there
            parts = dict(alphas)
            alpha = torch.cat([parts[i] if i in parts else torch.bmm(path_weights[i], cap.activations)
                               for i in range(len(self.blocks))], dim=1)
        else:
            alpha = torch.bmm(Atil, cap.activations)  # [B, J*H, N]
        scale = self.coefficient / cap.representation.norm(dim=-1).to(out)
        return FactorizedEffects(alpha, scale, self.factors, const, dtype=dtype or torch.float64,
                                 device=alpha.device, tokens=(Atil, cap.activations), token_mask=cap.token_mask)


def second_order_effects(
    model: torch.nn.Module,
    inputs: Any,
    mlp_layer: int,
    coefficient: float = 100.0,
    convention: str | None = None,
    pooling: str | None = None,
) -> torch.Tensor:
    """One-call form of :class:`SecondOrderLens`: ``[batch, neurons, d_out]``."""
    return SecondOrderLens(model, mlp_layer, coefficient, convention, pooling)(inputs)
