"""Profiles: YAML files naming the model, dataset, analysis settings and storage of one setting.

``load_profile("demo")`` reads ``oe_assets/profiles/demo.yaml``; a path to any YAML file works too.
``${VAR}`` expands environment variables.  Path values resolve in this order:

1. ``package:<path>``: a file shipped inside the package (``oe_assets/package_data/<path>``: the demo
   corpus, its classes and templates, the vocabularies), found in editable and non-editable installs;
2. an absolute path: as is;
3. a relative path: against :func:`project_root` -- ``$OE_ASSETS_ROOT`` when set, else the source
   checkout when the package runs from one (``pip install -e .``), else the current working directory.

``~`` expands to the home folder.  A ``source`` that does not exist there stays as is when it is
shaped like a Hugging Face hub id (``org/name``, :func:`oe_assets.models.hub.looks_like_hub_id`);
any other is a path, and validation reports it missing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

PACKAGE_DIR = Path(__file__).resolve().parents[1]
#: files shipped with the package (``package:`` paths in a profile)
PACKAGE_DATA = PACKAGE_DIR / "package_data"
PROFILE_DIR = Path(__file__).resolve().parent
PATH_KEYS = {"train_path", "val_path", "val_r_path", "classes_path", "templates_path", "classifier_path", "text_embeddings_path",
             "vocabulary_path", "base_dir", "source"}
SECTIONS = ("model", "dataset", "analysis", "storage")


def project_root() -> Path:
    """Where relative profile paths (``data/materialized/...``, ``data/dagster_home``) live:
    ``$OE_ASSETS_ROOT``, else the source checkout holding the package (an editable install), else the
    current working directory (an installed wheel)."""
    if os.environ.get("OE_ASSETS_ROOT"):
        return Path(os.environ["OE_ASSETS_ROOT"]).expanduser().resolve()
    checkout = PACKAGE_DIR.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "oe_assets").resolve() == PACKAGE_DIR:
        return checkout
    return Path.cwd()


def default_dagster_home() -> Path:
    """``$DAGSTER_HOME`` when set, else ``<project root>/data/dagster_home``."""
    return Path(os.environ.get("DAGSTER_HOME") or project_root() / "data" / "dagster_home")


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def _resolve(key: str, value: Any) -> Any:
    if not isinstance(value, str) or key not in PATH_KEYS or value == "imagenet" or value.startswith("hf:"):
        return value  # "hf:<name>": a dataset in the local datasets cache, not a path
    value = os.path.expanduser(os.path.expandvars(value))
    path, sep, suffix = value.partition(".npz:")  # "file.npz:key"
    target = path + (".npz" if sep else "")
    if target.startswith("package:"):
        candidate = PACKAGE_DATA / target.removeprefix("package:")
        if not candidate.exists():
            raise FileNotFoundError(f"{key}: {value!r} is not shipped with the package (looked in {PACKAGE_DATA})")
        return str(candidate) + (":" + suffix if sep else "")
    candidate = Path(target)
    if not candidate.is_absolute():
        candidate = project_root() / candidate
        if key == "source" and not candidate.exists():
            from ..models.hub import looks_like_hub_id  # (imports torch: only when a source needs it)

            if looks_like_hub_id(value):
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
    from .validation import ProfileError, check_keys

    problems = check_keys(raw)
    if problems:
        raise ProfileError(problems, f"profile {path}")
    return {s: {k: _resolve(k, v) for k, v in (raw.get(s) or {}).items()} for s in SECTIONS}
