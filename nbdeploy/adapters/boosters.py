"""XGBoost and LightGBM scikit-learn-API models, converted with onnxmltools."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConversionError, UnsupportedModelError
from .base import Converted, SklearnApiAdapter, class_modules, squeeze_value

OPSET = 15


class _BoosterAdapter(SklearnApiAdapter):
    module = "?"

    @classmethod
    def matches(cls, obj: Any) -> bool:
        return any(m == cls.module or m.startswith(cls.module + ".") for m in class_modules(obj))

    def _check_sklearn_api(self):
        if not hasattr(self.model, "predict") or not hasattr(self.model, "n_features_in_"):
            name = "XGBClassifier/XGBRegressor" if self.framework == "xgboost" \
                else "LGBMClassifier/LGBMRegressor"
            raise UnsupportedModelError(
                f"{self.model_type} is a raw booster; nbdeploy converts the scikit-learn API models.",
                hint=f"Train with {name} (the scikit-learn wrappers), or export the booster to "
                     f"ONNX yourself and deploy the .onnx file.")

    def task(self) -> str:
        if self._task:
            return self._task
        self._check_sklearn_api()
        return "classifier" if hasattr(self.model, "classes_") and hasattr(self.model, "predict_proba") \
            else "regressor"

    def predict(self, X):
        Xn = self.native_frame(X, self.feature_names())
        if self.task() == "classifier":
            proba = np.asarray(self.model.predict_proba(Xn), dtype=np.float64)
            idx = proba.argmax(axis=1)
            classes = np.asarray(self.classes())
            return {"label": classes[idx], "probabilities": proba}
        return {"value": squeeze_value(self.model.predict(Xn))}

    def _spec(self, onx) -> dict:
        outputs = [o.name for o in onx.graph.output]
        task = self.task()
        out = ({"label": outputs[0], "probabilities": outputs[-1]} if task == "classifier"
               else {"value": outputs[0]})
        return {"task": task, "input_mode": "tensor", "input_names": ["input"],
                "classes": self.classes(), "outputs": out, "postprocess": "none"}


def _fix_batch_dim(onx) -> None:
    """Converters declare the label output as shape [1]; make it [N] so onnxruntime stays quiet."""
    for out in onx.graph.output:
        dims = out.type.tensor_type.shape.dim
        if len(dims) >= 1 and dims[0].HasField("dim_value"):
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "N"


class XGBoostAdapter(_BoosterAdapter):
    framework = "xgboost"
    module = "xgboost"

    def margin(self, Xn):
        return self.model.predict(Xn, output_margin=True)

    def to_onnx(self, X, *, feature_names=None, opset=None) -> Converted:
        self._check_sklearn_api()
        from onnxmltools import convert_xgboost
        from onnxmltools.convert.common.data_types import FloatTensorType

        try:
            onx = convert_xgboost(self.model, initial_types=[("input", FloatTensorType([None, X.shape[1]]))],
                                  target_opset=opset or OPSET)
        except Exception as exc:
            raise ConversionError(f"onnxmltools could not convert {self.model_type}: {exc}",
                                  hint="Check the objective is supported by onnxmltools' XGBoost "
                                       "converter (binary/multi:softprob, reg:squarederror, ...).") from exc
        _fix_batch_dim(onx)
        return Converted(onx, self._spec(onx), converter="onnxmltools")


class LightGBMAdapter(_BoosterAdapter):
    framework = "lightgbm"
    module = "lightgbm"

    def margin(self, Xn):
        return self.model.predict(Xn, raw_score=True)

    def to_onnx(self, X, *, feature_names=None, opset=None) -> Converted:
        self._check_sklearn_api()
        from onnxmltools import convert_lightgbm
        from onnxmltools.convert.common.data_types import FloatTensorType

        try:
            onx = convert_lightgbm(self.model, initial_types=[("input", FloatTensorType([None, X.shape[1]]))],
                                   zipmap=False, target_opset=opset or OPSET)
        except Exception as exc:
            raise ConversionError(f"onnxmltools could not convert {self.model_type}: {exc}",
                                  hint="Check the objective is supported by onnxmltools' LightGBM converter.") from exc
        _fix_batch_dim(onx)
        return Converted(onx, self._spec(onx), converter="onnxmltools")
