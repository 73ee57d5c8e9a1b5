"""The weights identity (``model.weights``, :func:`oe_assets.models.identity.weights_hash`) of a large model
folder, each call in a new process (what every materialization run pays):

- plain folder, first call: every file's bytes hashed (SHA-256) and recorded in the persistent cache;
- plain folder, later calls: the identity from the cache records (stat + safetensors header only);
- the same files in the Hugging Face cache layout (``snapshots/<rev>/<file> -> ../../blobs/<sha256>``)
  with an empty persistent cache: the identity from the blob names, equal to the plain folder's.

The folder holds ``--shards`` safetensors files of ``--gb`` GB in all (sparse: a valid header, then a
hole; the disk holds almost nothing, but every byte is read and hashed on the first call).
Target (issue 19): under 1 s for a 16 GB model folder on the later calls.

    python benchmarks/bench_weights_identity.py [--gb 16] [--shards 4] [--dir /tmp] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
#: one call in a new process, timed after the imports a materialization process has made anyway (the lens
#: package: torch, transformers)
CALL = ("import json, sys, time\n"
        "import oe_assets.models.hub\n"
        "from oe_assets.models.identity import weights_hash\n"
        "t0 = time.perf_counter()\n"
        "h = weights_hash(sys.argv[1])\n"
        "print(json.dumps({'hash': h, 'seconds': time.perf_counter() - t0}))\n")


def sparse_safetensors(path: Path, size: int, index: int) -> None:
    """A safetensors file of ``size`` bytes: one uint8 tensor, its data a sparse hole."""
    n = size - 8 - 256
    header = json.dumps({f"layers.{index}.weight": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).encode()
    header += b" " * (256 - len(header))  # safetensors pads its header with spaces
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        f.truncate(size)
    old = time.time() - 3600  # written long ago: outside the racy window
    os.utime(path, (old, old))


def call(source: Path, cache: Path) -> dict:
    env = {**os.environ, "OE_ASSETS_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CALL, str(source)], env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {**result, "process_seconds": time.perf_counter() - t}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=16.0, help="total size of the weight files (GB)")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--later", type=int, default=3, help="later calls timed")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where the folders are made (removed after)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_weights_", dir=args.dir))
    try:
        plain, cache = work / "model", work / "oe_cache"
        plain.mkdir()
        (plain / "config.json").write_text(json.dumps({"model_type": "llama"}))
        size = int(args.gb * 1e9 / args.shards)
        for i in range(args.shards):
            sparse_safetensors(plain / f"model-{i:05d}-of-{args.shards:05d}.safetensors", size, i)
        total = sum(p.stat().st_size for p in plain.iterdir())
        rows = []
        first = call(plain, cache)
        rows.append(("plain folder, first call (hash every byte)", first["seconds"], first["process_seconds"]))
        later = [call(plain, cache) for _ in range(args.later)]
        assert all(r["hash"] == first["hash"] for r in later)
        for i, r in enumerate(later):
            rows.append((f"plain folder, later call {i + 1} (cache records)", r["seconds"], r["process_seconds"]))

        # the Hugging Face cache layout over the same bytes (hard links: no copy), blob names from the records
        sys.path.insert(0, str(ROOT))  # this checkout's package, as in the timed processes
        from oe_assets.models.identity import file_sha256

        os.environ["OE_ASSETS_CACHE"] = str(cache)
        repo = work / "hub" / "models--org--big"
        snapshot = repo / "snapshots" / ("a" * 40)
        (repo / "blobs").mkdir(parents=True)
        snapshot.mkdir(parents=True)
        for p in sorted(plain.iterdir()):
            blob = repo / "blobs" / file_sha256(p)
            os.link(p, blob)
            (snapshot / p.name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
        hub = [call(snapshot, work / "empty_cache") for _ in range(args.later)]
        assert all(r["hash"] == first["hash"] for r in hub), "the cache layout must give the plain folder's identity"
        for i, r in enumerate(hub):
            rows.append((f"Hugging Face cache layout, call {i + 1} (blob names, no records)", r["seconds"],
                         r["process_seconds"]))
        print(f"{args.shards} safetensors files, {total / 1e9:.1f} GB in all (sparse), each call in a new process")
        print(tabulate(rows, headers=["call", "weights_hash (s)", "whole process with imports (s)"], floatfmt=".3f"))
        figures = {"total_gb": total / 1e9, "first_s": first["seconds"], "first_gib_per_s": total / 2**30 / first["seconds"],
                   "later_s": max(r["seconds"] for r in later), "hub_cache_s": max(r["seconds"] for r in hub)}
        print(f"first call {figures['first_gib_per_s']:.2f} GiB/s; later calls <= {figures['later_s']:.3f} s; "
              f"cache layout <= {figures['hub_cache_s']:.3f} s")
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
