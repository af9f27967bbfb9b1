"""What every framework adapter provides."""

from __future__ import annotations

import sys
from collections.abc import Callable
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

    # -- hooks the pipeline steps call, so that no step branches on a framework's name --------
    #: Notes for the explanation report that only this framework needs.
    explain_note: ClassVar[str | None] = None
    #: False where there is no native model to pickle (ONNX input): no size to compare.
    has_native_pickle: ClassVar[bool] = True

    def check_fitted(self) -> None:
        """Raise :class:`UnsupportedModelError` when the model has not been trained yet."""

    def native_call(self) -> tuple[Callable[[Any], Any], str]:
        """The framework's own prediction call (what the benchmark compares against) and its name."""
        return self.predict, "predict"

    def native_size(self) -> int | None:
        """Bytes of the pickled native model (what a joblib bundle would ship); None if unknown."""
        if not self.has_native_pickle:
            return None
        try:
            import pickle

            return len(pickle.dumps(self.model, protocol=pickle.HIGHEST_PROTOCOL))
        except Exception:
            return None

    def tree_support(self) -> tuple[bool, str | None]:
        """(TreeSHAP applies to the native model, the reason when it does not)."""
        return False, f"{self.model_type} is not a tree ensemble"

    def alternative_explainer(self) -> str:
        """The explainer that would suit this model when TreeSHAP does not."""
        return "a model-agnostic explainer (permutation/kernel SHAP)"

    def native_output(self, Xn: Any, space: str) -> np.ndarray:
        """Native outputs in ``space`` ('probability', 'value', 'margin'/'log_odds') as [N, k]."""
        raise NotImplementedError(f"{self.framework} models have no native output space {space!r}")

    def native_frame(self, X: np.ndarray, feature_names: list[str] | None):
        """The input the native model expects (a DataFrame when it was fit on one)."""
        if getattr(self, "columns", None) is not None:  # a table model: the sample's DataFrame back
            from ..schema import table_to_frame

            return table_to_frame(X, self.columns)
        if feature_names and getattr(self.model, "feature_names_in_", None) is not None:
            import pandas as pd

            return pd.DataFrame(X, columns=feature_names)
        return X


class TensorAdapter(Adapter):
    """Frameworks whose models take tensors of any rank ([N, C, H, W], [N, H, W, C], [N, T, F]):
    the pipeline hands them flat rows [N, prod(input_shape)] and sets ``input_shape`` (without
    the batch axis); ``_shaped`` turns rows back into the model's own shape."""

    accepts_nd: ClassVar[bool] = True
    input_shape: tuple | None = None

    def _shaped(self, X):
        X = np.asarray(X, dtype=np.float32)
        if self.input_shape and X.ndim == 2:
            X = X.reshape((X.shape[0],) + tuple(self.input_shape))
        return X


TREE_ENSEMBLES = frozenset({
    "RandomForestClassifier", "RandomForestRegressor", "ExtraTreesClassifier", "ExtraTreesRegressor",
    "DecisionTreeClassifier", "DecisionTreeRegressor", "ExtraTreeClassifier", "ExtraTreeRegressor",
    "GradientBoostingClassifier", "GradientBoostingRegressor",
    "HistGradientBoostingClassifier", "HistGradientBoostingRegressor",
    "XGBClassifier", "XGBRegressor", "XGBRFClassifier", "XGBRFRegressor",
    "LGBMClassifier", "LGBMRegressor",
})


def final_estimator(model: Any) -> Any:
    """The last step of a (possibly nested) Pipeline, or the model itself."""
    steps = getattr(model, "steps", None)
    if steps:
        return final_estimator(steps[-1][1])
    return model


class SklearnApiAdapter(Adapter):
    """What scikit-learn, XGBoost and LightGBM models share: fit checks, predict_proba,
    TreeSHAP on the native trees, and the native margin (``margin_call``)."""

    def check_fitted(self) -> None:
        from sklearn.exceptions import NotFittedError
        from sklearn.utils.validation import check_is_fitted

        from ..errors import UnsupportedModelError

        try:
            check_is_fitted(self.model)
        except NotFittedError as exc:
            raise UnsupportedModelError(f"{self.model_type} is not fitted yet.",
                                        hint="Call model.fit(X, y) before deploying it.") from exc
        except TypeError:
            pass

    def native_call(self):
        model = self.model
        frame = lambda X: self.native_frame(X, self.feature_names())  # noqa: E731
        if self.task() == "classifier" and hasattr(model, "predict_proba"):
            return (lambda X: model.predict_proba(frame(X))), "predict_proba"
        return (lambda X: model.predict(frame(X))), "predict"

    def tree_support(self):
        model = self.model
        if type(model).__name__ in TREE_ENSEMBLES:
            return True, None
        final = final_estimator(model)
        if final is not model and type(final).__name__ in TREE_ENSEMBLES:
            return False, (f"the pipeline ends in a tree ensemble ({type(final).__name__}), but its "
                           "earlier steps transform the inputs, so TreeSHAP would explain "
                           "transformed features")
        return False, f"{self.model_type} is not a tree ensemble"

    def alternative_explainer(self) -> str:
        if hasattr(final_estimator(self.model), "coef_"):
            return "shap.LinearExplainer (exact for linear models)"
        return super().alternative_explainer()

    def margin(self, Xn: Any) -> Any:
        """The raw score before the link function; regressors without one return predict()."""
        if hasattr(self.model, "decision_function"):
            return self.model.decision_function(Xn)
        return self.model.predict(Xn)

    def native_output(self, Xn, space):
        m = self.model
        if space == "probability":
            out = m.predict_proba(Xn)
        elif space == "value":
            out = m.predict(Xn)
        else:
            out = self.margin(Xn)
        out = np.asarray(out, dtype=np.float64)
        return out.reshape(out.shape[0], -1)


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
