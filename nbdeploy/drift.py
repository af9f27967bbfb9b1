"""Drift baseline written into the bundle (the serving side is runtime/drift.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def baseline(X: np.ndarray, feature_names: list[str] | None = None, *, bins: int = 10,
             threshold: float = 0.25, min_rows: int = 100) -> dict:
    """Decile edges and bin shares of every feature of the sample."""
    names = list(feature_names) if feature_names else [f"f{i}" for i in range(X.shape[1])]
    edges, shares = [], []
    qs = np.linspace(0, 1, bins + 1)[1:-1]
    for j in range(X.shape[1]):
        col = X[:, j].astype(np.float64)
        e = np.unique(np.quantile(col, qs))
        idx = np.searchsorted(e, col, side="right")
        share = np.bincount(idx, minlength=bins)[:bins] / len(col)
        edges.append(e.tolist())
        shares.append(share.tolist())
    return {"feature_names": names, "edges": edges, "shares": shares, "bins": bins,
            "threshold": threshold, "min_rows": min_rows, "rows": int(len(X))}


def write_baseline(model_dir: Path, X: np.ndarray, feature_names: list[str] | None) -> Path:
    path = Path(model_dir) / "baseline.json"
    path.write_text(json.dumps(baseline(X, feature_names)), encoding="utf-8")
    return path
