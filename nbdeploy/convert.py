"""convert: a native model + sample -> ONNX graph, spec and input schema."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .adapters import Adapter, detect
from .errors import InvalidInputError
from .schema import InputSchema, as_matrix, feature_names_of


@dataclass
class ConvertResult:
    """The outcome of :func:`convert`."""

    adapter: Adapter
    onnx_model: Any                  # onnx.ModelProto
    spec: dict                       # how the runtime feeds and reads the graph
    schema: InputSchema
    X: np.ndarray                    # the sample as a float32 matrix
    converter: str
    notes: list[str] = field(default_factory=list)

    @property
    def framework(self) -> str:
        return self.adapter.framework

    @property
    def onnx_bytes(self) -> bytes:
        return self.onnx_model.SerializeToString()

    def to_dict(self) -> dict:
        return {"framework": self.framework, "model_type": self.adapter.model_type,
                "task": self.spec["task"], "converter": self.converter,
                "classes": self.spec.get("classes"), "input_schema": self.schema.to_dict(),
                "onnx_opsets": {(o.domain or "ai.onnx"): o.version for o in self.onnx_model.opset_import},
                "onnx_size_bytes": len(self.onnx_bytes), "notes": list(self.notes)}


def convert(model: Any, sample: Any, *, task: str | None = None,
            feature_names: list[str] | None = None, opset: int | None = None) -> ConvertResult:
    """Detect the framework of ``model`` and convert it to ONNX using ``sample`` for shapes."""
    adapter = detect(model, task=task)
    adapter.check_fitted()
    names = feature_names or feature_names_of(sample) or adapter.feature_names()
    X = as_matrix(sample, n_features=adapter.n_features())
    if names is not None and len(names) != X.shape[1]:
        raise InvalidInputError(
            f"{len(names)} feature names were given for {X.shape[1]} columns.",
            hint="Pass one name per column.", expected=X.shape[1], received=len(names))
    if hasattr(adapter, "probe"):
        try:
            adapter.probe(X)
        except Exception as exc:
            raise InvalidInputError(
                f"The model could not run on the sample (shape {list(X.shape)}): {exc}",
                hint="Pass rows shaped like the model's training input.") from exc
    try:
        adapter.predict(X[: min(len(X), 2)])
    except InvalidInputError:
        raise
    except Exception as exc:
        raise InvalidInputError(
            f"{adapter.model_type} could not predict on the sample (shape {list(X.shape)}): "
            f"{type(exc).__name__}: {exc}",
            hint="Pass rows shaped like the model's training input (same columns, numeric).") from exc
    converted = adapter.to_onnx(X, feature_names=names, opset=opset)
    spec = dict(converted.spec)
    spec.update(n_features=int(X.shape[1]), dtype="float32", feature_names=names)
    schema = InputSchema(n_features=int(X.shape[1]), feature_names=names,
                         input_mode=spec.get("input_mode", "tensor"),
                         input_names=list(spec.get("input_names") or ["input"]))
    return ConvertResult(adapter, converted.onnx_model, spec, schema, X, converted.converter,
                         list(converted.notes))
