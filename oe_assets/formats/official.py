"""The official implementation's output files: export from, and import into, the artifact store.

The original scripts write, per dataset, split, model and MLP layer (``m`` = ``{model}_{pretrained}``):

- ``{dataset}_{split}_representations_{m}.npy`` ``[samples, d]``, ``{dataset}_{split}_classes.npy``
  ``[samples]``, ``{dataset}_classifier_{m}.npy`` ``[d, classes]``;
- ``{dataset}_{split}_mlps_{m}_{layer}_merged.npy`` ``[samples, neurons, d]``: the dense effects;
- ``{dataset}_train_mlps_{m}_{layer}_{top_k}_pca.npy`` ``[neurons, d]`` and ``..._norm.npy``
  ``[neurons, top_k]``; this project adds ``..._mean.npy`` ``[neurons, d]`` (the train means the
  ablations need; absent from the original outputs, then recomputed from the train merged file);
- the sparse decomposition ``..._{top_k}_sparse.json`` (neuron index -> list of ``[description
  index, coefficient, text]``, largest ``|coefficient|`` first) and ``..._{top_k}_sparse.npz``
  (``scipy.sparse.save_npz`` of the CSC codes ``[neurons, descriptions]``).

The store side is the project layout ``<base_dir>/<asset>/<partition or all>.h5`` (see
:class:`oe_assets.resources.store.ArtifactStore`).  No Dagster here: the CLI records the catalog
events.  Imported merged effects become factorized effects files by the exact identity
factorization (:func:`import_merged`).  The dense merged effects are exported (densified one neuron block at a time into a
``np.lib.format.open_memmap``) but never imported: they cannot be turned into the factorized layout
exactly; an import checks their shape and uses the train file only to recompute missing means.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..lens.effects_file import read_attrs
from ..lens.sparse import nonzeros_by_magnitude
from ..storage.hdf5 import H5Payload, write_h5
from ..storage.layout import Layout, atomic_path

__all__ = ["OfficialNames", "OfficialFormatError", "export_official", "import_official", "ImportResult"]

#: bytes of one dense effects block while exporting / averaging the merged file
BLOCK_BYTES = 64 * 2**20


class OfficialFormatError(ValueError):
    """An official output file that is missing or does not fit the profile's model."""


@dataclass(frozen=True)
class OfficialNames:
    """The file names of one dataset / model / pretrained tag."""

    dataset: str
    model: str
    pretrained: str

    @property
    def m(self) -> str:
        return f"{self.model}_{self.pretrained}"

    def representations(self, split: str) -> str:
        return f"{self.dataset}_{split}_representations_{self.m}.npy"

    def classes(self, split: str) -> str:
        return f"{self.dataset}_{split}_classes.npy"

    def classifier(self) -> str:
        return f"{self.dataset}_classifier_{self.m}.npy"

    def merged(self, split: str, layer: int) -> str:
        return f"{self.dataset}_{split}_mlps_{self.m}_{layer}_merged.npy"

    def pca(self, layer: int, top_k: int, what: str) -> str:
        """``what``: ``pca``, ``norm``, ``mean``, ``sparse.json`` or ``sparse.npz``."""
        suffix = what if "." in what else f"{what}.npy"
        return f"{self.dataset}_train_mlps_{self.m}_{layer}_{top_k}_{suffix}"


# ------------------------------------------------------------------------------ store files
def store_path(base: str | Path, asset: str, partition: str | None = None) -> Path:
    """Where the artifact store at ``base`` keeps an asset's HDF5 file (:class:`~oe_assets.storage.layout.Layout`)."""
    return Layout(base).path_for(asset, partition)


def _write_h5(path: Path, arrays: dict[str, Any], attrs: dict[str, Any]) -> None:
    """An imported asset file, written as the store writes its own (:func:`~oe_assets.storage.hdf5.write_h5`)."""
    write_h5(path, H5Payload(arrays, attrs))


def _read(path: Path, name: str):
    with h5py.File(path, "r") as f:
        if name not in f:
            raise OfficialFormatError(f"{path} has no array {name!r}; it holds {sorted(f)}")
        ds = f[name]
        if h5py.check_string_dtype(ds.dtype) is not None:
            return [s.decode() if isinstance(s, bytes) else s for s in ds[()]]
        return ds[()]


def _attrs(path: Path) -> dict:
    """A store file's attributes, checked against their checksum (:func:`read_attrs`)."""
    with h5py.File(path, "r") as f:
        return read_attrs(f, path)


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} has no materialized file at {path}; materialize it first")
    return path


# ------------------------------------------------------------------------------ export
def _save(out: Path, name: str, arr: np.ndarray, written: list[Path]) -> None:
    path = out / name
    np.save(path, arr)
    written.append(path)


