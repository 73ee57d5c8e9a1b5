"""Plots for the catalog (matplotlib's object API, Agg; no pyplot state): each ``*_figure`` function
builds a titled, labelled :class:`~matplotlib.figure.Figure` whose lines differ in colour, marker and
line style; the same-named function without ``_figure`` returns it as PNG bytes.  matplotlib is
imported on first use (loading the definitions stays fast)."""

from __future__ import annotations

import base64
import io

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: line styles and markers cycled over the lines of a plot; with distinct colours every line differs
#: in all three, so it can be told apart in greyscale or where lines overlap
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">", "h", "p")
#: scenario columns of an ImageNet-R folder start with this; they get a row of panels of their own
IMAGENET_R_PREFIX = "imagenet_r_"


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _integer_ticks(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _style(i: int, n: int, sequential: bool = False) -> dict:
    """The style of line ``i`` of ``n``: tab10 colours (``sequential``: viridis, early to late)."""
    import matplotlib

    if sequential:
        color = matplotlib.colormaps["viridis"](0.9 * i / max(n - 1, 1))
    else:
        color = matplotlib.colormaps["tab10" if n <= 10 else "tab20"](i % (10 if n <= 10 else 20))
    return {"color": color, "marker": MARKERS[i % len(MARKERS)], "linestyle": LINESTYLES[i % len(LINESTYLES)]}


def _layer_axis(ax, layers: list[int]) -> None:
    """Integer layer ticks: every layer when there are few, else integer steps."""
    if len(layers) <= 16:
        ax.set_xticks(sorted(set(layers)))
    else:
        _integer_ticks(ax.xaxis)
    ax.set_xlabel("MLP layer")


def _legend(fig: Figure, ax, title: str) -> None:
    """One legend right of the plots (never over the lines)."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, title=title, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
               title_fontsize=8, frameon=False)


def png(fig: Figure) -> bytes:
    """``fig`` as PNG bytes, the legend outside the axes included."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def markdown_image(png: bytes, alt: str) -> str:
    """A Markdown image with the PNG inlined (the catalog renders it; nothing is fetched)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def significance_histogram_figure(thresholds_by_layer: dict[str, np.ndarray]) -> Figure:
    """Distribution of neuron significance (``norms[:, 0]``) per layer, over bins shared by all
    layers (so the curves compare), one line per layer coloured early (dark) to late (yellow)."""
    fig = _new_figure(7.0, 3.8)
    ax = fig.add_subplot()
    values = [np.asarray(t, dtype=float) for t in thresholds_by_layer.values()]
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.zeros(0)
    edges = np.histogram_bin_edges(finite if finite.size else [0.0, 1.0], bins=40)
    centers = (edges[:-1] + edges[1:]) / 2
    for i, (layer, v) in enumerate(thresholds_by_layer.items()):
        counts, _ = np.histogram(v[np.isfinite(v)], bins=edges)
        ax.plot(centers, counts, drawstyle="steps-mid", markevery=4, markersize=4, label=f"layer {layer}",
                **_style(i, len(thresholds_by_layer), sequential=True))
    ax.set_title("Neuron significance per layer")
    ax.set_xlabel("significance threshold (top-k norm)")
    ax.set_ylabel("neurons")
    _integer_ticks(ax.yaxis)
    ax.grid(alpha=0.3)
    _legend(fig, ax, "layer")
    return fig


def explained_variance_profile_figure(explained_by_layer: dict[str, np.ndarray]) -> Figure:
    """Share of each neuron's top-k variance along its PC, neurons sorted high to low, one line per layer."""
    fig = _new_figure(7.0, 3.8)
    ax = fig.add_subplot()
    for i, (layer, ev) in enumerate(explained_by_layer.items()):
        ev = np.sort(np.asarray(ev, dtype=float))[::-1]
        ax.plot(ev, markevery=max(len(ev) // 8, 1), markersize=4, label=f"layer {layer}",
                **_style(i, len(explained_by_layer), sequential=True))
    ax.set_title("Variance explained by each neuron's first PC")
    ax.set_xlabel("neurons, sorted by variance explained")
    ax.set_ylabel("variance explained by the PC")
    _integer_ticks(ax.xaxis)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    _legend(fig, ax, "layer")
    return fig


def accuracy_against_layer_figure(rows: list[dict], scenarios: list[str]) -> Figure:
    """Accuracy of every ablation scenario against layer: left its accuracy, right its difference
    from the baseline in percentage points (lines near the baseline overlap on the left and part on
    the right).  ImageNet-R scenarios (``imagenet_r_*``) get a second row.  A scenario has the same
    style in every panel; one legend for all."""
    groups = [(title, [s for s in scenarios if s.startswith(IMAGENET_R_PREFIX) == r]) for title, r in
              (("validation set", False), ("ImageNet-R", True))]
    groups = [(title, names) for title, names in groups if names]
    kinds = sorted({s.removeprefix(IMAGENET_R_PREFIX) for s in scenarios}, key=[
        s.removeprefix(IMAGENET_R_PREFIX) for s in scenarios].index)
    styles = {k: _style(i, len(kinds)) for i, k in enumerate(kinds)}
    layers = [int(r["layer"]) for r in rows]
    fig = _new_figure(10.0, 3.6 * len(groups))
    axes = fig.subplots(len(groups), 2, squeeze=False)
    for (title, names), (acc_ax, diff_ax) in zip(groups, axes):
        prefix = IMAGENET_R_PREFIX if names[0].startswith(IMAGENET_R_PREFIX) else ""
        column = lambda s: np.array([np.nan if r.get(s) is None else float(r[s]) for r in rows])  # noqa: E731
        base = column(prefix + "baseline") if prefix + "baseline" in names else None
        for s in names:
            kind = s.removeprefix(prefix)
            acc_ax.plot(layers, column(s), label=kind, markersize=5, **styles[kind])
            if base is not None:
                diff_ax.plot(layers, column(s) - base, label=kind, markersize=5, **styles[kind])
        acc_ax.set_title(f"{title}: top-1 accuracy")
        acc_ax.set_ylabel("top-1 accuracy (%)")
        diff_ax.set_title(f"{title}: change from baseline" if base is not None else f"{title}: no baseline")
        diff_ax.set_ylabel("accuracy − baseline (pp)")
        diff_ax.axhline(0.0, color="0.6", linewidth=0.8, zorder=0)
        for ax in (acc_ax, diff_ax):
            _layer_axis(ax, layers)
            ax.grid(alpha=0.3)
    fig.suptitle("Ablation accuracy against layer")
    _legend(fig, axes[0][0], "scenario")
    return fig


def significance_histogram(thresholds_by_layer: dict[str, np.ndarray]) -> bytes:
    return png(significance_histogram_figure(thresholds_by_layer))


def explained_variance_profile(explained_by_layer: dict[str, np.ndarray]) -> bytes:
    return png(explained_variance_profile_figure(explained_by_layer))


def accuracy_against_layer(rows: list[dict], scenarios: list[str]) -> bytes:
    return png(accuracy_against_layer_figure(rows, scenarios))
