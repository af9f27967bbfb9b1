"""Every figure nbdeploy draws, and the rendering helpers around them.

Results (:class:`~nbdeploy.explain.ExplainReport`, :class:`~nbdeploy.optimize.OptimizeResult`)
hold numbers; this module turns them into matplotlib figures, PNG bytes and HTML.  The widget,
the report and the bundle's ``plots/`` all draw through it, so a plot looks the same everywhere.

matplotlib is imported lazily (``import nbdeploy`` stays light), and figures are built without
pyplot: a :class:`~matplotlib.figure.Figure` on an Agg canvas holds no global state, is safe in
threads and servers, and leaves the notebook's own backend alone.
"""

from __future__ import annotations

import html
import io
import struct
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import missing

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NOTEBOOK_DPI = 90     # PNGs shown in a notebook cell (widget, report)
FILE_DPI = 100        # PNGs written to files (the bundle's plots/)
POSITIVE, NEGATIVE = "#d62728", "#1f77b4"    # a contribution that raises / lowers the output


# ---------------------------------------------------------------------------------------
# figures and PNGs
# ---------------------------------------------------------------------------------------
def require_matplotlib(why: str = "for plots") -> None:
    """Raise nbdeploy's missing-dependency error (with the pip hint) if matplotlib is absent
    (a dependency of nbdeploy, so only a broken environment lacks it)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise missing("matplotlib", None, why) from exc


def new_figure(width: float, height: float):
    """A pyplot-free Figure on an Agg canvas that still displays in Jupyter (``_repr_png_``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)

    def _repr_png_() -> bytes:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=FILE_DPI, bbox_inches="tight")
        return buf.getvalue()

    fig._repr_png_ = _repr_png_
    return fig


def png_bytes(fig: Any, dpi: int = NOTEBOOK_DPI) -> bytes:
    """PNG bytes of a matplotlib Figure (a pyplot figure is closed afterwards, so a notebook
    does not show it a second time)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        try:
            plt.close(fig)
        except Exception:  # pragma: no cover - a Figure made without pyplot
            pass
    return buf.getvalue()


def png_width(png: bytes) -> int | None:
    """The pixel width a PNG was drawn at (from its IHDR chunk), or None if it is no PNG."""
    if bytes(png[:8]) != PNG_MAGIC or len(png) < 24:
        return None
    return struct.unpack(">I", bytes(png[16:20]))[0]


def save_figures(figures: dict | Iterable[tuple[str, Any]], directory: str | Path, *,
                 dpi: int = FILE_DPI, clear: bool = False) -> list[Path]:
    """Write ``{name: figure}`` as ``directory/name.png`` (".png" added unless the name has it);
    returns the paths.  ``clear`` empties each figure afterwards (frees its artists)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    items = figures.items() if isinstance(figures, dict) else figures
    paths = []
    for name, fig in items:
        if not isinstance(fig.canvas, FigureCanvasAgg):
            FigureCanvasAgg(fig)
        path = directory / (name if str(name).endswith(".png") else f"{name}.png")
        fig.savefig(path, format="png", dpi=dpi, bbox_inches="tight")
        if clear:
            fig.clf()
        paths.append(path)
    return paths


def figures_of(result: Any) -> list:
    """The figures a result draws (its ``figures()``, a list or a dict), as a list."""
    fn = getattr(result, "figures", None)
    if not callable(fn):
        return []
    figs = fn()
    if isinstance(figs, dict):
        figs = list(figs.values())
    return list(figs or [])


def figure_title(fig: Any) -> str:
    """The words a figure is titled with (suptitle, axes titles and y labels), for sorting
    figures into the widget's tabs."""
    parts = []
    try:
        if getattr(fig, "_suptitle", None) is not None:
            parts.append(fig._suptitle.get_text())
        for ax in fig.get_axes():
            parts.append(ax.get_title())
            parts.append(ax.get_ylabel())
    except Exception:
        pass
    return " ".join(p for p in parts if p)


