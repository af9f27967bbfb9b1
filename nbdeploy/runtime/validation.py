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

from .clienterror import F32_MAX, ClientError  # noqa: F401  (ClientError re-exported: app, explain, ...)


def _short(v: Any, n: int = 60) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


def parse_rows(body: Any, *, n_features: int, feature_names: list[str] | None,
               max_rows: int, key: str = "inputs", spec: dict | None = None) -> np.ndarray:
    """Validate ``{"inputs": [[...], ...]}`` or ``{"inputs": [{"name": value}, ...]}``.

    With the bundle's ``spec``: a table model (``input_mode == "table"``) gets an object table
    (see ``columns.py``), validated per column; a numeric model takes ``null`` in the columns
    whose missing values the native model accepts (``columns[i]["nullable"]``).
    """
    import numpy as np
    if not isinstance(body, dict):
        raise ClientError(400, f"The request body must be a JSON object with an {key!r} field; "
                               f"got {type(body).__name__}.",
                          hint=f'Send {{"{key}": [[{", ".join(["0.0"] * min(n_features, 3))}'
                               f'{", ..." if n_features > 3 else ""}]]}}.',
                          expected="object", received=type(body).__name__)
    input_shape = (spec or {}).get("input_shape")
    if input_shape and len(input_shape) > 2:     # N-D tensors and images: runtime/images.py
        from .images import parse_body

        return parse_body(body, spec=spec, max_rows=max_rows, key=key)
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
    if (spec or {}).get("input_mode") == "text":   # issue 21: a list of strings
        from .text import parse_texts

        return parse_texts(rows)
    columns = (spec or {}).get("columns")
    if columns and (spec or {}).get("input_mode") == "table":
        return parse_table(rows, columns)
    if isinstance(rows[0], dict):
        rows = _records_to_rows(rows, feature_names)
    try:
        arr = np.asarray(rows)
    except (ValueError, TypeError):
        arr = None
    nulls = None
    if arr is not None and arr.dtype == object and arr.ndim == 2 and columns \
            and any(c.get("nullable") for c in columns):
        arr, nulls = _nulls_to_nan(rows, arr, columns)
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
        bad, col = _first_non_number(rows, feature_names)
        raise ClientError(400, f"Rows must contain only numbers; found {bad}.",
                          hint="Send numbers (not strings, booleans or null); encode categories first.",
                          expected="numbers", received=bad, column=col)
    if bool in set(map(type, itertools.chain.from_iterable(rows))):   # C-speed scan
        bad, col = _first_non_number(rows, feature_names)   # True/False would coerce to 1/0
        raise ClientError(400, f"Rows must contain only numbers; found {bad}.",
                          hint="Send numbers (not strings, booleans or null); encode categories first.",
                          expected="numbers", received=bad, column=col)
    if arr.shape[1] != n_features:
        raise ClientError(400, f"Each row must have {n_features} features; got {arr.shape[1]}.",
                          hint="Send rows with the same columns the model was trained on "
                               "(see GET /metadata for the input schema).",
                          expected=n_features, received=int(arr.shape[1]))
    X = arr.astype(np.float32)
    # |x| > float32 max is refused exactly at the documented bound (the cast would round a
    # sliver above it down to max, and overflow the rest to inf)
    too_big = arr.dtype.kind == "f" and bool((np.abs(arr) > F32_MAX).any())
    finite = np.isfinite(X)
    if nulls is not None:   # a null in a nullable column is a missing value, not a bad number
        finite |= nulls
    if too_big or not finite.all():
        bad_rows = ~finite.all(axis=1)
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