def export_merged(effects_path: Path, target: Path, dtype=np.float32, block_bytes: int = BLOCK_BYTES) -> Path:
    """The dense ``[samples, neurons, d]`` effects of a factorized file as a ``.npy``, one neuron block at
    a time into a memory map (the whole tensor is never in memory)."""
    from ..lens.effects_file import open_factorized

    fe = open_factorized(effects_path)
    S, N, d = fe.shape
    step = max(1, block_bytes // max(1, 8 * S * d))
    with atomic_path(target) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(S, N, d))
        for n0 in range(0, N, step):
            out[:, n0:n0 + step, :] = fe[:, n0:n0 + step, :]
        out.flush()
        del out
    return target


def export_bytes(base: str | Path, layer: int, splits: tuple[str, ...] = ("train", "val"), dtype=np.float32) -> int:
    """About how many bytes :func:`export_official` writes for ``layer``: the dense merged effects
    (``samples * neurons * d_out`` each) and the arrays copied as they are; the sparse decomposition
    (a few MB) is left out.  Missing files count 0 (the export names them)."""
    from ..lens.effects_file import H5Handle, open_factorized

    def stored(path: Path, *names: str, itemsize: int | None = None) -> int:
        if not path.exists():
            return 0
        with h5py.File(path, "r") as f:
            return sum(f[n].size * (itemsize or f[n].dtype.itemsize) for n in names if n in f)

    base, total = Path(base), 0
    for split, asset in zip(splits, ("second_order_effects", "val_second_order_effects")):
        total += stored(store_path(base, f"{split}_representations"), "representations")
        total += stored(store_path(base, f"{split}_representations"), "labels", itemsize=8)
        path = store_path(base, asset, str(layer))
        if path.exists():
            with H5Handle(path) as handle:
                total += int(np.prod(open_factorized(handle).shape)) * np.dtype(dtype).itemsize
    total += stored(store_path(base, "classifier"), "classifier")
    return total + stored(store_path(base, "neuron_pcas", str(layer)), "components", "norms", "means")


def export_official(base: str | Path, out: str | Path, layer: int, names: OfficialNames,
                    splits: tuple[str, ...] = ("train", "val"), dtype=np.float32) -> list[Path]:
    """Write the official files of one layer from the materialized assets under ``base``; returns the
    paths written.  Splits whose files are not materialized are skipped (train is required)."""
    base, out = Path(base), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for split in splits:
        reps = store_path(base, f"{split}_representations")
        if split != "train" and not reps.exists():
            continue
        _require(reps, f"asset {split}_representations")
        _save(out, names.representations(split), _read(reps, "representations"), written)
        _save(out, names.classes(split), np.asarray(_read(reps, "labels"), dtype=np.int64), written)
    _save(out, names.classifier(), _read(_require(store_path(base, "classifier"), "asset classifier"), "classifier"),
          written)
    for split, asset in (("train", "second_order_effects"), ("val", "val_second_order_effects")):
        path = store_path(base, asset, str(layer))
        if split == "val" and not path.exists():
            continue
        written.append(export_merged(_require(path, f"asset {asset} partition {layer}"),
                                     out / names.merged(split, layer), dtype))
    pcas = _require(store_path(base, "neuron_pcas", str(layer)), f"asset neuron_pcas partition {layer}")
    norms = _read(pcas, "norms")
    top_k = int(norms.shape[1])
    _save(out, names.pca(layer, top_k, "pca"), _read(pcas, "components"), written)
    _save(out, names.pca(layer, top_k, "norm"), norms, written)
    _save(out, names.pca(layer, top_k, "mean"), _read(pcas, "means"), written)
    codes_path = store_path(base, "sparse_codes", str(layer))
    if codes_path.exists():
        import scipy.sparse

        idx, val = _read(codes_path, "indices"), _read(codes_path, "values")
        n_desc = int(_attrs(codes_path)["descriptions"])
        texts_path = store_path(base, "text_embeddings")
        texts = _read(texts_path, "texts") if texts_path.exists() else [""] * n_desc
        decomposition = {str(n): [[int(i), float(v), texts[int(i)]] for i, v in zip(idx[n], val[n]) if i >= 0]
                         for n in range(idx.shape[0])}
        path = out / names.pca(layer, top_k, "sparse.json")
        path.write_text(json.dumps(decomposition))
        written.append(path)
        rows, cols = np.nonzero(idx >= 0)
        codes = scipy.sparse.csc_matrix((val[rows, cols], (rows, idx[rows, cols])), shape=(idx.shape[0], n_desc))
        path = out / names.pca(layer, top_k, "sparse.npz")
        scipy.sparse.save_npz(path, codes)
        written.append(path)
    return written