# ---------------------------------------------------------------------------------------
# explanations (nbdeploy.explain.ExplainReport)
# ---------------------------------------------------------------------------------------
def numeric_view(X: np.ndarray) -> np.ndarray:
    """Rows as floats for colouring plots; in an object table, categorical/text columns are NaN."""
    X = np.asarray(X)
    if X.dtype != object:
        return X.astype(np.float64)
    out = np.full(X.shape, np.nan)
    for j in range(X.shape[1]):
        col = X[:, j]
        if not any(isinstance(v, str) for v in col):
            out[:, j] = [np.nan if v is None else float(v) for v in col]
    return out


def cell_label(name: str, value: Any) -> str:
    """``feature = value`` for a bar label (text shortened, missing said so)."""
    if value is None or isinstance(value, str):
        from .runtime.explain import TableCodec

        kind = "text" if isinstance(value, str) and len(value) > 40 else "categorical"
        return TableCodec([{"name": name, "kind": kind}]).cell_text(0, value)
    return f"{name} = {value:.4g}"


def shap_importance_figure(importance: list[dict], output_space: str, max_display: int = 15):
    """Horizontal bars of mean |SHAP| per feature (``ExplainReport.global_importance()``)."""
    imp = importance[:max_display][::-1]
    fig = new_figure(5.6, max(2.2, 0.26 * len(imp) + 1.0))   # a notebook cell at 90 dpi: ~500 px
    ax = fig.add_subplot(111)
    ax.barh([d["feature"] for d in imp], [d["mean_abs_shap"] for d in imp], color=NEGATIVE)
    ax.set_xlabel(f"mean |SHAP| ({output_space})")
    ax.set_title("Global feature importance")
    fig.tight_layout()
    return fig


def shap_summary_figure(values: np.ndarray, X: np.ndarray, feature_names: list[str],
                        output_space: str, max_display: int = 15):
    """A beeswarm: each row's SHAP value ``values[N, F]`` per feature, coloured by the
    feature's value in ``X`` (low blue, high red; categories and missing values neutral)."""
    order = np.argsort(-np.abs(values).mean(0), kind="stable")[:max_display][::-1]
    fig = new_figure(5.6, max(2.2, 0.26 * len(order) + 1.0))
    ax = fig.add_subplot(111)
    rng = np.random.default_rng(0)
    sc = None
    Xf = numeric_view(X)
    for y, f in enumerate(order):
        x = Xf[:, f]
        ok = ~np.isnan(x)
        lo, hi = np.nanpercentile(x, [5, 95]) if ok.any() else (0.0, 0.0)
        c = np.clip((x - lo) / (hi - lo), 0, 1) if hi > lo else np.full(len(x), 0.5)
        c = np.where(ok, c, 0.5)      # missing values and categories: neutral colour
        sc = ax.scatter(values[:, f], y + rng.uniform(-0.3, 0.3, len(x)), c=c, cmap="coolwarm",
                        s=10, vmin=0, vmax=1, linewidths=0)
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels([feature_names[f] for f in order])
    ax.axvline(0, color="#999", lw=0.8)
    ax.set_xlabel(f"SHAP value ({output_space})")
    ax.set_title("SHAP summary")
    if sc is not None:
        cb = fig.colorbar(sc, ax=ax, ticks=[0, 1])
        cb.ax.set_yticklabels(["low", "high"])
        cb.set_label("feature value")
    fig.tight_layout()
    return fig


def explanation_row_figure(r: dict, max_display: int = 15):
    """One row's contributions (an ``explain_row`` answer, SHAP or LIME) as signed bars."""
    from matplotlib.ticker import MaxNLocator

    contrib = np.asarray(r["contributions"])
    order = np.argsort(-np.abs(contrib), kind="stable")[:max_display][::-1]
    fig = new_figure(5.6, max(2.2, 0.26 * len(order) + 1.2))
    ax = fig.add_subplot(111)
    if r["method"] == "lime":
        labels = [r["rules"][j] for j in order]
        title = (f"LIME, row {r['row']}, output {r['explained_output']!r}: local prediction "
                 f"{r['local_prediction']:.4g}, model {r['output']:.4g}")
    else:
        labels = [cell_label(r["feature_names"][j], r["values"][j]) for j in order]
        title = (f"SHAP, row {r['row']}, output {r['explained_output']!r}: base {r['base_value']:.4g}"
                 f" -> output {r['output']:.4g}")
    ax.barh(labels, contrib[order], color=[POSITIVE if v > 0 else NEGATIVE for v in contrib[order]])
    ax.axvline(0, color="#999", lw=0.8)
    ax.set_title(title, fontsize=9, wrap=True)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))   # tick labels must not run together
    ax.set_xlabel("contribution" + (f" ({r['output_space']})" if r.get("output_space") else ""))
    fig.tight_layout()
    return fig


