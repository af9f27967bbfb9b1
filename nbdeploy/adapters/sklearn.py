"""scikit-learn estimators and pipelines, converted with skl2onnx."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConversionError, UnsupportedModelError
from .base import (Converted, SklearnApiAdapter, class_modules, final_estimator, plain_list,
                   squeeze_value)

DEFAULT_OPSET = {"": 17, "ai.onnx.ml": 3}


def _register_boosters() -> None:
    """Let skl2onnx convert XGBoost/LightGBM models that sit inside a Pipeline."""
    import sys

    from skl2onnx import update_registered_converter

    if "xgboost" in sys.modules:
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
        from skl2onnx.common.shape_calculator import (
            calculate_linear_classifier_output_shapes, calculate_linear_regressor_output_shapes)
        from xgboost import XGBClassifier, XGBRegressor

        update_registered_converter(XGBClassifier, "XGBoostXGBClassifier",
                                    calculate_linear_classifier_output_shapes, convert_xgboost,
                                    options={"nocl": [True, False], "zipmap": [True, False, "columns"]})
        update_registered_converter(XGBRegressor, "XGBoostXGBRegressor",
                                    calculate_linear_regressor_output_shapes, convert_xgboost)
    if "lightgbm" in sys.modules:
        from lightgbm import LGBMClassifier, LGBMRegressor
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
        from skl2onnx.common.shape_calculator import (
            calculate_linear_classifier_output_shapes, calculate_linear_regressor_output_shapes)

        update_registered_converter(LGBMClassifier, "LightGbmLGBMClassifier",
                                    calculate_linear_classifier_output_shapes, convert_lightgbm,
                                    options={"nocl": [True, False], "zipmap": [True, False, "columns"]})
        update_registered_converter(LGBMRegressor, "LightGbmLGBMRegressor",
                                    calculate_linear_regressor_output_shapes, convert_lightgbm)


_final_estimator = final_estimator


class SklearnAdapter(SklearnApiAdapter):
    framework = "sklearn"

    @classmethod
    def matches(cls, obj: Any) -> bool:
        return any(m == "sklearn" or m.startswith("sklearn.") for m in class_modules(obj)) \
            and (hasattr(obj, "predict") or hasattr(obj, "transform"))

    def task(self) -> str:
        if self._task:
            return self._task
        est = _final_estimator(self.model)
        if hasattr(est, "predict_proba") and hasattr(est, "classes_"):
            return "classifier"
        if getattr(est, "_estimator_type", None) == "classifier" or hasattr(est, "classes_"):
            return "classifier"
        if not hasattr(self.model, "predict"):
            raise UnsupportedModelError(
                f"{self.model_type} is a transformer, not a predictor.",
                hint="Deploy a fitted classifier or regressor (or a Pipeline that ends in one).")
        return "regressor"

    def classes(self):
        c = getattr(self.model, "classes_", None)
        if c is None:
            c = getattr(_final_estimator(self.model), "classes_", None)
        return plain_list(c) if c is not None else None

    def _uses_named_columns(self) -> bool:
        """A ColumnTransformer that selects columns by name needs one ONNX input per column."""
        from sklearn.compose import ColumnTransformer

        def walk(est):
            if isinstance(est, ColumnTransformer):
                for _, _, cols in est.transformers:
                    if isinstance(cols, str) or (isinstance(cols, (list, tuple)) and cols
                                                 and isinstance(cols[0], str)):
                        return True
            for _, sub in getattr(est, "steps", []) or []:
                if walk(sub):
                    return True
            return False

        return walk(self.model)

    def to_onnx(self, X, *, feature_names=None, opset=None) -> Converted:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        _register_boosters()
        n = X.shape[1]
        task = self.task()
        options = {}
        if task == "classifier":
            options = {id(_final_estimator(self.model)): {"zipmap": False}}
        columns = self._uses_named_columns()
        if columns:
            if not feature_names:
                raise ConversionError(
                    f"{self.model_type} selects columns by name but the sample has no column names.",
                    hint="Pass the sample as a pandas DataFrame with the training columns.")
            input_names = [str(c) for c in feature_names]
            initial = [(c, FloatTensorType([None, 1])) for c in input_names]
        else:
            input_names = ["input"]
            initial = [("input", FloatTensorType([None, n]))]
        try:
            onx = convert_sklearn(self.model, initial_types=initial, options=options,
                                  target_opset=opset or DEFAULT_OPSET)
        except Exception as exc:
            raise ConversionError(
                f"skl2onnx could not convert {self.model_type}: {type(exc).__name__}: {exc}",
                hint="Check that every step of the pipeline is supported by skl2onnx and uses "
                     "numeric features; see the skl2onnx supported-operator list.") from exc
        outputs = [o.name for o in onx.graph.output]
        if columns:  # skl2onnx sanitises names ('mean radius' -> 'mean_radius'); keep its order
            input_names = [i.name for i in onx.graph.input]
        if task == "classifier":
            out = {"label": outputs[0], "probabilities": outputs[-1]}
        else:
            out = {"value": outputs[0]}
        spec = {"task": task, "input_mode": "columns" if columns else "tensor",
                "input_names": input_names, "classes": self.classes(), "outputs": out,
                "postprocess": "none"}
        return Converted(onx, spec, converter="skl2onnx")

    def predict(self, X):
        Xn = self.native_frame(X, self.feature_names())
        if self.task() == "classifier":
            proba = np.asarray(self.model.predict_proba(Xn), dtype=np.float64)
            label = np.asarray(self.model.predict(Xn))
            return {"label": label, "probabilities": proba}
        return {"value": squeeze_value(self.model.predict(Xn))}
