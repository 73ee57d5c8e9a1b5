"""Profiles: YAML files naming the model, dataset, analysis settings and storage of one setting.

``load_profile("demo")`` reads ``oe_assets/profiles/demo.yaml``; a path to any YAML file works too.
Relative paths inside resolve against the project root; ``${VAR}`` expands environment variables.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROFILE_DIR = Path(__file__).resolve().parent
PATH_KEYS = {"train_path", "val_path", "classes_path", "templates_path", "classifier_path", "text_embeddings_path",
             "vocabulary_path", "base_dir", "source"}
SECTIONS = ("model", "dataset", "analysis", "storage")


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def _resolve(key: str, value: Any) -> Any:
    if not isinstance(value, str) or key not in PATH_KEYS or value == "imagenet":
        return value
    value = os.path.expandvars(value)
    path, sep, suffix = value.partition(".npz:")  # "file.npz:key"
    target = path + (".npz" if sep else "")
    candidate = Path(target)
    if not candidate.is_absolute():
        candidate = PROJECT_ROOT / candidate
        if key == "source" and not candidate.exists():
            return value  # a hub id
    return str(candidate) + (":" + suffix if sep else "")


def load_profile(name_or_path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"profile {name_or_path!r} not found (known profiles: {available_profiles()})")
    raw = yaml.safe_load(path.read_text()) or {}
    unknown = set(raw) - set(SECTIONS)
    if unknown:
        raise ValueError(f"profile {path} has unknown sections {sorted(unknown)}; expected {SECTIONS}")
    for section in ("model", "dataset"):
        if section not in raw:
            raise ValueError(f"profile {path} has no {section!r} section")
    return {s: {k: _resolve(k, v) for k, v in (raw.get(s) or {}).items()} for s in SECTIONS}