def explanation_figures(report: Any, *, row: int = 0, max_display: int = 15) -> dict:
    """An ExplainReport's figures: ``shap_importance``, ``shap_summary``, ``shap_row_{row}``
    and, when LIME is served, ``lime_row_{row}``."""
    require_matplotlib("for explanation plots")
    idx = report.explained_index
    values = report.shap_values[np.arange(len(report.X)), :, idx]            # [N, F]
    figs = {"shap_importance": shap_importance_figure(report.global_importance(),
                                                      report.output_space, max_display),
            "shap_summary": shap_summary_figure(values, report.X, report.feature_names,
                                                report.output_space, max_display),
            f"shap_row_{row}": explanation_row_figure(report.explain_row(row, "shap"), max_display)}
    if "lime" in report.methods:
        figs[f"lime_row_{row}"] = explanation_row_figure(report.explain_row(row, "lime"), max_display)
    return figs


def explanation_html(report: Any, max_features: int = 10) -> str:
    """An ExplainReport as HTML: explainer, output space, additivity, the top features with
    inline bars, and the notes."""
    esc = html.escape
    imp = report.global_importance()[:max_features]
    top = imp[0]["mean_abs_shap"] if imp and imp[0]["mean_abs_shap"] > 0 else 1.0
    bars = "".join(
        f"<tr><td>{esc(d['feature'])}</td><td style='text-align:right'>{d['mean_abs_shap']:.4g}</td>"
        f"<td><div style='background:{NEGATIVE};height:10px;width:{int(160 * d['mean_abs_shap'] / top)}px'>"
        f"</div></td></tr>" for d in imp)
    notes = "".join(f"<li>{esc(n)}</li>" for n in report.notes)
    return (f"<div><b>nbdeploy explain</b>: {esc(report.explainer)} SHAP on {len(report.X)} rows, "
            f"output space <code>{esc(report.output_space)}</code>, additivity error "
            f"{report.additivity_error:.2g}; methods {esc(', '.join(report.methods))}"
            f"<table><tr><th>feature</th><th>mean |SHAP|</th><th></th></tr>{bars}</table>"
            + (f"<ul>{notes}</ul>" if notes else "") + "</div>")


def token_html(row: dict) -> str:
    """The text with each token coloured by its contribution (red raises the class, blue lowers)."""
    esc = html.escape
    tokens = row.get("tokens") or []
    scale = max([abs(t["value"]) for t in tokens] + [1e-12])
    parts = []
    for t in tokens:
        a = min(1.0, abs(t["value"]) / scale)
        rgb = "220,40,40" if t["value"] > 0 else "40,90,220"
        parts.append(f'<span title="{t["value"]:+.4f}" style="background:rgba({rgb},{a:.2f});'
                     f'padding:0 1px;border-radius:2px">{esc(str(t["token"]))}</span>')
    head = esc(f'{row.get("label")} (p={row.get("output", float("nan")):.3f}, '
               f'{row.get("method", "shap")})')
    return f'<div style="margin:4px 0"><b>{head}</b>: {" ".join(parts)}</div>'


# ---------------------------------------------------------------------------------------
# benchmark and quantization (nbdeploy.optimize.OptimizeResult)
# ---------------------------------------------------------------------------------------
OPTIMIZE_PLOT_FILES = ("benchmark_latency.png", "quantize_size_accuracy.png")


