"""Token-row storage of text effects against ``alpha``: bytes per sample at the Llama-3-8B shape, and
write / read times of both forms on a small random Llama on this machine, side by side in one run.

1. Bytes per sample per layer at the Llama-3-8B shape (d_model 4096, d_ff 14,336, 32 query / 8
   key-value heads, 32 layers, 128 tokens), from the writer's own size rule
   (:meth:`FactorizedEffectsWriter.bytes_per_sample`, float32, direct convention, no extras): layer 0
   has 31 later blocks x 32 heads = 992 paths.  No weights are needed (the factors are meta tensors).
2. A random Llama (d_model 128, d_ff 512, 8 layers, 8 query / 4 key-value heads: 56 paths at
   layer 0) on texts of 8..48 tokens (``--samples``, batches of ``--batch``, right-padded): the
   effects of layer 0 written in each form (the data pass itself is not timed), the file's size,
   and reading it back: every norm, the PCA (top 16 rows per neuron) and the sum over neurons
   (best of several runs: the machine is shared).

    python benchmarks/bench_token_form.py [--samples 512] [--batch 32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

from common import timed
from oe_assets.lens import SecondOrderLens, neuron_pca
from oe_assets.lens.effects_file import FactorizedEffectsWriter, choose_form, open_factorized
from oe_assets.lens.factorized import HeadFactors

MB = 1e6


def llama3_8b_table(tokens: int = 128) -> list[list]:
    """Bytes per sample of chosen layers at the Llama-3-8B shape, in each form."""
    d, d_ff, heads, d_head, layers = 4096, 14_336, 32, 128, 32
    rows = []
    total = {"alpha": 0, "token_rows": 0, "auto": 0}
    for layer in range(layers - 1):
        P = (layers - 1 - layer) * heads
        factors = HeadFactors(torch.empty(P, d, d_head, device="meta"), torch.empty(P, d_head, d_ff, device="meta"))
        size = {form: FactorizedEffectsWriter.bytes_per_sample(factors, False, max_tokens=tokens, form=form)
                for form in ("alpha", "token_rows")}
        chosen = choose_form(factors, max_tokens=tokens)
        for form in size:
            total[form] += size[form]
        total["auto"] += size[chosen]
        if layer in (0, 8, 16, 24, 28, 30):
            crossover = P * d_ff / (P + d_ff)  # token rows are smaller below this many tokens
            rows.append([layer, P, f"{size['alpha'] / MB:.2f}", f"{size['token_rows'] / MB:.2f}",
                         f"{size['alpha'] / size['token_rows']:.1f}x", f"{crossover:.0f}", chosen])
    rows.append(["all 31", "", f"{total['alpha'] / MB:.1f}", f"{total['token_rows'] / MB:.1f}", "",
                 "", f"chosen: {total['auto'] / MB:.1f}"])
    return rows


def small_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=1000, hidden_size=128, intermediate_size=512, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


def text_batches(samples: int, batch: int, shortest: int, longest: int, seed: int = 0) -> tuple[list[dict], int]:
    """Right-padded random token batches of lengths in ``shortest..longest``; also the real tokens."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(shortest, longest + 1, (samples,), generator=g)
    out = []
    for i in range(0, samples, batch):
        n = lengths[i:i + batch]
        T = int(n.max())
        ids = torch.randint(3, 1000, (len(n), T), generator=g)
        mask = (torch.arange(T)[None, :] < n[:, None]).long()
        out.append({"input_ids": ids * mask, "attention_mask": mask})
    return out, int(lengths.sum())


def write_and_read(folder: Path, lens, effects: list, samples: int, batch: int, longest: int, form: str,
                   repeat: int = 3) -> dict:
    """Best of ``repeat`` times of writing the file and of each read (the machine is shared)."""
    def write(path):
        with FactorizedEffectsWriter(path, samples, lens.factors, lens.convention == "reference", batch_size=batch,
                                     max_tokens=longest, form=form) as writer:
            for fe in effects:
                writer.write(fe)
            writer.close(labels=np.zeros(samples, dtype=np.int64))
        return writer

    times = {}
    for i in range(repeat):
        t0 = time.perf_counter()
        writer = write(folder / f"{form}{i}.h5")
        times["write_s"] = min(times.get("write_s", np.inf), time.perf_counter() - t0)
    path = folder / f"{form}0.h5"
    fe = open_factorized(path)
    reads = {"norms": fe.norms, "pca": lambda: neuron_pca(fe, top_k=16).components,
             "sum": lambda: fe.sums(masks=[None])[0][0]}
    out = {"form": writer.form, "bytes": path.stat().st_size, **times}
    for name, read in reads.items():
        best, out[name] = timed(read, repeat=repeat - 1)
        out[f"{name}_s"] = best
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    print("Llama-3-8B shape, 128 tokens, float32: stored MB per sample and layer")
    print(tabulate(llama3_8b_table(), headers=["layer", "paths", "alpha MB", "token rows MB", "alpha / rows",
                                               "rows smaller below (tokens)", "chosen"]))

    shortest, longest = 8, 48
    lens = SecondOrderLens(small_llama(), 0, convention="direct")
    inputs, real_tokens = text_batches(args.samples, args.batch, shortest, longest)
    t0 = time.perf_counter()
    with torch.no_grad():
        effects = [lens.factorized(b) for b in inputs]
    pass_s = time.perf_counter() - t0
    padded_tokens = sum(int(b["input_ids"].numel()) for b in inputs)
    P, N = lens.factors.n_paths, lens.factors.n_neurons
    print(f"\nrandom Llama (d 128, d_ff 512, 8 layers, 8/4 heads), layer 0: {P} paths x {N} neurons; "
          f"{args.samples} texts of {shortest}..{longest} tokens ({real_tokens} real tokens, {padded_tokens} with "
          f"padding), batches of {args.batch}; automatic choice at max_tokens={longest}: "
          f"{choose_form(lens.factors, max_tokens=longest)}; the data pass itself (forward + path weights): "
          f"{pass_s:.2f} s")
    with tempfile.TemporaryDirectory() as tmp:
        results = [write_and_read(Path(tmp), lens, effects, args.samples, args.batch, longest, form)
                   for form in ("alpha", "token_rows")]
    base, rows = results
    print(tabulate([[r["form"], f"{r['bytes'] / MB:.1f}", f"{r['bytes'] / args.samples / 1e3:.1f}",
                     f"{r['write_s']:.2f}", f"{r['norms_s']:.2f}", f"{r['pca_s']:.2f}", f"{r['sum_s']:.2f}"]
                    for r in results],
                   headers=["form", "file MB", "kB / sample", "write s", "norms s", "PCA s", "sum s"]))
    worst = max(np.abs(rows[k] - base[k]).max() / np.abs(base[k]).max() for k in ("norms", "sum"))
    print(f"token rows / alpha: {rows['bytes'] / base['bytes']:.2f}x the bytes; largest relative difference of "
          f"norms and sums {worst:.1e} (float32 storage); times: best of 3 writes, 2 reads after one warm-up")


if __name__ == "__main__":
    main()
