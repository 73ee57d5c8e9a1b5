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

from .paths import PACKAGE_DATA, PACKAGE_DIR, PATH_KEYS, default_dagster_home, project_root  # noqa: F401

PROFILE_DIR = Path(__file__).resolve().parent
SECTIONS = ("model", "dataset", "analysis", "storage")


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
