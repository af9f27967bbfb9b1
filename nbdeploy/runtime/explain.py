"""Explanations inside the served bundle: TreeSHAP, model-agnostic SHAP and LIME, no pickle.

Runs as ``nbdeploy_runtime.explain`` in the bundle, so it imports only the standard library
and numpy at module level; ``shap`` (tree models) and ``lime`` (LIME) are imported lazily.
The notebook side (:mod:`nbdeploy.explain`) uses the same functions, so an explanation
computed in the notebook and one from ``POST /explain`` agree.

Artifacts, all under ``model/explain/`` (written by ``ExplainReport.write_artifacts``)::

    explain_config.json   kind ("tree" | "agnostic"), output space, feature names, budget,
                          tree metadata (dtypes, base offset), LIME statistics
    trees.npz             tree kinds only: padded int/float arrays, one row per tree
                          (children_left/right/default, features, thresholds, values,
                          node_sample_weight, num_nodes); no object arrays
    background.npy        agnostic kind: k-means summary of the sample; in table mode a
                          seeded subsample of the sample's rows, encoded as floats
                          (numeric as is, categorical/text = index into the column's pool
                          in explain_config.json's "table", NaN = missing)
    background_weights.npy  its cluster weights (sum to 1)
    features.onnx         table-mode tree pipelines only: the served graph with the tree
                          ensemble's input as its output (the preprocessed features)

Algorithms
----------
* ``tree``: shap's exact path-dependent TreeSHAP, fed shap's dict-of-trees model format
  rebuilt from ``trees.npz``.  Same C extension and same numbers as ``shap.TreeExplainer``
  on the native model.
* ``agnostic``: Shapley values of ``v(S) = E_b[f(x_S, b_~S)]`` over a weighted background,
  computed over the onnxruntime session.  Exact (all 2^M coalitions) when that fits the
  evaluation budget, otherwise antithetic permutation sampling (shap's PermutationExplainer
  estimator).  Both are exactly additive: ``base + sum(phi) = f(x)``.  Implemented here in
  numpy so the served bundle needs no shap for non-tree models, accepts weighted (k-means)
  backgrounds and is deterministic without touching a global random state.
* ``lime``: ``lime.lime_tabular`` with quartile discretisation, rebuilt from stored bin
  statistics (``training_data_stats``) instead of training rows, seeded per row.
* **table mode** (models fit on DataFrames, ``spec["input_mode"] == "table"``): one player
  per original column.  :class:`TableCodec` encodes a row (categorical/text cell -> index
  into a per-request pool of strings, missing -> NaN); the model function decodes each
  coalition back to an object table and runs the ONNX graph, so one-hot/TF-IDF features of a
  column move together and ``base + sum(phi) = f(x)`` holds by construction.  LIME treats
  categorical/text/boolean columns as lime categorical features.  Text columns are
  explained per column, not per token.  Tree pipelines (ColumnTransformer -> forest or
  boosting) get exact TreeSHAP instead: ``features.onnx`` computes the preprocessed features
  the trees see, TreeSHAP explains those, and each transformed feature's value (e.g. every
  one-hot column of "city") is summed into its original column (``config["tree_groups"]``);
  sums keep additivity.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .columns import encode_column, is_missing
from .validation import ClientError

EXPLAIN_DIR = "explain"
CONFIG_FILE = "explain_config.json"
TREES_FILE = "trees.npz"
BACKGROUND_FILE = "background.npy"
WEIGHTS_FILE = "background_weights.npy"
FEATURES_FILE = "features.onnx"   # table-mode trees: the served graph cut at the trees' input
FORMAT_VERSION = 1

METHODS = ("shap", "lime")

#: Default cost budget; a bundle's explain_config.json or config.json ("explain_budget") overrides.
DEFAULT_BUDGET = {
    "max_rows": 1000,            # TreeSHAP rows per request
    "max_rows_agnostic": 20,     # model-agnostic SHAP rows per request
    "max_rows_lime": 10,         # LIME rows per request
    "max_evals": 500,            # coalitions evaluated per row (agnostic SHAP), default
    "max_evals_limit": 5000,     # the most a request may ask for
    "lime_samples": 5000,        # LIME perturbation samples per row, default (lime's own)
    "max_lime_samples": 20000,   # the most a request may ask for
    "max_model_rows": 100_000,   # rows per onnxruntime call when evaluating coalitions
}

_TREE_INT_KEYS = ("children_left", "children_right", "children_default", "features")


# ---------------------------------------------------------------------------------------
# tree artifacts
# ---------------------------------------------------------------------------------------
def tree_arrays_from_ensemble(ensemble: Any) -> tuple[dict, dict]:
    """Plain arrays + JSON metadata from a parsed ``shap.TreeExplainer(...).model``.

    Uses the ensemble's padded arrays (values already scaled/normalised and spread over
    outputs for stacked multi-class boosters), so rebuilding gives the same numbers.
    """
    n_trees = len(ensemble.trees)
    limit = getattr(ensemble, "tree_limit", None)
    if limit is not None and 0 < int(limit) < n_trees:
        n_trees = int(limit)
    if np.any(np.asarray(ensemble.threshold_types)[:n_trees] == 1):  # -1 marks leaves
        raise ValueError("categorical splits cannot be exported without pickle")
    arrays = {
        "children_left": np.asarray(ensemble.children_left[:n_trees], dtype=np.int32),
        "children_right": np.asarray(ensemble.children_right[:n_trees], dtype=np.int32),
        "children_default": np.asarray(ensemble.children_default[:n_trees], dtype=np.int32),
        "features": np.asarray(ensemble.features[:n_trees], dtype=np.int32),
        "thresholds": np.ascontiguousarray(ensemble.thresholds[:n_trees]),
        "values": np.ascontiguousarray(ensemble.values[:n_trees]),
        "node_sample_weight": np.ascontiguousarray(ensemble.node_sample_weight[:n_trees]),
        "num_nodes": np.asarray(ensemble.num_nodes[:n_trees], dtype=np.int32),
    }
    base = np.asarray(ensemble.base_offset, dtype=np.float64).reshape(-1)
    meta = {
        "n_trees": int(n_trees),
        "num_outputs": int(arrays["values"].shape[2]),
        "base_offset": [float(v) for v in base],
        "internal_dtype": np.dtype(ensemble.internal_dtype).name,
        "input_dtype": np.dtype(ensemble.input_dtype).name,
        "tree_output": ensemble.tree_output,
        "objective": ensemble.objective,
    }
    return arrays, meta


def save_trees(path: str | Path, arrays: dict) -> Path:
    """Write tree arrays with ``np.savez`` (numeric arrays only, loadable without pickle)."""
    for k, a in arrays.items():
        if np.asarray(a).dtype == object:
            raise ValueError(f"tree array {k} has dtype object")
    path = Path(path)
    np.savez(path, **{k: np.asarray(v) for k, v in arrays.items()})
    return path


def load_trees(path: str | Path) -> dict:
    """Read ``trees.npz`` with ``allow_pickle=False``."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def shap_tree_model(arrays: dict, meta: dict) -> dict:
    """shap's dict-of-trees model format (accepted by ``shap.TreeExplainer``)."""
    internal = np.dtype(meta.get("internal_dtype", "float64")).type
    trees = []
    for i, n in enumerate(arrays["num_nodes"].tolist()):
        t = {k: arrays[k][i, :n] for k in _TREE_INT_KEYS}
        t["thresholds"] = arrays["thresholds"][i, :n]
        t["values"] = arrays["values"][i, :n, :]
        t["node_sample_weight"] = arrays["node_sample_weight"][i, :n]
        trees.append(t)
    model = {"trees": trees,
             "base_offset": np.asarray(meta.get("base_offset", [0.0]), dtype=internal),
             "internal_dtype": internal,
             "input_dtype": np.dtype(meta.get("input_dtype", "float32")).type}
    if meta.get("tree_output"):
        model["tree_output"] = meta["tree_output"]
    if meta.get("objective"):
        model["objective"] = meta["objective"]
    return model


