"""Validate a loaded profile before any work: keys, environment variables, paths, sizes, layers.

Everything here is cheap: no model weights are loaded (the model's config is read with
``AutoConfig``), samples are counted (text rows, an image folder's listing, an npz array's shape
from its header) rather than read.  :func:`validate_profile` reports every problem at once in one
:class:`ProfileError` (a ``ValueError``), each naming the profile key and its value.
"""

from __future__ import annotations

import csv
import difflib
import io
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ProfileError", "validate_profile", "check_keys", "validate_layers", "npz_shape", "count_samples",
           "count_descriptions", "model_d_out", "section_fields"]

_ENV = re.compile(r"\$\{(\w+)\}|\$(\w+)")


class ProfileError(ValueError):
    """A profile that cannot work; the message lists every problem, each naming key and value."""

    def __init__(self, problems: list[str], where: str = "profile"):
        self.problems = list(problems)
        super().__init__(f"{where} is invalid:\n" + "\n".join(f"  - {p}" for p in self.problems))


def _defaults(section: str) -> dict[str, Any]:
    """The field defaults of the resource configuring ``section`` (the one place they live)."""
    from ..settings import default

    return {name: default(f"{section}.{name}") for name in section_fields()[section]
            if not _required(section, name)}


def _required(section: str, name: str) -> bool:
    from ..resources.datasets import DatasetResource
    from ..resources.model import AnalysisResource, ModelResource
    from ..resources.store import ArtifactStore

    cls = {"model": ModelResource, "dataset": DatasetResource, "analysis": AnalysisResource,
           "storage": ArtifactStore}[section]
    return cls.model_fields[name].is_required()


def section_fields() -> dict[str, list[str]]:
    """The valid keys of each profile section: the fields of the resource it configures."""
    from ..resources.datasets import DatasetResource
    from ..resources.model import AnalysisResource, ModelResource
    from ..resources.store import ArtifactStore

    return {section: sorted(cls.model_fields) for section, cls in
            (("model", ModelResource), ("dataset", DatasetResource), ("analysis", AnalysisResource),
             ("storage", ArtifactStore))}


def check_keys(cfg: dict[str, dict[str, Any]]) -> list[str]:
    """Unknown keys of every section (``analysis.coeficient``), each with the valid keys."""
    problems = []
    for section, valid in section_fields().items():
        for key in (cfg.get(section) or {}):
            if key not in valid:
                close = difflib.get_close_matches(key, valid, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"{section}.{key}: unknown key{hint}; valid keys of {section!r}: {', '.join(valid)}")
    return problems


def _unset_variables(value: str) -> list[str]:
    return [a or b for a, b in _ENV.findall(value)]


def _npz_file(spec: str) -> tuple[Path, str | None]:
    """``file.npz:key`` -> (file, key); a plain path -> (path, None)."""
    path, sep, key = str(spec).partition(".npz:")
    return (Path(path + ".npz"), key) if sep else (Path(spec), None)


def npz_shape(path: str | Path, key: str) -> tuple[int, ...]:
    """The shape of array ``key`` of an ``.npz`` file, read from its header (no data read)."""
    with zipfile.ZipFile(path) as zf:
        names = [n.removesuffix(".npy") for n in zf.namelist()]
        if key not in names:
            raise KeyError(f"{path} has no array {key!r}; it holds {sorted(names)}")
        with zf.open(key + ".npy") as f:
            version = np.lib.format.read_magic(f)
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            return tuple(header(f)[0])


def _text_rows(path: Path) -> int:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    from ..datasources.text_datasets import load_text_dataset, read_text

    if suffix in (".jsonl", ".ndjson"):  # decoded (bad UTF-8: file and line), not parsed
        return sum(1 for line in read_text(path).split("\n") if line.strip())
    if suffix == ".csv":
        return max(0, sum(1 for row in csv.reader(io.StringIO(read_text(path, "utf-8-sig"), newline="")) if row) - 1)

    return len(load_text_dataset(path).texts)


def count_samples(dataset: dict[str, Any], split: str) -> int:
    """Samples of a split after subsampling (``offset``, ``{split}_stride``, ``limit``), counted
    cheaply: text rows, an image folder's listing, an npz array's shape."""
    from ..datasources.text_datasets import subsample

    dataset = {**_defaults("dataset"), **dataset}
    path = Path(dataset[f"{split}_path"])
    kind = dataset["kind"]
    if kind == "text":
        n = _text_rows(path)
    elif kind == "hf":
        from ..datasources.hf_datasets import count_rows, split_name

        n = count_rows(str(dataset[f"{split}_path"]), split_name(split, dataset[f"{split}_key"]),
                       dataset["text_column"], dataset["label_column"])
    elif kind == "image_folder":
        from ..resources.datasets import image_folder_samples

        n = len(image_folder_samples(path)[0])
    elif kind == "npz":
        if str(path).endswith(".npy"):
            n = np.load(path, mmap_mode="r").shape[0]
        else:
            n = npz_shape(path, dataset[f"{split}_key"])[0]
    elif kind in ("cifar10", "cifar100"):
        from ..datasources.cifar import load_cifar

        n = len(load_cifar(path, kind, split)[1])
    else:
        from ..resources.datasets import KINDS

        raise ValueError(f"dataset.kind: {kind!r}; choose one of {', '.join(map(repr, KINDS))}")
    return len(subsample(range(n), int(dataset["offset"]), int(dataset[f"{split}_stride"]),
                         dataset.get("limit")))


