"""nbdeploy.plots: the figures explain, optimize and the widget draw, checked against the data
they were drawn from (read back from the matplotlib artists) and PNGs decoded by Pillow."""

from __future__ import annotations

import io

import numpy as np
import pytest

from nbdeploy import plots

PNG = b"\x89PNG\r\n\x1a\n"


def _fig(title: str = "Latency vs batch size", ylabel: str = "p50 latency (ms)"):
    fig = plots.new_figure(3.0, 2.0)
    ax = fig.add_subplot(111)
    ax.plot([1, 2, 3], [3, 1, 2])
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    return fig


def test_png_bytes_and_width_agree_with_pillow():
    from PIL import Image

    for dpi in (50, 90):
        png = plots.png_bytes(_fig(), dpi=dpi)
        img = Image.open(io.BytesIO(png))
        assert png.startswith(PNG) and img.format == "PNG"
        assert plots.png_width(png) == img.size[0]
    # a figure drawn at 90 dpi is wider than at 50 dpi (fonts as drawn, never rescaled)
    assert plots.png_width(plots.png_bytes(_fig(), 90)) > plots.png_width(plots.png_bytes(_fig(), 50))
    assert plots.png_width(b"GIF89a" + b"\0" * 30) is None


def test_new_figure_displays_in_jupyter_without_pyplot():
    import sys

    fig = _fig()
    assert fig._repr_png_().startswith(PNG)
    assert fig.canvas.__class__.__name__ == "FigureCanvasAgg"
    if "matplotlib.pyplot" in sys.modules:    # pyplot keeps no reference to it
        import matplotlib.pyplot as plt

        assert fig not in [plt.figure(n) for n in plt.get_fignums()]


def test_save_figures_names_files_and_can_clear(tmp_path):
    from PIL import Image

    a, b = _fig(), _fig()
    paths = plots.save_figures({"one": a, "two.png": b}, tmp_path / "out", clear=True)
    assert [p.name for p in paths] == ["one.png", "two.png"]
    for p in paths:
        assert Image.open(p).format == "PNG"
    assert a.get_axes() == [] and b.get_axes() == []          # cleared after writing
    kept = _fig()
    plots.save_figures([("kept", kept)], tmp_path)
    assert len(kept.get_axes()) == 1


def test_figure_title_and_figures_of():
    fig = _fig("Size", "model size (MiB)")
    assert plots.figure_title(fig) == "Size model size (MiB)"
    assert plots.figure_title(object()) == ""

    class R:
        def figures(self):
            return {"a": 1, "b": 2}

    assert plots.figures_of(R()) == [1, 2] and plots.figures_of(object()) == []


def test_numeric_view_and_cell_labels():
    X = np.array([[1.5, "Oslo", None], [2.0, "Rome", 3.0]], dtype=object)
    v = plots.numeric_view(X)
    np.testing.assert_array_equal(v[:, 0], [1.5, 2.0])
    assert np.isnan(v[:, 1]).all()                        # a category has no colour scale
    assert np.isnan(v[0, 2]) and v[1, 2] == 3.0           # a missing cell is NaN
    assert plots.cell_label("age", 41.23456) == "age = 41.23"
    assert "Oslo" in plots.cell_label("city", "Oslo")


def test_row_figure_draws_the_contributions_it_is_given():
    r = {"method": "shap", "row": 2, "feature_names": ["a", "b", "c"], "values": [1.0, 2.0, 3.0],
         "contributions": [0.5, -1.5, 0.1], "base_value": 0.2, "output": -0.7,
         "explained_output": "1", "output_space": "probability"}
    fig = plots.explanation_row_figure(r, max_display=2)
    ax = fig.get_axes()[0]
    bars = ax.patches
    # the two largest |contributions|, the largest on top (barh draws bottom-up)
    assert [round(p.get_width(), 6) for p in bars] == [0.5, -1.5]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a = 1", "b = 2"]
    from matplotlib.colors import to_hex

    assert [to_hex(p.get_facecolor()) for p in bars] == [plots.POSITIVE, plots.NEGATIVE]
    assert "SHAP, row 2" in ax.get_title() and "probability" in ax.get_xlabel()


def test_summary_figure_orders_features_by_mean_abs_value():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(40, 3)) * np.array([0.1, 3.0, 1.0])
    fig = plots.shap_summary_figure(values, rng.normal(size=(40, 3)), ["x0", "x1", "x2"], "value")
    ax = fig.get_axes()[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["x0", "x2", "x1"]   # top: largest
    for y, f in enumerate([0, 2, 1]):          # each row of dots is that feature's values
        np.testing.assert_allclose(np.sort(ax.collections[y].get_offsets()[:, 0]), np.sort(values[:, f]))


@pytest.mark.slow
def test_optimize_figures_plot_the_measured_numbers(tmp_path):
    """On a real optimize() result: every latency point and every size bar is a measured number."""
    from PIL import Image
    from sklearn.datasets import make_classification
    from sklearn.neural_network import MLPClassifier

    from nbdeploy.convert import convert
    from nbdeploy.optimize import optimize

    X, y = make_classification(n_samples=300, n_features=8, random_state=0)
    X = X.astype(np.float32)
    c = convert(MLPClassifier((32,), max_iter=300, random_state=0).fit(X, y), X)
    res = optimize(c, labels=y, time_budget_s=4.0, batch_sizes=[1, 16])
    lat, quant = plots.optimize_figures(res)
    ax = lat.get_axes()[0]
    drawn = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines}
    for e in res.benchmark.entries:
        if e.points and e.provider in ("native", res.provider) and e.variant != "native":
            pts = sorted(e.points, key=lambda p: p.batch_size)
            assert drawn[e.variant] == ([p.batch_size for p in pts], [p.p50_ms for p in pts])
    ok = [v for v in res.quantization.variants if v.status == "ok"]
    size_ax = quant.get_axes()[0]
    np.testing.assert_allclose([p.get_height() for p in size_ax.patches],
                               [v.size_bytes / 2**20 for v in ok])
    paths = plots.save_optimize_plots(res, tmp_path)
    assert [p.name for p in paths] == list(plots.OPTIMIZE_PLOT_FILES)
    assert all(Image.open(p).format == "PNG" for p in paths)
