"""Request validation inside the served bundle: turn a JSON body into a float32 matrix.

Every violation is a :class:`ClientError` (HTTP 4xx) that names what was expected and
what was received.  Nothing here may raise anything else for bad client input.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported on first use: the arbiter process never validates a request
    import numpy as np

F32_MAX = 3.4028234663852886e38  # float(np.finfo(np.float32).max)


class ClientError(Exception):
    """A client mistake: answered with ``status`` and a JSON body, never a 500."""

    def __init__(self, status: int, message: str, *, hint: str | None = None,
                 expected: Any = None, received: Any = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.hint = hint
        self.expected = expected
        self.received = received

    def to_dict(self) -> dict:
        body = {"error": "invalid_request" if self.status == 400 else _REASONS.get(self.status, "error"),
                "message": self.message}
        if self.hint:
            body["hint"] = self.hint
        if self.expected is not None:
            body["expected"] = self.expected
        if self.received is not None:
            body["received"] = self.received
        return body


_REASONS = {413: "too_large", 415: "unsupported_media_type", 404: "not_found",
            405: "method_not_allowed", 429: "overloaded", 503: "unavailable"}


def _short(v: Any, n: int = 60) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


def parse_rows(body: Any, *, n_features: int, feature_names: list[str] | None,
               max_rows: int, key: str = "inputs") -> np.ndarray:
    """Validate ``{"inputs": [[...], ...]}`` or ``{"inputs": [{"name": value}, ...]}``."""
    import numpy as np
    if not isinstance(body, dict):
        raise ClientError(400, f"The request body must be a JSON object with an {key!r} field; "
                               f"got {type(body).__name__}.",
                          hint=f'Send {{"{key}": [[{", ".join(["0.0"] * min(n_features, 3))}'
                               f'{", ..." if n_features > 3 else ""}]]}}.',
                          expected="object", received=type(body).__name__)
    if key not in body:
        raise ClientError(400, f"The request body has no {key!r} field (fields: {sorted(body)[:10]}).",
                          hint=f'Send {{"{key}": [[...{n_features} numbers...], ...]}}.',
                          expected=key, received=sorted(body)[:10])
    rows = body[key]
    if not isinstance(rows, list):
        raise ClientError(400, f"{key!r} must be a list of rows; got {type(rows).__name__}.",
                          hint="Wrap a single row in a list: [[...]].", expected="list of rows",
                          received=type(rows).__name__)
    if not rows:
        raise ClientError(400, f"{key!r} is empty.", hint="Send at least one row.",
                          expected="1 or more rows", received=0)
    if len(rows) > max_rows:
        raise ClientError(400, f"Too many rows in one request: {len(rows)} > the limit of {max_rows}.",
                          hint=f"Split the request into batches of at most {max_rows} rows.",
                          expected=f"<= {max_rows} rows", received=len(rows))
    if isinstance(rows[0], dict):
        rows = _records_to_rows(rows, feature_names)
    try:
        arr = np.asarray(rows)
    except (ValueError, TypeError):
        arr = None
    if arr is None or arr.dtype == object or arr.ndim != 2:
        widths = sorted({len(r) if isinstance(r, list) else -1 for r in rows})
        if any(w == -1 for w in widths):
            bad = next(i for i, r in enumerate(rows) if not isinstance(r, list))
            raise ClientError(400, f"Row {bad} is not a list of numbers: {_short(rows[bad])}.",
                              hint="Each row is a list of numbers, e.g. [[1.0, 2.0, ...]].",
                              expected="list of numbers", received=type(rows[bad]).__name__)
        if len(widths) > 1:
            raise ClientError(400, f"Rows have different lengths {widths[:5]}; every row needs "
                                   f"{n_features} values.", hint="Send every row with the same columns, in training order.",
                              expected=n_features, received=widths[:5])
        raise ClientError(400, "Rows must contain only numbers.",
                          hint="Send numbers, not strings, nulls or nested lists.",
                          expected="numbers", received="mixed types")
    if arr.dtype.kind not in "iuf":
        bad = _first_non_number(rows)
        raise ClientError(400, f"Rows must contain only numbers; found {bad}.",
                          hint="Send numbers (not strings, booleans or null); encode categories first.",
                          expected="numbers", received=bad)
    if bool in set(map(type, itertools.chain.from_iterable(rows))):   # C-speed scan
        bad = _first_non_number(rows)   # True/False mixed with numbers coerce silently to 1/0
        raise ClientError(400, f"Rows must contain only numbers; found {bad}.",
                          hint="Send numbers (not strings, booleans or null); encode categories first.",
                          expected="numbers", received=bad)
    if arr.shape[1] != n_features:
        raise ClientError(400, f"Each row must have {n_features} features; got {arr.shape[1]}.",
                          hint="Send rows with the same columns the model was trained on "
                               "(see GET /metadata for the input schema).",
                          expected=n_features, received=int(arr.shape[1]))
    X = arr.astype(np.float32)
    # |x| > float32 max is refused exactly at the documented bound (the cast would round a
    # sliver above it down to max, and overflow the rest to inf)
    too_big = arr.dtype.kind == "f" and bool((np.abs(arr) > F32_MAX).any())
    if too_big or not np.isfinite(X).all():
        bad_rows = ~np.isfinite(X).all(axis=1)
        if arr.dtype.kind == "f":
            bad_rows |= (np.abs(arr) > F32_MAX).any(axis=1)
        bad = np.where(bad_rows)[0]
        if arr.dtype.kind == "f" and np.isfinite(arr).all():
            msg = f"Values in {len(bad)} row(s) overflow float32 (first: row {int(bad[0])})."
            hint = f"Send values within +/-{F32_MAX:.4g} (the model's float32 inputs)."
        else:
            msg = f"NaN or infinite values in {len(bad)} row(s) (first: row {int(bad[0])})."
            hint = "Impute or drop missing values before sending."
        raise ClientError(400, msg, hint=hint,
                          expected="finite numbers", received=f"{len(bad)} rows with NaN/Inf")
    return X


def _first_non_number(rows: list) -> str:
    for i, r in enumerate(rows):
        for j, v in enumerate(r if isinstance(r, list) else [r]):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                return f"{_short(v, 30)} ({type(v).__name__}) at row {i}, column {j}"
            if isinstance(v, float) and not math.isfinite(v):
                return f"{v} at row {i}, column {j}"
    return "a non-numeric value"


def _records_to_rows(records: list, feature_names: list[str] | None) -> list:
    if not feature_names:
        raise ClientError(400, "This model has no feature names, so rows must be lists, not objects.",
                          hint="Send rows as lists of numbers in training column order.",
                          expected="list of lists", received="list of objects")
    out = []
    wanted = set(feature_names)
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise ClientError(400, f"Row {i} is not an object; do not mix objects and lists.",
                              hint="Send all rows as objects or all as lists.", expected="object", received=type(rec).__name__)
        missing = [f for f in feature_names if f not in rec]
        extra = [k for k in rec if k not in wanted]
        if missing or extra:
            raise ClientError(400, f"Row {i} does not match the feature names: "
                                   f"missing {missing[:5]}, unexpected {extra[:5]}.",
                              hint="See GET /metadata for the feature names.",
                              expected=feature_names, received=sorted(rec)[:len(feature_names)])
        out.append([rec[f] for f in feature_names])
    return out
