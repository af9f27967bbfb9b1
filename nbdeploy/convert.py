"""convert: a native model + sample -> ONNX graph, spec and input schema.

A DataFrame sample with string, categorical or text columns gives a *table* model (one typed
ONNX input per column, see ``runtime/model.py``); anything else a float matrix.  Either way the
spec records the column schema, and whether each column accepts missing values (and unseen
categories) is decided by running the native model and the graph, not by a rule.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .adapters import Adapter, detect
from .errors import ConversionError, InvalidInputError, NbdeployError, UnsupportedModelError, brief
from .runtime.spec import ModelSpec
from .schema import (
    ColumnSpec,
    InputSchema,
    as_matrix,
    feature_names_of,
    infer_columns,
    is_frame,
    non_numeric_columns,
    table_from_frame,
)


@dataclass
class ConvertResult:
    """The outcome of :func:`convert`."""

    adapter: Adapter
    onnx_model: Any                  # onnx.ModelProto
    spec: ModelSpec                  # how the runtime feeds and reads the graph (runtime/spec.py)
    schema: InputSchema
    X: np.ndarray                    # the sample: a float32 matrix, or an object table (table models)
    converter: str
    notes: list[str] = field(default_factory=list)

    @property
    def framework(self) -> str:
        return self.adapter.framework

    @property
    def onnx_bytes(self) -> bytes:
        return self.onnx_model.SerializeToString()

    @property
    def columns(self) -> list[dict]:
        """The column schema (``spec["columns"]``)."""
        return list(self.spec.get("columns") or [])

    @property
    def is_table(self) -> bool:
        return self.spec.get("input_mode") == "table"

    def to_dict(self) -> dict:
        return {"framework": self.framework, "model_type": self.adapter.model_type,
                "task": self.spec["task"], "converter": self.converter,
                "classes": self.spec.get("classes"), "input_schema": self.schema.to_dict(),
                "columns": self.columns,
                "onnx_opsets": {(o.domain or "ai.onnx"): o.version for o in self.onnx_model.opset_import},
                "onnx_size_bytes": len(self.onnx_bytes), "notes": list(self.notes)}


def _model_frame(sample, adapter: Adapter):
    """The sample's columns in the model's order (``feature_names_in_``), extras dropped."""
    wanted = adapter.feature_names()
    if not wanted:
        return sample
    have = [str(c) for c in sample.columns]
    missing = [c for c in wanted if c not in have]
    if missing:
        raise InvalidInputError(
            f"The sample lacks {len(missing)} column(s) the model was fit on: {missing[:5]}.",
            hint="Pass a sample with the training DataFrame's columns.",
            expected=wanted[:20], received=have[:20])
    if have == wanted:
        return sample
    return sample.rename(columns=str)[wanted]


def _table_sample(sample, adapter: Adapter) -> tuple[np.ndarray, list[ColumnSpec]]:
    frame = _model_frame(sample, adapter)
    if len(frame) == 0:
        raise InvalidInputError("The sample is empty (0 rows).",
                                hint="Pass at least one row; a few hundred make benchmarks meaningful.")
    hints = adapter.column_hints() if hasattr(adapter, "column_hints") else {}
    columns = infer_columns(frame, hints=hints)
    return table_from_frame(frame, columns), columns


def _plain_columns(sample, X: np.ndarray, names: list[str] | None) -> list[ColumnSpec]:
    """The schema of a numeric sample: numeric (or boolean) columns."""
    if is_frame(sample) and names and len(names) == X.shape[1]:
        specs = infer_columns(sample[list(sample.columns)])
        for c, n in zip(specs, names):
            c.name = n
        return specs
    dtype = str(getattr(sample, "dtype", X.dtype))
    return [ColumnSpec(n, "numeric", dtype, missing_in_sample=int(np.isnan(X[:, i]).sum()))
            for i, n in enumerate(names or [f"f{i}" for i in range(X.shape[1])])]


def _check_native_takes_sample(adapter: Adapter, X: np.ndarray, columns: list[ColumnSpec]) -> None:
    """Run the native model on the sample; where it raises on the sample's missing values,
    say which columns, in a few lines."""
    try:
        adapter.predict(X[: min(len(X), 2)])
    except InvalidInputError:
        raise
    except Exception as exc:
        raise InvalidInputError(
            f"{adapter.model_type} could not predict on the sample (shape {list(X.shape)}): {brief(exc)}",
            hint="Pass rows shaped like the model's training input (same columns, same types).") from exc
    with_missing = [c for c in columns if c.missing_in_sample]
    if not with_missing:
        return
    rows = _rows_with_missing(X)
    try:
        adapter.predict(X[rows[:64]])
    except Exception as exc:
        culprits = _columns_raising_on_missing(adapter, X, columns) or with_missing
        c = culprits[0]
        miss = _missing_mask(X)[:, columns.index(c)]
        first = int(np.where(miss)[0][0]) if miss.any() else int(rows[0])
        names = [x.name for x in culprits]
        raise InvalidInputError(
            f"{adapter.model_type} raises on missing values (NaN) in column {c.name!r} of the sample "
            f"(first: row {first}; {int(miss.sum())} rows)"
            + (f", and in {names[1:4]}" if len(names) > 1 else "") + f": {brief(exc, 200)}",
            hint="The native model does not handle missing values there: impute them inside the "
                 "model (e.g. SimpleImputer in the pipeline for that column), or drop those rows "
                 "from the sample.",
            expected="no missing values", received=f"{int(miss.sum())} rows with NaN in {c.name!r}") from exc


def _missing_mask(X: np.ndarray) -> np.ndarray:
    if X.dtype == object:
        from .runtime.columns import is_missing

        return np.array([[is_missing(v) for v in row] for row in X], dtype=bool).reshape(X.shape)
    return np.isnan(X)


def _columns_raising_on_missing(adapter: Adapter, X: np.ndarray, columns: list[ColumnSpec]) -> list:
    """The columns whose missing values alone make the native model raise."""
    mask = _missing_mask(X)
    complete = ~mask.any(axis=1)
    if not complete.any():
        return []
    base = X[np.where(complete)[0][:4]]
    found = []
    for j, c in enumerate(columns):
        if not c.missing_in_sample:
            continue
        b = base.copy()
        b[:, j] = None if X.dtype == object and c.kind in ("categorical", "text") else np.nan
        try:
            adapter.predict(b)
        except Exception:
            found.append(c)
    return found


def _rows_with_missing(X: np.ndarray) -> np.ndarray:
    return np.where(_missing_mask(X).any(axis=1))[0]


def _convert_text(adapter: Adapter, sample: Any, *, opset: int | None = None) -> ConvertResult:
    """:func:`convert` for text models (issue 21): the sample is a list/Series of strings."""
    from .runtime.text import as_texts

    adapter.check_fitted()
    if isinstance(sample, str) or not hasattr(sample, "__len__"):
        raise InvalidInputError("The sample of a text model must be a list (or Series) of strings.",
                                hint="Pass e.g. sample=texts[:200].", expected="list of strings",
                                received=type(sample).__name__)
    X = as_texts(sample)
    if len(X) == 0:
        raise InvalidInputError("The sample is empty.", hint="Pass at least a few texts.")
    bad = [i for i, v in enumerate(X[:, 0]) if not isinstance(v, str)]
    if bad:
        raise InvalidInputError(f"Sample entry {bad[0]} is not a string: {type(X[bad[0], 0]).__name__}.",
                                hint="Pass a list of strings.", expected="str",
                                received=type(X[bad[0], 0]).__name__)
    try:
        adapter.predict(X[:2])
    except Exception as exc:
        raise InvalidInputError(f"The model could not run on the sample: {exc}",
                                hint="Pass the tokenizer the model was trained with.") from exc
    converted = adapter.to_onnx(X, opset=opset)
    spec: ModelSpec = dict(converted.spec)
    spec.update(n_features=1, dtype="object", feature_names=["text"], columns=[])
    schema = InputSchema(n_features=1, feature_names=["text"], input_mode="text",
                         input_names=list(spec["input_names"]), columns=[])
    return ConvertResult(adapter, converted.onnx_model, spec, schema, X, converted.converter,
                         list(converted.notes))


def convert(model: Any, sample: Any, *, task: str | None = None,
            feature_names: list[str] | None = None, opset: int | None = None,
            adapter: Adapter | None = None, tokenizer: Any = None) -> ConvertResult:
    """Detect the framework of ``model`` and convert it to ONNX using ``sample`` for shapes.

    ``adapter``: one :func:`detect` already returned for ``model`` (detecting an ONNX file
    probes it in a throw-away process, which costs seconds; do it once)."""
    adapter = adapter if adapter is not None else detect(model, task=task)
    if getattr(adapter, "input_kind", None) == "text":   # issue 21: strings + a tokenizer
        if tokenizer is not None:
            adapter.tokenizer = tokenizer
        return _convert_text(adapter, sample, opset=opset)
    adapter.check_fitted()
    table = bool(non_numeric_columns(sample))
    nd_shape = None
    if table:
        accepts = "columns" in inspect.signature(adapter.to_onnx).parameters
        if not accepts:
            raise UnsupportedModelError(
                f"The sample has non-numeric columns {non_numeric_columns(sample)[:5]}, but "
                f"{adapter.framework} models take numbers only.",
                hint="Encode those columns as numbers first, or deploy a model that encodes them "
                     "itself (a scikit-learn Pipeline with a ColumnTransformer, LightGBM/XGBoost "
                     "on pandas categories).", expected="numeric columns",
                received=non_numeric_columns(sample)[:5])
        X, columns = _table_sample(sample, adapter)
        names = [c.name for c in columns]
        if feature_names is not None and list(feature_names) != names:
            raise InvalidInputError(
                "feature_names cannot rename the columns of a DataFrame with non-numeric columns.",
                hint="Drop feature_names: the DataFrame's own column names are used.",
                expected=names[:20], received=list(feature_names)[:20])
        adapter.columns = [c.to_dict() for c in columns]   # native_frame rebuilds the DataFrame
    else:
        names = feature_names or feature_names_of(sample) or adapter.feature_names()
        nd_shape = None     # rank > 2 (images, sequences): flat rows + a Reshape in the graph
        if getattr(adapter, "accepts_nd", False) and not is_frame(sample) and np.ndim(sample) > 2:
            nd_shape = tuple(int(d) for d in np.shape(sample)[1:])
            adapter.input_shape = nd_shape
        X = as_matrix(sample, n_features=adapter.n_features(), allow_nan=True,
                      allow_nd=nd_shape is not None)
        if names is not None and len(names) != X.shape[1]:
            raise InvalidInputError(
                f"{len(names)} feature names were given for {X.shape[1]} columns.",
                hint="Pass one name per column.", expected=X.shape[1], received=len(names))
        columns = _plain_columns(sample, X, names)
        if hasattr(adapter, "probe"):
            try:
                adapter.probe(X)
            except Exception as exc:
                raise InvalidInputError(
                    f"The model could not run on the sample (shape {list(X.shape)}): {brief(exc)}",
                    hint="Pass rows shaped like the model's training input.") from exc
    _check_native_takes_sample(adapter, X, columns)
    kwargs = {"feature_names": names, "opset": opset}
    if table:
        kwargs["columns"] = adapter.columns
    try:
        converted = adapter.to_onnx(X, **kwargs)
    except NbdeployError as exc:
        if len(exc.message) > 600:     # an adapter passed a converter's dump through
            exc.message = exc.message[:597] + "..."
        raise
    except Exception as exc:
        raise ConversionError(
            f"Converting {adapter.model_type} to ONNX failed: {brief(exc)}",
            hint="The converter does not support this model or one of its settings; see the "
                 "README's list of supported models, or export to ONNX yourself and pass the "
                 ".onnx path.") from exc
    spec: ModelSpec = dict(converted.spec)
    spec.update(n_features=int(X.shape[1]), dtype="float32", feature_names=names)
    if not table and nd_shape is not None:
        from .images import flat_input, guess_layout

        converted.onnx_model = flat_input(converted.onnx_model, nd_shape)
        spec.update(input_shape=[None, *nd_shape], layout=guess_layout(nd_shape, adapter.framework))
    if table:
        columns = [ColumnSpec(**c) for c in adapter.columns]
    notes = list(converted.notes)
    if nd_shape is None:
        from .verify import probe_columns

        notes += probe_columns(adapter, converted.onnx_model, spec, X, columns)
    else:
        # N-D tensors (images, sequences): a missing value is one pixel or step, not a column a
        # user leaves empty, and probing every element (150,528 for a 224x224 RGB image) runs
        # the model on tens of thousands of rows.  A NaN element turns a network's outputs into
        # NaN, which the probe counts as refused anyway: refuse it without probing.
        for c in columns:
            c.nullable = False
    spec["columns"] = [c.to_dict() for c in columns]
    if table:
        adapter.columns = spec["columns"]
    schema = InputSchema(n_features=int(X.shape[1]), feature_names=names,
                         input_mode=spec.get("input_mode", "tensor"),
                         input_names=list(spec.get("input_names") or ["input"]),
                         columns=spec["columns"])
    return ConvertResult(adapter, converted.onnx_model, spec, schema, X, converted.converter, notes)
