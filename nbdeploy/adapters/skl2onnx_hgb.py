"""HistGradientBoosting inside a scikit-learn Pipeline: skl2onnx's own converter, fixed for numpy 2.

A HistGradientBoosting model deployed on its own goes through ``adapters/hgb.py`` (nbdeploy's
exact translation); a Pipeline ending in one is converted whole by skl2onnx, whose converter is
wrapped here.  Kept apart from both adapters so that ``sklearn.py`` (which registers this fix)
and ``hgb.py`` (whose adapter subclasses ``SklearnAdapter``) do not import each other.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConversionError

_FIXED = False


def _plain(value):
    """numpy integers/booleans in an attribute list as Python ints (protobuf refuses np.uint32
    and bool in an ``ints`` field: the numpy 2 crash of skl2onnx 1.20)."""
    if isinstance(value, (list, tuple)) and any(isinstance(v, (bool, np.bool_, np.integer)) for v in value):
        return [int(v) for v in value]
    if isinstance(value, (np.integer, np.bool_)):
        return int(value)
    return value


def _fixed_converter(original):
    def convert(scope, operator, container):
        model = operator.raw_operator
        mask = getattr(model, "is_categorical_", None)
        if mask is not None and np.any(mask):
            raise ConversionError(
                "HistGradientBoosting with categorical_features inside a Pipeline cannot be "
                "converted (skl2onnx reads categorical splits as thresholds).",
                hint="Deploy the HistGradientBoosting model itself on the DataFrame (pandas "
                     "'category' columns): nbdeploy translates its categorical splits exactly.")
        add = container.add_node

        def add_node(*args, **attrs):
            return add(*args, **{k: _plain(v) for k, v in attrs.items()})

        container.add_node = add_node
        try:
            return original(scope, operator, container)
        finally:
            del container.add_node       # back to the class's method
    return convert


def register_skl2onnx_fix() -> None:
    """Wrap skl2onnx's HistGradientBoosting converters so their node attributes are plain ints.

    A model deployed on its own goes through :class:`HistGradientBoostingAdapter` (exact, with
    categorical splits); this is for HistGradientBoosting as the last step of a Pipeline, where
    skl2onnx converts the whole pipeline.  skl2onnx reads every split as a numeric threshold, so
    a model with categorical features is refused here with a bounded message."""
    global _FIXED
    if _FIXED:
        return
    from skl2onnx import update_registered_converter
    from skl2onnx._supported_operators import sklearn_operator_name_map
    from skl2onnx.common._registration import _converter_pool, _shape_calculator_pool
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    for cls in (HistGradientBoostingClassifier, HistGradientBoostingRegressor):
        alias = sklearn_operator_name_map[cls]
        registered = _converter_pool[alias]
        update_registered_converter(cls, alias, _shape_calculator_pool[alias],
                                    _fixed_converter(getattr(registered, "_fct", registered)),
                                    options=registered.get_allowed_options())
    _FIXED = True
