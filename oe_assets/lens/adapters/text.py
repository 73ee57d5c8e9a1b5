"""Shared input handling of the language-model families: token ids, padding masks, pooling."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from ..placement import materialized, owner
from ..tokenization import tokenize
from .base import ModelAdapter

__all__ = ["CausalLMAdapter", "TextAdapter", "tokenize"]


class TextAdapter(ModelAdapter):
    """A language model called on a tokenizer's output (``input_ids``, ``attention_mask``)."""

    #: keyword inputs passed on to the model besides ``input_ids`` / ``attention_mask``
    extra_inputs: tuple[str, ...] = ()

    def prepare_inputs(self, inputs: Any) -> dict[str, torch.Tensor]:
        if not isinstance(inputs, Mapping) or "input_ids" not in inputs:
            raise TypeError(
                f"{self.family} inputs must be a mapping with 'input_ids' (and 'attention_mask'), such as a "
                f"tokenizer's output; got {type(inputs).__name__}"
            )
        ids = torch.as_tensor(inputs["input_ids"])
        if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be an integer tensor [batch, tokens], got {ids.dtype} {tuple(ids.shape)}")
        mask = inputs.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else torch.as_tensor(mask)
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask has shape {tuple(mask.shape)} but input_ids has {tuple(ids.shape)}")
        if (mask.sum(1) == 0).any():
            raise ValueError("attention_mask has a sample with no tokens (all padding)")
        out = {"input_ids": ids.long().to(self.device), "attention_mask": mask.long().to(self.device)}
        for key in self.extra_inputs:
            if inputs.get(key) is not None:
                out[key] = torch.as_tensor(inputs[key]).to(self.device)
        return out

    def text_encoder(self, tokenizer, max_length: int | None = 128):
        """Texts -> the model's own representation ``r`` (pooled, before any normalisation)."""

        @torch.no_grad()
        def encode(texts):
            batch = tokenize(tokenizer, texts, max_length)
            return self.forward(self.prepare_inputs(batch))

        return encode

    def n_tokens(self, inputs: Mapping[str, torch.Tensor]) -> int:
        return inputs["input_ids"].shape[1]

    def _padding_bias(self, inputs: Mapping[str, torch.Tensor], causal: bool) -> torch.Tensor:
        mask = inputs["attention_mask"].bool()  # [B, T]
        B, T = mask.shape
        allowed = mask[:, None, :].expand(B, T, T)
        if causal:
            allowed = allowed & torch.ones(T, T, dtype=torch.bool, device=mask.device).tril()
        # a padding query may have no allowed key (left padding); it never reaches the readout,
        # so give it a harmless uniform row instead of NaNs
        allowed = allowed | ~allowed.any(-1, keepdim=True)
        bias = torch.zeros(B, T, T, dtype=self.dtype, device=mask.device)
        return bias.masked_fill(~allowed, float("-inf"))

    def _all_queries(self, inputs):
        return torch.arange(self.n_tokens(inputs), device=self.device)


class CausalLMAdapter(TextAdapter):
    """A causal LM read at its last non-padding token: ``r`` is the final (normed) stream there, and
    the classifier and vocabulary are rows of the unembedding ``W_U [vocab, d_model]``
    (:meth:`unembedding`), so ``r @ classifier`` are next-token logits (``d_out = d_model``)."""

    unit_classifier = False

    def unembedding(self) -> torch.Tensor:
        """``W_U [vocab, d_model]``."""
        raise NotImplementedError

    def positions(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[batch, tokens]`` position ids that count real tokens only, so left padding does not
        shift them (right and left padding then give the same effects)."""
        return (inputs["attention_mask"].cumsum(1) - 1).clamp(min=0)

    def attention_bias(self, inputs):
        return self._padding_bias(inputs, causal=True)

    def last_positions(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        mask = inputs["attention_mask"]
        positions = torch.arange(mask.shape[1], device=mask.device)
        return (mask * (positions + 1)).argmax(dim=1)  # last position holding a real token

    def readout(self, inputs: Mapping[str, torch.Tensor]):
        B, T = inputs["input_ids"].shape
        w = torch.zeros(B, T, dtype=self.dtype, device=self.device)
        w[torch.arange(B, device=self.device), self.last_positions(inputs)] = 1.0
        return self._all_queries(inputs), w

    def zero_shot_classifier(self, tokenizer, classnames, templates=None) -> torch.Tensor:
        """``[d_model, classes]``: column ``c`` is the unembedding row of the first token of the label
        continuation ``" " + classnames[c]``, so ``r @ classifier`` are the next-token logits of the
        labels after the input (phrase the inputs so a label is the natural continuation, e.g.
        ``"<text> Topic:"``).  ``templates`` are not used by causal LMs."""
        if not classnames:
            raise ValueError("classnames is empty")
        firsts = []
        for name in classnames:
            ids = tokenizer(" " + name.strip(), add_special_tokens=False)["input_ids"]
            if not ids:
                raise ValueError(f"class name {name!r} tokenizes to nothing")
            firsts.append(ids[0])
        if len(set(firsts)) < len(firsts):
            raise ValueError(f"class names {list(classnames)} share first tokens; causal-LM labels must differ "
                             "in their first token")
        with materialized(self.model, [owner(self.model, self.unembedding())]):  # offloaded by a device_map
            W_U = self.unembedding()
            return W_U[torch.tensor(firsts, device=W_U.device)].T.detach().clone()

    def unembedding_vocabulary(self, tokenizer, words):
        """``(kept_words, W_U rows [kept, d_model])`` for the words that are one token after a space."""
        kept, rows = [], []
        for word in words:
            ids = tokenizer(" " + word.strip(), add_special_tokens=False)["input_ids"]
            if len(ids) == 1:
                kept.append(word.strip())
                rows.append(ids[0])
        if not kept:
            raise ValueError("none of the words is a single token of this tokenizer")
        with materialized(self.model, [owner(self.model, self.unembedding())]):  # offloaded by a device_map
            W_U = self.unembedding()
            return kept, W_U[torch.tensor(rows, device=W_U.device)].detach().clone()