def tree_shap(explainer: Any, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run a shap TreeExplainer: ``(phi [N, F, K], base [K], outputs [N, K])`` in raw space."""
    phi = explainer.shap_values(X, check_additivity=False)
    if isinstance(phi, list):  # older shap returned one array per output
        phi = np.stack(phi, axis=-1)
    phi = np.asarray(phi, dtype=np.float64)
    if phi.ndim == 2:
        phi = phi[:, :, None]
    base = np.asarray(explainer.expected_value, dtype=np.float64).reshape(-1)
    outputs = np.asarray(explainer.model.predict(X.astype(explainer.model.input_dtype)),
                         dtype=np.float64).reshape(len(X), -1)
    return phi, base, outputs


# ---------------------------------------------------------------------------------------
# model-agnostic Shapley values over a weighted background
# ---------------------------------------------------------------------------------------
def _coalition_values(f: Callable, x: np.ndarray, masks: np.ndarray, bg: np.ndarray,
                      w: np.ndarray, chunk_rows: int) -> np.ndarray:
    """``v(S) = sum_b w_b f(x_S, bg_b)`` for every mask row: [S, K]."""
    B = len(bg)
    per = max(1, chunk_rows // B)
    out = []
    for s in range(0, len(masks), per):
        m = masks[s:s + per]
        Z = np.where(m[:, None, :], x[None, None, :], bg[None, :, :]).reshape(-1, bg.shape[1])
        y = np.asarray(f(Z), dtype=np.float64).reshape(len(m), B, -1)
        out.append(np.einsum("sbk,b->sk", y, w))
    return np.concatenate(out, axis=0)


def _shapley_weights(M: int) -> np.ndarray:
    return np.array([math.factorial(s) * math.factorial(M - s - 1) / math.factorial(M)
                     for s in range(M)])


def agnostic_shap(f: Callable, X: np.ndarray, background: np.ndarray, weights: np.ndarray | None = None,
                  *, max_evals: int = 500, seed: int = 0, chunk_rows: int = 100_000,
                  dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Shapley values of ``f`` (rows -> [n, K]) for each row of ``X`` against a background.

    Returns ``(phi [N, F, K], base [K], outputs [N, K], algorithm)`` where ``algorithm`` is
    ``"exact"`` (all 2^F coalitions fit in ``max_evals``) or ``"permutation"`` (antithetic
    permutations, ``(max_evals - 2) // (2 (F - 1))`` pairs).  ``base + phi.sum(1) == outputs``
    holds exactly for both.  Each row uses a generator seeded with ``seed``, so a row's answer
    does not depend on the other rows in the request.  ``dtype`` is the matrix type handed to
    ``f`` (float64 for encoded tables, whose cells are codes and NaN-for-missing).
    """
    X = np.asarray(X, dtype=dtype)
    bg = np.asarray(background, dtype=dtype)
    w = np.full(len(bg), 1.0 / len(bg)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    N, M = X.shape
    base = np.einsum("bk,b->k", np.asarray(f(bg), dtype=np.float64).reshape(len(bg), -1), w)
    K = base.shape[0]
    phi = np.zeros((N, M, K))
    # one row at a time: onnxruntime may round differently for other batch sizes, and a row's
    # answer must not depend on the other rows of the request
    outputs = np.concatenate([np.asarray(f(X[r:r + 1]), dtype=np.float64).reshape(1, K)
                              for r in range(N)]) if N else np.zeros((0, K))
    if M == 1:
        phi[:, 0, :] = outputs - base
        return phi, base, outputs, "exact"
    if 2 ** M <= max_evals:
        codes = np.arange(2 ** M)
        masks = ((codes[:, None] >> np.arange(M)[None, :]) & 1).astype(bool)
        sizes = masks.sum(1)
        sw = _shapley_weights(M)
        for r in range(N):
            v = _coalition_values(f, X[r], masks, bg, w, chunk_rows)
            v[0], v[-1] = base, outputs[r]        # same numbers as reported: exact additivity
            for i in range(M):
                without = codes[(codes >> i) & 1 == 0]
                phi[r, i] = np.einsum("s,sk->k", sw[sizes[without]], v[without | (1 << i)] - v[without])
        return phi, base, outputs, "exact"
    pairs = max(1, (int(max_evals) - 2) // (2 * (M - 1)))
    for r in range(N):
        rng = np.random.default_rng(seed)
        perms = [rng.permutation(M) for _ in range(pairs)]
        orders = [p for q in perms for p in (q, q[::-1])]
        masks = np.zeros((len(orders) * (M - 1), M), dtype=bool)
        for o, order in enumerate(orders):
            for j in range(1, M):
                masks[o * (M - 1) + j - 1, order[:j]] = True
        v = _coalition_values(f, X[r], masks, bg, w, chunk_rows).reshape(len(orders), M - 1, K)
        full = outputs[r][None, None, :]
        chain = np.concatenate([np.broadcast_to(base, (len(orders), 1, K)), v,
                                np.broadcast_to(full, (len(orders), 1, K))], axis=1)
        deltas = np.diff(chain, axis=1)                          # [P, M, K]
        for o, order in enumerate(orders):
            phi[r, order] += deltas[o]
        phi[r] /= len(orders)
    return phi, base, outputs, "permutation"


# ---------------------------------------------------------------------------------------
# LIME
# ---------------------------------------------------------------------------------------
def lime_stats_to_json(stats: dict) -> dict:
    """JSON-safe copy of lime's ``training_data_stats`` (int keys become strings)."""
    out = {}
    for key, per_feature in stats.items():
        out[key] = {str(int(f)): [float(v) for v in np.asarray(vals).reshape(-1)]
                    for f, vals in per_feature.items()}
    return out


def lime_stats_from_json(stats: dict) -> dict:
    """Inverse of :func:`lime_stats_to_json` (feature keys back to ints, in order)."""
    out = {}
    for key, per_feature in stats.items():
        items = sorted(((int(f), vals) for f, vals in per_feature.items()), key=lambda t: t[0])
        if key == "bins":
            out[key] = {f: np.asarray(v, dtype=np.float64) for f, v in items}
        else:
            out[key] = {f: list(v) for f, v in items}
    return out


def lime_explain_row(predict: Callable, row: np.ndarray, stats: dict, feature_names: list[str], *,
                     mode: str, label: int = 0, num_samples: int = 5000, seed: int = 0) -> dict:
    """LIME tabular explanation of one row, rebuilt from stored quartile statistics.

    ``predict`` maps rows to probabilities [n, k] (classification) or values [n]
    (regression).  A fresh explainer seeded with ``seed`` per row makes the answer
    reproducible.  ``stats`` is lime's ``training_data_stats`` plus ``bins``.
    """
    try:
        from lime.lime_tabular import LimeTabularExplainer
    except ImportError as exc:  # pragma: no cover - depends on the bundle's requirements
        raise ClientError(501, "LIME is not available in this bundle (the 'lime' package is missing).",
                          hint="Rebuild the bundle with explain methods including 'lime'.") from exc
    M = len(feature_names)
    lows = np.array([stats["mins"][f][0] for f in range(M)])
    highs = np.array([stats["maxs"][f][-1] for f in range(M)])
    dummy = np.vstack([lows, highs])   # only its width and range are read when stats are given
    explainer = LimeTabularExplainer(dummy, mode=mode, feature_names=list(feature_names),
                                     discretize_continuous=True, training_data_stats=stats,
                                     random_state=int(seed))
    row = np.asarray(row, dtype=np.float64).reshape(-1)
    exp = explainer.explain_instance(row, predict, labels=(int(label),), num_features=M,
                                     num_samples=int(num_samples))
    key = int(label) if mode == "classification" else next(iter(exp.local_exp))
    weights = np.zeros(M)
    for j, wgt in exp.local_exp[key]:
        weights[int(j)] = float(wgt)
    rules = []
    for j in range(M):
        names = explainer.discretizer.names.get(j)
        if names:
            b = int(explainer.discretizer.lambdas[j](row[j]))
            rules.append(names[b])
        else:
            rules.append(f"{feature_names[j]} = {row[j]:.4g}")
    intercept = exp.intercept[key] if isinstance(exp.intercept, dict) else exp.intercept
    score = exp.score[key] if isinstance(exp.score, dict) else exp.score
    local_pred = exp.local_pred[key] if isinstance(exp.local_pred, dict) else exp.local_pred
    return {"weights": weights.tolist(), "intercept": float(intercept), "score": float(score),
            "local_prediction": float(np.asarray(local_pred).reshape(-1)[0]), "rules": rules}


# ---------------------------------------------------------------------------------------
# table mode: one feature per original column
# ---------------------------------------------------------------------------------------
POOLED_KINDS = ("categorical", "text")
LIME_MISSING = -1.0          # LIME's code for a missing categorical/text/boolean cell (it needs ints)


def _as_floats(col: np.ndarray) -> np.ndarray:
    """Numeric/boolean cells of an object column as float64, None/NaN -> NaN."""
    return encode_column(col, {"kind": "numeric"})


class TableCodec:
    """Object table [N, C] <-> float matrix, so that explainers see one feature per column.

    Numeric and boolean cells stay floats (NaN = missing).  Categorical and text cells become
    an index into the column's *pool* of strings (NaN = missing; for LIME, which needs integer
    categories, -1 = missing).  The stored pool is the categories the model knows (plus any
    other string of the background) for categorical columns and the background's texts for text
    columns.  :meth:`for_rows` extends the pools with the strings of the rows being explained
    (an unseen category, a new text), so decoding always gives back the exact request.
    """

    def __init__(self, columns: list[dict]):
        self.columns = [dict(c) for c in columns]
        self.names = [str(c["name"]) for c in columns]
        self.kinds = [str(c.get("kind", "numeric")) for c in columns]
        self.pools = [list(c.get("pool") or []) if k in POOLED_KINDS else None
                      for c, k in zip(columns, self.kinds)]
        self._index = [None if p is None else {v: i for i, v in enumerate(p)} for p in self.pools]
        self._arrays = [None if p is None else np.array(p + [None], dtype=object)[:-1]
                        for p in self.pools]

    @classmethod
    def build(cls, columns: list[dict], X: np.ndarray | None = None) -> TableCodec:
        """From the spec's ``columns`` (name, kind, categories) and sample rows ``X``."""
        out = []
        for j, c in enumerate(columns):
            kind = str(c.get("kind", "numeric"))
            entry = {"name": str(c["name"]), "kind": kind}
            if kind in POOLED_KINDS:
                pool = [str(v) for v in (c.get("categories") or [])] if kind == "categorical" else []
                seen = set(pool)
                if X is not None:
                    for v in X[:, j]:
                        if isinstance(v, str) and v not in seen:
                            seen.add(v)
                            pool.append(v)
                entry["pool"] = pool
            out.append(entry)
        return cls(out)

    def to_json(self) -> dict:
        return {"columns": [dict(name=n, kind=k, **({"pool": p} if p is not None else {}))
                            for n, k, p in zip(self.names, self.kinds, self.pools)]}

    @classmethod
    def from_json(cls, cfg: dict) -> TableCodec:
        return cls(cfg["columns"])

    def for_rows(self, X: np.ndarray) -> TableCodec:
        """A copy whose pools also hold every string of ``X`` (for one request)."""
        extra = []
        for j, p in enumerate(self.pools):
            add: list[str] = []
            if p is not None:
                idx = self._index[j]
                for v in X[:, j]:
                    if isinstance(v, str) and v not in idx and v not in add:
                        add.append(v)
            extra.append(add)
        if not any(extra):
            return self
        return TableCodec([dict(name=n, kind=k, **({"pool": p + e} if p is not None else {}))
                           for n, k, p, e in zip(self.names, self.kinds, self.pools, extra)])

    def encode(self, X: np.ndarray, *, lime: bool = False) -> np.ndarray:
        """Object table -> float64 [N, C].  Non-string cells of pooled columns count as
        missing; strings not in the pool too (call :meth:`for_rows` first to keep them)."""
        X = np.asarray(X, dtype=object)
        if X.ndim == 1:
            X = X.reshape(1, -1)
        Z = np.empty(X.shape, dtype=np.float64)
        miss = LIME_MISSING if lime else np.nan
        for j, kind in enumerate(self.kinds):
            idx = self._index[j]
            if idx is None:
                col = _as_floats(X[:, j])
                if lime and kind == "boolean":
                    col = np.where(np.isnan(col), LIME_MISSING, col)
                Z[:, j] = col
            else:
                Z[:, j] = [idx.get(v, miss) if isinstance(v, str) else miss for v in X[:, j]]
        return Z

    def decode(self, Z: np.ndarray) -> np.ndarray:
        """Float [N, C] -> object table (NaN or a negative code = missing)."""
        Z = np.asarray(Z, dtype=np.float64)
        out = np.empty(Z.shape, dtype=object)
        for j, kind in enumerate(self.kinds):
            z = Z[:, j]
            arr = self._arrays[j]
            if arr is None:
                col = np.where(z < 0, np.nan, z) if kind == "boolean" else z
                out[:, j] = col
            else:
                ok = ~np.isnan(z) & (z >= 0)
                col = np.full(len(z), None, dtype=object)
                col[ok] = arr[z[ok].astype(np.int64)]
                out[:, j] = col
        return out

    def cell_text(self, j: int, v: Any) -> str:
        """A short human-readable cell for rules and plot labels."""
        if is_missing(v):
            return f"{self.names[j]} is missing"
        if self.kinds[j] == "text":
            t = str(v)
            return f"{self.names[j]} = {t[:37] + '...' if len(t) > 40 else t!r}"
        if isinstance(v, str):
            return f"{self.names[j]} = {v}"
        if self.kinds[j] == "boolean":
            return f"{self.names[j]} = {bool(float(v))}"
        return f"{self.names[j]} = {float(v):.4g}"


def group_columns(phi: np.ndarray, groups: list[int], n_columns: int) -> np.ndarray:
    """Sum per-transformed-feature SHAP values [N, F', K] into original columns [N, C, K]."""
    G = np.zeros((len(groups), n_columns))
    G[np.arange(len(groups)), np.asarray(groups, dtype=np.int64)] = 1.0
    return np.einsum("nfk,fc->nck", phi, G)


class FeatureGraph:
    """The preprocessed features the trees see, computed by ``features.onnx`` from a table."""

    def __init__(self, model: Any, output: str, feeds: Callable[[np.ndarray], dict]):
        from .model import make_session

        self.session = make_session(model)
        self.output = output
        self._feeds = feeds

    def __call__(self, X: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output], self._feeds(X))[0]
        return np.asarray(out, dtype=np.float32).reshape(len(X), -1)


def json_cells(row: Any) -> list:
    """A table row as JSON values (NaN -> null)."""
    return [None if is_missing(v) else (v if isinstance(v, str) else float(v)) for v in row]


def lime_table_stats(Z: np.ndarray, kinds: list[str]) -> dict:
    """lime's ``training_data_stats`` for an encoded table (``TableCodec.encode(lime=True)``).

    Numeric columns: quartile bins of the observed (non-missing) values, per-bin mean/std and
    ranges as lime's QuartileDiscretizer computes them.  Categorical, text and boolean columns:
    lime categorical features, the codes seen (-1 = missing) with their frequencies.
    """
    stats: dict = {k: {} for k in ("means", "stds", "mins", "maxs", "bins",
                                   "feature_values", "feature_frequencies")}
    for j, kind in enumerate(kinds):
        col = Z[:, j]
        if kind == "numeric":
            col = col[~np.isnan(col)]
            if not len(col):
                col = np.zeros(1)
            qts = np.unique(np.percentile(col, [25, 50, 75]))
            disc = np.searchsorted(qts, col)
            means, stds = [], []
            for b in range(len(qts) + 1):
                sel = col[disc == b]
                means.append(float(np.mean(sel)) if len(sel) else 0.0)
                stds.append((float(np.std(sel)) if len(sel) else 0.0) + 1e-11)
            stats["means"][j], stats["stds"][j] = means, stds
            stats["mins"][j] = [float(col.min())] + qts.tolist()
            stats["maxs"][j] = qts.tolist() + [float(col.max())]
            stats["bins"][j] = qts
            values, freq = np.unique(disc, return_counts=True)
        else:
            values, freq = np.unique(col, return_counts=True)
        stats["feature_values"][j] = values.astype(np.float64)
        stats["feature_frequencies"][j] = freq.astype(np.float64)
    return lime_stats_to_json(stats)


def lime_explain_table_row(predict: Callable, row: np.ndarray, stats: dict, codec: TableCodec, *,
                           mode: str, label: int = 0, num_samples: int = 5000, seed: int = 0) -> dict:
    """LIME for one encoded table row (``codec.encode(..., lime=True)``); ``predict`` maps an
    encoded matrix to probabilities [n, k] or values [n].

    Categorical, text and boolean columns are lime categorical features (the binary feature
    is "same value as this row"); numeric ones are quartile-discretised.  A numeric cell that
    is missing in the row is explained as "missing": perturbed samples in its bin (lime puts
    NaN in the top one) are sent to the model as missing, the others keep their sampled value.
    """
    try:
        from lime.lime_tabular import LimeTabularExplainer
    except ImportError as exc:  # pragma: no cover - depends on the bundle's requirements
        raise ClientError(501, "LIME is not available in this bundle (the 'lime' package is missing).",
                          hint="Rebuild the bundle with explain methods including 'lime'.") from exc
    M = len(codec.names)
    numeric = [j for j in range(M) if codec.kinds[j] == "numeric"]
    categorical = [j for j in range(M) if j not in numeric]
    lows = np.zeros(M)
    highs = np.ones(M)
    for j in numeric:
        lows[j], highs[j] = stats["mins"][j][0], stats["maxs"][j][-1]
    explainer = LimeTabularExplainer(np.vstack([lows, highs]), mode=mode, feature_names=codec.names,
                                     categorical_features=categorical, discretize_continuous=True,
                                     training_data_stats=stats, random_state=int(seed))
    row = np.asarray(row, dtype=np.float64).reshape(-1)
    missing_num = [j for j in numeric if np.isnan(row[j])]
    tops = {j: np.asarray(stats["bins"][j], dtype=np.float64)[-1] for j in missing_num}

    def predict_encoded(Z):
        Z = np.array(Z, dtype=np.float64)
        for j, top in tops.items():
            Z[Z[:, j] > top, j] = np.nan
        return predict(Z)

    exp = explainer.explain_instance(row, predict_encoded, labels=(int(label),), num_features=M,
                                     num_samples=int(num_samples))
    key = int(label) if mode == "classification" else next(iter(exp.local_exp))
    weights = np.zeros(M)
    for j, wgt in exp.local_exp[key]:
        weights[int(j)] = float(wgt)
    cells = codec.decode(row.reshape(1, -1))[0]
    rules = []
    for j in range(M):
        names = explainer.discretizer.names.get(j) if j in numeric and j not in tops else None
        if names:
            rules.append(names[int(explainer.discretizer.lambdas[j](row[j]))])
        else:
            rules.append(codec.cell_text(j, cells[j]))
    intercept = exp.intercept[key] if isinstance(exp.intercept, dict) else exp.intercept
    score = exp.score[key] if isinstance(exp.score, dict) else exp.score
    local_pred = exp.local_pred[key] if isinstance(exp.local_pred, dict) else exp.local_pred
    return {"weights": weights.tolist(), "intercept": float(intercept), "score": float(score),
            "local_prediction": float(np.asarray(local_pred).reshape(-1)[0]), "rules": rules}


# ---------------------------------------------------------------------------------------
# the serving object
# ---------------------------------------------------------------------------------------
def _as_int(value: Any, name: str, *, low: int, high: int, over: int = 413) -> int:
    # NaN/Infinity (JSON's 1e309 parses as inf) would raise inside int(): check them first
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or (isinstance(value, float) and not math.isfinite(value)) or int(value) != value):
        raise ClientError(400, f"{name!r} must be an integer; got {value!r}.",
                          expected="integer", received=repr(value)[:40])
    value = int(value)
    if value < low:
        raise ClientError(400, f"{name!r} must be at least {low}; got {value}.",
                          expected=f">= {low}", received=value)
    if value > high:
        raise ClientError(over, f"{name!r} = {value} exceeds the limit of {high}.",
                          hint=f"Ask for at most {high}.", expected=f"<= {high}", received=value)
    return value


class ServeExplainer:
    """Explanations for a served model, built from the bundle's ``model/explain/`` folder.

    ``model`` is the runtime's :class:`~nbdeploy_runtime.model.OnnxModel` (anything with
    ``output_matrix(X)`` and ``spec``); ``config`` is the explain configuration dict.
    """

    def __init__(self, model: Any, config: dict, *, trees: dict | None = None,
                 background: np.ndarray | None = None, weights: np.ndarray | None = None,
                 features: Callable[[np.ndarray], np.ndarray] | None = None):
        self.model = model
        self.config = config
        self.kind = config.get("kind", "agnostic")
        self.feature_names = list(config["feature_names"])
        self.task = config.get("task", "regressor")
        self.output_space = config.get("output_space", "value")
        self.output_names = [str(n) for n in config.get("output_names") or ["value"]]
        self.class_names = [str(c) for c in config.get("classes") or []] or (
            self.output_names if self.output_space == "probability" else [])
        self.methods = list(config.get("methods") or METHODS)
        self.budget = dict(DEFAULT_BUDGET, **(config.get("budget") or {}))
        self.seed = int(config.get("seed", 0))
        self.notes = list(config.get("notes") or [])
        self._trees = trees
        self.background = background
        self.weights = weights
        self._tree_explainer = None
        self._lock = threading.Lock()
        lime = config.get("lime")
        self._lime_stats = lime_stats_from_json(lime["stats"]) if lime else None
        # table mode: rows are object tables, explained one original column per feature
        self.codec = TableCodec.from_json(config["table"]) if config.get("table") else None
        # LIME over a table (categorical columns, "missing" rules): table models, and numeric
        # models whose sample has missing values (lime's own statistics cannot take NaN)
        self._lime_codec = self.codec if self.codec is not None else (
            TableCodec([{"name": n, "kind": "numeric"} for n in self.feature_names])
            if lime and lime.get("table") else None)
        self.features = features           # table-mode trees: table -> preprocessed features
        if self.codec is not None and self.kind == "tree" and features is None:
            raise ValueError("a table-mode tree explainer needs its feature graph")
        if self.kind == "tree" and trees is None:
            raise ValueError("a tree explainer needs its tree arrays")
        if self.kind == "agnostic" and background is None:
            raise ValueError("a model-agnostic explainer needs a background")

    # -- construction -----------------------------------------------------------------
    @classmethod
    def from_bundle(cls, model_dir: str | Path, onnx_model: Any, config: dict | None = None
                    ) -> ServeExplainer:
        """Load ``model_dir/explain/`` (JSON + npy/npz, never pickle).

        ``config`` is the bundle's config.json; its ``explain_budget`` dict overrides the
        budget written at build time.
        """
        shape = (getattr(onnx_model, "spec", None) or {}).get("input_shape")
        if shape and len(shape) > 2:   # image / N-D bundles: SHAP with an image masker (runtime/images.py)
            from .images import ImageExplainer

            return ImageExplainer(onnx_model, (config or {}).get("explain_budget"))
        folder = Path(model_dir) / EXPLAIN_DIR
        cfg_path = folder / CONFIG_FILE
        if not cfg_path.is_file():
            raise ClientError(501, "This bundle was built without explanations.",
                              hint="Rebuild with explain='shap,lime'.")
        with open(cfg_path, encoding="utf-8") as f:
            ecfg = json.load(f)
        override = (config or {}).get("explain_budget")
        if override:
            ecfg["budget"] = dict(ecfg.get("budget") or {}, **override)
        if ecfg.get("kind") == "text":   # issue 21: per-token explanations (runtime/text.py)
            from .text import TextExplainer

            return TextExplainer(onnx_model, ecfg.get("budget"))
        trees = load_trees(folder / TREES_FILE) if ecfg.get("kind") == "tree" else None
        features = None
        if ecfg.get("kind") == "tree" and ecfg.get("table"):
            features = FeatureGraph(str(folder / FEATURES_FILE), ecfg["tree_features_output"],
                                    onnx_model.feeds)
        bg = w = None
        if (folder / BACKGROUND_FILE).is_file():
            bg = np.load(folder / BACKGROUND_FILE, allow_pickle=False)
            if (folder / WEIGHTS_FILE).is_file():
                w = np.load(folder / WEIGHTS_FILE, allow_pickle=False)
        return cls(onnx_model, ecfg, trees=trees, background=bg, weights=w, features=features)

    def tree_explainer(self):
        """shap.TreeExplainer over the rebuilt dict-of-trees (built once, then reused)."""
        if self._tree_explainer is None:
            with self._lock:
                if self._tree_explainer is None:
                    try:
                        import shap
                    except ImportError as exc:  # pragma: no cover
                        raise ClientError(501, "TreeSHAP needs the 'shap' package in this bundle.",
                                          hint="Rebuild the bundle with explanations enabled.") from exc
                    model = shap_tree_model(self._trees, self.config["tree"])
                    self._tree_explainer = shap.TreeExplainer(model)
        return self._tree_explainer

    # -- limits --------------------------------------------------------------------------
    @property
    def max_rows(self) -> int:
        """The most rows any enabled method accepts (the app validates against this first)."""
        limits = [self._row_limit(m) for m in self.methods]
        return max(limits) if limits else 1

    def _row_limit(self, method: str) -> int:
        if method == "lime":
            return int(self.budget["max_rows_lime"])
        if self.kind == "tree":
            return int(self.budget["max_rows"])
        return int(self.budget["max_rows_agnostic"])

    # -- the work ---------------------------------------------------------------------
    def shap_values(self, X: np.ndarray, *, max_evals: int | None = None, seed: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
        """``(phi [N, F, K], base [K], outputs [N, K], algorithm)`` in ``self.output_space``.

        Table mode: ``X`` is an object table; each original column is one player, so the
        coalitions mix whole cells of the row and of the background, decoded back to a table
        for the ONNX model (additivity holds exactly, as for float rows)."""
        if self.codec is not None and self.kind == "tree":
            phi, base, outputs = self.feature_shap(X)
            return group_columns(phi, self.config["tree_groups"], len(self.feature_names)), \
                base, outputs, "tree"
        if self.codec is not None:
            codec = self.codec.for_rows(np.asarray(X, dtype=object))
            return agnostic_shap(lambda Z: self.model.output_matrix(codec.decode(Z)),
                                 codec.encode(X), self.background, self.weights,
                                 max_evals=int(max_evals or self.budget["max_evals"]),
                                 seed=self.seed if seed is None else int(seed),
                                 chunk_rows=int(self.budget["max_model_rows"]), dtype=np.float64)
        X = np.asarray(X, dtype=np.float32)
        if self.kind == "tree":
            phi, base, outputs = tree_shap(self.tree_explainer(), X)
            return phi, base, outputs, "tree"
        return agnostic_shap(self.model.output_matrix, X, self.background, self.weights,
                             max_evals=int(max_evals or self.budget["max_evals"]),
                             seed=self.seed if seed is None else int(seed),
                             chunk_rows=int(self.budget["max_model_rows"]))

    def feature_shap(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Table-mode trees: TreeSHAP per transformed feature ``(phi [N, F', K], base, outputs)``."""
        return tree_shap(self.tree_explainer(), self.features(np.asarray(X, dtype=object)))

    def text_tokens(self, phi_t: np.ndarray, idx: list[int], top: int = 10) -> list[dict]:
        """Per row, the largest token terms of each text column: ``{column: [[token, value]]}``."""
        names = self.config.get("tree_feature_names") or []
        groups = np.asarray(self.config["tree_groups"])
        out = []
        for r, k in enumerate(idx):
            row = {}
            for j, kind in enumerate(self.codec.kinds):
                if kind != "text":
                    continue
                feats = np.flatnonzero(groups == j)
                vals = phi_t[r, feats, k]
                order = [i for i in np.argsort(-np.abs(vals), kind="stable")[:top] if vals[i] != 0]
                row[self.feature_names[j]] = [[names[feats[i]], float(vals[i])] for i in order]
            out.append(row)
        return out

    def _lime_predict(self):
        if self.task == "classifier":
            return lambda Z: self.model.output_matrix(np.asarray(Z, dtype=np.float32))
        return lambda Z: self.model.output_matrix(np.asarray(Z, dtype=np.float32))[:, 0]

    def lime_row(self, row: np.ndarray, *, label: int | None = None, num_samples: int | None = None,
                 seed: int | None = None) -> dict:
        """LIME for one row; ``label`` = class index (default: positive class if binary, else predicted)."""
        if self._lime_stats is None:
            raise ClientError(400, "LIME is not enabled in this bundle.", expected=self.methods,
                              received="lime")
        if self.codec is not None:
            row = np.asarray(row, dtype=object).reshape(1, -1)
        else:
            row = np.asarray(row, dtype=np.float32).reshape(1, -1)
        probs = self.model.output_matrix(row)[0]
        classification = self.task == "classifier"
        if classification and label is None:   # as for SHAP: the positive class, else the predicted one
            label = 1 if len(probs) == 2 else int(np.argmax(probs))
        kw = dict(mode="classification" if classification else "regression", label=label or 0,
                  num_samples=int(num_samples or self.budget["lime_samples"]),
                  seed=self.seed if seed is None else int(seed))
        if self._lime_codec is not None:
            codec = self._lime_codec.for_rows(np.asarray(row, dtype=object))
            f = (lambda Z: self.model.output_matrix(codec.decode(Z))) if classification else \
                (lambda Z: self.model.output_matrix(codec.decode(Z))[:, 0])
            out = lime_explain_table_row(f, codec.encode(row, lime=True)[0], self._lime_stats, codec, **kw)
        else:
            out = lime_explain_row(self._lime_predict(), row[0], self._lime_stats, self.feature_names,
                                   **kw)
        out["label_index"] = int(label) if classification else 0
        out["output"] = float(probs[label] if classification else probs[0])
        return out

    def _lime_label(self, request: Any) -> int | None:
        """Probability column LIME explains: None = the default of :meth:`lime_row`."""
        if self.task != "classifier" or request is None or request == "auto":
            return None
        for i, name in enumerate(self.class_names):
            if name == str(request):
                return i
        if isinstance(request, int) and not isinstance(request, bool) and 0 <= request < len(self.class_names):
            return request
        raise ClientError(400, f"Unknown class {request!r} for LIME (it explains one class at a time).",
                          expected=["auto"] + self.class_names, received=repr(request)[:40])

    def choose_outputs(self, outputs: np.ndarray, request: Any) -> list[int] | None:
        """Output index explained for each row; None means all outputs."""
        K = outputs.shape[1]
        if request == "all":
            return None
        if request is None or request == "auto":
            if K == 1:
                return [0] * len(outputs)
            if K == 2 and self.output_space == "probability":
                return [1] * len(outputs)         # positive class; class 0 is its mirror image
            return [int(i) for i in outputs.argmax(axis=1)]
        if isinstance(request, str) and request in self.output_names:
            return [self.output_names.index(request)] * len(outputs)
        if isinstance(request, int) and not isinstance(request, bool):
            for i, name in enumerate(self.output_names):
                if name == str(request):
                    return [i] * len(outputs)
            if 0 <= request < K:
                return [request] * len(outputs)
        raise ClientError(400, f"Unknown output {request!r}.",
                          hint="Use 'auto', 'all', a class label or an output index.",
                          expected=["auto", "all"] + self.output_names, received=repr(request)[:40])

    def explain(self, X: np.ndarray, method: str = "shap", options: dict | None = None) -> dict:
        """Explain validated rows ``X`` (float32 [N, F]; in table mode the object table [N, C]
        of the table contract) and return a JSON-ready dict.

        Options (the request body): ``seed``, ``max_evals`` (agnostic SHAP), ``num_samples``
        (LIME), ``output`` ("auto" | "all" | class label | index).  Budget violations are
        ``ClientError(413)`` naming the limit; unknown methods ``ClientError(400)``.
        """
        options = options or {}
        if not isinstance(method, str) or method not in METHODS:
            raise ClientError(400, f"Unknown explanation method {method!r}; allowed: {list(METHODS)}.",
                              hint='Send "method": "shap" or "method": "lime".',
                              expected=list(METHODS), received=repr(method)[:40])
        if method not in self.methods:
            raise ClientError(400, f"Method {method!r} is not enabled in this bundle; "
                                   f"enabled: {self.methods}.", expected=self.methods, received=method)
        X = np.asarray(X, dtype=object if self.codec is not None else np.float32)
        if X.ndim != 2 or X.shape[1] != len(self.feature_names):
            raise ClientError(400, f"Each row must have {len(self.feature_names)} features; "
                                   f"got shape {list(X.shape)}.",
                              expected=len(self.feature_names), received=list(X.shape))
        limit = self._row_limit(method)
        if len(X) > limit:
            what = "LIME" if method == "lime" else ("TreeSHAP" if self.kind == "tree" else "model-agnostic SHAP")
            raise ClientError(413, f"Too many rows to explain with {what}: {len(X)} > the limit of {limit}.",
                              hint=f"Send at most {limit} rows per /explain request.",
                              expected=f"<= {limit} rows", received=int(len(X)))
        seed = options.get("seed", self.seed)
        seed = _as_int(seed, "seed", low=0, high=2 ** 32 - 1, over=400)  # a bad value, not work
        body: dict[str, Any] = {"method": method, "feature_names": self.feature_names,
                                "seed": seed, "notes": list(self.notes)}
        if method == "shap":
            max_evals = options.get("max_evals")
            if max_evals is not None:
                max_evals = _as_int(max_evals, "max_evals", low=2,
                                    high=int(self.budget["max_evals_limit"]))
            tokens = self.kind == "tree" and self.codec is not None and \
                bool(self.config.get("tree_feature_names"))
            if tokens:
                phi_t, base, outputs = self.feature_shap(X)
                phi, algo = group_columns(phi_t, self.config["tree_groups"], len(self.feature_names)), "tree"
            else:
                phi, base, outputs, algo = self.shap_values(X, max_evals=max_evals, seed=seed)
            idx = self.choose_outputs(outputs, options.get("output"))
            body.update(explainer=algo, output_space=self.output_space, output_names=self.output_names)
            if algo == "permutation":
                body["max_evals"] = int(max_evals or self.budget["max_evals"])
            if idx is None:
                body.update(explained_output="all", base_values=base.tolist(),
                            contributions=np.transpose(phi, (0, 2, 1)).tolist(),
                            outputs=outputs.tolist())
            else:
                rows = np.arange(len(X))
                body.update(explained_output=[self.output_names[i] for i in idx],
                            base_values=base[idx].tolist(),
                            contributions=phi[rows, :, idx].tolist(),
                            outputs=outputs[rows, idx].tolist())
                if tokens:
                    body["text_tokens"] = self.text_tokens(phi_t, idx)
            return body
        num_samples = options.get("num_samples")
        if num_samples is not None:
            num_samples = _as_int(num_samples, "num_samples", low=10,
                                  high=int(self.budget["max_lime_samples"]))
        label = self._lime_label(options.get("output"))
        rows = [self.lime_row(x, label=label, num_samples=num_samples, seed=seed) for x in X]
        names = self.class_names
        body.update(explainer="lime", output_space="probability" if self.task == "classifier" else "value",
                    num_samples=int(num_samples or self.budget["lime_samples"]),
                    explained_output=[(names[r["label_index"]] if r["label_index"] < len(names)
                                       else str(r["label_index"])) if self.task == "classifier"
                                      else "value" for r in rows],
                    base_values=[r["intercept"] for r in rows],
                    contributions=[r["weights"] for r in rows],
                    outputs=[r["output"] for r in rows],
                    local_predictions=[r["local_prediction"] for r in rows],
                    scores=[r["score"] for r in rows], rules=[r["rules"] for r in rows])
        return body
