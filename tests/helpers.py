"""Helpers shared by the test modules: running the graph in process, the tiny BERT graph's files and
profile (the reference CLIP graph fixture, ``reference_graph``, is in conftest.py)."""

import contextlib
import json
import subprocess
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import torch

from oe_assets.definitions import layer_range_tags


def materialize(defs, selection, instance, **kw):
    everything = [*defs.assets, *defs.asset_checks]
    result = dg.materialize(everything, selection=selection, resources=defs.resources, instance=instance,
                            raise_on_error=kw.pop("raise_on_error", True), **kw)
    return result


def run_job(defs, job, instance, **kw):
    """Run one of the definitions' jobs (``inputs_job``, ``layers_job``, ``summary_job``) in process."""
    return defs.resolve_job_def(job.name).execute_in_process(instance=instance, **kw)


def layer_range(first, last):
    return layer_range_tags(str(first), str(last))


def rel(got, expected):
    return np.abs(np.asarray(got) - expected).max() / np.abs(expected).max()


def tiny_bert_folder(root: Path) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = ["sports", "music", "goal", "team", "song", "band", "guitar", "match", "the", "a", "is", "about",
             "this", "text", "played", "loud", "won", "cup", "drums", "score"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    (root / "model").mkdir(parents=True)
    (root / "model" / "vocab.txt").write_text("\n".join(vocab))
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(root / "model")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=32)).save_pretrained(root / "model")
    rows = [("the team won the cup", 0), ("a goal in the match", 0), ("the band played loud", 1),
            ("guitar and drums song", 1), ("the match score", 0), ("a loud song", 1)]
    for split in ("train", "val"):
        with open(root / f"{split}.jsonl", "w") as f:
            for t, y in rows:
                f.write(json.dumps({"text": t, "label": y}) + "\n")
    (root / "classes.json").write_text(json.dumps(["sports", "music"]))
    (root / "templates.json").write_text(json.dumps(["this text is about {}", "{}"]))
    (root / "vocab.txt").write_text("\n".join(words))
    return root


def tiny_bert_profile(root: Path) -> dict:
    """A profile over the files of :func:`tiny_bert_folder` (written first)."""
    tiny_bert_folder(root)
    return {
        "model": {"source": str(root / "model"), "dtype": "float64", "device": "cpu", "batch_size": 4},
        "dataset": {"kind": "text", "train_path": str(root / "train.jsonl"), "val_path": str(root / "val.jsonl"),
                    "classes_path": str(root / "classes.json")},
        "analysis": {"top_k": 3, "components": 2, "templates_path": str(root / "templates.json"),
                     "vocabulary_path": str(root / "vocab.txt")},
        "storage": {"base_dir": str(root / "store")},
    }


def materialize_graph(profile: dict, first: int = 0, last: int = 1):
    """Every asset of ``profile``'s graph for layers ``first``..``last``, in process on an ephemeral
    instance, job by job as the CLI runs them, every asset check passing (the fast = slow check among
    them): ``(defs, instance, store folder)``."""
    from oe_assets.definitions import build_definitions, inputs_job, layers_job, summary_job

    defs = build_definitions(profile)
    instance = dg.DagsterInstance.ephemeral()
    run_job(defs, inputs_job, instance)
    result = run_job(defs, layers_job, instance, tags=layer_range(first, last))
    checks = {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks.get("fast_path_equals_slow_path") and all(checks.values()), checks
    run_job(defs, summary_job, instance)
    return defs, instance, Path(profile["storage"]["base_dir"])


def refused(defs, selection, partition_key=None) -> str:
    """Materialize ``selection`` and return the ProvenanceError's message (it must fail with one)."""
    from oe_assets.provenance import ProvenanceError

    with pytest.raises(Exception) as e:
        materialize(defs, selection, dg.DagsterInstance.ephemeral(), partition_key=partition_key)
    errors = [e.value, e.value.__cause__, getattr(e.value, "user_exception", None)]
    error = next((x for x in errors if isinstance(x, ProvenanceError)), None)
    assert error is not None, f"expected a ProvenanceError, got {e.value!r}"
    return str(error)


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str):
    """A tmpfs of ``size`` mounted on ``folder`` for the block (the test skips where mounting is not
    allowed), unmounted after it."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def one_step_job() -> dg.JobDefinition:
    """A job of one op that does nothing: runs to record in an instance (ended, failed, running)."""

    @dg.op
    def nothing():
        return None

    @dg.job
    def one_step():
        nothing()

    return one_step
