"""The adapter half every family shares, read from its :class:`~.families.FamilyTable`: sizes, module
paths, weights per head and the norm lists on each path of the lens."""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import AttentionWeights, LayerNormParams, ModelAdapter
from .families import FamilyTable

__all__ = ["TableAdapter"]


class TableAdapter(ModelAdapter):
    """A :class:`ModelAdapter` whose paths, sizes and weights come from a family table.  ``tables``:
    the layouts the adapter loads, one per group of ``config.model_type`` values; the instance reads
    the one matching its model (``self.table``)."""

    tables: ClassVar[tuple[FamilyTable, ...]]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "tables" in cls.__dict__:
            cls.model_types = tuple(t for table in cls.tables for t in table.model_types)
            styles = {table.norms.style for table in cls.tables}
            if len(styles) == 1:
                cls.layer_norm_style = styles.pop()

    @classmethod
    def layers_in_config(cls, config):
        for table in cls.tables:
            if config.model_type in table.model_types:
                return getattr(config, table.n_layers)
        return None

    @classmethod
    def matches(cls, model: torch.nn.Module) -> bool:
        return getattr(getattr(model, "config", None), "model_type", "") in cls.model_types

    def __init__(self, model: torch.nn.Module, pooling: str | None = None):
        super().__init__(model, pooling)
        layout = self.tables[0]  # the tables of one adapter share wrappers and block list
        self.prefix = ""
        for wrapper in layout.wrappers:
            if hasattr(getattr(model, wrapper, None), layout.blocks.split(".")[0]):
                self.prefix = wrapper + "."
                break
        self.body = model.get_submodule(self.prefix[:-1]) if self.prefix else model
        self.config = self.body.config
        self.table = self._table_for(self.config)
        self.mlp_out_pattern = self.prefix + self.table.mlp_out.replace("{layer}", "*")
        self.attention_pattern = self.prefix + self.table.attention.replace("{layer}", "*")

    def _table_for(self, config) -> FamilyTable:
        if len(self.tables) == 1:
            return self.tables[0]
        for table in self.tables:
            if config.model_type in table.model_types:
                return table
        raise TypeError(f"{type(self).__name__} has no layout for model_type={config.model_type!r}; "
                        f"known: {self.model_types}")

    # ---- paths ----------------------------------------------------------------------------
    def path(self, template: str, layer: int | None = None) -> str:
        """The module name (relative to ``self.model``) of a table path ``template`` at ``layer``."""
        return self.prefix + (template if layer is None else template.format(layer=layer))

    def module(self, template: str, layer: int | None = None) -> torch.nn.Module:
        return self.model.get_submodule(self.path(template, layer))

    # ---- sizes ----------------------------------------------------------------------------
    def _config(self, key: str | None):
        return None if key is None else getattr(self.config, key, None)

    n_layers = property(lambda self: getattr(self.config, self.table.n_layers))
    n_heads = property(lambda self: getattr(self.config, self.table.heads.n_heads))
    d_model = property(lambda self: getattr(self.config, self.table.d_model))

    @property
    def n_kv_heads(self) -> int:
        return self._config(self.table.heads.n_kv_heads) or self.n_heads

    @property
    def d_head(self) -> int:
        return self._config(self.table.heads.head_dim) or self.d_model // self.n_heads

    @property
    def d_mlp(self) -> int:
        d_mlp = getattr(self.config, self.table.d_mlp)
        if d_mlp is None and self.table.d_mlp_multiple is not None:
            return self.table.d_mlp_multiple * self.d_model
        return d_mlp

    # ---- weights --------------------------------------------------------------------------
    def _weight(self, module: torch.nn.Module) -> torch.Tensor:
        """``weight`` as ``[out, in]``, whatever the table's orientation."""
        return module.weight.T if self.table.heads.orientation == "conv1d" else module.weight

    def _bias(self, module: torch.nn.Module) -> torch.Tensor:
        if module.bias is not None:
            return module.bias
        weight = self._weight(module)  # zeros where the weight is (a split model's block device)
        return torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)

    def mlp_out_weights(self, layer: int):
        """``(W_out [d_model, neurons], b_out [d_model])``: the output projection (zeros for no bias)."""
        out = self.module(self.table.mlp_out, layer)
        return self._weight(out), self._bias(out)

    def projections(self, block: int) -> tuple[torch.Tensor, ...]:
        """``(W_q [H, dh, D], b_q [H, dh], W_k, b_k, W_v, b_v)`` with keys and values per key/value
        head (``[H_kv, dh, D]``, ``[H_kv, dh]``), as the model stores them."""
        heads = self.table.heads
        H, Hkv, dh, D = self.n_heads, self.n_kv_heads, self.d_head, self.d_model
        if heads.qkv is not None:  # fused: outputs [q | k | v]
            fused = self.module(heads.qkv, block)
            sizes = [H * dh, Hkv * dh, Hkv * dh]
            (W_q, W_k, W_v), (b_q, b_k, b_v) = self._weight(fused).split(sizes), self._bias(fused).split(sizes)
        else:
            q, k, v = (self.module(t, block) for t in (heads.q, heads.k, heads.v))
            (W_q, W_k, W_v), (b_q, b_k, b_v) = (self._weight(m) for m in (q, k, v)), (self._bias(m) for m in (q, k, v))
        return (W_q.reshape(H, dh, D), b_q.reshape(H, dh), W_k.reshape(Hkv, dh, D), b_k.reshape(Hkv, dh),
                W_v.reshape(Hkv, dh, D), b_v.reshape(Hkv, dh))

    def score_scale(self, block: int) -> float:
        """The attention module's score scale (the table's ``heads.scale`` attribute), or ``dh ** -0.5``."""
        if self.table.heads.scale is None:
            return self.d_head ** -0.5
        return float(getattr(self.module(self.table.attention, block), self.table.heads.scale))

    def attention_weights(self, block: int) -> AttentionWeights:
        """Per *query* head: with grouped-query attention ``W_k[h] = W_k_kv[g(h)]``,
        ``W_v[h] = W_v_kv[g(h)]``, ``g(h) = h // (H / H_kv)``, so that ``W_O[h] A_h W_V[h]`` is the
        model's head ``h``."""
        W_q, b_q, W_k, b_k, W_v, b_v = self.projections(block)
        group = self.n_heads // self.n_kv_heads
        if group > 1:
            W_k, b_k, W_v, b_v = (t.repeat_interleave(group, dim=0) for t in (W_k, b_k, W_v, b_v))
        o = self.module(self.table.heads.o, block)
        D, H, dh = self.d_model, self.n_heads, self.d_head
        if self.table.heads.orientation == "conv1d":
            W_o = o.weight.view(H, dh, D).permute(0, 2, 1)  # [H, D, dh]
        else:
            W_o = o.weight.view(D, H, dh).permute(1, 0, 2)
        return AttentionWeights(W_q, b_q, W_k, b_k, W_v, b_v, W_o, self._bias(o), self.score_scale(block))

    def layer_norm(self, name: str) -> LayerNormParams:
        """The norm module ``name`` as the table's ``norms.kind`` reads it: a LayerNorm as is; an RMSNorm
        with ``bias`` zeros and no centring, ``eps`` from ``variance_epsilon`` or ``eps``; Gemma's
        RMSNorm scales by ``1 + weight`` (its weight is stored as the offset from 1)."""
        norm = self.model.get_submodule(name)
        kind = self.table.norms.kind
        if kind == "layer_norm":
            return LayerNormParams(norm.weight, norm.bias, norm.eps)
        eps = getattr(norm, "variance_epsilon", None)
        eps = norm.eps if eps is None else eps
        weight = 1.0 + norm.weight if kind == "rms_norm_offset" else norm.weight
        return LayerNormParams(weight, torch.zeros_like(norm.weight), float(eps), centred=False)

    # ---- norm lists (the layouts of :mod:`.families`) ----------------------------------------
    def _norm(self, role: str, layer: int | None = None) -> str:
        return self.path(getattr(self.table.norms, role), layer)

    def _stream_norms(self, k: int) -> list[str]:
        """Post-residual: block ``k``'s two norms on the stream, in order."""
        return [self._norm("attention_out", k), self._norm("mlp_out", k)]

    def layer_norms_before_head(self, mlp_layer: int, block: int) -> list[str]:
        style = self.table.norms.style
        names = []
        if style != "pre":  # a norm on the MLP's output, or on the stream right after it
            names.append(self._norm("mlp_out", mlp_layer))
        if style == "post_residual":
            for k in range(mlp_layer + 1, block):
                names += self._stream_norms(k)
        if style in ("pre", "pre_and_post_sublayer"):
            names.append(self._norm("attention_in", block))
        return names

    def layer_norms_after_head(self, block: int) -> list[str]:
        style = self.table.norms.style
        if style == "post_residual":
            return [n for k in range(block, self.n_layers) for n in self._stream_norms(k)]
        if style == "pre":
            return [self._norm("final")]
        return [self._norm("attention_out", block), self._norm("final")]

    def layer_norms_after_mlp(self, mlp_layer: int) -> list[str]:
        style = self.table.norms.style
        if style == "post_residual":  # the MLP's own norm, then both stream norms of every later block
            return self.layer_norms_before_head(mlp_layer, mlp_layer + 1) + self.layer_norms_after_head(mlp_layer + 1)
        if style == "pre":
            return super().layer_norms_after_mlp(mlp_layer)
        return [self._norm("mlp_out", mlp_layer), self._norm("final")]
