"""Input drift inside the served bundle: per-feature PSI of served rows against the sample.

The baseline (``model/baseline.json``) holds, per feature, the bin edges (deciles of the
training sample) and the share of sample rows in each bin.  The monitor counts served rows
into the same bins and computes the Population Stability Index::

    PSI = sum_b (served_b - base_b) * ln(served_b / base_b)

Usual reading: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 drift.

Table-mode bundles (models fit on DataFrames; ``"mode": "table"`` in the baseline) are
monitored per original column by :class:`TableDriftMonitor`: PSI over decile bins of the
observed values for numeric/boolean columns, PSI over category shares (with an "unseen"
bucket) for categorical ones, PSI over text-length deciles for text ones, and for every
column the change in its missing rate.  PSI compares the *observed* (non-missing) values, so
a column that starts arriving empty shows up in the missing rate, not in its PSI.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

from .columns import encode_column

EPS = 1e-4


def psi(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """PSI per row of two [features, bins] share matrices."""
    e = np.clip(expected, EPS, None)
    a = np.clip(actual, EPS, None)
    return ((a - e) * np.log(a / e)).sum(axis=1)


def _as_floats(col: np.ndarray) -> np.ndarray:
    return encode_column(col, {"kind": "numeric"})


def column_values(col: np.ndarray, entry: dict, index: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(missing mask, observed values)`` of one table column for drift counting.

    Observed values are floats (numeric/boolean), text lengths (text) or category indices
    into ``entry["categories"]`` with unseen = ``len(categories)`` (categorical).
    """
    kind = entry.get("kind", "numeric")
    if kind == "categorical":
        if index is None:
            index = {c: i for i, c in enumerate(entry["categories"])}
        unseen = len(index)
        missing = np.array([not isinstance(v, str) for v in col], dtype=bool)
        values = np.array([index.get(v, unseen) for v in col[~missing]], dtype=np.float64)
        return missing, values
    if kind == "text":
        missing = np.array([not isinstance(v, str) for v in col], dtype=bool)
        return missing, np.array([len(v) for v in col[~missing]], dtype=np.float64)
    x = _as_floats(col)
    missing = np.isnan(x)
    return missing, x[~missing]


