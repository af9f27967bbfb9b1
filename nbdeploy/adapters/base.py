"""What every framework adapter provides."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np


def loaded(module: str) -> bool:
    """True if ``module`` is already imported: we never import a framework just to check a type."""
    return module in sys.modules


def class_modules(obj: Any) -> list[str]:
    """Module names of the object's class and its bases (without importing anything)."""
    return [getattr(c, "__module__", "") or "" for c in type(obj).__mro__]


@dataclass
class Converted:
    """An ONNX graph plus the spec that says how to feed it and read its outputs."""

    onnx_model: Any                      # onnx.ModelProto
    spec: dict
    converter: str
    notes: list[str] = field(default_factory=list)


class Adapter:
    """Base class: one subclass per framework.

    The defaults read the scikit-learn API attributes (``classes_``, ``n_features_in_``,
    ``feature_names_in_``) that sklearn, XGBoost and LightGBM models share.

    ``matches`` must not import the framework; the others may.
    """

    framework: ClassVar[str] = "?"

    def __init__(self, model: Any, *, task: str | None = None):
        self.model = model
        self._task = task

    @classmethod
    def matches(cls, obj: Any) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def model_type(self) -> str:
        t = type(self.model)
        return f"{t.__module__}.{t.__qualname__}"

    def task(self) -> str:
        """'classifier' or 'regressor'."""
        raise NotImplementedError

    def classes(self) -> list | None:
        c = getattr(self.model, "classes_", None)
        return plain_list(c) if c is not None else None

    def n_features(self) -> int | None:
        n = getattr(self.model, "n_features_in_", None)
        return int(n) if n is not None else None

    def feature_names(self) -> list[str] | None:
        names = getattr(self.model, "feature_names_in_", None)
        return [str(n) for n in names] if names is not None else None

    def to_onnx(self, X: np.ndarray, *, feature_names: list[str] | None = None,
                opset: int | None = None) -> Converted:
        raise NotImplementedError

    def predict(self, X: np.ndarray) -> dict:
        """Native predictions: ``{"label", "probabilities"}`` or ``{"value"}`` as numpy arrays."""
        raise NotImplementedError

    def native_frame(self, X: np.ndarray, feature_names: list[str] | None):
        """The input the native model expects (a DataFrame when it was fit on one)."""
        if feature_names and getattr(self.model, "feature_names_in_", None) is not None:
            import pandas as pd

            return pd.DataFrame(X, columns=feature_names)
        return X


def plain_list(values) -> list:
    """JSON-friendly list of class labels."""
    out = []
    for v in list(values):
        if isinstance(v, np.generic):
            v = v.item()
        out.append(v)
    return out


def squeeze_value(v) -> np.ndarray:
    """Regression output as float64, [N] for one target and [N, T] for several."""
    v = np.asarray(v, dtype=np.float64)
    if v.ndim == 2 and v.shape[1] == 1:
        v = v[:, 0]
    return v