def _first_non_number(rows: list, names: list[str] | None = None) -> tuple[str, str | None]:
    """The first cell that is not a number, in words, and its column's name (when known)."""
    for i, r in enumerate(rows):
        for j, v in enumerate(r if isinstance(r, list) else [r]):
            bad = isinstance(v, bool) or not isinstance(v, (int, float)) or (
                isinstance(v, float) and not math.isfinite(v))
            if bad:
                name = names[j] if names and j < len(names) else None
                where = f"column {name!r}" if name is not None else f"column {j}"
                shown = f"{_short(v, 30)} ({type(v).__name__})" if not isinstance(v, float) else f"{v}"
                return f"{shown} at row {i}, {where}", name
    return "a non-numeric value", None


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
            first = str(extra[0])[:60] if extra else missing[0]
            raise ClientError(400, f"Row {i} does not match the feature names: "
                                   f"missing {missing[:5]}, unexpected {[str(e)[:60] for e in extra[:5]]}"
                                   f" ({'unknown' if extra else 'missing'} column {first!r}).",
                              hint="See GET /metadata for the feature names.",
                              expected=feature_names, received=sorted(map(str, rec))[:len(feature_names)],
                              column=first)
        out.append([rec[f] for f in feature_names])
    return out


# --- missing values and tables (issue 16) -----------------------------------------------------------

_NUMBER_TYPES = (int, float)
_HOW_NULLS = ("Missing values (null) are accepted only in the columns marked nullable in "
              "GET /metadata (input_schema.columns).")


def _is_none(v) -> bool:
    return v is None


_none_mask = None


def _nulls_to_nan(rows: list, arr, columns: list) -> tuple:
    """Rows of numbers and nulls: nulls become NaN where the column is nullable, else a 400."""
    import numpy as np

    global _none_mask
    if arr.shape[1] != len(columns):
        return arr, None
    types = set(map(type, itertools.chain.from_iterable(rows)))
    if not types <= {int, float, type(None)}:
        return arr, None  # strings, booleans, lists: the usual "only numbers" answer
    if _none_mask is None:
        _none_mask = np.frompyfunc(_is_none, 1, 1)
    mask = _none_mask(arr).astype(bool)
    for j in np.where(mask.any(axis=0))[0]:
        col = columns[int(j)]
        if not col.get("nullable"):
            i = int(np.where(mask[:, j])[0][0])
            raise ClientError(400, f"Rows must contain only numbers in column {col['name']!r}: row {i} "
                                   "has null, and this model does not accept missing values there.",
                              hint="Send a number. " + _HOW_NULLS, expected="numbers",
                              received=f"null at row {i}", column=col["name"])
    out = arr.copy()
    out[mask] = np.nan
    return out.astype(np.float64), mask


