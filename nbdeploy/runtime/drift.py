"""Input drift inside the served bundle: per-feature PSI of served rows against the sample.

The baseline (``model/baseline.json``) holds, per feature, the bin edges (deciles of the
training sample) and the share of sample rows in each bin.  The monitor counts served rows
into the same bins and computes the Population Stability Index::

    PSI = sum_b (served_b - base_b) * ln(served_b / base_b)

Usual reading: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 drift.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

EPS = 1e-4


def psi(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """PSI per row of two [features, bins] share matrices."""
    e = np.clip(expected, EPS, None)
    a = np.clip(actual, EPS, None)
    return ((a - e) * np.log(a / e)).sum(axis=1)


class DriftMonitor:
    def __init__(self, baseline: dict):
        self.feature_names = baseline["feature_names"]
        self.edges = [np.asarray(e, dtype=np.float64) for e in baseline["edges"]]
        self.expected = np.asarray(baseline["shares"], dtype=np.float64)
        self.threshold = float(baseline.get("threshold", 0.25))
        self.min_rows = int(baseline.get("min_rows", 100))
        self.n_bins = self.expected.shape[1]
        n_features = len(self.edges)
        # All edges in one [features, bins-1] matrix padded with +inf, so a batch is binned
        # with one vectorised comparison instead of one searchsorted call per feature.
        self._edges = np.full((n_features, self.n_bins - 1), np.inf, dtype=np.float32)
        for j, e in enumerate(self.edges):
            self._edges[j, : len(e)] = e
        self._offsets = np.arange(n_features) * self.n_bins
        self.counts = np.zeros_like(self.expected)
        self.rows = 0
        self._lock = threading.Lock()

    @classmethod
    def from_bundle(cls, model_dir: str | Path) -> "DriftMonitor | None":
        path = Path(model_dir) / "baseline.json"
        if not path.is_file():
            return None
        return cls(json.loads(path.read_text(encoding="utf-8")))

    def observe(self, X: np.ndarray) -> None:
        """Count served rows into the baseline bins (bin = number of edges <= value)."""
        idx = (X[:, :, None] >= self._edges[None, :, :]).sum(axis=2) + self._offsets
        add = np.bincount(idx.ravel(), minlength=self.counts.size).reshape(self.counts.shape)
        with self._lock:
            self.counts += add
            self.rows += len(X)

    def report(self) -> dict:
        with self._lock:
            counts, rows = self.counts.copy(), self.rows
        if rows == 0:
            scores = np.zeros(len(self.feature_names))
        else:
            scores = psi(self.expected, counts / counts.sum(axis=1, keepdims=True))
        enough = rows >= self.min_rows
        drifted = [f for f, s in zip(self.feature_names, scores) if enough and s > self.threshold]
        return {"metric": "psi", "threshold": self.threshold, "observed_rows": rows,
                "min_rows": self.min_rows, "enough_data": enough, "drift": bool(drifted),
                "drifted_features": drifted,
                "features": [{"feature": f, "psi": round(float(s), 6),
                              "drift": bool(enough and s > self.threshold)}
                             for f, s in zip(self.feature_names, scores)]}

    def prometheus(self) -> str:
        """Gauges in the Prometheus text format, appended to BentoML's /metrics."""
        r = self.report()
        lines = ["# HELP nbdeploy_drift_psi Population stability index of served inputs per feature",
                 "# TYPE nbdeploy_drift_psi gauge"]
        for f in r["features"]:
            name = f["feature"].replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'nbdeploy_drift_psi{{feature="{name}"}} {f["psi"]}')
        lines += ["# HELP nbdeploy_drift_detected 1 when any feature's PSI exceeds the threshold",
                  "# TYPE nbdeploy_drift_detected gauge", f"nbdeploy_drift_detected {int(r['drift'])}",
                  "# HELP nbdeploy_drift_observed_rows Rows counted for drift since start",
                  "# TYPE nbdeploy_drift_observed_rows gauge",
                  f"nbdeploy_drift_observed_rows {r['observed_rows']}"]
        return "\n".join(lines) + "\n"
