"""Datasets as model inputs: labelled text files, image folders in ImageNet layout, npz arrays.

Each split yields batches in the form the family's model takes (a tokenizer's output, or
``pixel_values``) and keeps labels and a short description of every sample for reports.
Subsampling is deterministic: every ``stride``-th sample from ``offset`` (the seed's subsampled
ImageNet uses stride 250 for train and 10 for val).
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import dagster as dg
import numpy as np
import torch

from ..datasources.cifar import CIFAR_KINDS, cifar_classes, cifar_image, load_cifar
from ..datasources.hf_datasets import hf_class_names, hf_text_split, open_rows, split_name
from ..datasources.text_datasets import load_string_list, load_text_dataset, subsample
from ..lens.tokenization import tokenize
from ..processes import die_with_parent

__all__ = ["Split", "TextSplit", "ImageFolderSplit", "ArraySplit", "CifarSplit", "DatasetResource",
           "image_folder_samples"]

#: ``DatasetResource.imagenet_r_classes``: the 200-way subset (standard protocol) or all 1000 classes
IMAGENET_R_CLASSES = ("subset", "all")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
KINDS = ("text", "hf", "image_folder", "npz", "cifar10", "cifar100")


def default_workers() -> int:
    """Input-pipeline workers when none are configured: one core is left to the main process."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


class _Items(torch.utils.data.Dataset):
    """Sample ``i`` of a split as ``load(i)`` (run in the DataLoader's workers)."""

    def __init__(self, n: int, load):
        self.n, self.load = n, load

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.load(i)


@dataclass
class _WatchParent:
    """A DataLoader ``worker_init_fn``: the worker ends when the process that started it dies.

    Torch's workers notice a dead parent only between samples, and then hang at exit joining a queue
    nobody reads (keeping staged files of a killed run open).  Two guards, each enough alone:
    ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (Linux) has the kernel kill the worker at once, even in C
    code; it fires when the *thread* that forked the worker ends, so it is set only when the
    DataLoader was made in the main thread.  A daemon thread polling the parent (``os.getppid()``) covers
    the rest (other platforms, other threads) within a second."""

    parent: int
    parent_is_main_thread: bool

    def __call__(self, worker_id: int) -> None:
        import signal
        import time

        forked = os.getppid() == self.parent  # else started by a fork server, or the parent already died
        if forked and self.parent_is_main_thread:
            die_with_parent(signal.SIGKILL)
        if not self._alive(forked):  # died before the guards were in place
            os._exit(1)

        def watch() -> None:
            while self._alive(forked):
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, name="watch-parent", daemon=True).start()

    def _alive(self, forked: bool) -> bool:
        if forked:
            return os.getppid() == self.parent
        try:
            os.kill(self.parent, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True


class Split:
    """One subsampled split: ``labels`` ``[n]``, ``describe(i)``, ``batches(loaded, batch_size)``.

    ``batches`` runs the split through a ``torch.utils.data.DataLoader``: ``num_workers`` worker
    processes decode and preprocess (images) or tokenize (text) the next batches while the model
    runs the current one; memory is pinned when the model is on CUDA."""

    labels: np.ndarray
    num_workers: int = 0

    def _loader(self, loaded, batch_size: int, load, collate, workers: int):
        return torch.utils.data.DataLoader(
            _Items(len(self), load), batch_size=batch_size, shuffle=False, num_workers=workers,
            collate_fn=collate, pin_memory=loaded.model is not None and next(loaded.model.parameters()).is_cuda,
            persistent_workers=False, prefetch_factor=4 if workers else None,
            worker_init_fn=_WatchParent(os.getpid(), threading.current_thread() is threading.main_thread())
            if workers else None)

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self, i: int) -> str:
        raise NotImplementedError

    def thumbnail(self, i: int, size: int = 96) -> bytes | None:
        """PNG bytes of sample ``i`` for reports (images), or None (text)."""
        return None

    def batches(self, loaded, batch_size: int, max_length: int = 128) -> Iterator[Any]:
        raise NotImplementedError


