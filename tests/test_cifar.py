"""CIFAR-10 / CIFAR-100 from tiny fake archives in the official python-pickle structure."""

import pickle

import numpy as np
import pytest
import torch

from oe_assets.datasources.cifar import cifar_image, load_cifar
from oe_assets.profiles.validation import count_samples
from oe_assets.resources.datasets import CifarSplit, DatasetResource


def _rows(n, start):
    """``n`` images whose pixel (c, y, x) is distinct per image and channel: [n, 3072] uint8."""
    img = np.zeros((n, 3, 32, 32), dtype=np.uint8)
    for i in range(n):
        for c in range(3):
            img[i, c] = (start + i) * 3 + c
        img[i, 0, 0, 1] = 200  # red, row 0, column 1
        img[i, 2, 1, 0] = 250  # blue, row 1, column 0
    return img.reshape(n, 3072)


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def fake_cifar10(root, per_batch=3, test=4, bytes_keys=True):
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    k = (lambda s: s.encode()) if bytes_keys else (lambda s: s)
    for b in range(5):
        _dump(folder / f"data_batch_{b + 1}", {k("batch_label"): k(f"training batch {b + 1} of 5"),
                                               k("labels"): [(b * per_batch + i) % 10 for i in range(per_batch)],
                                               k("data"): _rows(per_batch, b * per_batch),
                                               k("filenames"): [k(f"f{i}.png") for i in range(per_batch)]})
    _dump(folder / "test_batch", {k("labels"): [9 - i for i in range(test)], k("data"): _rows(test, 50)})
    _dump(folder / "batches.meta", {k("label_names"): [k(n) for n in ("airplane", "automobile", "bird", "cat", "deer",
                                                                       "dog", "frog", "horse", "ship", "truck")],
                                    k("num_cases_per_batch"): per_batch, k("num_vis"): 3072})
    return folder


def fake_cifar100(root, train=7, test=3):
    folder = root / "cifar-100-python"
    folder.mkdir()
    _dump(folder / "train", {b"fine_labels": [i * 11 % 100 for i in range(train)],
                             b"coarse_labels": [0] * train, b"data": _rows(train, 0)})
    _dump(folder / "test", {b"fine_labels": [99, 0, 42][:test], b"coarse_labels": [0] * test, b"data": _rows(test, 20)})
    _dump(folder / "meta", {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    return folder


class _Processor:
    """A stand-in image processor: the PIL image as float pixel_values [1, 3, 32, 32]."""

    def __call__(self, images, return_tensors):
        x = np.stack([np.asarray(im, dtype=np.float32).transpose(2, 0, 1) for im in images])
        return {"pixel_values": torch.from_numpy(x)}


class _Loaded:
    model = None
    source = "fake"
    image_processor = _Processor()


@pytest.mark.parametrize("bytes_keys", [True, False])
def test_cifar10_counts_labels_classes(tmp_path, bytes_keys):
    folder = fake_cifar10(tmp_path, bytes_keys=bytes_keys)
    ds = DatasetResource(kind="cifar10", train_path=str(folder), val_path=str(folder), num_workers=0)
    assert ds.classes()[:3] == ["airplane", "automobile", "bird"] and len(ds.classes()) == 10
    train, val = ds.split("train"), ds.split("val")
    assert isinstance(train, CifarSplit) and len(train) == 15 and len(val) == 4
    np.testing.assert_array_equal(train.labels, np.arange(15) % 10)  # data_batch_1..5 in order
    np.testing.assert_array_equal(val.labels, [9, 8, 7, 6])
    assert count_samples({"kind": "cifar10", "train_path": str(folder)}, "train") == 15


def test_cifar10_strides_use_the_shared_rule(tmp_path):
    folder = fake_cifar10(tmp_path)
    ds = DatasetResource(kind="cifar10", train_path=str(folder), val_path=str(folder), train_stride=4, offset=1,
                         num_workers=0)
    train = ds.split("train")
    assert len(train) == 3 and [train.describe(i) for i in range(3)] == ["image #1", "image #5", "image #9"]
    np.testing.assert_array_equal(train.labels, [1, 5, 9])
    assert count_samples({"kind": "cifar10", "train_path": str(folder), "train_stride": 4, "offset": 1}, "train") == 3


def test_cifar100_fine_labels_and_names(tmp_path):
    folder = fake_cifar100(tmp_path)
    ds = DatasetResource(kind="cifar100", train_path=str(folder), val_path=str(folder), num_workers=0)
    classes = ds.classes()
    assert len(classes) == 100 and classes[42] == "fine42"
    assert len(ds.split("train")) == 7 and list(ds.split("val").labels) == [99, 0, 42]


def test_cifar_pixel_layout_through_the_processor(tmp_path):
    folder = fake_cifar10(tmp_path)
    images, _ = load_cifar(folder, "cifar10", "train")
    img = np.asarray(cifar_image(images[2]))  # HWC
    assert img.shape == (32, 32, 3)
    assert tuple(img[5, 5]) == (6, 7, 8)  # image 2: red 6, green 7, blue 8
    assert img[0, 1, 0] == 200 and img[1, 0, 2] == 250  # CHW rows: channel, then row, then column
    ds = DatasetResource(kind="cifar10", train_path=str(folder), val_path=str(folder), num_workers=0)
    batches = list(ds.split("train").batches(_Loaded(), batch_size=4))
    assert [b.shape[0] for b in batches] == [4, 4, 4, 3]
    pv = torch.cat(batches)
    assert pv.shape == (15, 3, 32, 32)
    np.testing.assert_array_equal(pv.numpy().astype(np.uint8), images.reshape(15, 3, 32, 32))
    assert ds.split("train").thumbnail(0)[:4] == b"\x89PNG"


def test_cifar_errors_name_the_file(tmp_path):
    folder = fake_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    ds = DatasetResource(kind="cifar10", train_path=str(folder), val_path=str(folder), num_workers=0)
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        ds.split("train")
    _dump(folder / "data_batch_3", {b"labels": [0, 1], b"data": np.zeros((2, 100), dtype=np.uint8)})
    with pytest.raises(ValueError, match=r"data_batch_3.*\[N, 3072\]"):
        DatasetResource(kind="cifar10", train_path=str(folder), val_path=str(folder)).split("train")
