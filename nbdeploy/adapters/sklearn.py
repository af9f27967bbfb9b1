"""scikit-learn estimators and pipelines, converted with skl2onnx."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConversionError, UnsupportedModelError, brief
from .base import Converted, SklearnApiAdapter, class_modules, final_estimator, plain_list, squeeze_value

DEFAULT_OPSET = {"": 17, "ai.onnx.ml": 3}


def _register_boosters() -> None:
    """Let skl2onnx convert XGBoost/LightGBM models that sit inside a Pipeline."""
    import sys

    from skl2onnx import update_registered_converter

    from .skl2onnx_hgb import register_skl2onnx_fix  # HistGradientBoosting in a Pipeline (numpy 2)
    register_skl2onnx_fix()

    if "xgboost" in sys.modules:
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
        from skl2onnx.common.shape_calculator import (
            calculate_linear_classifier_output_shapes,
            calculate_linear_regressor_output_shapes,
        )
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
            calculate_linear_classifier_output_shapes,
            calculate_linear_regressor_output_shapes,
        )

        update_registered_converter(LGBMClassifier, "LightGbmLGBMClassifier",
                                    calculate_linear_classifier_output_shapes, convert_lightgbm,
                                    options={"nocl": [True, False], "zipmap": [True, False, "columns"]})
        update_registered_converter(LGBMRegressor, "LightGbmLGBMRegressor",
                                    calculate_linear_regressor_output_shapes, convert_lightgbm)


_TEXT_VECTORIZERS = ("TfidfVectorizer", "CountVectorizer", "HashingVectorizer")
_ENCODERS = ("OneHotEncoder", "OrdinalEncoder")


def _register_string_imputer() -> None:
    """skl2onnx converts SimpleImputer on strings only when ``missing_values`` is a string, but
    users keep the default (NaN).  The graph receives missing strings as
    ``runtime/columns.MISSING_STRING``, so convert such an imputer as if it replaced that."""
    import copy

    from skl2onnx.common._registration import get_converter, register_converter
    from skl2onnx.common.data_types import StringTensorType

    from ..runtime.columns import MISSING_STRING

    original = get_converter("SklearnSimpleImputer")._fct
    if getattr(original, "_nbdeploy", False):
        return

    def convert_imputer(scope, operator, container):
        op = operator.raw_operator
        if isinstance(operator.inputs[0].type, StringTensorType) \
                and not isinstance(op.missing_values, str):
            patched = copy.copy(op)
            patched.missing_values = MISSING_STRING
            operator.raw_operator = patched
            try:
                return original(scope, operator, container)
            finally:
                operator.raw_operator = op
        return original(scope, operator, container)

    convert_imputer._nbdeploy = True
    register_converter("SklearnSimpleImputer", convert_imputer, overwrite=True)


def _walk(est, visit) -> None:
    """Call ``visit(estimator)`` on every estimator nested in pipelines and column transformers."""
    visit(est)
    for _, sub in getattr(est, "steps", None) or []:
        _walk(sub, visit)
    for item in getattr(est, "transformers_", None) or getattr(est, "transformers", None) or []:
        if isinstance(item[1], str):  # 'drop' / 'passthrough'
            continue
        _walk(item[1], visit)
    for _, sub in getattr(est, "transformer_list", None) or []:
        _walk(sub, visit)


def _estimators(est) -> list:
    found = []
    _walk(est, found.append)
    return found


class SklearnAdapter(SklearnApiAdapter):
    framework = "sklearn"

    @classmethod
    def matches(cls, obj: Any) -> bool:
        return any(m == "sklearn" or m.startswith("sklearn.") for m in class_modules(obj)) \
            and (hasattr(obj, "predict") or hasattr(obj, "transform"))

    def task(self) -> str:
        if self._task:
            return self._task
        est = final_estimator(self.model)
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
            c = getattr(final_estimator(self.model), "classes_", None)
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

    def column_hints(self) -> dict[str, dict]:
        """What the model does with each named column: text for a vectorizer, the known
        categories for an encoder.  Used by :func:`nbdeploy.schema.infer_columns`."""
        from sklearn.compose import ColumnTransformer

        hints: dict[str, dict] = {}

        def visit(est):
            if not isinstance(est, ColumnTransformer):
                return
            for item in getattr(est, "transformers_", None) or est.transformers:
                trans, cols = item[1], item[2]
                if isinstance(trans, str):
                    continue
                names = [cols] if isinstance(cols, str) else list(cols) if isinstance(
                    cols, (list, tuple)) else []
                names = [c for c in names if isinstance(c, str)]
                kinds = [type(e).__name__ for e in _estimators(trans)]
                if any(k in _TEXT_VECTORIZERS for k in kinds):
                    for c in names:
                        hints[c] = {"kind": "text"}
                    continue
                enc = next((e for e in _estimators(trans) if type(e).__name__ in _ENCODERS), None)
                if enc is None:
                    continue
                cats = getattr(enc, "categories_", None)
                for i, c in enumerate(names):
                    known = None
                    if cats is not None and i < len(cats):
                        known = [str(v) for v in cats[i] if not (isinstance(v, float) and v != v)
                                 and v is not None]
                    hints[c] = {"kind": "categorical", "categories": known}

        _walk(self.model, visit)
        return hints

    def to_onnx(self, X, *, feature_names=None, opset=None, columns=None) -> Converted:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        _register_boosters()
        n = X.shape[1]
        task = self.task()
        options = {}
        if task == "classifier":
            options = {id(final_estimator(self.model)): {"zipmap": False}}
        if columns is not None:
            return self._table_to_onnx(columns, options, opset)
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
                f"skl2onnx could not convert {self.model_type}: {brief(exc)}",
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

    def _table_to_onnx(self, columns: list[dict], options: dict, opset) -> Converted:
        """One typed graph input per column: strings for categorical/text, floats (NaN kept)
        for numbers.  The preprocessing (imputers, encoders, vectorizers) stays in the graph."""
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType, StringTensorType

        _register_string_imputer()
        task = self.task()
        initial = [(c["name"], StringTensorType([None, 1]) if c["onnx_type"] == "string"
                    else FloatTensorType([None, 1])) for c in columns]
        for est in _estimators(self.model):
            if type(est).__name__ in ("TfidfVectorizer", "CountVectorizer"):
                # onnxruntime's StringNormalizer defaults to en_US.UTF-8, which slim images lack
                options.setdefault(id(est), {})["locale"] = "C.UTF-8"
        try:
            onx = convert_sklearn(self.model, initial_types=initial, options=options,
                                  target_opset=opset or DEFAULT_OPSET)
        except Exception as exc:
            raise ConversionError(
                f"skl2onnx could not convert {self.model_type} on the DataFrame's columns: "
                f"{brief(exc)}",
                hint="Every step must be one skl2onnx converts (ColumnTransformer, SimpleImputer, "
                     "OneHotEncoder/OrdinalEncoder, scalers, TfidfVectorizer/CountVectorizer, the "
                     "usual estimators); replace custom functions (FunctionTransformer, "
                     "callables) with those.") from exc
        graph_inputs = [i.name for i in onx.graph.input]
        inputs = set(graph_inputs)
        for c, gi in zip(columns, graph_inputs if len(graph_inputs) == len(columns) else [None] * len(columns)):
            # skl2onnx keeps the order and sanitises names ('mean radius' -> 'mean_radius')
            c["onnx_input"] = c["name"] if c["name"] in inputs else gi
        outputs = [o.name for o in onx.graph.output]
        out = ({"label": outputs[0], "probabilities": outputs[-1]} if task == "classifier"
               else {"value": outputs[0]})
        spec = {"task": task, "input_mode": "table", "input_names": graph_inputs,
                "classes": self.classes(), "outputs": out, "postprocess": "none"}
        return Converted(onx, spec, converter="skl2onnx")

