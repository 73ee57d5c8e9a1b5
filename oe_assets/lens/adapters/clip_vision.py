"""CLIP vision towers: ``CLIPVisionModelWithProjection``, ``CLIPModel`` (through ``vision_model``
and ``visual_projection``) and ``CLIPVisionModel`` (no projection).

Pre-LayerNorm: block ``j`` reads ``layer_norm1(stream)``; the representation is
``visual_projection(post_layernorm(stream[:, 0]))``: the CLS token only.  Paths, sizes and norms:
:data:`~.families.CLIP_VISION`.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from .families import CLIP_VISION
from .generic import TableAdapter


class CLIPVisionAdapter(TableAdapter):
    family = "clip_vision"
    tables = (CLIP_VISION,)
    conventions = ("reference", "direct")
    default_convention = "reference"

    @classmethod
    def model_class(cls, model_type: str, architectures=None):
        import transformers

        if model_type == "clip_vision_model" and "CLIPVisionModel" in (architectures or []):
            return transformers.CLIPVisionModel  # no projection: never a randomly initialised one
        return {"clip": transformers.CLIPModel,
                "clip_vision_model": transformers.CLIPVisionModelWithProjection}.get(model_type)

    @classmethod
    def layers_in_config(cls, config):
        if config.model_type == "clip":
            return config.vision_config.num_hidden_layers
        return config.num_hidden_layers if config.model_type in cls.model_types else None

    @classmethod
    def matches(cls, model: torch.nn.Module) -> bool:
        vision = getattr(model, "vision_model", None)
        return vision is not None and getattr(vision.config, "model_type", "") == "clip_vision_model"

    def __init__(self, model: torch.nn.Module, pooling: str | None = None):
        if pooling not in (None, "cls"):
            raise ValueError(f"pooling={pooling!r}: a CLIP vision tower reads the CLS token only ('cls')")
        super().__init__(model, "cls")
        self.vision = self.body

    def projection(self):
        proj = getattr(self.model, "visual_projection", None)
        return None if proj is None else proj.weight.T

    def prepare_inputs(self, inputs: Any) -> dict[str, torch.Tensor]:
        pixel_values = inputs.get("pixel_values") if isinstance(inputs, Mapping) else inputs
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(
                f"pixel_values must be a torch.Tensor [batch, {self.config.num_channels}, "
                f"{self.config.image_size}, {self.config.image_size}], got {type(pixel_values).__name__}"
            )
        expected = (self.config.num_channels, self.config.image_size, self.config.image_size)
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values has shape {tuple(pixel_values.shape)}; this CLIP vision tower expects "
                f"[batch, {expected[0]}, {expected[1]}, {expected[2]}]"
            )
        return {"pixel_values": pixel_values.to(device=self.device, dtype=self.dtype)}

    def text_encoder(self, tokenizer, max_length: int | None = None):
        from ..zero_shot import clip_text_encoder

        if not hasattr(self.model, "text_model"):
            return super().text_encoder(tokenizer, max_length)
        return clip_text_encoder(self.model, tokenizer, max_length)

    def n_tokens(self, inputs: Mapping[str, torch.Tensor]) -> int:
        return self.fixed_tokens

    @property
    def fixed_tokens(self) -> int:
        return (self.config.image_size // self.config.patch_size) ** 2 + 1

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        pooled = self.vision(pixel_values=inputs["pixel_values"]).pooler_output
        P = self.projection()
        return pooled if P is None else pooled @ P

    def readout(self, inputs: Mapping[str, torch.Tensor]):
        b = inputs["pixel_values"].shape[0]
        device = self.device
        return torch.zeros(1, dtype=torch.long, device=device), torch.ones(b, 1, dtype=self.dtype, device=device)
