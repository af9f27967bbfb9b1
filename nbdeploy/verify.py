"""verify: run the native and the ONNX model on the same sample and compare."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import VerificationError
from .report import kv_table


@dataclass(frozen=True)
class Tolerance:
    """When ONNX output counts as equal to the native model's.

    Regressors: |onnx - native| <= atol + rtol * |native| everywhere.
    Classifiers: labels agree on at least ``min_label_agreement`` of the rows and probabilities
    differ by at most ``proba_atol`` (float32 inputs can flip a tree split near a threshold,
    which moves one tree's vote; a real conversion bug moves far more).
    """

    atol: float = 1e-4
    rtol: float = 1e-3
    proba_atol: float = 1e-2
    min_label_agreement: float = 0.995


@dataclass
class VerifyReport:
    task: str
    rows: int
    max_abs_diff: float
    max_rel_diff: float
    passed: bool
    label_agreement: float | None = None
    near_ties: int = 0                      # label flips on rows whose top-2 probabilities tie
    mismatched_rows: list[int] = field(default_factory=list)
    native_metric: float | None = None      # accuracy (classifier) or RMSE (regressor) vs labels
    onnx_metric: float | None = None
    metric: str | None = None
    tolerance: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        s = f"max |Δ| {self.max_abs_diff:.2e}, max rel {self.max_rel_diff:.2e}"
        if self.label_agreement is not None:
            s += f", labels agree {self.label_agreement:.1%}"
            if self.near_ties:
                s += f" ({self.near_ties} flip(s) on tied probabilities)"
        return ("PASS: " if self.passed else "FAIL: ") + s + f" on {self.rows} rows"

    def _repr_html_(self) -> str:
        return kv_table({k: v for k, v in self.to_dict().items() if k != "tolerance"})


def check_labels(labels, rows: int) -> np.ndarray | None:
    """``labels`` as a flat array with one entry per sample row (None stays None); raises
    :class:`InvalidInputError` when the lengths differ."""
    if labels is None:
        return None
    y = np.asarray(labels).reshape(-1)
    if len(y) != rows:
        from .errors import InvalidInputError

        raise InvalidInputError(f"labels has {len(y)} entries but the sample has {rows} rows.",
                                hint="Pass the labels that belong to the sample rows, in the same order.",
                                expected=rows, received=len(y))
    return y


def _labels_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    if a.dtype.kind in "iuf" and b.dtype.kind in "iuf":
        return a.astype(np.float64) == b.astype(np.float64)
    return a.astype(str) == b.astype(str)


def compare(task: str, native: dict, candidate: dict, *, labels=None,
            tolerance: Tolerance = Tolerance()) -> VerifyReport:
    """Compare two normalised outputs (``{"label","probabilities"}`` or ``{"value"}``)."""
    if task == "classifier":
        a, b = np.asarray(native["probabilities"]), np.asarray(candidate["probabilities"])
    else:
        a, b = np.asarray(native["value"], dtype=np.float64), np.asarray(candidate["value"], dtype=np.float64)
    a = a.reshape(len(a), -1)
    b = b.reshape(len(b), -1)
    if a.shape != b.shape:
        raise VerificationError(
            f"The ONNX model returns shape {list(b.shape)} but the native model returns {list(a.shape)}.",
            hint="The converted graph does not compute the same thing; check the model's outputs.")
    diff = np.abs(a - b)
    max_abs = float(diff.max()) if diff.size else 0.0
    big = np.abs(a) >= 1e-3  # relative error is meaningless next to zero
    max_rel = float((diff[big] / np.abs(a[big])).max()) if big.any() else 0.0
    if task == "classifier":
        within = max_abs <= tolerance.proba_atol
    else:
        within = bool(np.all(diff <= tolerance.atol + tolerance.rtol * np.abs(a)))
    rep = VerifyReport(task=task, rows=int(len(a)), max_abs_diff=max_abs, max_rel_diff=max_rel,
                       passed=within, tolerance=asdict(tolerance))
    if task == "classifier":
        eq = _labels_equal(native["label"], candidate["label"])
        rep.label_agreement = float(eq.mean())
        # A flip where the native top-2 probabilities are (nearly) tied is rounding, not a bug.
        # "Nearly" is bounded by the tolerance: a graph whose probabilities are off by far more
        # than rounding must not have its flips excused as ties.
        top2 = np.sort(a, axis=1)[:, -2:] if a.shape[1] > 1 else np.hstack([1 - a, a])
        tie = (top2[:, 1] - top2[:, 0]) <= max(2 * min(max_abs, tolerance.proba_atol), 1e-6)
        flips = ~eq
        rep.near_ties = int((flips & tie).sum())
        real = flips & ~tie
        rep.mismatched_rows = [int(i) for i in np.where(real)[0][:20]]
        rep.passed = bool(within and 1 - real.mean() >= tolerance.min_label_agreement)
    y = check_labels(labels, len(a))
    if y is not None:
        if task == "classifier":
            rep.metric = "accuracy"
            rep.native_metric = float(_labels_equal(native["label"], y).mean())
            rep.onnx_metric = float(_labels_equal(candidate["label"], y).mean())
        else:
            rep.metric = "rmse"
            yy = y.astype(np.float64).reshape(len(y), -1)
            rep.native_metric = float(np.sqrt(np.mean((a - yy) ** 2)))
            rep.onnx_metric = float(np.sqrt(np.mean((b - yy) ** 2)))
    return rep


def verify(converted, *, labels=None, tolerance: Tolerance = Tolerance(), raise_on_fail: bool = True,
           onnx_model=None) -> VerifyReport:
    """Run the native model and onnxruntime on ``converted.X`` and compare.

    Raises :class:`VerificationError` with the numbers when they disagree.
    """
    from .runtime.model import OnnxModel

    X = converted.X
    model = onnx_model if onnx_model is not None else converted.onnx_model
    session = OnnxModel(model.SerializeToString(), converted.spec)
    native = converted.adapter.predict(X)
    rep = compare(converted.spec["task"], native, session.run(X), labels=labels, tolerance=tolerance)
    if raise_on_fail and not rep.passed:
        raise VerificationError(
            f"The ONNX model does not match the native {converted.framework} model: {rep.summary()} "
            + (f" (tolerance: probabilities within {tolerance.proba_atol}, labels agree on ≥ "
               f"{tolerance.min_label_agreement:.1%}" if rep.label_agreement is not None
               else f" (tolerance atol={tolerance.atol}, rtol={tolerance.rtol}")
            + ")" + (f"; first mismatched rows: {rep.mismatched_rows[:5]}" if rep.mismatched_rows else ""),
            hint="Check for unsupported options in the converter, or loosen the tolerance with "
                 "deploy(..., tolerance=Tolerance(atol=..., rtol=...)) if the difference is acceptable.")
    return rep


# --- what each column accepts (issue 16) -----------------------------------------------------------

UNSEEN = "__nbdeploy_unseen__"
_PROBE_CELLS = 16_384_000  # cells of all probe blocks together


def _split(out: dict, k: int, n: int) -> list[dict]:
    return [{key: np.asarray(v)[i * k:(i + 1) * k] for key, v in out.items()} for i in range(n)]


def _native_blocks(adapter, blocks: list[np.ndarray], k: int) -> list[dict | None]:
    """The native model's outputs per probe block; None where it raises (or returns NaN)."""
    if not blocks:
        return []
    try:
        outs = _split(adapter.predict(np.concatenate(blocks)), k, len(blocks))
    except Exception:
        outs = []
        for b in blocks:
            try:
                outs.append(adapter.predict(b))
            except Exception:
                outs.append(None)
    return [o if o is not None and _finite(o) else None for o in outs]


def _finite(out: dict) -> bool:
    for key in ("probabilities", "value"):
        if key in out and not np.isfinite(np.asarray(out[key], dtype=np.float64)).all():
            return False
    return True


def _agree(task: str, native: dict, onnx_out: dict, tolerance: Tolerance = Tolerance()) -> bool:
    """Most probe rows agree.  A few rows may not: float32 arithmetic in the graph can move a
    value across a tree threshold (verification allows that on the sample too); a graph that
    mishandles missing values or unseen categories disagrees on far more."""
    try:
        if task == "classifier":
            a = np.asarray(native["probabilities"], dtype=np.float64)
            b = np.asarray(onnx_out["probabilities"], dtype=np.float64)
            bad = np.abs(a.reshape(len(a), -1) - b.reshape(len(b), -1)).max(axis=1) > tolerance.proba_atol
        else:
            a = np.asarray(native["value"], dtype=np.float64).reshape(len(native["value"]), -1)
            b = np.asarray(onnx_out["value"], dtype=np.float64).reshape(a.shape)
            bad = (np.abs(a - b) > tolerance.atol + tolerance.rtol * np.abs(a)).any(axis=1)
    except Exception:
        return False
    # 1% of the rows (none below 100 rows): refusing null wrongly is the safe side
    return int(bad.sum()) <= int(0.01 * len(bad))


_CHUNK_CELLS = 2_000_000   # cells of one native call / graph run while probing


def _probe(adapter, session, task: str, base: np.ndarray, targets: list[tuple[int, object]]
           ) -> dict[int, str]:
    """For each (column, value): 'ok', 'native raises' or 'graph differs'."""
    per = max(1, _CHUNK_CELLS // max(1, base.size))
    if len(targets) > per:  # wide inputs: bounded memory, a few calls
        out: dict[int, str] = {}
        for i in range(0, len(targets), per):
            out.update(_probe(adapter, session, task, base, targets[i:i + per]))
        return out
    k = len(base)
    blocks = []
    for j, value in targets:
        b = base.copy()
        b[:, j] = value
        blocks.append(b)
    natives = _native_blocks(adapter, blocks, k)
    taken = [i for i, n in enumerate(natives) if n is not None]
    result = {j: "native raises" for j, _ in targets}
    if taken:
        try:
            graph = _split(session.run(np.concatenate([blocks[i] for i in taken])), k, len(taken))
        except Exception:  # one block makes the graph raise: find which, block by block
            graph = []
            for i in taken:
                try:
                    graph.append(session.run(blocks[i]))
                except Exception:
                    graph.append(None)
        for i, g in zip(taken, graph):
            j = targets[i][0]
            result[j] = "ok" if g is not None and _agree(task, natives[i], g) else "graph differs"
    return result


def _names(cols: list, limit: int = 8) -> str:
    shown = ", ".join(repr(c.name) for c in cols[:limit])
    return shown + (f" and {len(cols) - limit} more" if len(cols) > limit else "")


def probe_columns(adapter, onnx_model, spec: dict, X: np.ndarray, columns: list) -> list[str]:
    """Decide, per column, whether a missing value (and, for categorical columns, an unseen
    category) may be served: the native model must take it and the ONNX graph must answer as
    the native model does on probe rows.  Sets ``nullable`` and ``accepts_unseen`` on
    ``columns`` (``ColumnSpec``) and returns notes for the report.

    Raises :class:`InvalidInputError` when the sample itself has missing values in a column
    whose missing values the graph cannot reproduce.
    """
    from .errors import InvalidInputError
    from .runtime.model import OnnxModel

    if not columns:
        return []
    table = X.dtype == object
    session = OnnxModel(onnx_model.SerializeToString(), dict(spec, columns=[c.to_dict() for c in columns]))
    # up to 256 rows per probed column, fewer for wide inputs (C blocks of k x C cells)
    k = int(max(1, min(256, max(2, _PROBE_CELLS // len(columns) ** 2), len(X))))
    # complete rows, so that a probe changes one column only (another column's missing value
    # would otherwise be blamed on the probed one)
    miss = (np.array([[_missing(v) for v in row] for row in X], dtype=bool).reshape(X.shape)
            if table else np.isnan(X.astype(np.float64)))
    complete = np.where(~miss.any(axis=1))[0]
    base = X[complete[:k]] if len(complete) else X[:k]
    task = spec["task"]
    missing = [(j, None if table and c.kind in ("categorical", "text") else np.nan)
               for j, c in enumerate(columns)]
    verdict = _probe(adapter, session, task, base, missing)
    notes = []
    differs = []
    for j, c in enumerate(columns):
        c.nullable = verdict[j] == "ok"
        if verdict[j] == "graph differs":
            differs.append(c)
            if c.missing_in_sample:
                col = X[:, j]
                miss = [_missing(v) for v in col] if table else np.isnan(col.astype(np.float64))
                rows = [int(i) for i in np.where(miss)[0][:1]]
                raise InvalidInputError(
                    f"Column {c.name!r} has missing values (NaN) in the sample (first: row "
                    f"{rows[0] if rows else '?'}): the native {adapter.model_type} accepts them, but "
                    "the converted ONNX graph answers differently on them, so they cannot be served.",
                    hint="Impute that column inside the model (e.g. a Pipeline starting with "
                         "SimpleImputer) or drop those rows from the sample.",
                    expected="no missing values", received=f"{c.missing_in_sample} rows with NaN")
    ok = [c for c in columns if c.nullable]
    if ok:
        notes.append(f"Missing values (null) are accepted in {_names(ok)}: the native model and "
                     "the ONNX graph answer the same on them.")
    if differs:
        notes.append(f"Missing values are refused in {_names(differs)}: the native model takes them, "
                     "but the ONNX graph answers differently (impute inside the model to serve them).")
    cats = [(j, c) for j, c in enumerate(columns) if c.kind == "categorical"]
    if cats:
        verdict = _probe(adapter, session, task, base, [(j, UNSEEN) for j, _ in cats])
        for j, c in cats:
            c.accepts_unseen = verdict[j] == "ok"
        refused = [c for _, c in cats if not c.accepts_unseen]
        if refused:
            notes.append(f"Unseen categories are refused (400 with the allowed values) in "
                         f"{_names(refused)}: the native model "
                         + ("raises on them." if all(verdict[j] == "native raises" for j, c in cats
                                                    if not c.accepts_unseen)
                            else "raises on them or the graph answers differently."))
    return notes


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and v != v)
