"""The identity of a model's files: a hash of its weight, config and tokenizer files, without
re-reading the weights when the Hugging Face cache or an earlier process already knows their SHA-256.

Provenance records it as the ``model.weights`` setting (:mod:`oe_assets.settings`), so weights changed
in place rerun every asset that runs the model.  No Dagster import.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable

__all__ = ["MODEL_FILE_SUFFIXES", "MODEL_FILE_NAMES", "weights_hash", "file_sha256", "weights_cache_dir"]


def _hash(parts: Iterable[bytes], size: int = 16) -> str:
    h = hashlib.blake2b(digest_size=size)
    for p in parts:
        h.update(p)
    return h.hexdigest()

#: model files whose bytes make the weights hash: weights, configs, tokenizer files
#: the files a model's outputs come from: weights (any format), configs and tokenizers; other files in
#: the folder (notes, files a later step downloads, e.g. a processor config) do not change the hash
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".gguf", ".model")
MODEL_FILE_NAMES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
                    "special_tokens_map.json", "added_tokens.json")


_WEIGHTS: dict[tuple, str] = {}
#: a file of the Hugging Face cache is a link to ``blobs/<name>``: SHA-256 of the file for LFS files
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
#: files modified this recently may change again within the file system's timestamp resolution
#: unnoticed: their hash is not kept (as git treats "racily clean" index entries)
RACY_NS = 2_000_000_000


def weights_cache_dir() -> Path:
    """Where the content hashes of model files persist across processes: ``$OE_ASSETS_CACHE``
    (else ``$XDG_CACHE_HOME/oe_assets``, else ``~/.cache/oe_assets``), sub-folder ``weights``."""
    root = os.environ.get("OE_ASSETS_CACHE") or \
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "oe_assets"
    return Path(root) / "weights"


def weights_hash(source: str, revision: str | None = None) -> str | None:
    """The identity of a model's weight, config and tokenizer files (:data:`MODEL_FILE_SUFFIXES`,
    :data:`MODEL_FILE_NAMES`): a hash of each file's relative path, size and SHA-256; ``source`` a
    local folder or a hub id (its local snapshot folder at ``revision``, never the network).  None
    when no local folder is found.

    A file's SHA-256 is read, in this order, from (see :func:`file_sha256`): the name of the blob a
    Hugging Face cache link points to (the hub names LFS files by their SHA-256), this process's
    memory, or the persistent cache (:func:`weights_cache_dir`), whose entries are keyed by the
    file's path, size, mtime, ctime, inode and (safetensors) header; only when none holds it are the
    bytes hashed, once per file version.  The same files in the cache and in a plain folder have the
    same identity."""
    folder = _model_folder(source, revision)
    if folder is None:
        return None
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and (p.suffix in MODEL_FILE_SUFFIXES or p.name in MODEL_FILE_NAMES))
    h = hashlib.blake2b(digest_size=16)
    for p in files:
        h.update(f"{p.relative_to(folder).as_posix()}\0{p.stat().st_size}\0{file_sha256(p)}\0".encode())
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, hashed only when no record of it exists (see
    :func:`weights_hash`)."""
    real = Path(os.path.realpath(path))
    if real != Path(os.path.abspath(path)) and real.parent.name == "blobs" and _SHA256_HEX.fullmatch(real.name):
        return real.name
    st = real.stat()
    header = _safetensors_header_digest(real) if real.suffix == ".safetensors" else ""
    key = (str(real), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, header)
    if key in _WEIGHTS:
        return _WEIGHTS[key]
    record = weights_cache_dir() / f"{_hash([str(real).encode()])}.json"
    fields = dict(zip(("path", "size", "mtime_ns", "ctime_ns", "inode", "device", "header"), key))
    try:
        stored = json.loads(record.read_text())
        if {k: stored.get(k) for k in fields} == fields and _SHA256_HEX.fullmatch(str(stored.get("sha256"))):
            _WEIGHTS[key] = stored["sha256"]
            return stored["sha256"]
    except (OSError, ValueError):
        pass  # no record, or an unreadable one: hash the bytes
    digest = hashlib.sha256()
    with open(real, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    sha = digest.hexdigest()
    if time.time_ns() - st.st_mtime_ns > RACY_NS and real.stat().st_mtime_ns == st.st_mtime_ns:
        _WEIGHTS[key] = sha
        _save_record(record, {**fields, "sha256": sha})
    return sha



def _safetensors_header_digest(path: Path) -> str:
    """A hash of a safetensors file's JSON header (every tensor's name, dtype, shape and offsets):
    no content hash, but a cheap check that a cached record still describes the file; "" when the
    file has no readable header."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= 100 << 20:
                return ""
            return _hash([f.read(n)])
    except OSError:
        return ""


def _save_record(record: Path, fields: dict[str, Any]) -> None:
    """Keep a file's hash for later processes; a cache that cannot be written is skipped."""
    from ..storage.layout import atomic_path

    try:
        with atomic_path(record) as tmp:
            tmp.write_text(json.dumps(fields))
    except OSError:
        pass


def _model_folder(source: str, revision: str | None = None) -> Path | None:
    from .hub import resolve_source

    resolved = resolve_source(source)
    if Path(resolved).is_dir():
        return Path(resolved)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(resolved, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the local cache: the weights are unknown, not compared
        return None


