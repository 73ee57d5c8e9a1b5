"""Where a profile's relative paths resolve: the project root, the package's shipped files, the
default Dagster instance, and which profile keys are paths."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PACKAGE_DIR", "PACKAGE_DATA", "PATH_KEYS", "project_root", "default_dagster_home"]

PACKAGE_DIR = Path(__file__).resolve().parents[1]
#: files shipped with the package (``package:`` paths in a profile)
PACKAGE_DATA = PACKAGE_DIR / "package_data"
PATH_KEYS = {"train_path", "val_path", "val_r_path", "classes_path", "templates_path", "classifier_path", "text_embeddings_path",
             "vocabulary_path", "base_dir", "source"}


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
