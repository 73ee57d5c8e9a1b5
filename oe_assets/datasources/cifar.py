"""CIFAR-10 and CIFAR-100 from their standard python-pickle archives (already extracted, no download).

- CIFAR-10: ``cifar-10-batches-py/`` with ``data_batch_1`` .. ``data_batch_5`` (train), ``test_batch``
  (test), labels under ``labels``, class names in ``batches.meta`` ``label_names``;
- CIFAR-100: ``cifar-100-python/`` with ``train`` and ``test``, labels under ``fine_labels``, class
  names in ``meta`` ``fine_label_names``.

Every file is a pickled dict read with ``pickle.load(f, encoding="bytes")`` (keys and names are
bytes then; str keys are accepted too).  Images are ``data`` rows ``[N, 3072]`` uint8: the 1024 red,
then green, then blue values of a 32x32 image, row-major (CHW).
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

import numpy as np

__all__ = ["CIFAR_KINDS", "load_cifar", "cifar_classes", "cifar_image"]

#: kind -> (train files, test files, label key, meta file, class-name key)
CIFAR_KINDS = {
    "cifar10": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", "batches.meta", "label_names"),
    "cifar100": (["train"], ["test"], "fine_labels", "meta", "fine_label_names"),
}


def _kind(kind: str):
    if kind not in CIFAR_KINDS:
        raise ValueError(f"CIFAR kind {kind!r}; choose one of {sorted(CIFAR_KINDS)}")
    return CIFAR_KINDS[kind]


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR archive file {path} does not exist (expected the extracted python version)")
    with open(path, "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    if not isinstance(raw, dict):
        raise ValueError(f"{path} does not hold a pickled dict (got {type(raw).__name__})")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _get(d: dict, key: str, path: Path):
    if key not in d:
        raise ValueError(f"{path} has no {key!r} entry; it holds {sorted(d)}")
    return d[key]


@functools.lru_cache(maxsize=4)
def _load(folder: str, kind: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    train, test, label_key, _, _ = _kind(kind)
    images, labels = [], []
    for name in (train if split == "train" else test):
        path = Path(folder) / name
        d = _unpickle(path)
        data = np.asarray(_get(d, "data", path), dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(f"{path}: data has shape {data.shape}, expected [N, 3072] (3x32x32 uint8 rows)")
        y = np.asarray(_get(d, label_key, path), dtype=np.int64)
        if y.shape != (data.shape[0],):
            raise ValueError(f"{path}: {len(y)} labels for {data.shape[0]} images")
        images.append(data)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


def load_cifar(folder: str | Path, kind: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images [N, 3072] uint8, labels [N] int64)`` of the ``train`` or ``test`` split (``val``
    means ``test``), in file order (read once per process)."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"CIFAR folder {folder} does not exist")
    images, labels = _load(str(folder), kind, "train" if split == "train" else "test")
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def cifar_classes(folder: str | Path, kind: str) -> list[str]:
    """The class names from the archive's meta file."""
    _, _, _, meta, key = _kind(kind)
    path = Path(folder) / meta
    names = _get(_unpickle(path), key, path)
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def cifar_image(row: np.ndarray):
    """One ``[3072]`` uint8 row as an RGB PIL image (32x32)."""
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(np.asarray(row, dtype=np.uint8).reshape(3, 32, 32).transpose(1, 2, 0)),
                           "RGB")
