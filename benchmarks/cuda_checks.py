"""CUDA checks of the lens, run on a machine with a GPU:

1. the reference CLIP outputs, on CUDA in float64 (bar 1e-5) and float32 (bar 1e-3), every layer, both splits;
2. fast path = slow path on CUDA (float64, 1e-10) for tiny CLIP, BERT and GPT-2 models, and CUDA = CPU;
3. padding invariance on CUDA;
4. with two or more GPUs: a tiny Llama split over two GPUs by ``device_map`` gives the unsplit model's
   effects, norms and first-order effects (float64, 1e-10), each block's factors on its own GPU.

    python benchmarks/cuda_checks.py REFERENCE_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import padded_batch, tiny_bert, tiny_clip_vision, tiny_decoder, tiny_gpt2

from oe_assets.lens import FirstOrderLens, SecondOrderLens, slow_second_order_effects

failures = []


def report(name, value, bar):
    ok = value <= bar
    failures.extend([] if ok else [name])
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {value:.2e} (bar {bar:.0e})", flush=True)


def rel(a, b):
    a, b = torch.as_tensor(a).double().cpu(), torch.as_tensor(b).double().cpu()
    return ((a - b).abs().max() / b.abs().max()).item()


def main() -> None:
    assert torch.cuda.is_available(), "no CUDA device"
    dev = torch.device("cuda")
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    ref = Path(sys.argv[1])
    from transformers import CLIPVisionModelWithProjection

    d = np.load(ref / "expected.npz")
    for dtype, bar in ((torch.float64, 1e-5), (torch.float32, 1e-3)):
        model = CLIPVisionModelWithProjection.from_pretrained(ref / "model", dtype=dtype).to(dev).eval()
        for layer in range(3):
            lens = SecondOrderLens(model, layer)
            for split in ("train", "val"):
                x = torch.from_numpy(d[f"{split}_images"]).to(dev, dtype)
                out = lens(x)
                assert out.device.type == "cuda" and out.dtype == dtype
                expected = d[f"{split}_second_order_layer{layer}"]
                report(f"reference CLIP {str(dtype)[6:]} layer {layer} {split}", rel(out, expected), bar)
    for name, build, batch in (
        ("clip", lambda: tiny_clip_vision(seed=1), torch.randn(3, 3, 16, 16, dtype=torch.float64)),
        ("bert", lambda: tiny_bert(seed=1), padded_batch(seed=2)),
        ("gpt2", lambda: tiny_gpt2(seed=1), padded_batch(seed=2)),
    ):
        cpu_model = build()
        gpu_model = build().to(dev)
        for conv in ({"bert": ("direct",)}.get(name, ("reference", "direct"))):
            for layer in range(3):
                gpu_in = batch.to(dev) if isinstance(batch, torch.Tensor) else {k: v.to(dev) for k, v in batch.items()}
                fast = SecondOrderLens(gpu_model, layer, convention=conv)(gpu_in)
                slow = slow_second_order_effects(gpu_model, gpu_in, layer, convention=conv)
                cpu = SecondOrderLens(cpu_model, layer, convention=conv)(batch)
                report(f"{name} {conv} layer {layer}: cuda fast vs cuda slow", rel(fast, slow), 1e-10)
                report(f"{name} {conv} layer {layer}: cuda vs cpu", rel(fast, cpu), 1e-10)
        if name != "clip":
            lens = SecondOrderLens(gpu_model, 1)
            together = lens({k: v.to(dev) for k, v in batch.items()})
            n = int(batch["attention_mask"][1].sum())
            alone = lens({k: v[1:2, :n].to(dev) for k, v in batch.items()})
            report(f"{name} padding invariance on cuda", rel(together[1:2], alone), 1e-10)


def multi_gpu_checks() -> None:
    """A tiny Llama split over GPUs 0 and 1 (half the blocks each) against the whole model on GPU 0."""
    import tempfile

    from oe_assets.models.loading import load_model

    layers = 6
    with tempfile.TemporaryDirectory() as folder:
        tiny_decoder("llama", seed=1, layers=layers).save_pretrained(folder)
        whole = load_model(folder, dtype="float64", device="cuda:0")
        device_map = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.norm": 1, "lm_head": 1,
                      **{f"model.layers.{i}": 0 if i < layers // 2 else 1 for i in range(layers)}}
        split = load_model(folder, dtype="float64", device_map=device_map)
        batch = padded_batch(seed=2)
        for layer in (0, layers // 2 - 1, layers // 2):
            ref = SecondOrderLens(whole.adapter, layer).factorized(batch)
            lens = SecondOrderLens(split.adapter, layer)
            got = lens.factorized(batch)
            report(f"llama split over 2 GPUs layer {layer}: effects", rel(got.dense(), ref.dense()), 1e-10)
            report(f"llama split over 2 GPUs layer {layer}: norms", rel(got.norms(), ref.norms()), 1e-10)
            report(f"llama split over 2 GPUs layer {layer}: first order",
                   rel(FirstOrderLens(split.adapter, layer)(batch), FirstOrderLens(whole.adapter, layer)(batch)), 1e-10)
            wrong = [b.index for b in lens.blocks if b.device != torch.device("cuda", device_map[f"model.layers.{b.index}"])]
            placed = sorted({str(d) for d in lens.factors.devices})
            report(f"llama split layer {layer}: blocks off their mapped GPU ({placed})", float(len(wrong)), 0)


if __name__ == "__main__":
    main()
    if torch.cuda.device_count() >= 2:
        multi_gpu_checks()
    else:
        print("one GPU: the multi-GPU device_map check is skipped", flush=True)
    print("FAILED: " + ", ".join(failures) if failures else "all CUDA checks passed")
    sys.exit(1 if failures else 0)
