"""The weights identity (``model.weights``) without re-reading the weights: Hugging Face cache blob
names, the persistent per-file cache, and re-hashing exactly when a file changes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oe_assets.models import identity as provenance
from oe_assets.models.identity import file_sha256, weights_cache_dir, weights_hash

ROOT = Path(__file__).resolve().parents[1]
OLD = time.time() - 3600  # an mtime outside the racy window: the hash may be kept


def _safetensors(path: Path, payload: bytes, name: str = "w") -> bytes:
    """A valid safetensors file: one uint8 tensor holding ``payload``."""
    header = json.dumps({name: {"dtype": "U8", "shape": [len(payload)], "data_offsets": [0, len(payload)]}}).encode()
    data = len(header).to_bytes(8, "little") + header + payload
    path.write_bytes(data)
    os.utime(path, (OLD, OLD))
    return data


def _plain_model(folder: Path) -> dict[str, bytes]:
    folder.mkdir(parents=True)
    files = {"config.json": b'{"model_type": "bert"}', "tokenizer.json": b'{"version": "1.0"}'}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        os.utime(folder / name, (OLD, OLD))
    files["model.safetensors"] = _safetensors(folder / "model.safetensors", bytes(range(256)) * 64)
    return files


def _hub_cache(cache: Path, repo: str, files: dict[str, bytes], revision: str = "0" * 40) -> Path:
    """The Hugging Face cache layout: ``models--org--name/snapshots/<rev>/<file> -> ../../blobs/<sha256>``
    (every file named by its SHA-256, as the hub names LFS files), ``refs/main`` holding the revision."""
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    (repo_dir / "blobs").mkdir(parents=True)
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(revision)
    for name, data in files.items():
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    return snapshot


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("OE_ASSETS_CACHE", str(tmp_path / "oe_cache"))
    monkeypatch.setattr(provenance, "_WEIGHTS", {})
    return tmp_path / "oe_cache" / "weights"


def _no_hashing(monkeypatch):
    """Make reading a file's bytes for its hash an error."""
    def refuse(*args, **kwargs):
        raise AssertionError("hashed file bytes")

    monkeypatch.setattr(provenance.hashlib, "sha256", refuse)


def test_hub_cache_blob_names_are_the_identity(tmp_path, monkeypatch, cache_dir):
    files = _plain_model(tmp_path / "plain")
    plain = weights_hash(str(tmp_path / "plain"))
    files = {name: (tmp_path / "plain" / name).read_bytes() for name in files}
    snapshot = _hub_cache(tmp_path / "hub", "org/tiny", files)
    monkeypatch.setattr(provenance, "_WEIGHTS", {})
    _no_hashing(monkeypatch)  # the blob names carry every SHA-256
    # the snapshot folder, and the hub id resolved in the (offline) cache: the same identity as the plain copy
    assert weights_hash(str(snapshot)) == plain
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert weights_hash("org/tiny") == plain


def test_hub_cache_follows_the_blob_a_snapshot_links(tmp_path, monkeypatch, cache_dir):
    files = {"config.json": b"{}", "model.safetensors": b"weights one"}
    snapshot = _hub_cache(tmp_path / "hub", "org/tiny", files)
    first = weights_hash(str(snapshot))
    # a new revision of one file: the link points at another blob
    blob = snapshot.parents[1] / "blobs" / hashlib.sha256(b"weights two").hexdigest()
    blob.write_bytes(b"weights two")
    (snapshot / "model.safetensors").unlink()
    (snapshot / "model.safetensors").symlink_to(Path("..") / ".." / "blobs" / blob.name)
    assert weights_hash(str(snapshot)) != first


def test_file_hash_persists_across_processes(tmp_path, cache_dir):
    _plain_model(tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    script = ("import hashlib, json, sys\n"
              "from oe_assets.models import identity as provenance\n"
              "real = hashlib.sha256\n"
              "calls = []\n"
              "provenance.hashlib.sha256 = lambda *a: calls.append(1) or real(*a)\n"
              f"h = provenance.weights_hash({str(tmp_path / 'model')!r})\n"
              "print(json.dumps({'hash': h, 'hashed_files': len(calls)}))\n")
    env = {**os.environ, "OE_ASSETS_CACHE": str(cache_dir.parent), "PYTHONPATH": str(ROOT)}

    def run():
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    first, second = run(), run()
    assert first["hashed_files"] == 3 and second["hashed_files"] == 0  # the second process reads the records
    assert first["hash"] == second["hash"] is not None
    records = [json.loads(p.read_text()) for p in cache_dir.glob("*.json")]
    assert {r["path"] for r in records} == {str((tmp_path / "model" / n).resolve())
                                            for n in ("config.json", "tokenizer.json", "model.safetensors")}
    record = next(r for r in records if r["path"].endswith(".safetensors"))
    assert record["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest() and record["header"]


def test_a_rewritten_file_is_hashed_again(tmp_path, monkeypatch, cache_dir):
    _plain_model(tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    first = weights_hash(str(tmp_path / "model"))
    # the same size and header, other bytes, even with the old mtime restored: ctime changed
    _safetensors(weights, bytes(reversed(range(256))) * 64)
    monkeypatch.setattr(provenance, "_WEIGHTS", {})
    second = weights_hash(str(tmp_path / "model"))
    assert second != first
    assert file_sha256(weights) == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_a_stale_record_is_not_used(tmp_path, monkeypatch, cache_dir):
    """A record whose key no longer matches the file (here: its header digest) is ignored."""
    _plain_model(tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    file_sha256(weights)
    record = next(p for p in cache_dir.glob("*.json") if json.loads(p.read_text())["path"].endswith(".safetensors"))
    fields = json.loads(record.read_text())
    record.write_text(json.dumps({**fields, "sha256": "f" * 64, "header": "other"}))
    monkeypatch.setattr(provenance, "_WEIGHTS", {})
    assert file_sha256(weights) == hashlib.sha256(weights.read_bytes()).hexdigest()
    record.write_text(json.dumps({**fields, "sha256": "f" * 64}))  # a matching key is trusted
    monkeypatch.setattr(provenance, "_WEIGHTS", {})
    assert file_sha256(weights) == "f" * 64


def test_a_freshly_written_file_is_not_recorded(tmp_path, cache_dir):
    """A file modified within the file system's timestamp resolution could change again unnoticed."""
    folder = tmp_path / "model"
    _plain_model(folder)
    (folder / "model.safetensors").write_bytes(b"fresh")
    weights_hash(str(folder))
    paths = {json.loads(p.read_text())["path"] for p in cache_dir.glob("*.json")}
    assert str((folder / "model.safetensors").resolve()) not in paths and len(paths) == 2
    assert weights_cache_dir() == cache_dir
