"""Input schemas and sample validation (core side)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import InvalidInputError, InvalidNameError

# BentoML's own tag rule: lowercase letters, digits, '-', '_' and '.', starting with a letter or digit.
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid bento name, else raise a clear error."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise InvalidNameError(
            f"Invalid bundle name {name!r}.",
            hint="Use 1-63 lowercase letters, digits, '-', '_' or '.', starting with a letter "
                 "or digit (no '/', spaces or '..'), e.g. 'iris-classifier'.",
            expected="^[a-z0-9][a-z0-9._-]{0,62}$", received=repr(name))
    return name


def validate_tag(tag: str) -> str:
    """Validate ``name`` or ``name:version``."""
    if not isinstance(tag, str):
        raise InvalidNameError(f"Invalid bundle tag {tag!r}.", hint="Use 'name' or 'name:version'.")
    name, _, version = tag.partition(":")
    validate_name(name)
    if version and not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", version):
        raise InvalidNameError(f"Invalid bundle version {version!r} in tag {tag!r}.",
                               hint="Versions are letters, digits, '-', '_' and '.'.")
    return tag


@dataclass(frozen=True)
class InputSchema:
    """What the model takes: a 2-D float matrix of ``n_features`` columns."""

    n_features: int
    dtype: str = "float32"
    feature_names: list[str] | None = None
    input_mode: str = "tensor"            # "tensor" or "columns"
    input_names: list[str] = field(default_factory=lambda: ["input"])
    columns: list[dict] | None = None     # the column schema (ColumnSpec.to_dict() each)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = [None, self.n_features]
        return d


def feature_names_of(obj: Any) -> list[str] | None:
    cols = getattr(obj, "columns", None)
    if cols is not None:
        return [str(c) for c in cols]
    return None


def _numeric_dtype(t: Any) -> bool:
    try:
        from pandas.api.types import is_bool_dtype, is_numeric_dtype

        return bool(is_numeric_dtype(t) or is_bool_dtype(t))
    except ImportError:  # pragma: no cover - DataFrames imply pandas
        return np.issubdtype(np.dtype(t), np.number)


def as_matrix(sample: Any, *, what: str = "sample", n_features: int | None = None,
              allow_empty: bool = False, allow_nan: bool = False,
              allow_nd: bool = False) -> np.ndarray:
    """Turn a sample (ndarray, DataFrame, list of rows) into a float32 matrix.

    ``allow_nd``: the model takes a tensor of rank > 2 ([N, C, H, W], [N, T, F], ...); such a
    sample comes back flattened to [N, prod(shape[1:])]; the caller keeps ``shape[1:]``.

    Infinite values are refused; NaN (a missing value) only unless ``allow_nan`` (the caller
    then decides per column from what the native model does, see :func:`nbdeploy.convert.convert`).
    Raises :class:`InvalidInputError` naming what was expected and received.
    """
    if sample is None:
        raise InvalidInputError(f"No {what} was given.",
                                hint="Pass a few rows of the model's input, e.g. --sample X_test.")
    try:
        if hasattr(sample, "to_numpy"):
            dtypes = getattr(sample, "dtypes", None)
            if dtypes is not None and hasattr(dtypes, "items"):
                bad = [str(c) for c, t in dtypes.items() if not _numeric_dtype(t)]
                if bad:
                    raise InvalidInputError(
                        f"The {what} has non-numeric columns: {bad[:5]}.",
                        hint="Pass the DataFrame to a model that encodes them itself (e.g. a "
                             "scikit-learn Pipeline with a ColumnTransformer), or encode them "
                             "as numbers first.",
                        expected="numeric columns", received=bad[:5])
            arr = sample.to_numpy(dtype=np.float64, na_value=np.nan) if dtypes is not None \
                else sample.to_numpy()
        else:
            arr = np.asarray(sample)
    except InvalidInputError:
        raise
    except Exception as exc:  # ragged lists and the like
        raise InvalidInputError(f"The {what} could not be read as a matrix: {exc}.",
                                hint="Pass a 2-D array (rows x features).") from exc
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise InvalidInputError(
            f"The {what} must be numeric; got dtype {arr.dtype}.",
            hint="Convert it to numbers first (e.g. X.astype('float32')).",
            expected="numeric", received=str(arr.dtype))
    if arr.ndim == 1 and n_features is not None and arr.shape[0] == n_features:
        arr = arr.reshape(1, -1)
    if arr.ndim > 2 and allow_nd:
        arr = arr.reshape(arr.shape[0], -1)
    if arr.ndim != 2:
        raise InvalidInputError(
            f"The {what} must be 2-D (rows x features); got shape {arr.shape}.",
            hint="Use X.reshape(1, -1) for a single row, or X.reshape(-1, 1) for a single feature.",
            expected="2-D", received=list(arr.shape))
    if arr.shape[0] == 0 and not allow_empty:
        raise InvalidInputError(f"The {what} is empty (0 rows).",
                                hint="Pass at least one row; a few hundred make benchmarks meaningful.")
    if n_features is not None and arr.shape[1] != n_features:
        raise InvalidInputError(
            f"The {what} has {arr.shape[1]} features per row; the model expects {n_features}.",
            hint="Pass rows with the same columns the model was trained on.",
            expected=n_features, received=int(arr.shape[1]))
    arr = arr.astype(np.float32, copy=False)
    finite = np.isfinite(arr) | np.isnan(arr) if allow_nan else np.isfinite(arr)
    if not finite.all():
        bad_rows = np.where(~finite.all(axis=1))[0]
        raise InvalidInputError(
            f"The {what} contains NaN or infinite values in {len(bad_rows)} row(s) "
            f"(first: row {int(bad_rows[0])}).",
            hint="Drop or impute missing values first (e.g. X.dropna() or SimpleImputer).",
            expected="finite numbers", received=f"{len(bad_rows)} rows with NaN/Inf")
    return np.ascontiguousarray(arr)


# --- column schema (issue 16) -------------------------------------------------------------------

KINDS = ("numeric", "categorical", "text", "boolean")
MAX_CATEGORIES = 1000   # more distinct strings than this in a column without an encoder: text


@dataclass
class ColumnSpec:
    """One input column of a model fit on a DataFrame (the contract: nbdeploy/runtime/model.py)."""

    name: str
    kind: str                             # numeric | categorical | text | boolean
    dtype: str                            # the sample's pandas dtype, e.g. "float64", "str", "category"
    nullable: bool = False                # missing values (null) accepted: the native model takes them
    categories: list[str] | None = None   # categorical: the values the model knows (or the sample has)
    onnx_input: str | None = None         # graph input fed with this column (None: unused)
    onnx_type: str = "float"              # float | double | int64 | string | bool
    accepts_unseen: bool | None = None    # categorical: an unseen value is answered (else a 400)
    missing_in_sample: int = 0            # rows of the sample with this column missing

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """One line for text front ends: ``city: categorical (3 values, nulls ok)``."""
        return describe_column(self.to_dict())


def describe_column(col: dict) -> str:
    """``city: categorical (3 values, nulls ok)`` for a column dict of ``spec["columns"]``."""
    bits = []
    cats = col.get("categories")
    if col.get("kind") == "categorical" and cats is not None:
        bits.append(f"{len(cats)} values" + (", others refused" if col.get("accepts_unseen") is False
                                             else ""))
    bits.append("nulls ok" if col.get("nullable") else "no nulls")
    return f"{col.get('name')}: {col.get('kind')} ({', '.join(bits)})"


def describe_columns(columns: list[dict] | None, limit: int = 12) -> str:
    """The column schema in one short paragraph for text output (``%deploy``, the CLI)."""
    if not columns:
        return ""
    shown = "; ".join(describe_column(c) for c in columns[:limit])
    return shown + (f"; … {len(columns) - limit} more" if len(columns) > limit else "")


def is_frame(sample: Any) -> bool:
    return hasattr(sample, "dtypes") and hasattr(sample, "columns") and hasattr(sample, "iloc")


def non_numeric_columns(sample: Any) -> list[str]:
    """Columns of a DataFrame that are not numbers or booleans ([] for anything else)."""
    if not is_frame(sample):
        return []
    return [str(c) for c, t in sample.dtypes.items() if not _numeric_dtype(t)]


def _is_bool_dtype(t: Any) -> bool:
    from pandas.api.types import is_bool_dtype

    return bool(is_bool_dtype(t))


def _looks_like_text(values: list[str]) -> bool:
    if not values:
        return False
    words = sum(len(v.split()) for v in values) / len(values)
    return words >= 3


def infer_columns(df: Any, *, hints: dict[str, dict] | None = None) -> list[ColumnSpec]:
    """The column schema of a sample DataFrame.

    ``hints`` (from the adapter, which knows the model) override the guess per column name:
    ``{"kind": "text"}`` for a column a TfidfVectorizer reads, ``{"kind": "categorical",
    "categories": [...]}`` for one an encoder reads.  Without a hint, string columns with a
    few distinct short values are categorical and the rest text.  ``nullable`` and
    ``accepts_unseen`` are decided later, by running the native model.
    """
    hints = hints or {}
    out = []
    for name in df.columns:
        s = df[name]
        key = str(name)
        dtype = str(s.dtype)
        hint = hints.get(key) or {}
        missing = int(s.isna().sum())
        if _is_bool_dtype(s.dtype) and hint.get("kind") not in ("categorical", "text"):
            out.append(ColumnSpec(key, "boolean", dtype, missing_in_sample=missing))
            continue
        if _numeric_dtype(s.dtype) and hint.get("kind") not in ("categorical", "text"):
            out.append(ColumnSpec(key, "numeric", dtype, missing_in_sample=missing))
            continue
        seen = sorted({str(v) for v in s.dropna().tolist()})
        if dtype == "category":
            known = [str(c) for c in s.cat.categories]
        else:
            known = seen
        kind = hint.get("kind")
        if kind is None:
            kind = "categorical" if dtype == "category" or (
                len(seen) <= MAX_CATEGORIES and not _looks_like_text(seen)) else "text"
        cats = hint.get("categories")
        if cats is None:
            cats = known if kind == "categorical" else None
        out.append(ColumnSpec(key, kind, dtype, categories=[str(c) for c in cats] if cats is not None
                              else None, onnx_type="string", missing_in_sample=missing))
    return out


def table_from_frame(df: Any, columns: list[ColumnSpec]) -> np.ndarray:
    """A DataFrame as a table: an object array [N, C] (floats with NaN; str or None).

    Numbers fed to a float32 graph input (``onnx_type == "float"``, also the default before
    conversion) are rounded to float32, so that the native model and the graph see the same
    values during verification; double inputs (e.g. HistGradientBoosting's trees) keep float64,
    so that predictions on the user's own DataFrame equal the native model's.
    """
    out = np.empty((len(df), len(columns)), dtype=object)
    for j, col in enumerate(columns):
        s = df[col.name]
        if col.kind in ("numeric", "boolean"):
            try:
                v = s.to_numpy(dtype=np.float64, na_value=np.nan)
            except (TypeError, ValueError) as exc:
                raise InvalidInputError(f"Column {col.name!r} ({col.kind}) could not be read as numbers: "
                                        f"{str(exc).splitlines()[0][:200]}.",
                                        hint="Give numeric columns a numeric dtype (df[c].astype(float)).",
                                        expected="numbers", received=str(s.dtype)) from exc
            if np.isinf(v).any():
                row = int(np.where(np.isinf(v))[0][0])
                raise InvalidInputError(f"Column {col.name!r} of the sample has infinite values "
                                        f"(first: row {row}).",
                                        hint="Replace them with finite numbers or NaN (missing).",
                                        expected="finite numbers or NaN", received="inf")
            out[:, j] = v.astype(np.float32).astype(np.float64) if col.onnx_type == "float" else v
        else:
            out[:, j] = [None if _na(v) else str(v) for v in s.tolist()]
    return out


def _na(v: Any) -> bool:
    if v is None:
        return True
    try:
        return bool(v != v)
    except Exception:
        return False


def table_to_frame(table: np.ndarray, columns: list[dict]) -> Any:
    """A table back as a DataFrame with the sample's dtypes (what the native model was fit on)."""
    import pandas as pd

    table = np.asarray(table)
    if table.dtype != object:
        from .runtime.columns import decode_float

        table = decode_float(table, columns)
    data = {}
    for j, col in enumerate(columns):
        v = table[:, j]
        dtype = col.get("dtype") or ""
        if col["kind"] in ("numeric", "boolean"):
            f = np.array([np.nan if c is None else c for c in v], dtype=np.float64)
            s = pd.Series(f)
            if not np.isnan(f).any() and dtype in ("int64", "int32", "int16", "int8", "uint8",
                                                   "uint16", "uint32", "uint64", "bool"):
                s = s.astype(dtype)
            elif dtype in ("Int64", "Int32", "Float64", "boolean"):
                s = s.astype(dtype) if dtype != "boolean" else s.astype("Float64").astype("boolean")
            data[col["name"]] = s
        else:
            cells = [np.nan if c is None else c for c in v]
            if dtype == "category":
                s = pd.Series(pd.Categorical(cells, categories=col.get("categories") or None))
            elif dtype == "object":
                s = pd.Series(cells, dtype=object)
            else:
                try:
                    s = pd.Series(cells, dtype=dtype)
                except (TypeError, ValueError):
                    s = pd.Series(cells, dtype=object)
            data[col["name"]] = s
    return pd.DataFrame(data)

