"""explain: SHAP and LIME for a converted model, in the notebook and for the served bundle.

Which SHAP explainer
--------------------
* **Tree ensembles** (scikit-learn forests, extra-trees, decision trees, gradient boosting,
  XGBoost, LightGBM): exact path-dependent TreeSHAP on the native model.  The output space is
  the trees' own: probabilities for scikit-learn forest/tree classifiers, the raw margin
  (log-odds for binary, per-class margins for multi-class) for boosted classifiers, values for
  regressors.  It is reported as ``output_space``; additivity is checked against the native
  model's output in that space.  The bundle gets the trees as plain arrays (``trees.npz``)
  that the served explainer feeds back to ``shap.TreeExplainer``.
* **Everything else** (linear models, pipelines, PyTorch, ONNX files, kernels...): Shapley
  values over the chosen ONNX variant with a k-means-summarised, weighted background of the
  sample (exact over all coalitions for <= 8 features, antithetic permutation sampling
  otherwise), in probability space for classifiers.  For PyTorch this beats Deep/Gradient
  explainers here: it explains the graph that is actually served, is exactly additive, and the
  bundle needs no torch to reproduce it.
* **LIME**: lime's tabular explainer with quartile discretisation, rebuilt from stored bin
  statistics (no training rows in the bundle), seeded per row.
* **Table mode** (models fit on DataFrames with categorical/text columns or missing values):
  one contribution per original DataFrame column, two routes:

  - ``ColumnTransformer [-> per-feature steps] -> tree ensemble`` pipelines: exact TreeSHAP on
    the features the trees see, computed by the served graph cut at the tree ensemble's input
    (``explain/features.onnx``); each transformed feature (every one-hot column of "city",
    every TF-IDF token of a text column) is traced to its column through
    ``ColumnTransformer.output_indices_`` and the transformers' output names, and summed into
    it.  Sums keep additivity, exactly against the trees' output.
  - everything else (linear/other pipelines, boosters splitting on categories inside the
    graph, pipelines whose features cannot be traced): model-agnostic Shapley values over the
    served ONNX graph with each column as one player (a categorical/text cell moves as a
    whole, so its one-hot/TF-IDF features are never split); the background is a seeded
    subsample of the sample's rows, stored encoded (floats + string pools in JSON).
    ``base + sum(phi) == ONNX output`` holds exactly.

  Against the native model additivity holds to the ONNX-vs-native difference (float32, about
  1e-6 for probabilities).  LIME uses lime categorical features for categorical, text and
  boolean columns and explains a missing numeric cell as "missing".  Text columns are
  explained per column, not per token.
* **Numeric samples with missing values** (e.g. HistGradientBoosting on NaN): the same
  explainers; LIME's statistics and the background subsample skip NaN ("x is missing" rules).
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import InvalidInputError, missing

SHAP_MODES = {"shap": "auto", "tree": "tree", "treeshap": "tree", "permutation": "agnostic",
              "kernel": "agnostic", "agnostic": "agnostic", "exact": "agnostic"}

DEFAULT_ROWS = {"tree": 500, "agnostic": 50}
KMEANS_POOL = 5000          # rows fed to k-means for the background summary
TIME_BUDGET_S = 15.0        # notebook-side model-agnostic SHAP stops adding rows after this


def _import(name: str, why: str):
    try:
        return __import__(name)
    except ImportError as exc:
        raise missing(name, "explain", why) from exc


def _to_onnx_bytes(model: Any) -> Any:
    if hasattr(model, "SerializeToString"):
        return model.SerializeToString()
    return model


def kmeans_background(X: np.ndarray, k: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Summarise rows as ``k`` weighted centroids, like ``shap.kmeans`` (values snapped to the
    nearest observed value per feature, weights = cluster shares), with one seeded k-means run."""
    from sklearn.cluster import KMeans

    X = np.asarray(X, dtype=np.float64)
    km = KMeans(n_clusters=int(k), random_state=int(seed), n_init=1).fit(X)
    centers = km.cluster_centers_.copy()
    for j in range(X.shape[1]):
        col = np.sort(X[:, j])
        pos = np.clip(np.searchsorted(col, centers[:, j]), 1, len(col) - 1)
        left, right = col[pos - 1], col[pos]
        centers[:, j] = np.where(np.abs(centers[:, j] - left) <= np.abs(right - centers[:, j]), left, right)
    weights = np.bincount(km.labels_, minlength=int(k)).astype(np.float64)
    return centers.astype(np.float32), weights / weights.sum()


def lime_stats(X: np.ndarray, feature_names: list[str], seed: int = 0) -> dict:
    """lime's quartile-discretiser statistics of the sample, JSON-ready (no rows kept)."""
    _import("lime", "for LIME explanations")
    from lime.lime_tabular import LimeTabularExplainer

    from .runtime.explain import lime_stats_to_json

    X = np.asarray(X, dtype=np.float64)
    ref = LimeTabularExplainer(X, mode="regression", feature_names=list(feature_names),
                               discretize_continuous=True, discretizer="quartile", random_state=seed)
    d = ref.discretizer
    bins = {f: np.unique(np.percentile(X[:, f], [25, 50, 75])) for f in d.to_discretize}
    counts = {}
    disc = d.discretize(X)
    for f in range(X.shape[1]):
        values, freq = np.unique(disc[:, f], return_counts=True)
        counts[f] = (values, freq)
    stats = {"means": d.means, "stds": d.stds, "mins": d.mins, "maxs": d.maxs, "bins": bins,
             "feature_values": {f: v for f, (v, _) in counts.items()},
             "feature_frequencies": {f: c for f, (_, c) in counts.items()}}
    return lime_stats_to_json(stats)


