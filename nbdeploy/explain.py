"""explain: SHAP and LIME for a converted model, in the notebook and for the served bundle.

How the code is laid out: :func:`plan_explanation` validates the options and decides the route
(numeric rows, DataFrame table, text), the SHAP path and the rows (:class:`ExplainPlan`); the
tree path (TreeSHAP) lives in :mod:`nbdeploy.explain_tree`, the model-agnostic path here; both
end in an :class:`ExplainReport`, which holds numbers (``to_dict``) and draws nothing itself:
its figures and HTML come from :mod:`nbdeploy.plots`.

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

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidInputError, missing
from .vocab import EXPLAIN_CHOICES, EXPLAIN_METHODS, parse_explain, shap_mode

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
        return self._serve.choose_outputs(self.outputs, None)

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
        onnxruntime), from :data:`nbdeploy.bundle.DEPENDENCIES`: shap for TreeSHAP only; lime
        (with scikit-learn and scipy, which it imports) for LIME.  Model-agnostic SHAP is numpy."""
        from .explain_text import explanation_pins

        return explanation_pins(self.config)

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

    # -- rendering (nbdeploy.plots) ----------------------------------------------------------
    def _repr_html_(self) -> str:
        from .plots import explanation_html

        return explanation_html(self)

    def figures(self, *, row: int = 0, max_display: int = 15) -> dict:
        """matplotlib Figures (:func:`nbdeploy.plots.explanation_figures`): SHAP importance bar,
        SHAP beeswarm, row ``row``'s SHAP bars and, when LIME is served, its LIME bars."""
        from .plots import explanation_figures

        return explanation_figures(self, row=row, max_display=max_display)

    def save_plots(self, directory: str | Path, *, row: int = 0) -> list[Path]:
        """Write :meth:`figures` as PNG files (Agg canvas, no pyplot state) and return the paths."""
        from .plots import save_figures

        return save_figures(self.figures(row=row), directory, clear=True)

    # -- bundle ---------------------------------------------------------------------------
    def write_artifacts(self, model_dir: str | Path) -> list[Path]:
        """Write ``model_dir/explain/``: explain_config.json plus npz/npy arrays (no pickle)."""
        from .runtime.explain import (
            BACKGROUND_FILE,
            CONFIG_FILE,
            EXPLAIN_DIR,
            FEATURES_FILE,
            TREES_FILE,
            WEIGHTS_FILE,
            save_trees,
        )

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
# planning: which route, which SHAP algorithm, how many rows
# ---------------------------------------------------------------------------------------
def _parse_methods(methods: Any) -> tuple[str, list[str]]:
    """``(SHAP flavour, served methods)`` from "shap", "tree", "permutation", "lime", ...: the
    words :func:`nbdeploy.vocab.parse_explain` accepts (the same as ``deploy(explain=...)``)."""
    words = parse_explain(methods)
    if not words:
        raise InvalidInputError("No explanation method given.",
                                hint="Use 'shap' (automatic), 'tree', 'permutation' and/or 'lime'.",
                                expected=list(EXPLAIN_CHOICES), received=methods)
    served = ["shap"] + [m for m in EXPLAIN_METHODS if m != "shap" and m in words]
    return shap_mode(words), served


@dataclass
class ExplainPlan:
    """What :func:`explain` will do, decided from the model, its spec and the options before
    any SHAP value is computed (:func:`plan_explanation`)."""

    route: str                 # "tabular" (numeric rows) | "table" (DataFrame columns) | "text"
    mode: str                  # the SHAP flavour asked for: "auto" | "tree" | "agnostic"
    methods: list[str]         # what the bundle serves: ["shap"] or ["shap", "lime"]
    try_tree: bool             # TreeSHAP first (the tree path falls back with a note)
    max_background: int
    seed: int
    max_rows: int | None
    budget: dict | None        # the caller's overrides of the served cost budget
    notes: list[str] = field(default_factory=list)

    def rows(self, kind: str) -> int:
        """How many sample rows the notebook explains on the ``kind`` path ("tree"/"agnostic")."""
        return int(self.max_rows or DEFAULT_ROWS[kind])