# ------------------------------------------------------------------------------ import
@dataclass
class ImportResult:
    """What an import wrote: ``(asset, partition or None, store file, source files)`` per asset, and
    the official files it read but did not import, with the reason."""

    assets: list[tuple[str, str | None, Path, list[Path]]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _shape(path: Path) -> tuple[int, ...]:
    return tuple(np.load(path, mmap_mode="r").shape)


def _check(path: Path, expected: tuple, why: str) -> None:
    """``expected``: a shape with None for free axes."""
    got = _shape(path)
    if len(got) != len(expected) or any(e is not None and g != e for g, e in zip(got, expected)):
        want = "[" + ", ".join("*" if e is None else str(e) for e in expected) + "]"
        raise OfficialFormatError(f"{path.name}: shape {list(got)} does not match the expected {want} ({why})")


def _merged_mean(path: Path, block_bytes: int = BLOCK_BYTES) -> np.ndarray:
    merged = np.load(path, mmap_mode="r")
    S, N, d = merged.shape
    step = max(1, block_bytes // max(1, 8 * S * d))
    return np.concatenate([np.asarray(merged[:, n0:n0 + step, :], dtype=np.float64).mean(0)
                           for n0 in range(0, N, step)])


def import_official(src: str | Path, base: str | Path, layer: int, names: OfficialNames, top_k: int,
                    d_out: int | None = None, neurons: int | None = None, model: str | None = None,
                    coefficient: float = 100.0, components: int | None = None,
                    class_names: list[str] | None = None) -> ImportResult:
    """Load the official files of one layer in ``src`` as the project's assets under ``base``:
    train / val representations (with labels from the classes files), the classifier, neuron_pcas
    (components, norms, means; ``explained`` is unknown and stored as NaN) and sparse_codes (from
    the ``.npz``).  Shapes are checked against ``d_out`` and ``neurons`` (the profile's model, when
    given) and against each other; a mismatch raises :class:`OfficialFormatError` naming the file
    and both shapes.  Every file written carries ``imported_from`` (the source file(s))."""
    src, base = Path(src), Path(base)
    if not src.is_dir():
        raise FileNotFoundError(f"official outputs folder {src} does not exist")
    result = ImportResult()
    f = lambda name: src / name  # noqa: E731

    def need(p: Path) -> Path:
        if not p.exists():
            raise FileNotFoundError(f"official output {p.name} not found in {src}")
        return p

    model_why = f"d_out={d_out}, neurons={neurons} of the profile's model"
    # ---- which files exist, with their shapes, before anything is written
    cls_path = need(f(names.classifier()))
    _check(cls_path, (d_out, None), model_why)
    d = _shape(cls_path)[0]
    n_classes = _shape(cls_path)[1]
    splits = [s for s in ("train", "val") if s == "train" or f(names.representations(s)).exists()]
    for s in splits:
        rp, cp = need(f(names.representations(s))), need(f(names.classes(s)))
        _check(rp, (None, d), f"d_out {d} of {cls_path.name}")
        _check(cp, (_shape(rp)[0],), f"one class per row of {rp.name}")
    pca, norm = need(f(names.pca(layer, top_k, "pca"))), need(f(names.pca(layer, top_k, "norm")))
    _check(pca, (neurons, d), model_why if d_out or neurons else f"d_out {d} of {cls_path.name}")
    n = _shape(pca)[0]
    _check(norm, (n, top_k), f"{n} neurons of {pca.name}, top_k {top_k}")
    merged = {s: f(names.merged(s, layer)) for s in ("train", "val") if f(names.merged(s, layer)).exists()}
    for s, p in merged.items():
        _check(p, (_shape(f(names.representations(s)))[0] if s in splits else None, n, d),
               f"samples of the {s} representations, {n} neurons, d_out {d}")
    mean = f(names.pca(layer, top_k, "mean"))
    if mean.exists():
        _check(mean, (n, d), f"{n} neurons and d_out {d} of {pca.name}")
    elif "train" not in merged:
        raise OfficialFormatError(
            f"{src} has neither {mean.name} nor {names.merged('train', layer)}: the neuron means (the ablations' "
            "mean-ablation values) cannot be known; add one of them, or materialize neuron_pcas instead")
    sparse_npz = f(names.pca(layer, top_k, "sparse.npz"))
    codes = None
    if sparse_npz.exists():
        import scipy.sparse

        codes = scipy.sparse.load_npz(sparse_npz).tocsr()
        if codes.shape[0] != n:
            raise OfficialFormatError(f"{sparse_npz.name}: shape {list(codes.shape)} does not match the expected "
                                      f"[{n}, *] ({n} neurons of {pca.name})")
    texts_path = store_path(base, "text_embeddings")
    vocab = _attrs(texts_path) if texts_path.exists() else {}
    if codes is not None and texts_path.exists():
        with h5py.File(texts_path, "r") as h:
            n_desc = int(h["embeddings"].shape[0])
        if codes.shape[1] != n_desc:
            raise OfficialFormatError(f"{sparse_npz.name}: shape {list(codes.shape)} does not match the expected "
                                      f"[{n}, {n_desc}] ({n_desc} descriptions of the materialized text_embeddings)")
    # ---- write
    common = {"model": model, "imported": True}

    def write(asset, partition, arrays, attrs, sources):
        path = store_path(base, asset, partition)
        _write_h5(path, arrays, {**common, **attrs, "imported_from": ", ".join(str(p.resolve()) for p in sources)})
        result.assets.append((asset, partition, path, sources))

    for s in splits:
        rp, cp = f(names.representations(s)), f(names.classes(s))
        reps = np.load(rp)
        write(f"{s}_representations", None,
              {"representations": reps, "labels": np.load(cp).astype(np.int64),
               "inputs": [f"{s} sample #{i}" for i in range(len(reps))]},
              {"coefficient": coefficient, "split": s}, [rp, cp])
    classes = class_names if class_names is not None and len(class_names) == n_classes else \
        [f"class {i}" for i in range(n_classes)]
    write("classifier", None, {"classifier": np.load(cls_path), "classes": classes}, {}, [cls_path])
    means = np.load(mean) if mean.exists() else _merged_mean(merged["train"])
    write("neuron_pcas", str(layer),
          {"components": np.load(pca), "norms": np.load(norm), "means": means, "explained": np.full(n, np.nan)},
          {"layer": layer, "top_k": top_k, "coefficient": coefficient, "convention": "reference",
           "means_from": "mean file" if mean.exists() else "train merged effects"},
          [pca, norm, mean if mean.exists() else merged["train"]])
    if codes is not None:
        k = int(np.diff(codes.indptr).max()) if codes.nnz else 0
        k = max(k, components or 0)
        idx, val = np.full((n, k), -1, dtype=np.int64), np.zeros((n, k))
        for row in range(n):
            lo, hi = codes.indptr[row], codes.indptr[row + 1]
            dense = np.zeros(codes.shape[1])
            dense[codes.indices[lo:hi]] = codes.data[lo:hi]
            nz = nonzeros_by_magnitude(dense, k)
            idx[row, :len(nz)], val[row, :len(nz)] = nz, dense[nz]
        write("sparse_codes", str(layer), {"indices": idx, "values": val},
              {"layer": layer, "components": components or k, "max_nonzeros": int(np.count_nonzero(idx >= 0, 1).max()),
               "descriptions": int(codes.shape[1]), "vocabulary_version": vocab.get("vocabulary_version")},
              [sparse_npz])
    for s, p in merged.items():
        asset = "second_order_effects" if s == "train" else "val_second_order_effects"
        path = store_path(base, asset, str(layer))
        import_merged(p, path, {**common, "layer": layer, "coefficient": coefficient, "convention": "reference",
                                "split": s, "shape": list(_shape(p)), "imported_from": str(p.resolve())})
        result.assets.append((asset, str(layer), path, [p]))
    return result


def import_merged(merged_path: Path, target: Path, attrs: dict[str, Any], batch: int = 64) -> Path:
    """A dense merged ``[samples, neurons, d]`` effects file as a factorized effects file, exactly:
    one path per output dimension, ``M[n, p, :] = e_p`` (``left`` ``[d, d, 1]`` the identity,
    ``right`` ``[d, 1, neurons]`` ones), ``alpha[s, p, n] = merged[s, n, p]``, ``scale = 1``, no
    ``const``.  It stores as many bytes as the dense file (nothing to factor in it), streamed from the
    memory-mapped ``.npy`` ``batch`` samples at a time and renamed into place when complete."""
    import torch

    from ..lens.effects_file import FactorizedEffectsWriter
    from ..lens.factorized import FactorizedEffects, HeadFactors

    merged = np.load(merged_path, mmap_mode="r")
    S, N, d = merged.shape
    factors = HeadFactors(torch.eye(d)[:, :, None], torch.ones(d, 1, N))
    with atomic_path(target) as tmp:
        with FactorizedEffectsWriter(tmp, S, factors, with_const=False, batch_size=batch) as writer:
            for s0 in range(0, S, batch):
                block = torch.from_numpy(np.ascontiguousarray(merged[s0:s0 + batch], dtype=np.float32))
                writer.write(FactorizedEffects(block.transpose(1, 2), torch.ones(block.shape[0]), factors))
            writer.close(attrs={k: v if isinstance(v, (str, int, float, bool)) else "json:" + json.dumps(v)
                                for k, v in attrs.items()})
    return target
