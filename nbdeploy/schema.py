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
              allow_empty: bool = False) -> np.ndarray:
    """Turn a sample (ndarray, DataFrame, list of rows) into a finite float32 matrix.

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
                        hint="nbdeploy serves models on numeric features; encode categorical "
                             "columns inside a scikit-learn pipeline and pass numbers.",
                        expected="numeric columns", received=bad[:5])
            arr = sample.to_numpy()
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
    finite = np.isfinite(arr)
    if not finite.all():
        bad_rows = np.where(~finite.all(axis=1))[0]
        raise InvalidInputError(
            f"The {what} contains NaN or infinite values in {len(bad_rows)} row(s) "
            f"(first: row {int(bad_rows[0])}).",
            hint="Drop or impute missing values first (e.g. X.dropna() or SimpleImputer).",
            expected="finite numbers", received=f"{len(bad_rows)} rows with NaN/Inf")
    return np.ascontiguousarray(arr)
