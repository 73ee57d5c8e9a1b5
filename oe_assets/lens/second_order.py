"""Second-order effects of MLP neurons through later attention heads: the fast path.

For MLP layer ``l`` and every later block ``j > l`` and head ``h``, a neuron ``n`` writes
``a[b,t,n] W_out[:, n]`` into the stream at token ``t``; the path to the representation is linear
once LayerNorm statistics and attention probabilities are frozen at their forward-pass values, so

    effect[b, n] = coefficient / |r[b]| * ( sum_{j,h} alpha[b, jh, n] M[jh, n] + const[b] )

    alpha[b, jh, n] = sum_t Atil[b, jh, t] a[b, t, n]                  [batch, J*H, neurons]
    Atil[b, jh, t]  = s_in_j[b, t] * sum_q w[b, q] s_out_j[b, q] A_jh[b, q, t]
    M[jh, n]        = P^T L_out_j W_O[h] W_V[h] L_in_j W_out[:, n]     [J*H, neurons, d_out]

with ``w`` the readout pooling over query tokens, ``s_in`` / ``s_out`` the products of ``1/sigma``
of the frozen LayerNorms before / after the head, ``L_in`` / ``L_out`` their linear parts and ``P``
the output projection.  ``M`` is computed once per model and layer; per batch the work is two
batched matrix products and never a ``[batch, tokens, neurons, d_model]`` tensor.

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

from dataclasses import dataclass
from typing import Any

import torch

from .adapters import Capture, ModelAdapter, get_adapter

__all__ = ["SecondOrderLens", "second_order_effects", "layer_norm_map", "CONVENTIONS"]

CONVENTIONS = ("reference", "direct")


def layer_norm_map(adapter: ModelAdapter, names: list[str], convention: str) -> torch.Tensor:
    """The linear part ``[d_model, d_model]`` of the frozen LayerNorms ``names`` applied in order:
    ``diag(gamma)`` for the reference convention, ``prod diag(gamma) (I - 11^T/d)`` for direct
    (``diag(gamma)`` for an RMSNorm, which does not centre)."""
    D = adapter.d_model
    eye = torch.eye(D, dtype=adapter.dtype, device=adapter.device)
    centre = eye - 1.0 / D
    out = eye
    for name in names:
        p = adapter.layer_norm(name)
        # an RMSNorm (centred=False) never subtracts a mean: its linear part is diag(gamma) alone
        step = torch.diag(p.weight) if convention == "reference" or not p.centred else p.weight[:, None] * centre
        out = step @ out
    return out


@dataclass
class _Block:
    index: int
    ln_in: list[str]
    ln_out: list[str]


class SecondOrderLens:
    """Second-order effects of one MLP layer's neurons, built once per model and layer.

    ``lens(inputs)`` returns ``[batch, neurons, d_out]`` (see the module docstring for the formula).
    ``inputs`` is what the family's model takes: ``pixel_values`` ``[batch, 3, H, W]`` for CLIP, a
    tokenizer's output (``input_ids``, ``attention_mask``) for language models.
    """

    def __init__(
        self,
        model: torch.nn.Module | ModelAdapter,
        mlp_layer: int,
        coefficient: float = 100.0,
        convention: str | None = None,
        pooling: str | None = None,
    ):
        self.adapter = get_adapter(model, pooling)
        a = self.adapter
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
            _Block(j, a.layer_norms_before_head(mlp_layer, j), a.layer_norms_after_head(j))
            for j in a.later_blocks(mlp_layer)
        ]
        with torch.no_grad():
            self._precompute()

    # ------------------------------------------------------------------ one-time work
    def _precompute(self) -> None:
        a, conv = self.adapter, self.convention
        H, N = a.n_heads, a.d_mlp
        W_out, b_out = a.mlp_out_weights(self.mlp_layer)
        P = a.projection()
        d_out = a.d_out
        self.M = torch.empty(N, len(self.blocks) * H, d_out, dtype=a.dtype, device=a.device)
        self._const = []
        for i, blk in enumerate(self.blocks):
            w = a.attention_weights(blk.index)
            L_in = layer_norm_map(a, blk.ln_in, conv)
            L_out = layer_norm_map(a, blk.ln_out, conv)
            left = torch.einsum("ed,hdk->hek", L_out, w.W_o)  # [H, D, dh]
            if P is not None:
                left = torch.einsum("de,hdk->hek", P, left)  # [H, d_out, dh]
            right = torch.einsum("hkd,de->hke", w.W_v, L_in)  # [H, dh, D]
            for h in range(H):
                self.M[:, i * H + h, :] = (left[h] @ (right[h] @ W_out)).T
            if conv == "reference":
                (ln_in,), (ln_out,) = blk.ln_in, blk.ln_out
                beta_in = a.layer_norm(ln_in).bias  # its weight is already in L_in
                g_f, beta_f = a.layer_norm(ln_out).weight, a.layer_norm(ln_out).bias
                proj = (lambda x: x) if P is None else (lambda x: x @ P)
                c = (1 + 2 * blk.index) * N
                c_f = (1 + 2 * blk.index) * (1 + 2 * a.n_layers) * H * N
                self._const.append(dict(
                    K1=torch.einsum("hek,hk->he", left, right @ (b_out / N)),
                    K2=torch.einsum("hek,hk->he", left, right @ torch.ones_like(b_out)),
                    K3=torch.einsum("hek,hk->e", left, torch.einsum("hkd,d->hk", w.W_v, beta_in) + w.b_v),
                    K4=proj(g_f * w.b_o), Kg=proj(g_f), Kb=proj(beta_f), c=c, c_f=c_f,
                ))

    # ------------------------------------------------------------------ per batch
    def capture(self, inputs: Any) -> Capture:
        """Run the model once with hooks (see :meth:`ModelAdapter.capture`)."""
        return self.adapter.capture(inputs, self.mlp_layer)

    def __call__(self, inputs: Any) -> torch.Tensor:
        return self.from_capture(self.capture(inputs))

    @torch.no_grad()
    def from_capture(self, cap: Capture) -> torch.Tensor:
        """``[batch, neurons, d_out]`` effects from a :class:`Capture` of this layer."""
        Atil, const = [], None
        S0 = S3 = None
        for i, blk in enumerate(self.blocks):
            s_out = cap.ln_scale(blk.ln_out, "queries") * cap.readout  # [B, Q]
            s_in = cap.ln_scale(blk.ln_in, "keys")  # [B, T]
            At = torch.einsum("bhqt,bq->bht", cap.attention[blk.index], s_out) * s_in[:, None, :]
            Atil.append(At)
            if self.convention == "reference":
                k = self._const[i]
                mu_in = cap.ln_mean[blk.ln_in[0]]
                mu_f = cap.at(cap.ln_mean[blk.ln_out[0]], "queries")
                S0 = s_out.sum(-1)  # sum_q w / sigma_f
                S3 = (s_out * mu_f).sum(-1)  # sum_q w mu_f / sigma_f
                Sw = cap.readout.sum(-1)
                S1 = At.sum(-1)  # [B, H]
                S2 = (At * mu_in[:, None, :]).sum(-1)
                H = At.shape[1]
                term = (
                    S1 @ k["K1"] - S2 @ k["K2"] / k["c"]
                    + S0[:, None] * (k["K3"] + k["K4"]) / k["c"]
                    + H * (Sw[:, None] * k["Kb"] - S3[:, None] * k["Kg"]) / k["c_f"]
                )
                const = term if const is None else const + term
        Atil = torch.cat(Atil, dim=1)  # [B, J*H, T]
        alpha = torch.bmm(Atil, cap.activations)  # [B, J*H, N]
        # contiguous [N, B, J*H]: batched GEMM over neurons runs ~4x faster than on the strided view
        alpha = alpha.permute(2, 0, 1).contiguous()
        out = torch.bmm(alpha, self.M).permute(1, 0, 2)  # [B, N, d_out] (view)
        if const is not None:
            out.add_(const[:, None, :])
        scale = self.coefficient / cap.representation.norm(dim=-1)
        out.mul_(scale[:, None, None])
        return out.contiguous()

    @property
    def n_neurons(self) -> int:
        return self.adapter.d_mlp

    @property
    def d_out(self) -> int:
        return self.adapter.d_out


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