def plan_explanation(converted: Any, *, methods: Any = ("shap", "lime"), max_background: int = 100,
                     seed: int = 0, max_rows: int | None = None,
                     budget: dict | None = None) -> ExplainPlan:
    """Validate explain()'s options and choose its route and SHAP path (see :class:`ExplainPlan`)."""
    mode, served = _parse_methods(methods)
    if int(max_background) < 1:
        raise InvalidInputError("max_background must be at least 1.", expected=">= 1",
                                received=max_background)
    spec = converted.spec
    route = {"text": "text", "table": "table"}.get(spec.get("input_mode"), "tabular")
    p = ExplainPlan(route=route, mode=mode, methods=served, try_tree=False,
                    max_background=int(max_background), seed=int(seed), max_rows=max_rows,
                    budget=budget)
    if route == "text":
        return p
    adapter = converted.adapter
    if route == "table":
        from .explain_tree import column_groups

        p.try_tree = mode in ("auto", "tree")
        names = [str(c["name"]) for c in spec["columns"]]
        if not p.try_tree and (adapter.tree_support()[0] or column_groups(adapter.model, names)[0]):
            p.notes.append("Model-agnostic SHAP was requested for a tree model; TreeSHAP ('tree') "
                           "would be exact and much faster.")
        return p
    if mode in ("auto", "tree"):
        ok, why = adapter.tree_support()
        if ok:
            p.try_tree = True
        elif mode == "tree":
            p.notes.append(f"TreeSHAP does not apply: {why}. {adapter.alternative_explainer()} would; "
                           "used model-agnostic SHAP over the ONNX model instead.")
        elif "pipeline ends in a tree" in (why or ""):
            p.notes.append(f"TreeSHAP not used: {why}; used model-agnostic SHAP over the ONNX model.")
    elif adapter.tree_support()[0]:
        p.notes.append("Model-agnostic SHAP was requested for a tree ensemble; TreeSHAP ('tree') "
                       "would be exact and much faster.")
    if adapter.explain_note:
        p.notes.append(adapter.explain_note)
    return p


# ---------------------------------------------------------------------------------------
# the step
# ---------------------------------------------------------------------------------------
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
    p = plan_explanation(converted, methods=methods, max_background=max_background, seed=seed,
                         max_rows=max_rows, budget=budget)
    if p.route == "text":   # issue 21: per-token SHAP/LIME
        from .explain_text import explain_text

        return explain_text(converted, onnx_model=onnx_model, methods=tuple(p.methods),
                            budget=budget, progress=progress)
    report = progress or (lambda f, m: None)
    route = _explain_table if p.route == "table" else _explain_tabular
    return route(converted, p, onnx_model, report)


def _base_config(p: ExplainPlan, task: str, names: list[str], classes: Any) -> dict:
    """The explain config entries every route writes (the bundle reads them)."""
    from .runtime.explain import DEFAULT_BUDGET, FORMAT_VERSION

    return {"format_version": FORMAT_VERSION, "task": task, "feature_names": names,
            "classes": [str(c) for c in classes] if classes is not None else None,
            "methods": p.methods, "seed": p.seed, "budget": dict(DEFAULT_BUDGET, **(p.budget or {}))}


def _explain_tabular(converted: Any, p: ExplainPlan, onnx_model: Any,
                     report: Callable[[float, str], None]) -> ExplainReport:
    """Numeric rows: TreeSHAP on the native trees (:mod:`nbdeploy.explain_tree`) when the plan
    says so and it applies, model-agnostic SHAP over the ONNX variant otherwise."""
    from .explain_tree import check_exported, tabular_tree
    from .runtime.explain import ServeExplainer
    from .runtime.model import OnnxModel

    spec = converted.spec
    task = spec["task"]
    names = list(spec.get("feature_names") or [f"x{i}" for i in range(int(spec["n_features"]))])
    X_all = np.asarray(converted.X, dtype=np.float32)
    classes = spec.get("classes")
    onnx = OnnxModel(_to_onnx_bytes(onnx_model if onnx_model is not None else converted.onnx_model), spec)
    notes = list(p.notes)
    timings: dict = {}
    t0 = time.perf_counter()
    config = _base_config(p, task, names, classes)

    tree = None
    if p.try_tree:
        rows = X_all[:p.rows("tree")]
        tree = tabular_tree(converted.adapter, spec, onnx, rows, notes, report)
    if tree is not None:
        config.update(tree["config"])
        artifacts = dict(tree["artifacts"])
        timings["shap_s"] = tree["seconds"]
    else:
        rows = X_all[:p.rows("agnostic")]
        agnostic, artifacts = _agnostic_tabular(X_all, p, task, classes, onnx, report)
        config.update(agnostic)
    if "lime" in p.methods:
        config["lime"] = _lime_config(X_all, names, p.seed, report, 0.8 if tree is not None else 0.02)
    config["notes"] = notes
    config = json.loads(json.dumps(config))          # exactly what the bundle will read

    if tree is not None:
        serve, agreement = check_exported(onnx, config, tree, rows, notes, report)
        phi, base, outputs, algo = tree["phi"], tree["base"], tree["outputs"], "tree"
    else:
        serve = ServeExplainer(onnx, config, background=artifacts["background"],
                               weights=artifacts["weights"])
        agreement = None
        rows, phi, base, outputs, algo, timings["shap_s"] = _shap_rows(
            serve, rows, seed=p.seed, max_rows=p.max_rows, notes=notes, report=report)
    return _finish(serve, config, rows=rows, phi=phi, base=base, outputs=outputs, algo=algo,
                   task=task, names=names, methods=p.methods, seed=p.seed, agreement=agreement,
                   notes=notes, timings=timings, artifacts=artifacts, t0=t0, report=report)


def _agnostic_tabular(X_all: np.ndarray, p: ExplainPlan, task: str, classes: Any, onnx: Any,
                      report: Callable[[float, str], None]) -> tuple[dict, dict]:
    """The model-agnostic path's background (k-means centroids, or a seeded subsample when the
    sample has NaN) and config entries."""
    k, seed = p.max_background, p.seed
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
    config: dict = {"kind": "agnostic", "background_rows": int(len(bg))}
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
    return config, {"background": bg, "weights": w}


