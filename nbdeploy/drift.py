"""Drift baseline written into the bundle (the serving side is runtime/drift.py).

All-numeric models: decile edges and bin shares per feature.  Table-mode models (DataFrames
with categorical/text columns or missing values, ``spec["columns"]``): per original column,
its missing rate plus

* numeric/boolean: decile edges and bin shares of the observed (non-missing) values;
* categorical: the share of each known category among observed values, plus an "unseen"
  bucket (0 in the sample);
* text: decile edges and bin shares of the text length (a cheap proxy; texts are not
  compared word by word).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def _deciles(col: np.ndarray, bins: int) -> tuple[list, list]:
    qs = np.linspace(0, 1, bins + 1)[1:-1]
    col = col[~np.isnan(col)]
    if not len(col):
        return [], [1.0] + [0.0] * (bins - 1)
    e = np.unique(np.quantile(col, qs))
    idx = np.searchsorted(e, col, side="right")
    share = np.bincount(idx, minlength=bins)[:bins] / len(col)
    return e.tolist(), share.tolist()


def baseline(X: np.ndarray, feature_names: list[str] | None = None, *, bins: int = 10,
             threshold: float = 0.25, min_rows: int = 100, columns: list[dict] | None = None,
             missing_threshold: float = 0.1) -> dict:
    """Decile edges and bin shares of every feature of the sample; per column (table mode)
    when ``X`` is an object table, with kinds and categories from ``columns`` (the spec's)
    when given, inferred from the cells otherwise."""
    if np.asarray(X).dtype == object:
        return table_baseline(X, columns, feature_names, bins=bins, threshold=threshold,
                              min_rows=min_rows, missing_threshold=missing_threshold)
    names = list(feature_names) if feature_names else [f"f{i}" for i in range(X.shape[1])]
    edges, shares = [], []
    for j in range(X.shape[1]):
        e, share = _deciles(X[:, j].astype(np.float64), bins)
        edges.append(e)
        shares.append(share)
    out = {"feature_names": names, "edges": edges, "shares": shares, "bins": bins,
           "threshold": threshold, "min_rows": min_rows, "rows": int(len(X))}
    nan = np.isnan(np.asarray(X, dtype=np.float64))
    if nan.any():       # a numeric model that accepts missing values: their rate per feature
        out.update(missing_rates=nan.mean(axis=0).tolist(), missing_threshold=missing_threshold)
    return out


def _infer_columns(X: np.ndarray, names: list[str]) -> list[dict]:
    out = []
    for j, name in enumerate(names):
        strings = [v for v in X[:, j] if isinstance(v, str)]
        if not strings:
            out.append({"name": name, "kind": "numeric", "categories": None})
        else:
            cats = sorted(set(strings))
            text = len(cats) > 50 and np.mean([len(s.split()) for s in strings]) > 3
            out.append({"name": name, "kind": "text" if text else "categorical",
                        "categories": None if text else cats})
    return out


def table_baseline(X: np.ndarray, columns: list[dict] | None = None,
                   feature_names: list[str] | None = None, *, bins: int = 10,
                   threshold: float = 0.25, min_rows: int = 100,
                   missing_threshold: float = 0.1) -> dict:
    """Per-column baseline of an object table (see the module docstring)."""
    from .runtime.drift import column_values

    X = np.asarray(X, dtype=object)
    if columns is None:
        names = list(feature_names) if feature_names else [f"f{i}" for i in range(X.shape[1])]
        columns = _infer_columns(X, names)
    out: list[dict[str, Any]] = []
    for j, c in enumerate(columns):
        kind = str(c.get("kind", "numeric"))
        entry: dict[str, Any] = {"name": str(c["name"]), "kind": kind}
        if kind == "categorical":
            cats = [str(v) for v in (c.get("categories") or [])]
            seen = set(cats)
            for v in X[:, j]:
                if isinstance(v, str) and v not in seen:
                    seen.add(v)
                    cats.append(v)
            entry["categories"] = cats
        missing, values = column_values(X[:, j], entry)
        entry["missing_rate"] = float(missing.mean()) if len(missing) else 0.0
        if kind == "categorical":
            counts = np.bincount(values.astype(np.int64), minlength=len(entry["categories"]) + 1)
            entry["metric"] = "category_psi"
            entry["shares"] = (counts / max(1, counts.sum())).tolist()
        else:
            entry["metric"] = "text_length_psi" if kind == "text" else "psi"
            entry["edges"], entry["shares"] = _deciles(values, bins)
        out.append(entry)
    return {"mode": "table", "feature_names": [c["name"] for c in out], "columns": out,
            "bins": bins, "threshold": threshold, "missing_threshold": missing_threshold,
            "min_rows": min_rows, "rows": int(len(X))}


def write_baseline(model_dir: Path, X: np.ndarray, feature_names: list[str] | None,
                   columns: list[dict] | None = None) -> Path:
    """Write ``model_dir/baseline.json``; ``columns`` is the spec's table-mode column list."""
    path = Path(model_dir) / "baseline.json"
    path.write_text(json.dumps(baseline(X, feature_names, columns=columns)), encoding="utf-8")
    return path