@dataclass
class TextSplit(Split):
    texts: list[str]
    labels: np.ndarray
    num_workers: int = 0

    def describe(self, i: int) -> str:
        return self.texts[i]

    def batches(self, loaded, batch_size, max_length=128):
        if loaded.tokenizer is None:
            raise ValueError(f"model {loaded.source} has no tokenizer; a text dataset needs one")
        # one worker tokenizes ahead of the model (a fast tokenizer is already multi-threaded)
        return self._loader(loaded, batch_size, self.texts.__getitem__,
                            _Tokenize(loaded.tokenizer, max_length), min(1, self.num_workers))


@dataclass
class _Tokenize:
    """The collate step of text batches: right-padded, truncated tokenizer output."""

    tokenizer: Any
    max_length: int

    def __call__(self, texts):
        return tokenize(self.tokenizer, texts, self.max_length)


@dataclass
class ImageFolderSplit(Split):
    paths: list[Path]
    labels: np.ndarray
    num_workers: int = 0

    def describe(self, i: int) -> str:
        return str(self.paths[i])

    def thumbnail(self, i: int, size: int = 96) -> bytes | None:
        from PIL import Image

        img = Image.open(self.paths[i]).convert("RGB")
        img.thumbnail((size, size))
        return _png(img)

    def batches(self, loaded, batch_size, max_length=128):
        if loaded.image_processor is None:
            raise ValueError(f"model {loaded.source} has no image processor; an image dataset needs one")
        return self._loader(loaded, batch_size, _DecodeImage(self.paths, loaded.image_processor),
                            torch.stack, self.num_workers)