def _lime_config(X_all: np.ndarray, names: list[str], seed: int,
                 report: Callable[[float, str], None], at: float) -> dict:
    """LIME's quartile statistics of the numeric sample (NaN-aware when it has missing values)."""
    if np.isnan(X_all).any():
        from .runtime.explain import lime_table_stats

        report(at, "LIME: discretiser statistics (with missing values)")
        return {"discretizer": "quartile", "table": True,
                "stats": lime_table_stats(X_all.astype(np.float64), ["numeric"] * len(names))}
    report(at, "LIME: discretiser statistics")
    return {"discretizer": "quartile", "stats": lime_stats(X_all, names, seed)}


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


def _explain_table(converted: Any, p: ExplainPlan, onnx_model: Any,
                   report: Callable[[float, str], None]) -> ExplainReport:
    """Table mode: SHAP/LIME with one feature per original DataFrame column (see the module
    docstring); the rows are the object table of the table contract.  TreeSHAP per column
    comes from :mod:`nbdeploy.explain_tree`; otherwise each column is one model-agnostic player."""
    from .explain_tree import table_tree, table_tree_config, table_tree_values
    from .runtime.explain import ServeExplainer, lime_table_stats
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
    notes = list(p.notes)
    timings: dict = {}
    t0 = time.perf_counter()

    codec, bg_rows = _table_background(X_all, columns, p)
    config = dict(_base_config(p, task, names, classes), table=codec.to_json())
    width = onnx.output_matrix(X_all[:1]).shape[1]

    tree = None
    if p.try_tree:
        report(0.05, "TreeSHAP: tracing transformed features to columns")
        tree = table_tree(converted, onnx, names, X_all[:p.rows("tree")], notes,
                                       asked=p.mode == "tree")
    artifacts: dict = {}
    if tree is not None:
        tree_config, artifacts = table_tree_config(
            converted.adapter, tree, task=task, classes=classes, columns=columns, width=width,
            notes=notes)
        config.update(tree_config)
    else:
        agnostic, artifacts = _agnostic_table(codec, bg_rows, columns, task, classes, width, notes)
        config.update(agnostic)
    if "lime" in p.methods:
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
        rows = X_all[:p.rows("tree")]
        phi, base, outputs, algo, agreement = table_tree_values(
            serve, converted.adapter, tree, rows, n_columns=len(names),
            output_space=config["output_space"], notes=notes)
        timings["shap_s"] = round(time.perf_counter() - t1, 4)
    else:
        rows = X_all[:p.rows("agnostic")]
        rows, phi, base, outputs, algo, timings["shap_s"] = _shap_rows(
            serve, rows, seed=p.seed, max_rows=p.max_rows, notes=notes, report=report)
    return _finish(serve, config, rows=rows, phi=phi, base=base, outputs=outputs, algo=algo,
                   task=task, names=names, methods=p.methods, seed=p.seed, agreement=agreement,
                   notes=notes, timings=timings, artifacts=artifacts, t0=t0, report=report)


def _table_background(X_all: np.ndarray, columns: list[dict], p: ExplainPlan) -> tuple:
    """The table's codec and a seeded subsample of rows as background.  Categorical pools: the
    model's categories plus the whole sample's; text pools: the background's texts."""
    from .runtime.explain import TableCodec

    rng = np.random.default_rng(p.seed)
    k = p.max_background
    pick = np.sort(rng.choice(len(X_all), k, replace=False)) if len(X_all) > k else np.arange(len(X_all))
    bg_rows = X_all[pick]
    codec = TableCodec.build(columns, X_all)
    codec = TableCodec([dict(c, pool=[t for t in dict.fromkeys(v for v in bg_rows[:, j]
                                                               if isinstance(v, str))])
                        if c["kind"] == "text" else c for j, c in enumerate(codec.to_json()["columns"])])
    return codec, bg_rows


def _agnostic_table(codec: Any, bg_rows: np.ndarray, columns: list[dict], task: str, classes: Any,
                    width: int, notes: list[str]) -> tuple[dict, dict]:
    """Model-agnostic SHAP per column: the encoded background, uniform weights, config entries."""
    if any(c.get("kind") == "text" for c in columns):
        notes.append("Text columns are explained as a whole (one contribution per column), "
                     "not per token.")
    bg = codec.encode(bg_rows)
    config: dict = {"kind": "agnostic", "background_rows": int(len(bg))}
    if task == "classifier":
        config["output_space"] = "probability"
        config["output_names"] = [str(c) for c in classes] if classes is not None else \
            [str(i) for i in range(width)]
    else:
        config["output_space"] = "value"
        config["output_names"] = ["value"] if width == 1 else [f"value_{i}" for i in range(width)]
    notes.append("Explained per original column with model-agnostic SHAP over the ONNX graph "
                 "(its preprocessing included): each column is one player.")
    return config, {"background": bg, "weights": np.full(len(bg), 1.0 / len(bg))}


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


__all__ = ["ExplainReport", "ExplainPlan", "explain", "lime_stats", "plan_explanation"]