class TableDriftMonitor:
    """Per-column drift of served object tables (see the module docstring)."""

    def __init__(self, baseline: dict):
        self.columns = [dict(c) for c in baseline["columns"]]
        self.feature_names = [c["name"] for c in self.columns]
        self.threshold = float(baseline.get("threshold", 0.25))
        self.missing_threshold = float(baseline.get("missing_threshold", 0.1))
        self.min_rows = int(baseline.get("min_rows", 100))
        self.expected = [np.asarray(c["shares"], dtype=np.float64) for c in self.columns]
        self.edges = [np.asarray(c.get("edges") or [], dtype=np.float64) for c in self.columns]
        self._index = [{v: i for i, v in enumerate(c["categories"])} if c["kind"] == "categorical"
                       else None for c in self.columns]
        # one flat count vector (column j's bins at offsets[j]) so a request is one bincount;
        # numeric/boolean columns are binned together against padded float64 edges
        sizes = [len(e) for e in self.expected]
        self._offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self._flat = np.zeros(int(sum(sizes)), dtype=np.int64)
        self._num = [j for j, c in enumerate(self.columns) if c["kind"] in ("numeric", "boolean")]
        width = max([len(self.edges[j]) for j in self._num] + [1])
        self._num_edges = np.full((len(self._num), width), np.inf)
        for i, j in enumerate(self._num):
            self._num_edges[i, :len(self.edges[j])] = self.edges[j]
        self._num_offsets = self._offsets[self._num]
        self._other = [j for j in range(len(self.columns)) if j not in self._num]
        self.missing = np.zeros(len(self.columns), dtype=np.int64)
        self.rows = 0
        self._lock = threading.Lock()

    @property
    def counts(self) -> list[np.ndarray]:
        """Served counts per column, in the baseline's bins."""
        return [self._flat[o:o + len(e)].astype(np.float64) for o, e in zip(self._offsets, self.expected)]

    def observe(self, X: np.ndarray) -> None:
        """Count served rows (an object table [N, columns]) into the baseline's bins."""
        X = np.asarray(X, dtype=object)
        n = len(X)
        flat, miss = [], np.zeros(len(self.columns), dtype=np.int64)
        if self._num:
            V = X[:, self._num]
            try:
                V = V.astype(np.float64)
            except (TypeError, ValueError):       # None among the numbers
                V = np.stack([_as_floats(V[:, i]) for i in range(V.shape[1])], axis=1)
            nan = np.isnan(V)
            b = (V[:, :, None] >= self._num_edges[None, :, :]).sum(axis=2) + self._num_offsets
            flat.append(b[~nan] if nan.any() else b.ravel())
            miss[self._num] = nan.sum(axis=0)
        for j in self._other:
            c, off = self.columns[j], int(self._offsets[j])
            col = X[:, j]
            if c["kind"] == "categorical":
                idx, unseen = self._index[j], len(self._index[j])
                codes = [idx.get(v, unseen) + off for v in col if type(v) is str]
            else:
                lens = [len(v) for v in col if type(v) is str]
                codes = (np.searchsorted(self.edges[j], lens, side="right") + off).tolist() if lens else []
            miss[j] = n - len(codes)
            flat.append(np.asarray(codes, dtype=np.int64))
        add = np.bincount(np.concatenate(flat), minlength=self._flat.size) if flat else 0
        with self._lock:
            self._flat += add
            self.missing += miss
            self.rows += n

    def report(self) -> dict:
        with self._lock:
            counts = self.counts
            missing, rows = self.missing.copy(), self.rows
        enough = rows >= self.min_rows
        features = []
        for j, c in enumerate(self.columns):
            total = counts[j].sum()
            score = float(psi(self.expected[j][None, :], (counts[j] / total)[None, :])[0]) if total else 0.0
            rate = float(missing[j] / rows) if rows else 0.0
            change = rate - float(c.get("missing_rate", 0.0)) if rows else 0.0
            flag = bool(enough and (score > self.threshold or abs(change) > self.missing_threshold))
            f = {"feature": c["name"], "kind": c["kind"], "metric": c.get("metric", "psi"),
                 "psi": round(score, 6), "observed": int(total),
                 "missing_rate_baseline": round(float(c.get("missing_rate", 0.0)), 6),
                 "missing_rate": round(rate, 6), "missing_rate_change": round(change, 6),
                 "drift": flag}
            if c["kind"] == "categorical":
                f["unseen_share"] = round(float(counts[j][-1] / total), 6) if total else 0.0
            features.append(f)
        drifted = [f["feature"] for f in features if f["drift"]]
        return {"metric": "psi", "mode": "table", "threshold": self.threshold,
                "missing_threshold": self.missing_threshold, "observed_rows": rows,
                "min_rows": self.min_rows, "enough_data": enough, "drift": bool(drifted),
                "drifted_features": drifted, "features": features}

    def prometheus(self) -> str:
        """Gauges in the Prometheus text format, appended to BentoML's /metrics."""
        r = self.report()
        lines = []
        for metric, help_, key in (
                ("nbdeploy_drift_psi", "Population stability index of served inputs per column "
                 "(category shares for categorical columns, text length for text ones)", "psi"),
                ("nbdeploy_drift_missing_rate", "Share of served rows with the column missing",
                 "missing_rate"),
                ("nbdeploy_drift_missing_rate_change", "Served missing rate minus the sample's",
                 "missing_rate_change"),
                ("nbdeploy_drift_unseen_share", "Share of served categories not seen in the sample",
                 "unseen_share")):
            lines += [f"# HELP {metric} {help_}", f"# TYPE {metric} gauge"]
            for f in r["features"]:
                if key in f:
                    lines.append(f'{metric}{{feature="{_label(f["feature"])}"}} {f[key]}')
        lines += _summary_lines(r)
        return "\n".join(lines) + "\n"