@dataclass
class _DecodeImage:
    """Decode and preprocess one image file: ``pixel_values`` ``[3, H, W]`` (in a worker)."""

    paths: list[Path]
    image_processor: Any

    def __call__(self, i: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            return self.image_processor(images=[img.convert("RGB")], return_tensors="pt")["pixel_values"][0]


@dataclass
class ArraySplit(Split):
    """Already preprocessed ``pixel_values`` ``[n, 3, H, W]`` (e.g. the reference model's inputs)."""

    pixel_values: np.ndarray
    labels: np.ndarray

    def describe(self, i: int) -> str:
        return f"image #{i}"

    def thumbnail(self, i: int, size: int = 96) -> bytes | None:
        from PIL import Image

        x = np.asarray(self.pixel_values[i], dtype=np.float64).transpose(1, 2, 0)  # preprocessed: rescale
        x = (255 * (x - x.min()) / max(float(np.ptp(x)), 1e-12)).astype(np.uint8)
        img = Image.fromarray(x).resize((size, size), Image.NEAREST)
        return _png(img)

    def batches(self, loaded, batch_size, max_length=128):
        for i in range(0, len(self.pixel_values), batch_size):
            yield torch.from_numpy(np.ascontiguousarray(self.pixel_values[i:i + batch_size]))


@dataclass
class CifarSplit(Split):
    """CIFAR images as ``[n, 3072]`` uint8 rows (CHW 32x32), through the model's image processor
    like image folders (one PIL image per sample, in the DataLoader's workers)."""

    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    num_workers: int = 0

    def describe(self, i: int) -> str:
        return f"image #{int(self.indices[i])}"

    def thumbnail(self, i: int, size: int = 96) -> bytes | None:
        from PIL import Image

        return _png(cifar_image(self.images[i]).resize((size, size), Image.NEAREST))

    def batches(self, loaded, batch_size, max_length=128):
        if loaded.image_processor is None:
            raise ValueError(f"model {loaded.source} has no image processor; an image dataset needs one")
        return self._loader(loaded, batch_size, _DecodeCifar(self.images, loaded.image_processor),
                            torch.stack, self.num_workers)


@dataclass
class _DecodeCifar:
    """Preprocess one CIFAR row: ``pixel_values`` ``[3, H, W]`` (in a worker)."""

    images: np.ndarray
    image_processor: Any

    def __call__(self, i: int) -> torch.Tensor:
        return self.image_processor(images=[cifar_image(self.images[i])], return_tensors="pt")["pixel_values"][0]


def _png(img) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def image_folder_samples(root: Path, class_ids: Sequence[str] | None = None) -> tuple[list[Path], np.ndarray, list[str]]:
    """All images under ``root/<class folder>/`` in sorted order with their labels.  With
    ``class_ids`` (e.g. the 1000 ImageNet WordNet ids) a folder's label is its index there, so
    ImageNet-R's 200 folders map onto the 1000 ImageNet classes; otherwise the sorted folder names
    are the classes.  A tree is listed once per process (1.28M files take a while): later calls
    reuse the listing."""
    paths, labels, classes = _list_image_folder(str(Path(root).resolve()), None if class_ids is None else tuple(class_ids))
    return list(paths), labels.copy(), list(classes)


@functools.lru_cache(maxsize=8)
def _list_image_folder(root: str, class_ids: tuple[str, ...] | None):
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise ValueError(f"image folder {root} has no class sub-folders (expected ImageNet layout root/<class>/<image>)")
    names = [f.name for f in folders]
    if class_ids is not None:
        index = {c: i for i, c in enumerate(class_ids)}
        unknown = [n for n in names if n not in index]
        if unknown:
            raise ValueError(f"image folder {root} has class folders not among the class ids: {unknown[:5]}")
        classes = list(class_ids)
    else:
        index = {n: i for i, n in enumerate(names)}
        classes = names
    paths, labels = [], []
    for folder in folders:
        with os.scandir(folder) as entries:  # no stat per file
            names = sorted(e.name for e in entries if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)
        paths += [folder / n for n in names]
        labels += [index[folder.name]] * len(names)
    return tuple(paths), np.asarray(labels, dtype=np.int64), tuple(classes)


class DatasetResource(dg.ConfigurableResource):
    """Where the train and val samples come from.

    - ``kind="text"``: CSV / JSONL / Parquet files with ``text_column`` and ``label_column``; class
      names from ``classes_path`` (a JSON list).
    - ``kind="hf"``: Hugging Face ``datasets`` (:mod:`oe_assets.datasources.hf_datasets`): ``train_path`` /
      ``val_path`` a ``save_to_disk`` folder (a Dataset, or a DatasetDict), ``hf:<name>[:<config>]`` (a
      dataset in the local ``datasets`` cache, read offline), or a folder (or file) of ``.parquet`` or
      ``.arrow`` files; columns ``text_column`` and ``label_column`` (integers, ``ClassLabel`` too, used
      as they are; strings mapped through ``classes_path``).  The split of a DatasetDict or a cached
      name is ``train_key`` / ``val_key``; left at their defaults: ``"train"`` / ``"validation"``.
      Memory-mapped / read by Parquet row groups, in blocks: never loaded whole; tokenized in the main
      process.  Class names: ``classes_path``, else the label column's ``ClassLabel`` names, else
      ``n_classes``.  Reading a ``save_to_disk`` folder or a cached name needs ``datasets``
      (``pip install 'oe_assets[llm]'``); Parquet / Arrow files need only pyarrow.
    - ``kind="image_folder"``: ImageNet layout (``root/<wnid>/<image>``); ``class_index="imagenet"``
      labels folders by the 1000 ImageNet WordNet ids (ImageNet-R remaps onto them), ``"folders"``
      by sorted folder names.
    - ``kind="cifar10"`` / ``"cifar100"``: the standard python-pickle archives, extracted
      (``train_path`` / ``val_path``: the ``cifar-10-batches-py`` / ``cifar-100-python`` folder;
      train is ``data_batch_1..5`` / ``train``, val is ``test_batch`` / ``test``); class names from
      the archive's meta file (fine labels for CIFAR-100).
    - ``kind="npz"``: preprocessed arrays in one ``.npz`` (``train_key``, ``val_key``,
      ``train_labels_key``, ``val_labels_key``), and ``classes_path`` or ``n_classes``; a ``.npy``
      path is memory-mapped (unlabelled).

    - ``val_r_path``: an ImageNet-R folder (``root/<wnid>/<image>``, the 200 ImageNet-R WordNet ids),
      split ``"val_r"`` (stride ``val_stride``, the same ``offset`` / ``limit``): the ImageNet-R
      assets (``val_r_representations``, ``val_r_second_order_effects``, ``ablation_report_r``) exist
      only when it is set.  ``imagenet_r_classes="subset"`` (the standard ImageNet-R protocol, 200-way):
      labels are indices into :func:`~oe_assets.lens.zero_shot.imagenet_r_wnids` (0..199) and the
      reports restrict the 1000-way classifier to those 200 columns; ``"all"``: labels are the 1000
      ImageNet class indices and the full classifier is used (1000-way).

    ``num_workers``: DataLoader workers that decode images / tokenize text ahead of the model
    (None: the CPU count less one, at most 8).
    """

    kind: str = "text"
    train_path: str
    val_path: str
    classes_path: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    class_index: str = "imagenet"
    train_stride: int = 1
    val_stride: int = 1
    offset: int = 0
    limit: int | None = None
    train_key: str = "train_images"
    val_key: str = "val_images"
    train_labels_key: str | None = None
    val_labels_key: str = "val_labels"
    n_classes: int | None = None
    num_workers: int | None = None
    val_r_path: str | None = None
    imagenet_r_classes: str = "subset"

    def workers(self) -> int:
        n = default_workers() if self.num_workers is None else self.num_workers
        if n < 0:
            raise ValueError(f"num_workers must be >= 0, got {n}")
        return n

    def imagenet_r_columns(self) -> np.ndarray | None:
        """The classifier columns of the ImageNet-R evaluation: the 200 ImageNet-R classes' indices
        among the 1000 ImageNet classes (``imagenet_r_classes="subset"``), or None (``"all"``: every
        column)."""
        if self.imagenet_r_classes not in IMAGENET_R_CLASSES:
            raise ValueError(f"imagenet_r_classes must be one of {IMAGENET_R_CLASSES}, got {self.imagenet_r_classes!r}")
        if self.imagenet_r_classes == "all":
            return None
        from ..lens.zero_shot import imagenet_r_wnids, imagenet_wnids

        index = {w: i for i, w in enumerate(imagenet_wnids())}
        return np.asarray([index[w] for w in imagenet_r_wnids()], dtype=np.int64)

    def _imagenet_r(self) -> ImageFolderSplit:
        """The ``val_r`` split: ImageNet-R folders labelled by the 1000 ImageNet WordNet ids, remapped
        to 0..199 in ``"subset"`` mode."""
        from ..lens.zero_shot import imagenet_wnids

        if not self.val_r_path:
            raise ValueError("split 'val_r' needs dataset.val_r_path (an ImageNet-R folder)")
        columns = self.imagenet_r_columns()
        paths, labels, _ = image_folder_samples(Path(self.val_r_path), imagenet_wnids())
        if columns is not None:
            remap = np.full(len(imagenet_wnids()), -1, dtype=np.int64)
            remap[columns] = np.arange(len(columns))
            labels = remap[labels]
            if (labels < 0).any():
                raise ValueError(f"ImageNet-R folder {self.val_r_path} has class folders outside the 200 "
                                 "ImageNet-R WordNet ids; use imagenet_r_classes='all'")
        keep = lambda rows: subsample(rows, self.offset, self._stride("val"), self.limit)  # noqa: E731
        return ImageFolderSplit(keep(paths), keep(labels), self.workers())

    def _stride(self, split: str) -> int:
        stride = self.train_stride if split == "train" else self.val_stride  # val_r: val_stride
        if stride < 1:
            raise ValueError(f"{split}_stride must be >= 1, got {stride}")
        return stride

    def hf_split_name(self, split: str) -> str:
        """The split of a ``kind="hf"`` DatasetDict or cached name read as ``split`` (``train``, ``val``)."""
        return split_name(split, self.train_key if split == "train" else self.val_key)

    def classes(self) -> list[str]:
        if self.classes_path:  # errors name the file (and the line of a decode error)
            return load_string_list(self.classes_path, "class name")
        if self.kind == "image_folder":
            if self.class_index == "imagenet":
                from ..lens.zero_shot import imagenet_classes

                return imagenet_classes()
            return image_folder_samples(Path(self.train_path))[2]
        if self.kind in CIFAR_KINDS:
            return cifar_classes(self.train_path, self.kind)
        if self.kind == "hf":
            names = hf_class_names(open_rows(self.train_path, self.hf_split_name("train")), self.label_column)
            if names:
                return names
        if self.n_classes:
            return [f"class {i}" for i in range(self.n_classes)]
        raise ValueError(f"dataset kind {self.kind!r} needs classes_path (a JSON list of class names)")

    def split(self, split: str) -> Split:
        """The subsampled split; raises naming the file when nothing is left."""
        data = self._split(split)
        if len(data) == 0:
            path = {"train": self.train_path, "val_r": self.val_r_path}.get(split, self.val_path)
            raise ValueError(f"{split} split of {path} is empty after subsampling (offset={self.offset}, "
                             f"stride={self._stride(split)}, limit={self.limit})")
        return data

    def _split(self, split: str) -> Split:
        if split == "val_r":
            return self._imagenet_r()
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train', 'val' or 'val_r', got {split!r}")
        path = self.train_path if split == "train" else self.val_path
        stride = self._stride(split)
        keep = lambda rows: subsample(rows, self.offset, stride, self.limit)  # noqa: E731
        if self.kind == "text":
            ds = load_text_dataset(path, self.text_column, self.label_column, stride=stride, offset=self.offset,
                                   limit=self.limit, classes=self.classes() if self.classes_path else None)
            return TextSplit(list(ds.texts), np.asarray(ds.labels), self.workers())
        if self.kind == "hf":  # read in the main process: blocks of a memory map / Parquet row groups
            texts, labels = hf_text_split(path, self.hf_split_name(split), self.text_column, self.label_column,
                                          stride=stride, offset=self.offset, limit=self.limit,
                                          classes=self.classes() if self.classes_path else None)
            return TextSplit(texts, labels, 0)
        if self.kind == "image_folder":
            from ..lens.zero_shot import imagenet_wnids

            # "folders": both splits label by the train split's folders, so val labels cannot shift
            ids = imagenet_wnids() if self.class_index == "imagenet" else \
                sorted(p.name for p in Path(self.train_path).iterdir() if p.is_dir())
            paths, labels, _ = image_folder_samples(Path(path), ids)
            paths, labels = keep(paths), keep(labels)
            return ImageFolderSplit(paths, labels, self.workers())
        if self.kind == "npz":
            if not Path(path).is_file():
                raise FileNotFoundError(f"{split} npz file {path} does not exist")
            if str(path).endswith(".npy"):  # one memory-mapped array, no labels
                pv = keep(np.load(path, mmap_mode="r"))
                return ArraySplit(pv, np.full(len(pv), -1, dtype=np.int64))
            data = np.load(path)
            key = self.train_key if split == "train" else self.val_key
            labels_key = self.train_labels_key if split == "train" else self.val_labels_key
            if key not in data:
                raise ValueError(f"{path} has no array {key!r}; it holds {sorted(data.files)}")
            pv = keep(data[key])
            labels = keep(data[labels_key]) if labels_key and labels_key in data else np.full(len(pv), -1)
            return ArraySplit(pv, np.asarray(labels, dtype=np.int64))
        if self.kind in CIFAR_KINDS:
            images, labels = load_cifar(path, self.kind, split)
            indices = keep(np.arange(len(labels)))
            return CifarSplit(images[indices], labels[indices], indices, self.workers())
        raise ValueError(f"dataset kind={self.kind!r}; choose one of {', '.join(map(repr, KINDS))}")