def count_descriptions(analysis: dict[str, Any]) -> int | None:
    """Descriptions of the vocabulary (rows of ``text_embeddings_path`` when given); None when the
    vocabulary is the tokenizer's words (not counted: that needs the tokenizer)."""
    if analysis.get("text_embeddings_path"):
        path, key = _npz_file(analysis["text_embeddings_path"])
        return npz_shape(path, key)[0]
    if analysis.get("vocabulary_path"):
        from ..datasources.vocabulary import load_vocabulary

        return len(load_vocabulary(analysis["vocabulary_path"]))
    return None


def model_d_out(source: str) -> int:
    """The representation width from the model's config alone: CLIP's ``projection_dim``, else the
    hidden size."""
    from ..models.hub import load_config

    config = load_config(source)
    if str(getattr(config, "model_type", "")).startswith("clip") and getattr(config, "projection_dim", None):
        return int(config.projection_dim)
    text = getattr(config, "get_text_config", lambda: config)()
    return int(getattr(text, "hidden_size", None) or config.hidden_size)


def validate_layers(layers: list[str], first: str | None, last: str | None) -> list[str]:
    """``--layers FIRST LAST``: both layer partitions of the model, FIRST not after LAST."""
    problems = []
    for name, value in (("FIRST", first), ("LAST", last)):
        if value is not None and str(value) not in layers:
            known = f"{layers[0]}..{layers[-1]}" if layers else "(none)"
            problems.append(f"--layers {name}: {value!r} is not a layer of the model; its layers are {known}")
    if not problems and first is not None and last is not None and layers.index(str(first)) > layers.index(str(last)):
        problems.append(f"--layers: {first} {last} is out of order; FIRST must not come after LAST")
    return problems


_OPTIONAL_PATHS = {"classes_path", "templates_path", "classifier_path", "text_embeddings_path", "vocabulary_path"}


def _relative_hint(value: str) -> str:
    """Where a missing path under the project root came from: a relative path in the profile."""
    from .paths import project_root

    root = project_root()
    if Path(value).is_absolute() and Path(value).is_relative_to(root) and not Path(value).exists():
        if Path(value).relative_to(root).parts[:1] == ("tests",):  # clip_reference's files: the repository's test data
            return (f" ({Path(value).relative_to(root)} is test data of the source repository, not installed with the "
                    f"package: run from a clone of the repository, or set $OE_ASSETS_ROOT to one; the project root "
                    f"is now {root})")
        return f" (relative paths in a profile resolve against the project root {root}; set $OE_ASSETS_ROOT to change it)"
    return ""


def _check_paths(cfg: dict[str, dict[str, Any]]) -> list[str]:
    from ..datasources.hf_datasets import CACHE_PREFIX
    from .paths import PATH_KEYS

    problems = []
    for section in ("model", "dataset", "analysis"):
        for key, value in (cfg.get(section) or {}).items():
            if key not in PATH_KEYS or not isinstance(value, str) or value == "imagenet":
                continue
            if section == "dataset" and value.startswith(CACHE_PREFIX):  # a name in the datasets cache: counted
                continue
            unset = _unset_variables(value)
            if unset:
                problems.append(f"{section}.{key}: {value!r} uses environment variable "
                                f"{', '.join('$' + v for v in unset)}, which is not set; set it or edit the profile")
                continue
            path, npz_key = _npz_file(value)
            if key == "source":
                from ..models.hub import ModelSourceError, resolve_source

                from .paths import project_root  # where the profile resolved a relative source

                try:  # a model folder, or an id shaped like one that is cached when offline (no network)
                    resolve_source(value, project_root())
                except ModelSourceError as e:
                    problems.append(f"{section}.{key}: {e}{_relative_hint(value)}")
                continue
            if not path.exists():
                problems.append(f"{section}.{key}: {value!r} does not exist{_relative_hint(value)}")
            elif npz_key is not None:
                try:
                    npz_shape(path, npz_key)
                except (KeyError, zipfile.BadZipFile, ValueError) as e:
                    problems.append(f"{section}.{key}: {value!r}: {str(e).strip(chr(34))}")
    base = (cfg.get("storage") or {}).get("base_dir")
    if isinstance(base, str) and _unset_variables(base):
        problems.append(f"storage.base_dir: {base!r} uses environment variable "
                        f"{', '.join('$' + v for v in _unset_variables(base))}, which is not set")
    return problems