def optimize_figures(res: Any) -> list:
    """An OptimizeResult's figures: p50 latency vs batch size (log-log, native dashed), and
    size / accuracy delta per quantized variant (the chosen one green, the tolerance red)."""
    require_matplotlib("for benchmark plots")
    from matplotlib.figure import Figure  # no pyplot state: figures are safe in threads and servers

    fig1 = Figure(figsize=(5.4, 3.4))   # sized for a notebook cell
    ax = fig1.add_subplot()
    for e in res.benchmark.entries:
        if not e.points or e.provider not in ("native", res.provider):
            continue
        pts = sorted(e.points, key=lambda p: p.batch_size)
        label = f"native ({e.note})" if e.variant == "native" and e.note else e.variant
        ax.plot([p.batch_size for p in pts], [p.p50_ms for p in pts], marker="o", label=label,
                linestyle="--" if e.variant == "native" else "-")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("batch size (rows)")
    ax.set_ylabel("p50 latency (ms)")
    ax.set_title(f"Latency vs batch size on {res.provider.replace('ExecutionProvider', '')}"
                 + (" (truncated)" if res.truncated else ""))
    ax.grid(True, which="both", alpha=0.3)
    if ax.lines:
        ax.legend()

    fig2 = Figure(figsize=(7.2, 3.0))
    ax1, ax2 = fig2.subplots(1, 2)
    vs = [v for v in res.quantization.variants if v.status == "ok"]
    names = [v.name for v in vs]
    colors = ["tab:green" if v.name == res.chosen else "tab:blue" for v in vs]
    ax1.bar(names, [(v.size_bytes or 0) / 2**20 for v in vs], color=colors)
    ax1.set_ylabel("model size (MiB)")
    ax1.set_title("Size")
    unit = "points" if res.quantization.task == "classifier" else "relative error"
    deltas = [(v.delta or 0.0) * (1 if v.delta_unit == "pt" else 100) for v in vs]
    ax2.bar(names, deltas, color=colors)
    limit = res.quantization.tolerance["accuracy_points" if unit == "points" else "relative_error"]
    ax2.axhline(limit * (1 if unit == "points" else 100), color="tab:red", linestyle="--", label="tolerance")
    ax2.set_ylabel("accuracy lost (points)" if unit == "points" else "relative error (%)")
    ax2.set_title("Accuracy delta vs native model")
    ax2.legend()
    for a in (ax1, ax2):
        a.tick_params(axis="x", labelrotation=20)
    fig2.tight_layout()
    return [fig1, fig2]


def save_optimize_plots(res: Any, directory: str | Path) -> list[Path]:
    """Write :func:`optimize_figures` as ``benchmark_latency.png`` and
    ``quantize_size_accuracy.png`` in ``directory``; returns their paths."""
    return save_figures(list(zip(OPTIMIZE_PLOT_FILES, optimize_figures(res))), directory)


def heatmap_figure(result: dict, images: np.ndarray, *, max_images: int = 4):
    """A matplotlib figure: each image beside its attribution heat map (red for the class,
    blue against), titled with the explained class and its probability."""
    n = min(len(result["attributions"]), max_images)
    fig = new_figure(2.2 * n, 4.4)
    axes = fig.subplots(2, n, squeeze=False)
    layout = result.get("layout", "NCHW")
    for i in range(n):
        img = np.asarray(images[i], dtype=np.float64).reshape(result["shape"])
        a = np.asarray(result["attributions"][i], dtype=np.float64).reshape(result["shape"])
        if img.ndim == 3:
            ch = 0 if layout == "NCHW" else 2
            img_show = img.mean(axis=ch)
            a = a.sum(axis=ch)
        else:
            img_show = img
        lim = float(np.abs(a).max()) or 1.0
        axes[0, i].imshow(img_show, cmap="gray")
        axes[0, i].set_title(f"{result['explained_output'][i]} ({result['outputs'][i]:.2f})", fontsize=9)
        axes[1, i].imshow(a, cmap="bwr", vmin=-lim, vmax=lim)
        for ax in axes[:, i]:
            ax.set_axis_off()
    fig.suptitle(f"{result.get('method', 'occlusion')} attributions (red: for the class)", fontsize=10)
    fig.tight_layout()
    return fig


__all__ = ["heatmap_figure", "new_figure", "png_bytes", "png_width", "save_figures", "figures_of", "figure_title",
           "numeric_view", "cell_label", "shap_importance_figure", "shap_summary_figure",
           "explanation_row_figure", "explanation_figures", "explanation_html", "optimize_figures",
           "save_optimize_plots", "require_matplotlib", "token_html"]
