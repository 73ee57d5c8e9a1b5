"""Plots for the catalog (matplotlib, Agg), returned as PNG bytes or Markdown image tags."""

from __future__ import annotations

import base64
import io

import numpy as np


def _figure(width=6.0, height=3.5):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(width, height), dpi=100)


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def markdown_image(png: bytes, alt: str) -> str:
    """A Markdown image with the PNG inlined (the catalog renders it; nothing is fetched)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def significance_histogram(thresholds_by_layer: dict[str, np.ndarray]) -> bytes:
    """Distribution of neuron significance (``norms[:, 0]``) per layer."""
    plt, fig, ax = _figure()
    for layer, thr in thresholds_by_layer.items():
        ax.hist(thr, bins=40, histtype="step", label=f"layer {layer}")
    ax.set_xlabel("significance threshold (top-k norm)")
    ax.set_ylabel("neurons")
    ax.legend(fontsize=7)
    return _png(plt, fig)


def explained_variance_profile(explained_by_layer: dict[str, np.ndarray]) -> bytes:
    """Share of each neuron's top-k variance along its PC, neurons sorted high to low."""
    plt, fig, ax = _figure()
    for layer, ev in explained_by_layer.items():
        ax.plot(np.sort(ev)[::-1], label=f"layer {layer}")
    ax.set_xlabel("neurons (sorted)")
    ax.set_ylabel("variance explained by the PC")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    return _png(plt, fig)


def accuracy_against_layer(rows: list[dict], scenarios: list[str]) -> bytes:
    """Val accuracy of every ablation scenario against layer."""
    plt, fig, ax = _figure()
    layers = [r["layer"] for r in rows]
    for s in scenarios:
        ax.plot(layers, [np.nan if r.get(s) is None else r[s] for r in rows], marker="o", label=s)
    ax.set_xlabel("MLP layer")
    ax.set_ylabel("val top-1 accuracy (%)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _png(plt, fig)