def _what(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"{str(v).lower()} (boolean)"
    if isinstance(v, str):
        return f"{_short(v, 40)} (string)"
    if isinstance(v, _NUMBER_TYPES):
        return f"{_short(v, 40)} (number)"
    return f"{type(v).__name__}"


def _expected(col: dict) -> str:
    kind = col.get("kind")
    base = {"numeric": "a number", "boolean": "true or false", "text": "a string"}.get(kind)
    if base is None:
        cats = col.get("categories")
        if cats is not None and col.get("accepts_unseen") is False:
            shown = ", ".join(repr(c) for c in cats[:20]) + (", ..." if len(cats) > 20 else "")
            base = f"one of {shown}"
        else:
            base = "a string (a category)"
    return base + (" or null" if col.get("nullable") else "")


def _bad_cell(col: dict, i: int, v, why: str = "") -> ClientError:
    name = col["name"]
    if v is None:
        return ClientError(400, f"Column {name!r} does not accept null (row {i}): the model does not "
                                "take missing values there.",
                           hint=f"Send {_expected(col)}. " + _HOW_NULLS, expected=_expected(col),
                           received=f"null at row {i}", column=name)
    return ClientError(400, f"Column {name!r} expects {_expected(col)}; row {i} has {_what(v)}{why}.",
                       hint=f"Send {_expected(col)} for {name!r} (see GET /metadata, "
                            "input_schema.columns).",
                       expected=_expected(col), received=_what(v), column=name)


def _column_cells(col: dict, values: list) -> list:
    """Validate one column's cells; return them as table cells (float/NaN or str/None).

    Plain Python on purpose: a request is usually a few rows, where numpy's per-call overhead
    costs more than the loop (about 3x on one 10-column record)."""
    kind = col.get("kind")
    nullable = bool(col.get("nullable"))
    if kind in ("numeric", "boolean"):
        boolean = kind == "boolean"
        out = []
        append = out.append
        for i, v in enumerate(values):
            t = type(v)
            if t is float or t is int:
                if v - v != 0 or v > F32_MAX or v < -F32_MAX:   # NaN, +/-inf, float32 overflow
                    raise ClientError(400, f"Column {col['name']!r} needs finite numbers within "
                                           f"+/-{F32_MAX:.4g}; row {i} has {v}.",
                                      hint="Send finite numbers" + (" or null for a missing value."
                                                                    if nullable else "."),
                                      expected="finite numbers", received=f"{v} at row {i}",
                                      column=col["name"])
                append(float(v))
            elif v is None and nullable:
                append(math.nan)
            elif t is bool and boolean:
                append(1.0 if v else 0.0)
            else:
                raise _bad_cell(col, i, v)
        return out
    known = _known(col) if kind == "categorical" and col.get("accepts_unseen") is False \
        and col.get("categories") is not None else None
    for i, v in enumerate(values):
        if type(v) is str:
            if known is not None and v not in known:
                raise _bad_cell(col, i, v, ", a category the model has not seen (the native model "
                                           "raises on it)")
        elif not (v is None and nullable):
            raise _bad_cell(col, i, v)
    return values


_KNOWN: dict = {}


def _known(col: dict) -> frozenset:
    hit = _KNOWN.get(id(col))
    if hit is None or hit[0] is not col:
        if len(_KNOWN) > 512:
            _KNOWN.clear()
        hit = _KNOWN[id(col)] = (col, frozenset(col.get("categories") or []))
    return hit[1]


def parse_table(rows: list, columns: list):
    """Records (or rows in column order) of a table model -> an object table [N, C]."""
    import numpy as np

    names = [c["name"] for c in columns]
    n = len(columns)
    if isinstance(rows[0], dict):
        wanted = set(names)
        for i, rec in enumerate(rows):
            if not isinstance(rec, dict):
                raise ClientError(400, f"Row {i} is not an object; do not mix objects and lists.",
                                  hint="Send all rows as objects ({\"column\": value, ...}).",
                                  expected="object", received=type(rec).__name__)
            if len(rec) != n or not wanted.issuperset(rec):
                extra = [k for k in rec if k not in wanted]
                if extra:
                    raise ClientError(400, f"Row {i} has an unknown column {_short(extra[0], 60)}"
                                           + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
                                           + ".",
                                      hint=f"The model's columns are {names[:20]}"
                                           + (" ..." if n > 20 else "") + "; see GET /metadata.",
                                      expected=names[:50], received=_short(extra[0], 60),
                                      column=str(extra[0])[:60])
                missing = [c for c in names if c not in rec]
                raise ClientError(400, f"Row {i} lacks column {missing[0]!r}"
                                       + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                                       + ".",
                                  hint="Send every column; use null for a missing value where the "
                                       "column accepts it (see GET /metadata).",
                                  expected=missing[:20], received=sorted(map(str, rec))[:n],
                                  column=missing[0])
        by_column = [[rec[c] for rec in rows] for c in names]
    else:
        for i, r in enumerate(rows):
            if not isinstance(r, list):
                raise ClientError(400, f"Row {i} is not an object or a list: {_short(r)}.",
                                  hint="Send rows as objects {\"column\": value, ...}.",
                                  expected="object", received=type(r).__name__)
            if len(r) != n:
                raise ClientError(400, f"Row {i} has {len(r)} values; the model has {n} columns "
                                       f"{names[:10]}{' ...' if n > 10 else ''}.",
                                  hint="Send rows as objects {\"column\": value, ...}, or lists in the "
                                       "column order of GET /metadata.",
                                  expected=n, received=len(r))
        by_column = [list(col) for col in zip(*rows)]
    table = np.empty((len(rows), n), dtype=object)
    for j, col in enumerate(columns):
        table[:, j] = _column_cells(col, by_column[j])
    return table