def _label(name: str) -> str:
    return str(name).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _summary_lines(r: dict) -> list[str]:
    return ["# HELP nbdeploy_drift_detected 1 when any feature drifted (PSI or missing rate over "
            "its threshold)",
            "# TYPE nbdeploy_drift_detected gauge", f"nbdeploy_drift_detected {int(r['drift'])}",
            "# HELP nbdeploy_drift_observed_rows Rows counted for drift since start",
            "# TYPE nbdeploy_drift_observed_rows gauge",
            f"nbdeploy_drift_observed_rows {r['observed_rows']}"]


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
        # with one vectorised comparison instead of one searchsorted call per feature.  float64,
        # as the baseline counted the sample: float32 edges would round a decile onto a data
        # value and move that value one bin (replaying the sample would not give PSI 0).
        self._edges = np.full((n_features, self.n_bins - 1), np.inf, dtype=np.float64)
        for j, e in enumerate(self.edges):
            self._edges[j, : len(e)] = e
        self._offsets = np.arange(n_features) * self.n_bins
        self.counts = np.zeros_like(self.expected)
        # numeric models that accept missing values: NaN is counted apart from the bins
        rates = baseline.get("missing_rates")
        self.missing_rates = np.asarray(rates, dtype=np.float64) if rates is not None else None
        self.missing_threshold = float(baseline.get("missing_threshold", 0.1))
        self.missing = np.zeros(n_features, dtype=np.int64)
        self.rows = 0
        self._lock = threading.Lock()
        self.image = baseline.get("image")   # image models: statistics per image (runtime/images.py)

    @classmethod
    def from_bundle(cls, model_dir: str | Path) -> DriftMonitor | TableDriftMonitor | None:
        """The bundle's monitor: per column for table-mode baselines, per feature otherwise."""
        path = Path(model_dir) / "baseline.json"
        if not path.is_file():
            return None
        base = json.loads(path.read_text(encoding="utf-8"))
        return TableDriftMonitor(base) if base.get("mode") == "table" else cls(base)

    def observe(self, X: np.ndarray) -> None:
        """Count served rows into the baseline bins (bin = number of edges <= value)."""
        if self.image:
            from .images import image_stats

            X = image_stats(X, self.image)
        idx = (X[:, :, None] >= self._edges[None, :, :]).sum(axis=2) + self._offsets
        nan = np.isnan(X)
        if nan.any():
            add = np.bincount(idx[~nan], minlength=self.counts.size).reshape(self.counts.shape)
            miss = nan.sum(axis=0)
        else:
            add = np.bincount(idx.ravel(), minlength=self.counts.size).reshape(self.counts.shape)
            miss = 0
        with self._lock:
            self.counts += add
            self.missing += miss
            self.rows += len(X)

    def report(self) -> dict:
        with self._lock:
            counts, rows, missing = self.counts.copy(), self.rows, self.missing.copy()
        totals = counts.sum(axis=1, keepdims=True)
        if rows == 0:
            scores = np.zeros(len(self.feature_names))
        else:
            scores = np.where(totals[:, 0] > 0, psi(self.expected, counts / np.maximum(totals, 1)), 0.0)
        enough = rows >= self.min_rows
        features = [{"feature": f, "psi": round(float(s), 6), "drift": bool(enough and s > self.threshold)}
                    for f, s in zip(self.feature_names, scores)]
        if self.missing_rates is not None or missing.any():
            base = self.missing_rates if self.missing_rates is not None else np.zeros(len(features))
            for j, f in enumerate(features):
                rate = float(missing[j] / rows) if rows else 0.0
                change = rate - float(base[j]) if rows else 0.0
                f.update(missing_rate_baseline=round(float(base[j]), 6), missing_rate=round(rate, 6),
                         missing_rate_change=round(change, 6))
                f["drift"] = bool(f["drift"] or (enough and abs(change) > self.missing_threshold))
        drifted = [f["feature"] for f in features if f["drift"]]
        return {"metric": "psi", "threshold": self.threshold, "observed_rows": rows,
                "min_rows": self.min_rows, "enough_data": enough, "drift": bool(drifted),
                "drifted_features": drifted, "features": features}

    def prometheus(self) -> str:
        """Gauges in the Prometheus text format, appended to BentoML's /metrics."""
        r = self.report()
        lines = ["# HELP nbdeploy_drift_psi Population stability index of served inputs per feature",
                 "# TYPE nbdeploy_drift_psi gauge"]
        for f in r["features"]:
            name = f["feature"].replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'nbdeploy_drift_psi{{feature="{name}"}} {f["psi"]}')
        if r["features"] and "missing_rate" in r["features"][0]:
            for metric, key in (("nbdeploy_drift_missing_rate", "missing_rate"),
                                ("nbdeploy_drift_missing_rate_change", "missing_rate_change")):
                lines += [f"# HELP {metric} Served missing rate per feature"
                          + (" minus the sample's" if key.endswith("change") else ""),
                          f"# TYPE {metric} gauge"]
                lines += [f'{metric}{{feature="{_label(f["feature"])}"}} {f[key]}' for f in r["features"]]
        lines += ["# HELP nbdeploy_drift_detected 1 when any feature's PSI exceeds the threshold",
                  "# TYPE nbdeploy_drift_detected gauge", f"nbdeploy_drift_detected {int(r['drift'])}",
                  "# HELP nbdeploy_drift_observed_rows Rows counted for drift since start",
                  "# TYPE nbdeploy_drift_observed_rows gauge",
                  f"nbdeploy_drift_observed_rows {r['observed_rows']}"]
        return "\n".join(lines) + "\n"