# ---------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------
@dataclass
class ExplainReport:
    """SHAP values for sample rows, LIME on demand, plots and the bundle's explain artifacts.

    ``shap_values`` is ``[rows, features, outputs]`` in ``output_space``; ``base_values`` is
    ``[outputs]``; ``outputs`` is the model output per row in that space (from the native model
    for trees, from the ONNX variant otherwise), so ``base + shap.sum(1) == outputs``.
    """

    explainer: str                       # "tree" | "exact" | "permutation"
    task: str
    feature_names: list[str]
    output_space: str
    output_names: list[str]
    X: np.ndarray
    shap_values: np.ndarray
    base_values: np.ndarray
    outputs: np.ndarray
    additivity_error: float
    config: dict
    methods: list[str]
    seed: int = 0
    serve_agreement: float | None = None
    notes: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    _serve: Any = field(default=None, repr=False)
    _artifacts: dict = field(default_factory=dict, repr=False)
    _lime: dict = field(default_factory=dict, repr=False)

    # -- numbers -------------------------------------------------------------------------
    @property
    def explained_index(self) -> list[int]:
        """Output explained for each row by default (positive class / predicted class / value)."""
        return self._serve._choose_outputs(self.outputs, None)

    def global_importance(self) -> list[dict]:
        """Mean |SHAP| per feature (averaged over rows and outputs), largest first."""
        imp = np.abs(self.shap_values).mean(axis=(0, 2))
        order = np.argsort(-imp, kind="stable")
        return [{"feature": self.feature_names[i], "mean_abs_shap": float(imp[i])} for i in order]

    def summary(self) -> str:
        """One line for progress displays."""
        top = ", ".join(d["feature"] for d in self.global_importance()[:3])
        return (f"{self.explainer} SHAP on {len(self.X)} rows ({self.output_space}); top: {top}"
                + (f"; {len(self.notes)} note(s)" if self.notes else ""))

    def requirements(self) -> list[str]:
        """Pinned packages the served bundle needs for these explanations (beyond numpy and
        onnxruntime): shap for TreeSHAP only; lime (with scikit-learn and scipy, which it
        imports) for LIME.  Model-agnostic SHAP is plain numpy."""
        from importlib.metadata import PackageNotFoundError, version

        dists = (["shap"] if self.config.get("kind") == "tree" else []) + (
            ["lime", "scikit-learn", "scipy"] if "lime" in self.methods else [])
        out = []
        for d in dists:
            try:
                out.append(f"{d}=={version(d)}")
            except PackageNotFoundError:  # pragma: no cover
                out.append(d)
        return out

    def explain_row(self, i: int, method: str = "shap") -> dict:
        """One row's explanation, shaped like a single-row ``POST /explain`` answer."""
        if not 0 <= int(i) < len(self.X):
            raise InvalidInputError(f"Row {i} is out of range: the report explains {len(self.X)} rows.",
                                    expected=f"0..{len(self.X) - 1}", received=i)
        i = int(i)
        if method == "shap":
            k = self.explained_index[i]
            return {"method": "shap", "row": i, "explainer": self.explainer,
                    "feature_names": self.feature_names, "values": self._row_values(i),
                    "output_space": self.output_space, "explained_output": self.output_names[k],
                    "base_value": float(self.base_values[k]),
                    "contributions": self.shap_values[i, :, k].tolist(),
                    "output": float(self.outputs[i, k])}
        if method == "lime":
            if "lime" not in self.methods:
                raise InvalidInputError("LIME was not requested for this report.",
                                        hint="Call explain(..., methods=('shap', 'lime')).",
                                        expected=self.methods, received="lime")
            if i not in self._lime:
                r = self._serve.explain(self.X[i:i + 1], "lime", {"seed": self.seed})
                self._lime[i] = {"method": "lime", "row": i, "feature_names": self.feature_names,
                                 "values": self._row_values(i), "output_space": r["output_space"],
                                 "explained_output": r["explained_output"][0],
                                 "intercept": r["base_values"][0], "contributions": r["contributions"][0],
                                 "output": r["outputs"][0], "local_prediction": r["local_predictions"][0],
                                 "score": r["scores"][0], "rules": r["rules"][0],
                                 "num_samples": r["num_samples"], "seed": self.seed}
            return dict(self._lime[i])
        raise InvalidInputError(f"Unknown method {method!r}; allowed: ['shap', 'lime'].",
                                expected=["shap", "lime"], received=method)

    @property
    def table(self) -> bool:
        """True for table-mode models (rows are object tables, one feature per column)."""
        return self.X.dtype == object

    def _row_values(self, i: int) -> list:
        if self.table:
            from .runtime.explain import json_cells

            return json_cells(self.X[i])
        return self.X[i].tolist()

    def _numeric_view(self) -> np.ndarray:
        """Rows as floats for colouring plots (categorical/text columns: NaN)."""
        if not self.table:
            return self.X.astype(np.float64)
        out = np.full(self.X.shape, np.nan)
        for j in range(self.X.shape[1]):
            col = self.X[:, j]
            if not any(isinstance(v, str) for v in col):
                out[:, j] = [np.nan if v is None else float(v) for v in col]
        return out

    def _label(self, j: int, value) -> str:
        if value is None or isinstance(value, str):
            from .runtime.explain import TableCodec

            return TableCodec([{"name": self.feature_names[j], "kind": "text" if isinstance(value, str)
                                and len(value) > 40 else "categorical"}]).cell_text(0, value)
        return f"{self.feature_names[j]} = {value:.4g}"

    def to_dict(self, *, max_rows: int = 50) -> dict:
        """JSON-serialisable summary: explainer, output space, importance, first rows, notes."""
        idx = self.explained_index
        n = min(len(self.X), max_rows)
        return {
            "explainer": self.explainer, "task": self.task, "output_space": self.output_space,
            "output_names": self.output_names, "feature_names": self.feature_names,
            "methods": self.methods, "seed": self.seed, "rows_explained": int(len(self.X)),
            "base_values": self.base_values.tolist(),
            "additivity_error": float(self.additivity_error),
            "serve_agreement": None if self.serve_agreement is None else float(self.serve_agreement),
            "global_importance": self.global_importance(),
            "rows": [{"row": i, "explained_output": self.output_names[idx[i]],
                      "base_value": float(self.base_values[idx[i]]),
                      "output": float(self.outputs[i, idx[i]]),
                      "contributions": self.shap_values[i, :, idx[i]].tolist()} for i in range(n)],
            "lime": [self._lime[i] for i in sorted(self._lime)],
            "budget": dict(self.config.get("budget") or {}),
            "notes": list(self.notes), "timings": dict(self.timings),
        }

    def _repr_html_(self) -> str:
        imp = self.global_importance()[:10]
        top = imp[0]["mean_abs_shap"] if imp and imp[0]["mean_abs_shap"] > 0 else 1.0
        bars = "".join(
            f"<tr><td>{html.escape(d['feature'])}</td><td style='text-align:right'>{d['mean_abs_shap']:.4g}</td>"
            f"<td><div style='background:#1f77b4;height:10px;width:{int(160 * d['mean_abs_shap'] / top)}px'>"
            f"</div></td></tr>" for d in imp)
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        return (f"<div><b>nbdeploy explain</b>: {html.escape(self.explainer)} SHAP on {len(self.X)} rows, "
                f"output space <code>{html.escape(self.output_space)}</code>, additivity error "
                f"{self.additivity_error:.2g}; methods {html.escape(', '.join(self.methods))}"
                f"<table><tr><th>feature</th><th>mean |SHAP|</th><th></th></tr>{bars}</table>"
                + (f"<ul>{notes}</ul>" if notes else "") + "</div>")

    # -- plots -----------------------------------------------------------------------------
    def figures(self, *, row: int = 0, max_display: int = 15) -> dict:
        """matplotlib Figures: SHAP importance bar, SHAP beeswarm, row waterfall, LIME bar."""
        _import("matplotlib", "for explanation plots")
        figs = {"shap_importance": self._fig_importance(max_display),
                "shap_summary": self._fig_beeswarm(max_display),
                f"shap_row_{row}": self._fig_row(self.explain_row(row, "shap"), max_display)}
        if "lime" in self.methods:
            figs[f"lime_row_{row}"] = self._fig_row(self.explain_row(row, "lime"), max_display)
        return figs

    def save_plots(self, directory: str | Path, *, row: int = 0) -> list[Path]:
        """Write :meth:`figures` as PNG files (Agg canvas, no pyplot state) and return the paths."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, fig in self.figures(row=row).items():
            if not isinstance(fig.canvas, FigureCanvasAgg):
                FigureCanvasAgg(fig)
            path = directory / f"{name}.png"
            fig.savefig(path, format="png", dpi=100, bbox_inches="tight")
            fig.clf()
            paths.append(path)
        return paths

    @staticmethod
    def _figure(height: float):
        """A pyplot-free Figure (no global state to leak) that still displays in Jupyter."""
        import io

        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(5.6, max(2.2, height)))   # a notebook cell at 90 dpi: ~500 px
        FigureCanvasAgg(fig)

        def _repr_png_() -> bytes:
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
            return buf.getvalue()

        fig._repr_png_ = _repr_png_
        return fig

    def _fig_importance(self, max_display: int):
        imp = self.global_importance()[:max_display][::-1]
        fig = self._figure(0.26 * len(imp) + 1.0)
        ax = fig.add_subplot(111)
        ax.barh([d["feature"] for d in imp], [d["mean_abs_shap"] for d in imp], color="#1f77b4")
        ax.set_xlabel(f"mean |SHAP| ({self.output_space})")
        ax.set_title("Global feature importance")
        fig.tight_layout()
        return fig

    def _fig_beeswarm(self, max_display: int):
        idx = self.explained_index
        vals = self.shap_values[np.arange(len(self.X)), :, idx]            # [N, F]
        order = np.argsort(-np.abs(vals).mean(0), kind="stable")[:max_display][::-1]
        fig = self._figure(0.26 * len(order) + 1.0)
        ax = fig.add_subplot(111)
        rng = np.random.default_rng(0)
        sc = None
        Xf = self._numeric_view()
        for y, f in enumerate(order):
            x = Xf[:, f]
            ok = ~np.isnan(x)
            lo, hi = np.nanpercentile(x, [5, 95]) if ok.any() else (0.0, 0.0)
            c = np.clip((x - lo) / (hi - lo), 0, 1) if hi > lo else np.full(len(x), 0.5)
            c = np.where(ok, c, 0.5)      # missing values and categories: neutral colour
            sc = ax.scatter(vals[:, f], y + rng.uniform(-0.3, 0.3, len(x)), c=c, cmap="coolwarm",
                            s=10, vmin=0, vmax=1, linewidths=0)
        ax.set_yticks(range(len(order)))
        ax.set_yticklabels([self.feature_names[f] for f in order])
        ax.axvline(0, color="#999", lw=0.8)
        ax.set_xlabel(f"SHAP value ({self.output_space})")
        ax.set_title("SHAP summary")
        if sc is not None:
            cb = fig.colorbar(sc, ax=ax, ticks=[0, 1])
            cb.ax.set_yticklabels(["low", "high"])
            cb.set_label("feature value")
        fig.tight_layout()
        return fig

    def _fig_row(self, r: dict, max_display: int):
        from matplotlib.ticker import MaxNLocator

        contrib = np.asarray(r["contributions"])
        order = np.argsort(-np.abs(contrib), kind="stable")[:max_display][::-1]
        fig = self._figure(0.26 * len(order) + 1.2)
        ax = fig.add_subplot(111)
        if r["method"] == "lime":
            labels = [r["rules"][j] for j in order]
            title = (f"LIME, row {r['row']}, output {r['explained_output']!r}: local prediction "
                     f"{r['local_prediction']:.4g}, model {r['output']:.4g}")
        else:
            labels = [self._label(j, r["values"][j]) for j in order]
            title = (f"SHAP, row {r['row']}, output {r['explained_output']!r}: base {r['base_value']:.4g}"
                     f" -> output {r['output']:.4g}")
        ax.barh(labels, contrib[order], color=["#d62728" if v > 0 else "#1f77b4" for v in contrib[order]])
        ax.axvline(0, color="#999", lw=0.8)
        ax.set_title(title, fontsize=9, wrap=True)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))   # tick labels must not run together
        ax.set_xlabel("contribution" + (f" ({r['output_space']})" if r.get("output_space") else ""))
        fig.tight_layout()
        return fig

    # -- bundle ---------------------------------------------------------------------------
    def write_artifacts(self, model_dir: str | Path) -> list[Path]:
        """Write ``model_dir/explain/``: explain_config.json plus npz/npy arrays (no pickle)."""
        from .runtime.explain import (BACKGROUND_FILE, CONFIG_FILE, EXPLAIN_DIR, FEATURES_FILE,
                                      TREES_FILE, WEIGHTS_FILE, save_trees)

        folder = Path(model_dir) / EXPLAIN_DIR
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        if "trees" in self._artifacts:
            paths.append(save_trees(folder / TREES_FILE, self._artifacts["trees"]))
        if "features_onnx" in self._artifacts:
            (folder / FEATURES_FILE).write_bytes(self._artifacts["features_onnx"])
            paths.append(folder / FEATURES_FILE)
        if "background" in self._artifacts:
            np.save(folder / BACKGROUND_FILE, self._artifacts["background"], allow_pickle=False)
            np.save(folder / WEIGHTS_FILE, self._artifacts["weights"], allow_pickle=False)
            paths += [folder / BACKGROUND_FILE, folder / WEIGHTS_FILE]
        cfg = folder / CONFIG_FILE
        cfg.write_text(json.dumps(self.config, indent=1), encoding="utf-8")
        paths.append(cfg)
        return paths


# ---------------------------------------------------------------------------------------
# the step
# ---------------------------------------------------------------------------------------
def _parse_methods(methods: Any) -> tuple[str, list[str]]:
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    methods = [str(m).lower() for m in methods]
    unknown = [m for m in methods if m not in SHAP_MODES and m != "lime"]
    if unknown or not methods:
        raise InvalidInputError(f"Unknown explanation method(s) {unknown or methods}.",
                                hint="Use 'shap' (automatic), 'tree', 'permutation' and/or 'lime'.",
                                expected=sorted(set(SHAP_MODES) | {"lime"}), received=methods)
    modes = {SHAP_MODES[m] for m in methods if m in SHAP_MODES}
    if len(modes) > 1:
        modes.discard("auto")
    if len(modes) > 1:
        raise InvalidInputError("Ask for one SHAP flavour at a time ('tree' or 'permutation').",
                                received=methods)
    mode = modes.pop() if modes else "auto"
    served = ["shap"] + (["lime"] if "lime" in methods else [])
    return mode, served


def explain(converted: Any, *, onnx_model: Any = None, methods: Any = ("shap", "lime"),
            max_background: int = 100, progress: Callable[[float, str], None] | None = None,
            seed: int = 0, max_rows: int | None = None, budget: dict | None = None) -> ExplainReport:
    """Explain a converted model with SHAP (and LIME) on its sample.

    ``methods``: "shap" picks TreeSHAP for tree ensembles and model-agnostic SHAP otherwise;
    "tree" / "permutation" force one (falling back with a note when TreeSHAP cannot apply);
    "lime" adds LIME.  ``onnx_model`` is the variant the bundle serves (defaults to
    ``converted.onnx_model``).  ``max_background`` bounds the k-means background,
    ``max_rows`` the rows explained here (default 500 for trees, 50 otherwise); ``budget``
    overrides the served cost budget.  ``progress(fraction, message)`` is called as it goes.
    """
    from .runtime.explain import (DEFAULT_BUDGET, FORMAT_VERSION, ServeExplainer,
                                  tree_arrays_from_ensemble)
    from .runtime.model import OnnxModel

    report = progress or (lambda f, m: None)
    mode, served_methods = _parse_methods(methods)
    if int(max_background) < 1:
        raise InvalidInputError("max_background must be at least 1.", expected=">= 1",
                                received=max_background)
    adapter = converted.adapter
    spec = converted.spec
    task = spec["task"]
    if spec.get("input_mode") == "text":   # issue 21: per-token SHAP/LIME
        from .explain_text import explain_text

        return explain_text(converted, onnx_model=onnx_model, methods=tuple(served_methods) or ("shap",),
                            budget=budget, progress=progress)
    if spec.get("input_mode") == "table":
        return _explain_table(converted, onnx_model=onnx_model, served_methods=served_methods,
                              mode=mode, max_background=int(max_background), report=report,
                              seed=int(seed), max_rows=max_rows, budget=budget)
    names = list(spec.get("feature_names") or [f"x{i}" for i in range(int(spec["n_features"]))])
    X_all = np.asarray(converted.X, dtype=np.float32)
    classes = spec.get("classes")
    onnx = OnnxModel(_to_onnx_bytes(onnx_model if onnx_model is not None else converted.onnx_model), spec)
    budget = dict(DEFAULT_BUDGET, **(budget or {}))
    notes: list[str] = []
    timings: dict = {}
    t0 = time.perf_counter()

    use_tree = False
    if mode in ("auto", "tree"):
        ok, why = adapter.tree_support()
        if ok:
            use_tree = True
        elif mode == "tree":
            notes.append(f"TreeSHAP does not apply: {why}. {adapter.alternative_explainer()} would; "
                         "used model-agnostic SHAP over the ONNX model instead.")
        elif "pipeline ends in a tree" in (why or ""):
            notes.append(f"TreeSHAP not used: {why}; used model-agnostic SHAP over the ONNX model.")
    elif adapter.tree_support()[0]:
        notes.append("Model-agnostic SHAP was requested for a tree ensemble; TreeSHAP ('tree') "
                     "would be exact and much faster.")
    if adapter.explain_note:
        notes.append(adapter.explain_note)

    config: dict = {"format_version": FORMAT_VERSION, "task": task, "feature_names": names,
                    "classes": [str(c) for c in classes] if classes is not None else None,
                    "methods": served_methods, "seed": int(seed), "budget": budget}
    artifacts: dict = {}
    tree_phi = tree_base = tree_out = None
    if use_tree:
        try:
            import shap
        except ImportError:
            use_tree = False
            notes.append("TreeSHAP needs the 'shap' package (pip install 'nbdeploy[explain]'); used "
                         "model-agnostic SHAP over the ONNX model instead.")
    if use_tree:
        report(0.05, "TreeSHAP: parsing the trees")
        try:
            te = shap.TreeExplainer(adapter.model)
            arrays, meta = tree_arrays_from_ensemble(te.model)
        except Exception as exc:  # shap refuses some configurations (e.g. multi-class sklearn GBM)
            use_tree = False
            notes.append(f"TreeSHAP could not handle {adapter.model_type} ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}); used model-agnostic SHAP "
                         "over the ONNX model instead.")
        else:
            n_rows = int(max_rows or DEFAULT_ROWS["tree"])
            rows = X_all[:n_rows]
            Xn = adapter.native_frame(rows, spec.get("feature_names"))
            phi = te.shap_values(Xn, check_additivity=False)
            if isinstance(phi, list):
                phi = np.stack(phi, axis=-1)
            phi = np.asarray(phi, dtype=np.float64)
            tree_phi = phi if phi.ndim == 3 else phi[:, :, None]
            tree_base = np.asarray(te.expected_value, dtype=np.float64).reshape(-1)
            if task == "classifier" and meta.get("tree_output") == "probability":
                space = "probability"
            elif task == "classifier":
                space = "log_odds" if tree_phi.shape[2] == 1 else "margin"
            else:   # the margin is the value unless the objective has a link (poisson, ...)
                margin = adapter.native_output(Xn, "margin")
                value = adapter.native_output(Xn, "value")
                space = "value" if np.allclose(margin, value, rtol=1e-5, atol=1e-5) else "margin"
            native = adapter.native_output(Xn, space)
            tree_out = native
            artifacts["trees"] = arrays
            config["tree"] = meta
            config["kind"] = "tree"
            config["output_space"] = space
            if task == "classifier":
                cls = [str(c) for c in classes]
                config["output_names"] = [cls[-1]] if space == "log_odds" else cls
            else:
                config["output_names"] = ["value"] if tree_phi.shape[2] == 1 else \
                    [f"value_{i}" for i in range(tree_phi.shape[2])]
            if space in ("log_odds", "margin") and task == "classifier":
                notes.append(f"TreeSHAP explains {adapter.model_type} in margin space "
                             f"({space}: apply the {'sigmoid' if space == 'log_odds' else 'softmax'} "
                             "to base + sum(SHAP) to get probabilities).")
            elif space == "margin":
                notes.append(f"TreeSHAP explains {adapter.model_type} in margin space (before the "
                             "objective's inverse link, e.g. exp for Poisson): apply it to base + "
                             "sum(SHAP) to get predictions.")
            if space in ("probability", "value"):
                diff = float(np.max(np.abs(onnx.output_matrix(rows) - native))) if len(rows) else 0.0
                if diff > 1e-4:
                    notes.append(f"TreeSHAP explains the native trees; the served ONNX variant's "
                                 f"outputs differ from them by up to {diff:.3g} on the sample.")
            timings["shap_s"] = round(time.perf_counter() - t0, 4)

    if not use_tree:
        n_rows = int(max_rows or DEFAULT_ROWS["agnostic"])
        rows = X_all[:n_rows]
        k = int(max_background)
        if len(X_all) > k and np.isnan(X_all).any():   # k-means cannot take NaN: a seeded subsample
            bg = X_all[np.sort(np.random.default_rng(seed).choice(len(X_all), k, replace=False))]
            w = np.full(len(bg), 1.0 / len(bg))
        elif len(X_all) > k:
            report(0.05, f"summarising the background to {k} k-means centroids")
            pool = X_all
            if len(pool) > KMEANS_POOL:     # k-means cost grows with rows; a seeded subsample is plenty
                pool = pool[np.random.default_rng(seed).choice(len(pool), KMEANS_POOL, replace=False)]
            bg, w = kmeans_background(pool, k, seed=seed)
        else:
            bg = X_all.copy()
            w = np.full(len(bg), 1.0 / len(bg))
        w = w / w.sum()
        artifacts["background"], artifacts["weights"] = bg, w
        config["kind"] = "agnostic"
        config["background_rows"] = int(len(bg))
        if task == "classifier":
            config["output_space"] = "probability"
            config["output_names"] = [str(c) for c in classes] if classes is not None else None
        else:
            config["output_space"] = "value"
            config["output_names"] = None
        if config["output_names"] is None:
            width = onnx.output_matrix(X_all[:1]).shape[1]
            config["output_names"] = ["value"] if width == 1 and task != "classifier" else \
                [str(i) if task == "classifier" else f"value_{i}" for i in range(width)]
    if "lime" in served_methods and np.isnan(X_all).any():
        from .runtime.explain import lime_table_stats

        report(0.8 if use_tree else 0.02, "LIME: discretiser statistics (with missing values)")
        config["lime"] = {"discretizer": "quartile", "table": True,
                          "stats": lime_table_stats(X_all.astype(np.float64), ["numeric"] * len(names))}
    elif "lime" in served_methods:
        report(0.8 if use_tree else 0.02, "LIME: discretiser statistics")
        config["lime"] = {"discretizer": "quartile", "stats": lime_stats(X_all, names, seed)}
    config["notes"] = notes
    config = json.loads(json.dumps(config))          # exactly what the bundle will read
    serve = ServeExplainer(onnx, config, trees=artifacts.get("trees"),
                           background=artifacts.get("background"), weights=artifacts.get("weights"))

    agreement = None
    if use_tree:
        report(0.5, "TreeSHAP: checking the exported trees")
        sphi, sbase, souts, _ = serve.shap_values(rows)
        resid = tree_out - souts
        if len(rows) and np.max(np.abs(resid)) > 1e-6 and np.max(np.ptp(resid, axis=0)) < 1e-4:
            # shap's parser can miss a booster's intercept (e.g. XGBoost 3 per-class base scores);
            # it is a constant offset per output, so fold it into the exported base offset.
            meta = config["tree"]
            meta["base_offset"] = [float(b + r) for b, r in
                                   zip(np.broadcast_to(meta["base_offset"], resid.shape[1:]), resid.mean(0))]
            serve = ServeExplainer(onnx, config, trees=artifacts["trees"])
            sphi, sbase, souts, _ = serve.shap_values(rows)
        agreement = float(max(np.max(np.abs(sphi - tree_phi)) if sphi.size else 0.0,
                              np.max(np.abs(sbase - tree_base))))
        if agreement > 1e-4:
            notes.append(f"The exported trees reproduce native TreeSHAP only to {agreement:.2g}.")
        phi, base, outputs, algo = tree_phi, tree_base, tree_out, "tree"
    else:
        rows, phi, base, outputs, algo, timings["shap_s"] = _shap_rows(
            serve, rows, seed=seed, max_rows=max_rows, notes=notes, report=report)
    return _finish(serve, config, rows=rows, phi=phi, base=base, outputs=outputs, algo=algo,
                   task=task, names=names, methods=served_methods, seed=seed, agreement=agreement,
                   notes=notes, timings=timings, artifacts=artifacts, t0=t0, report=report)


def _shap_rows(serve, rows: np.ndarray, *, seed: int, max_rows: int | None, notes: list[str],
               report: Callable[[float, str], None]) -> tuple:
    """Model-agnostic SHAP over ``rows`` in chunks, within the notebook's time budget."""
    t1 = time.perf_counter()
    chunks = []
    step = max(1, len(rows) // 20)
    for s in range(0, len(rows), step):
        if s >= 10 and max_rows is None and time.perf_counter() - t1 > TIME_BUDGET_S:
            notes.append(f"Model-agnostic SHAP stopped after {s} of {len(rows)} rows "
                         f"({TIME_BUDGET_S:.0f} s budget); pass max_rows= to explain more.")
            rows = rows[:s]
            break
        report(0.1 + 0.7 * s / max(1, len(rows)), f"SHAP: rows {s}..{min(len(rows), s + step)}")
        chunks.append(serve.shap_values(rows[s:s + step], seed=seed))
    M = rows.shape[1]
    phi = np.concatenate([c[0] for c in chunks]) if chunks else np.zeros((0, M, 1))
    base = chunks[0][1] if chunks else np.zeros(1)
    outputs = np.concatenate([c[2] for c in chunks]) if chunks else np.zeros((0, 1))
    algo = chunks[0][3] if chunks else "exact"
    return rows, phi, base, outputs, algo, round(time.perf_counter() - t1, 4)


def _column_groups(model: Any, names: list[str]) -> tuple[list[int] | None, Any, str]:
    """For a Pipeline ``ColumnTransformer [-> per-feature steps] -> tree ensemble``: the original
    column index of every transformed feature, the preprocessing as a callable, or a reason."""
    from .adapters.base import TREE_ENSEMBLES

    steps = getattr(model, "steps", None)
    if not steps or len(steps) < 2:
        return None, None, "not a Pipeline"
    final = steps[-1][1]
    if type(final).__name__ not in TREE_ENSEMBLES:
        return None, None, f"the pipeline ends in {type(final).__name__}, not a tree ensemble"
    pre = [t for _, t in steps[:-1] if t is not None and t != "passthrough"]
    ct = pre[0] if pre else None
    if not hasattr(ct, "output_indices_"):
        return None, None, "its first step is not a ColumnTransformer"
    inputs = list(getattr(ct, "feature_names_in_", names))
    n_out = max((sl.stop for sl in ct.output_indices_.values()), default=0)
    groups: list[int | None] = [None] * n_out
    for name, tr, cols in ct.transformers_:
        sl = ct.output_indices_.get(name)
        if tr == "drop" or sl is None or sl.stop == sl.start:
            continue
        if isinstance(cols, str):
            cols = [cols]
        cols = [inputs[c] if isinstance(c, (int, np.integer)) else str(c) for c in np.asarray(cols).tolist()]
        if any(c not in names for c in cols):
            return None, None, f"transformer {name!r} reads columns the table does not name"
        if len(cols) == 1:
            groups[sl] = [names.index(cols[0])] * (sl.stop - sl.start)
            continue
        try:
            outs = list(cols) if tr == "passthrough" else [str(o) for o in tr.get_feature_names_out(cols)]
        except Exception:
            return None, None, f"transformer {name!r} does not name its outputs"
        if len(outs) != sl.stop - sl.start:
            return None, None, f"transformer {name!r} names {len(outs)} outputs for {sl.stop - sl.start}"
        for k, o in enumerate(outs):
            o = o.removeprefix("missingindicator_")
            hits = [c for c in cols if o == c or o.startswith(c + "_")]
            if not hits:
                return None, None, f"output {o!r} of {name!r} cannot be traced to one column"
            groups[sl.start + k] = names.index(max(hits, key=len))
    if any(g is None for g in groups):
        return None, None, "some transformed features come from no column"
    prev = [str(n) for n in ct.get_feature_names_out()] if hasattr(ct, "get_feature_names_out") else None
    for t in pre[1:]:          # later steps must keep features one to one (scalers, ...)
        try:
            now = [str(n) for n in t.get_feature_names_out(prev)]
        except Exception:
            return None, None, f"step {type(t).__name__} does not name its outputs"
        if now != prev:
            return None, None, f"step {type(t).__name__} mixes or drops features"

    def transform(frame):
        Z = frame
        for t in pre:
            Z = t.transform(Z)
        return np.asarray(Z.toarray() if hasattr(Z, "toarray") else Z, dtype=np.float64)

    # transformed feature names without the transformer prefix ("txt__great" -> "great")
    transform.feature_names = [n.split("__", 1)[-1] for n in prev] if prev else None
    return [int(g) for g in groups], transform, ""


def _features_graph(onnx_model: Any, n_features: int) -> tuple[bytes | None, str]:
    """The ONNX graph cut at the tree ensemble's input: its output is the preprocessed
    features (bytes, output name), or (None, reason)."""
    import onnx
    from onnx import helper

    m = onnx.ModelProto()
    m.CopyFrom(onnx_model if hasattr(onnx_model, "graph") else onnx.load_from_string(onnx_model))
    trees = [n for n in m.graph.node if n.op_type.startswith("TreeEnsemble")]
    inputs = {n.input[0] for n in trees}
    if len(inputs) != 1:
        return None, "the graph has no single tree-ensemble input"
    target = inputs.pop()
    producers = {o: n for n in m.graph.node for o in n.output}
    keep, todo = set(), [target]
    while todo:                 # the nodes the features depend on, nothing downstream
        t = todo.pop()
        n = producers.get(t)
        if n is None or id(n) in keep:
            continue
        keep.add(id(n))
        todo.extend(i for i in n.input if i)
    nodes = [n for n in m.graph.node if id(n) in keep]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info(target, onnx.TensorProto.FLOAT, [None, n_features]))
    used = {i for n in nodes for i in n.input}
    inits = [t for t in m.graph.initializer if t.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(inits)
    return m.SerializeToString(), target


def _table_tree(converted: Any, onnx: Any, names: list[str], rows: np.ndarray,
                notes: list[str], *, asked: bool = False) -> dict | None:
    """Exact TreeSHAP for a ColumnTransformer -> tree pipeline, summed back per column."""
    groups, transform, why = _column_groups(converted.adapter.model, names)
    if groups is None:
        if converted.adapter.tree_support()[0]:
            notes.append("TreeSHAP not used: the trees read columns encoded inside the ONNX graph "
                         "(e.g. category splits); model-agnostic SHAP per column instead.")
        elif asked or (why != "not a Pipeline" and "not a tree ensemble" not in why):
            notes.append(f"TreeSHAP per column not used ({why}); model-agnostic SHAP per column instead.")
        return None
    try:
        import shap
    except ImportError:
        notes.append("TreeSHAP needs the 'shap' package; used model-agnostic SHAP per column instead.")
        return None
    from .runtime.explain import FeatureGraph, tree_arrays_from_ensemble

    final = converted.adapter.model.steps[-1][1]
    try:
        graph, out_name = _features_graph(converted.onnx_model, len(groups))
        if graph is None:
            raise ValueError(out_name)
        features = FeatureGraph(graph, out_name, onnx.feeds)
        te = shap.TreeExplainer(final)
        arrays, meta = tree_arrays_from_ensemble(te.model)
        frame = converted.adapter.native_frame(rows, names)
        native_t = transform(frame)
        onnx_t = features(rows).astype(np.float64)
    except Exception as exc:
        notes.append(f"TreeSHAP per column not used ({type(exc).__name__}: "
                     f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); model-agnostic SHAP instead.")
        return None
    gap = float(np.max(np.abs(onnx_t - native_t) / (1.0 + np.abs(native_t)))) if len(rows) else 0.0
    if native_t.shape != onnx_t.shape or gap > 1e-4:
        notes.append(f"TreeSHAP per column not used: the ONNX preprocessing differs from the native "
                     f"one by {gap:.2g}; model-agnostic SHAP instead.")
        return None
    return {"te": te, "arrays": arrays, "meta": meta, "groups": groups, "graph": graph,
            "output": out_name, "features": features, "transform": transform, "frame": frame,
            "feature_names": transform.feature_names}


def _explain_table(converted: Any, *, onnx_model: Any, served_methods: list[str], mode: str,
                   max_background: int, report: Callable[[float, str], None], seed: int,
                   max_rows: int | None, budget: dict | None) -> ExplainReport:
    """Table mode: SHAP/LIME with one feature per original DataFrame column (see the module
    docstring); the rows are the object table of the table contract."""
    from .runtime.explain import (DEFAULT_BUDGET, FORMAT_VERSION, ServeExplainer, TableCodec,
                                  group_columns, lime_table_stats)
    from .runtime.model import OnnxModel

    spec = converted.spec
    task = spec["task"]
    columns = list(spec["columns"])
    names = [str(c["name"]) for c in columns]
    X_all = np.asarray(converted.X, dtype=object)
    if X_all.ndim != 2 or X_all.shape[1] != len(columns):
        raise InvalidInputError(f"The sample has shape {list(X_all.shape)}; the model's table has "
                                f"{len(columns)} columns.", expected=len(columns),
                                received=list(X_all.shape))
    classes = spec.get("classes")
    onnx = OnnxModel(_to_onnx_bytes(onnx_model if onnx_model is not None else converted.onnx_model), spec)
    budget = dict(DEFAULT_BUDGET, **(budget or {}))
    notes: list[str] = []
    timings: dict = {}
    t0 = time.perf_counter()

    # categorical pools: the model's categories plus the whole sample's; text: the background's
    rng = np.random.default_rng(seed)
    k = max(1, int(max_background))
    pick = np.sort(rng.choice(len(X_all), k, replace=False)) if len(X_all) > k else np.arange(len(X_all))
    bg_rows = X_all[pick]
    codec = TableCodec.build(columns, X_all)
    codec = TableCodec([dict(c, pool=[t for t in dict.fromkeys(v for v in bg_rows[:, j]
                                                               if isinstance(v, str))])
                        if c["kind"] == "text" else c for j, c in enumerate(codec.to_json()["columns"])])
    config: dict = {"format_version": FORMAT_VERSION, "task": task, "feature_names": names,
                    "classes": [str(c) for c in classes] if classes is not None else None,
                    "methods": served_methods, "seed": int(seed), "budget": budget,
                    "table": codec.to_json()}
    width = onnx.output_matrix(X_all[:1]).shape[1]

    tree = None
    if mode in ("auto", "tree"):
        report(0.05, "TreeSHAP: tracing transformed features to columns")
        tree = _table_tree(converted, onnx, names, X_all[:int(max_rows or DEFAULT_ROWS["tree"])], notes,
                           asked=mode == "tree")
    elif converted.adapter.tree_support()[0] or _column_groups(converted.adapter.model, names)[0]:
        notes.append("Model-agnostic SHAP was requested for a tree model; TreeSHAP ('tree') would be "
                     "exact and much faster.")
    artifacts: dict = {}
    if tree is not None:
        meta = tree["meta"]
        K = int(meta["num_outputs"])
        if task == "classifier" and meta.get("tree_output") == "probability":
            space = "probability"
        elif task == "classifier":
            space = "log_odds" if K == 1 else "margin"
        else:
            frame = tree["frame"]
            margin = converted.adapter.native_output(frame, "margin")
            value = converted.adapter.native_output(frame, "value")
            space = "value" if np.allclose(margin, value, rtol=1e-5, atol=1e-5) else "margin"
        config.update(kind="tree", tree=meta, tree_groups=tree["groups"],
                      tree_features_output=tree["output"], output_space=space)
        if tree["feature_names"] and any(c["kind"] == "text" for c in columns):
            config["tree_feature_names"] = tree["feature_names"]     # per-token detail of text
        if task == "classifier":
            cls = [str(c) for c in classes] if classes is not None else [str(i) for i in range(width)]
            config["output_names"] = [cls[-1]] if space == "log_odds" else cls
        else:
            config["output_names"] = ["value"] if K == 1 else [f"value_{i}" for i in range(K)]
        if space in ("log_odds", "margin"):
            notes.append(f"TreeSHAP explains the trees in margin space ({space}); apply the model's "
                         "link to base + sum(SHAP) to get its predictions.")
        notes.append("Exact TreeSHAP on the features the trees see (computed by the served graph's "
                     "preprocessing); each transformed feature, e.g. every one-hot column, is summed "
                     "into its original column.")
        if "tree_feature_names" in config:
            notes.append("Text columns: one contribution per column (the sum over its tokens, present "
                         "or absent); the largest token terms are listed per row in text_tokens.")
        artifacts.update(trees=tree["arrays"], features_onnx=tree["graph"])
    else:
        if any(c.get("kind") == "text" for c in columns):
            notes.append("Text columns are explained as a whole (one contribution per column), "
                         "not per token.")
        bg = codec.encode(bg_rows)
        w = np.full(len(bg), 1.0 / len(bg))
        artifacts.update(background=bg, weights=w)
        config.update(kind="agnostic", background_rows=int(len(bg)))
        if task == "classifier":
            config["output_space"] = "probability"
            config["output_names"] = [str(c) for c in classes] if classes is not None else \
                [str(i) for i in range(width)]
        else:
            config["output_space"] = "value"
            config["output_names"] = ["value"] if width == 1 else [f"value_{i}" for i in range(width)]
        notes.append("Explained per original column with model-agnostic SHAP over the ONNX graph "
                     "(its preprocessing included): each column is one player.")
    if "lime" in served_methods:
        report(0.02, "LIME: column statistics")
        config["lime"] = {"discretizer": "quartile",
                          "stats": lime_table_stats(codec.encode(X_all, lime=True), codec.kinds)}
    config["notes"] = notes
    config = json.loads(json.dumps(config))          # exactly what the bundle will read
    serve = ServeExplainer(onnx, config, trees=artifacts.get("trees"),
                           background=artifacts.get("background"), weights=artifacts.get("weights"),
                           features=tree["features"] if tree is not None else None)
    agreement = None
    if tree is not None:
        t1 = time.perf_counter()
        rows = X_all[:int(max_rows or DEFAULT_ROWS["tree"])]
        phi, base, tree_out, algo = serve.shap_values(rows)
        outputs = converted.adapter.native_output(tree["frame"], config["output_space"])
        # the same TreeSHAP on the native preprocessing: how far the served path is from it
        te = tree["te"]
        nphi = te.shap_values(tree["transform"](tree["frame"]), check_additivity=False)
        nphi = np.asarray(np.stack(nphi, -1) if isinstance(nphi, list) else nphi, dtype=np.float64)
        nphi = group_columns(nphi if nphi.ndim == 3 else nphi[:, :, None], tree["groups"], len(names))
        agreement = float(np.max(np.abs(nphi - phi))) if len(rows) else 0.0
        if agreement > 1e-4:
            notes.append(f"TreeSHAP on the served graph's features differs from TreeSHAP on the native "
                         f"preprocessing by up to {agreement:.2g} (float32 features near split thresholds).")
        timings["shap_s"] = round(time.perf_counter() - t1, 4)
    else:
        rows = X_all[:int(max_rows or DEFAULT_ROWS["agnostic"])]
        rows, phi, base, outputs, algo, timings["shap_s"] = _shap_rows(
            serve, rows, seed=seed, max_rows=max_rows, notes=notes, report=report)
    return _finish(serve, config, rows=rows, phi=phi, base=base, outputs=outputs, algo=algo,
                   task=task, names=names, methods=served_methods, seed=seed, agreement=agreement,
                   notes=notes, timings=timings, artifacts=artifacts, t0=t0, report=report)


def _finish(serve, config: dict, *, rows, phi, base, outputs, algo, task, names, methods, seed,
            agreement, notes, timings, artifacts, t0, report) -> ExplainReport:
    """The report both explain routes end with (tabular and table models): additivity, config,
    and LIME on row 0 when it is served."""
    add_err = float(np.max(np.abs(base[None, :] + phi.sum(axis=1) - outputs))) if len(rows) else 0.0
    config["explainer"] = algo
    config["notes"] = notes
    serve.notes = list(notes)
    rep = ExplainReport(explainer=algo, task=task, feature_names=names,
                        output_space=config["output_space"], output_names=config["output_names"],
                        X=rows, shap_values=phi, base_values=base, outputs=outputs,
                        additivity_error=add_err, config=config, methods=methods, seed=int(seed),
                        serve_agreement=agreement, notes=notes, timings=timings, _serve=serve,
                        _artifacts=artifacts)
    if "lime" in methods and len(rows):
        t2 = time.perf_counter()
        report(0.9, "LIME: row 0")
        rep.explain_row(0, "lime")
        timings["lime_row_s"] = round(time.perf_counter() - t2, 4)
    timings["total_s"] = round(time.perf_counter() - t0, 4)
    report(1.0, "explained")
    return rep


__all__ = ["ExplainReport", "explain", "lime_stats"]
