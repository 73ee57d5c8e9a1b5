"""The catalog's plots read at a glance: integer layer ticks, a title and axis labels, lines told apart
by colour, marker and line style; and each plot is a PNG beside its asset in the store, linked from the
catalog."""

import warnings
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from oe_assets.assets.baselines import BASELINE_SCENARIOS
from oe_assets.assets.analysis import IMAGENET_R_COLUMNS
from oe_assets.lens import ALL_SCENARIOS
from oe_assets.plots import (
    accuracy_against_layer_figure, explained_variance_profile_figure, png, significance_histogram_figure,
)
from oe_assets.resources.store import ArtifactStore
from helpers import materialize_graph, tiny_bert_profile

warnings.filterwarnings("ignore")

SCENARIOS = [*ALL_SCENARIOS, *BASELINE_SCENARIOS]


def fake_rows(layers, scenarios):
    rng = np.random.default_rng(0)
    return [{"layer": layer, **{s: float(90 + rng.normal()) for s in scenarios}} for layer in layers]


def labelled_lines(ax):
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


def check_readable(fig, n_lines: int, layer_axis: bool):
    """Every panel titled and labelled, its ``n_lines`` lines pairwise different in (marker, line
    style, colour), integer ticks on a layer axis, and one legend outside the panels."""
    for ax in fig.axes:
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel(), (ax.get_title(), ax.get_xlabel(), ax.get_ylabel())
        lines = labelled_lines(ax)
        assert len(lines) == n_lines, [line.get_label() for line in lines]
        styles = {(line.get_marker(), line.get_linestyle(), tuple(np.round(line.get_color(), 6))
                   if not isinstance(line.get_color(), str) else line.get_color()) for line in lines}
        assert len(styles) == n_lines, styles
        if layer_axis:
            assert ax.get_xlabel() == "MLP layer"
            lo, hi = sorted(ax.get_xlim())
            ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
            assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert len(fig.legends) == 1 and len(fig.legends[0].get_texts()) == n_lines
    assert png(fig).startswith(b"\x89PNG")


@pytest.mark.parametrize("layers", [[3], [0, 1], list(range(12)), list(range(40))])
def test_accuracy_against_layer(layers):
    fig = accuracy_against_layer_figure(fake_rows(layers, SCENARIOS), SCENARIOS)
    assert fig.get_suptitle() == "Ablation accuracy against layer"
    assert len(fig.axes) == 2  # accuracy, and the change from the baseline
    check_readable(fig, len(SCENARIOS), layer_axis=True)
    diff = {line.get_label(): line.get_ydata() for line in labelled_lines(fig.axes[1])}
    acc = {line.get_label(): line.get_ydata() for line in labelled_lines(fig.axes[0])}
    np.testing.assert_allclose(diff["mean_ablate_all"], acc["mean_ablate_all"] - acc["baseline"])


def test_accuracy_against_layer_with_imagenet_r_adds_a_row_styled_alike():
    columns = [*SCENARIOS, *IMAGENET_R_COLUMNS]
    fig = accuracy_against_layer_figure(fake_rows([0, 1, 2], columns), columns)
    assert len(fig.axes) == 4 and "ImageNet-R" in fig.axes[2].get_title()
    for ax in fig.axes[2:]:
        by_label = {line.get_label(): (line.get_marker(), line.get_linestyle()) for line in labelled_lines(ax)}
        assert by_label == {line.get_label(): (line.get_marker(), line.get_linestyle())
                            for line in labelled_lines(fig.axes[0]) if line.get_label() in by_label}
        assert len(by_label) == len(IMAGENET_R_COLUMNS)
    # the legend lists each scenario once
    assert len(fig.legends) == 1 and len(fig.legends[0].get_texts()) == len(SCENARIOS)


@pytest.mark.parametrize("n_layers", [1, 3, 12])
def test_significance_histogram_and_explained_variance(n_layers):
    rng = np.random.default_rng(1)
    thresholds = {str(i): rng.gamma(2 + i, 1, 200) for i in range(n_layers)}
    fig = significance_histogram_figure(thresholds)
    check_readable(fig, n_layers, layer_axis=False)
    counts = {line.get_label(): line.get_ydata() for line in labelled_lines(fig.axes[0])}
    assert all(c.sum() == 200 for c in counts.values())  # shared bins hold every neuron of each layer
    fig = explained_variance_profile_figure({str(i): rng.uniform(0, 1, 200) for i in range(n_layers)})
    check_readable(fig, n_layers, layer_axis=False)
    assert all(np.all(np.diff(line.get_ydata()) <= 0) for line in labelled_lines(fig.axes[0]))  # sorted high to low


def test_plot_path_is_beside_the_asset_and_written_atomically(tmp_path, monkeypatch):
    store = ArtifactStore(base_dir=str(tmp_path))
    assert store.plot_path("layer_summary", "accuracy") == tmp_path / "layer_summary" / "accuracy.png"
    assert store.plot_path(dg.AssetKey("neuron_pcas"), "significance", ["2"]) == tmp_path / "neuron_pcas" / "significance.2.png"
    assert store.plot_path("neuron_pcas", "significance", ["0", "1", "2"]).name == "significance.0-2.png"
    with pytest.raises(ValueError, match=r"plot name '\.\./x' of asset neuron_pcas: not a plain file name"):
        store.plot_path("neuron_pcas", "../x")
    path = store.write_plot("layer_summary", "accuracy", b"\x89PNG fake")
    assert path.read_bytes() == b"\x89PNG fake"

    def killed(self, data):
        self.write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_bytes", killed)
    with pytest.raises(KeyboardInterrupt):
        store.write_plot("layer_summary", "accuracy", b"\x89PNG new")
    monkeypatch.undo()
    assert path.read_bytes() == b"\x89PNG fake"  # the complete old plot, no half-written one
    assert sorted(p.name for p in path.parent.iterdir()) == ["accuracy.png"]  # and no staging file


def test_layer_summary_writes_its_plot_beside_it_and_links_it(tmp_path):
    defs, instance, store = materialize_graph(tiny_bert_profile(tmp_path))
    for asset, plot, name in (("layer_summary", store / "layer_summary" / "accuracy_against_layer.png", "plot"),
                              ("neuron_pcas", store / "neuron_pcas" / "significance.0-1.png", "significance"),
                              ("neuron_pcas", store / "neuron_pcas" / "explained_variance.0-1.png", "explained_variance")):
        meta = instance.get_latest_materialization_event(dg.AssetKey(asset)).asset_materialization.metadata
        assert meta[f"{name}_png"].value == str(plot.resolve()) and meta[f"{name}_url"].value == plot.resolve().as_uri()
        with Image.open(plot) as image:
            assert image.format == "PNG" and image.width > 400 and image.height > 200
    assert (store / "layer_summary" / "all.parquet").exists()
