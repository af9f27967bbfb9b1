"""Column helpers for table models (DataFrames with string, categorical or text columns).

Shared by the served bundle (validation, ONNX feeds, explain, drift) and the notebook side.
numpy only: this module is copied into every bundle.

A *table* is a 2-D numpy object array [N, n_columns] in ``spec["columns"]`` order: numeric and
boolean cells are floats (NaN = missing), categorical and text cells are ``str`` or ``None``
(missing).  Each column is a dict (see ``nbdeploy/runtime/model.py`` for the contract)::

    {"name", "kind": "numeric"|"categorical"|"text"|"boolean", "dtype", "nullable",
     "categories": [str, ...] | None, "onnx_input": str | None, "onnx_type": "float"|"double"|
     "int64"|"string"|"bool", "accepts_unseen": bool | None}

Float encoding (for explainers and drift): numeric cells as they are, categorical/text cells as
the index of their value in ``categories``; a value not in ``categories`` is
``len(categories)``; a missing cell is NaN.
"""

from __future__ import annotations

import numpy as np

KINDS = ("numeric", "categorical", "text", "boolean")
STRING_KINDS = ("categorical", "text")
#: What a missing categorical/text cell is fed to the ONNX graph as: string tensors have no
#: missing value, and the converted imputers treat this marker as missing (adapters/sklearn.py).
#: Not "": an empty string a client sends is a value (an unseen category for an encoder), not
#: a missing one, exactly as for the native model.
MISSING_STRING = "__nbdeploy_missing__"
_ONNX_DTYPES = {"float": np.float32, "double": np.float64, "int64": np.int64, "bool": np.bool_}


def is_table(spec: dict | None) -> bool:
    """True when the model takes a table (one typed ONNX input per column)."""
    return bool(spec) and spec.get("input_mode") == "table"


def is_string_column(col: dict) -> bool:
    return col.get("kind") in STRING_KINDS


def is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and v != v)


def names(columns: list[dict]) -> list[str]:
    return [c["name"] for c in columns]


_INDEX: dict[int, tuple] = {}


def _category_index(col: dict) -> dict:
    # built once per column dict, not per request; the cache holds the dict, so its id stays unique
    hit = _INDEX.get(id(col))
    if hit is None or hit[0] is not col:
        if len(_INDEX) > 512:  # a notebook converts many models: keep the cache bounded
            _INDEX.clear()
        hit = _INDEX[id(col)] = (col, {v: i for i, v in enumerate(col.get("categories") or [])})
    return hit[1]


def encode_column(values, col: dict) -> np.ndarray:
    """One table column as float64: numbers as they are, strings as category indices."""
    values = np.asarray(values, dtype=object) if not isinstance(values, np.ndarray) else values
    if not is_string_column(col):
        return _floats(values)
    idx = _category_index(col)
    unseen = float(len(idx))
    return np.array([np.nan if is_missing(v) else float(idx.get(v if type(v) is str else str(v), unseen))
                     for v in values], dtype=np.float64)


def encode_float(table: np.ndarray, columns: list[dict]) -> np.ndarray:
    """A table as a float64 matrix [N, C] (see the module docstring)."""
    table = np.asarray(table)
    if table.dtype != object:
        return table.astype(np.float64, copy=False)
    out = np.empty(table.shape, dtype=np.float64)
    for j, col in enumerate(columns):
        out[:, j] = encode_column(table[:, j], col)
    return out


def decode_float(M: np.ndarray, columns: list[dict]) -> np.ndarray:
    """The inverse of :func:`encode_float`: category indices back to strings.

    NaN and indices outside ``categories`` decode to ``None`` (missing); a float index is
    rounded, so perturbed encodings decode to a nearby category.
    """
    M = np.asarray(M, dtype=np.float64)
    if M.ndim == 1:
        M = M.reshape(1, -1)
    out = np.empty(M.shape, dtype=object)
    for j, col in enumerate(columns):
        v = M[:, j]
        if not is_string_column(col):
            out[:, j] = v
            continue
        cats = col.get("categories") or []
        cells = []
        for x in v:
            if x != x:
                cells.append(None)
            else:
                i = int(round(x))
                cells.append(cats[i] if 0 <= i < len(cats) else None)
        out[:, j] = cells
    return out


def _floats(values: np.ndarray) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):  # None among the numbers
        return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def as_table(X, columns: list[dict]) -> np.ndarray:
    """A table as it is, or a float encoding (e.g. a warm-up batch of zeros) decoded to one."""
    X = np.asarray(X)
    if X.dtype == object:
        return X
    return decode_float(X, columns)


_PLANS: dict[int, tuple] = {}


def _plan(columns: list[dict]) -> list[tuple]:
    """(index, column, graph input, onnx type, how) per fed column, once per columns list."""
    hit = _PLANS.get(id(columns))
    if hit is None or hit[0] is not columns:
        if len(_PLANS) > 256:
            _PLANS.clear()
        plan = []
        for j, col in enumerate(columns):
            name = col.get("onnx_input")
            if not name:  # the graph does not use this column
                continue
            t = col.get("onnx_type", "float")
            how = "string" if t == "string" else "codes" if is_string_column(col) else "number"
            plan.append((j, col, name, t, how))
        hit = _PLANS[id(columns)] = (columns, plan)
    return hit[1]


def table_feeds(X, columns: list[dict]) -> dict:
    """One [N, 1] ONNX feed per column, typed by its ``onnx_type``."""
    X = as_table(X, columns)
    feeds = {}
    for j, col, name, t, how in _plan(columns):
        if how == "string":
            cells = [MISSING_STRING if v is None or v != v else (v if type(v) is str else str(v))
                     for v in X[:, j]]
            feeds[name] = np.array(cells, dtype=object).reshape(-1, 1)
            continue
        if how == "codes":  # categories fed as their index (e.g. booster graphs)
            arr = encode_column(X[:, j], col)
        else:
            try:
                arr = X[:, j].astype(np.float64)
            except (TypeError, ValueError):
                arr = _floats(X[:, j])
        if t == "int64":
            arr = np.where(np.isnan(arr), -1, arr)
        feeds[name] = arr.astype(_ONNX_DTYPES.get(t, np.float32)).reshape(-1, 1)
    return feeds
