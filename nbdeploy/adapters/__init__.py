"""Framework detection: which adapter handles a model object, without importing frameworks."""

from __future__ import annotations

from typing import Any

from ..errors import UnsupportedModelError
from .base import Adapter, Converted

SUPPORTED = ("scikit-learn estimators and Pipelines (HistGradientBoosting with NaN and "
             "categorical_features included), XGBoost and LightGBM (scikit-learn API; pandas "
             "categories included), PyTorch nn.Module, transformers *ForSequenceClassification text "
             "classifiers (with tokenizer=), Keras 3 / tf.keras models (one 2-D input), "
             "ONNX files or onnx.ModelProto")


def _adapters() -> list[type[Adapter]]:
    # Order matters: XGBoost/LightGBM wrappers are also scikit-learn estimators, and a Keras
    # model on the torch backend is also a torch.nn.Module.
    from .boosters import LightGBMAdapter, XGBoostAdapter
    from .hf_text import HFTextAdapter
    from .hgb import HistGradientBoostingAdapter
    from .keras import KerasAdapter
    from .onnx_file import OnnxAdapter
    from .sklearn import SklearnAdapter
    from .torch import TorchAdapter

    # transformers text classifiers are torch Modules too: before TorchAdapter.
    return [OnnxAdapter, XGBoostAdapter, LightGBMAdapter, KerasAdapter, HFTextAdapter, TorchAdapter,
            HistGradientBoostingAdapter, SklearnAdapter]


def detect(model: Any, *, task: str | None = None) -> Adapter:
    """Return the adapter for ``model`` or raise :class:`UnsupportedModelError`."""
    if task not in (None, "classifier", "regressor"):
        from ..errors import InvalidInputError

        raise InvalidInputError(f"Unknown task {task!r}.", hint="Use task='classifier' or 'regressor'.")
    for cls in _adapters():
        if cls.matches(model):
            return cls(model, task=task)
    t = type(model)
    raise UnsupportedModelError(
        f"nbdeploy cannot convert a {t.__module__}.{t.__qualname__}.",
        hint=f"Supported: {SUPPORTED}. For other models, export to ONNX yourself and pass the "
             f".onnx path.")


__all__ = ["Adapter", "Converted", "detect", "SUPPORTED"]