def _check_string_lists(dataset: dict[str, Any], analysis: dict[str, Any]) -> list[str]:
    """The class names and prompt templates files read as their assets read them (UTF-8, JSON, a list
    of strings; templates each with ``{}``; templates only when no ``classifier_path`` replaces
    them), so a broken one is named before any work."""
    from ..datasources.text_datasets import load_string_list

    problems = []
    for section, key, value, what, placeholder in (
            ("dataset", "classes_path", dataset.get("classes_path"), "class name", None),
            ("analysis", "templates_path", None if analysis.get("classifier_path") else analysis.get("templates_path"),
             "prompt template", "{}")):
        if isinstance(value, str) and value != "imagenet":
            try:
                load_string_list(value, what, placeholder)
            except (OSError, ValueError) as e:
                problems.append(f"{section}.{key}: {e}")
    return problems


def validate_profile(cfg: dict[str, dict[str, Any]], where: str = "profile") -> dict[str, Any]:
    """Raise :class:`ProfileError` listing every problem of a loaded profile; return what was
    measured (``train_samples``, ``descriptions``, ``d_out``) when it is valid."""
    problems = [f"{s}: missing section" for s in ("model", "dataset") if not cfg.get(s)]
    problems += [f"{s}: unknown section; sections are model, dataset, analysis, storage"
                 for s in cfg if s not in ("model", "dataset", "analysis", "storage")]
    if problems:
        raise ProfileError(problems, where)
    problems = check_keys(cfg) + _check_paths(cfg)
    model, dataset = cfg["model"], cfg["dataset"]
    analysis = {**_defaults("analysis"), **(cfg.get("analysis") or {})}
    dataset = {**_defaults("dataset"), **dataset}
    if "source" not in model:
        problems.append("model.source: missing (a Hugging Face hub id or a local folder)")
    for key in ("train_path", "val_path"):
        if key not in dataset:
            problems.append(f"dataset.{key}: missing")
    if dataset["imagenet_r_classes"] not in ("subset", "all"):
        problems.append(f"dataset.imagenet_r_classes: {dataset['imagenet_r_classes']!r} must be 'subset' (200-way, "
                        "the standard ImageNet-R protocol) or 'all' (1000-way)")
    if dataset["val_r_path"] and dataset["kind"] != "image_folder":
        problems.append(f"dataset.val_r_path: an ImageNet-R folder needs dataset.kind 'image_folder' (the 1000-way "
                        f"ImageNet classifier), not {dataset['kind']!r}")
    storage = {**_defaults("storage"), **(cfg.get("storage") or {})}
    from ..resources.store import EFFECTS_MODES

    if storage["effects_mode"] not in EFFECTS_MODES:
        problems.append(f"storage.effects_mode: {storage['effects_mode']!r} must be one of {', '.join(EFFECTS_MODES)} "
                        "('stored': every sample's effects; 'topk': every sample's norms and each neuron's top_k "
                        "samples, for models whose effects do not fit a disk)")
    elif storage["effects_mode"] == "topk" and dataset["val_r_path"]:
        problems.append("storage.effects_mode: 'topk' does not provide the ImageNet-R ablations yet "
                        "(dataset.val_r_path is set); use 'stored', or leave dataset.val_r_path out")
    for section, key in (("dataset", "train_stride"), ("dataset", "val_stride"), ("model", "batch_size"),
                         ("analysis", "top_k"), ("analysis", "components")):
        value = (cfg.get(section) or {}).get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            problems.append(f"{section}.{key}: {value!r} must be a positive integer")
    measured: dict[str, Any] = {}
    if problems:  # sizes need readable paths and sane numbers
        raise ProfileError(problems, where)
    try:
        measured["train_samples"] = n = count_samples(dataset, "train")
        if analysis["top_k"] > n:
            problems.append(f"analysis.top_k: {analysis['top_k']} exceeds the {n} train samples left after "
                            f"subsampling (dataset.train_stride={dataset['train_stride']}, "
                            f"offset={dataset['offset']}, limit={dataset['limit']})")
    except (OSError, ValueError, KeyError) as e:
        problems.append(f"dataset.train_path: {dataset['train_path']!r} cannot be counted: {e}")
    problems += _check_string_lists(dataset, analysis)
    try:
        measured["descriptions"] = m = count_descriptions(analysis)
        if m is not None and analysis["components"] > m:
            key = "text_embeddings_path" if analysis.get("text_embeddings_path") else "vocabulary_path"
            problems.append(f"analysis.components: {analysis['components']} exceeds the {m} descriptions of "
                            f"analysis.{key} ({analysis[key]!r})")
    except (OSError, ValueError, KeyError) as e:
        problems.append(f"analysis.vocabulary_path: {analysis.get('vocabulary_path')!r}: {e}")
    from ..models.hub import ModelSourceError

    try:
        measured["d_out"] = d = model_d_out(model["source"])
        if analysis["components"] > d:
            problems.append(f"analysis.components: {analysis['components']} exceeds d_out = {d} of model.source "
                            f"({model['source']!r})")
    except ModelSourceError as e:  # load_config: not a folder, missing, offline and not cached, hub errors
        problems.append(f"model.source: {e}")
    except Exception as e:  # noqa: BLE001 -- a config transformers reads but the lens cannot
        problems.append(f"model.source: {model['source']!r}: cannot read its config ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})")
    if problems:
        raise ProfileError(problems, where)
    return measured
