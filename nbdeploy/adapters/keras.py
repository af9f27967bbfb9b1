"""Keras 3 (and tf.keras, which is Keras 3 from TensorFlow 2.16 on) Sequential and Functional
models, exported with Keras' own ``model.export(path, format="onnx")``.

Why that route: ``tf2onnx.convert.from_keras`` (tf2onnx 1.17) fails on Keras 3 models (it looks
up Keras-2 output names: ``KeyError: 'keras_tensor_2'``).  Keras' exporter traces the model's
``call`` into a ``tf.function`` and hands it to ``tf2onnx.convert.from_function`` after patching
tf2onnx for numpy 2, so it is the same converter, driven through a public, maintained API; it
also works with the JAX and torch Keras backends.  Legacy Keras 2 models (the ``tf_keras``
package) have no ONNX export of their own and go through ``tf2onnx.convert.from_keras``.

TensorFlow is only needed in the notebook (``pip install 'nbdeploy[keras]'``); the bundle serves
the ONNX graph and never imports it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from typing import Any

import numpy as np

from ..errors import ConversionError, UnsupportedModelError
from .base import Converted, TensorAdapter, class_modules, squeeze_value

OPSET = 17
_PROBABILITY_ACTIVATIONS = {"softmax", "sigmoid"}


def _is_keras_module(m: str) -> bool:
    return m == "keras" or m.startswith(("keras.", "tf_keras.", "tensorflow.python.keras.",
                                         "tensorflow.keras."))


@contextlib.contextmanager
def _quiet():
    """tf2onnx logs every rewrite at INFO and Keras' numpy-2 patch warns; keep the notebook clean."""
    loggers = [logging.getLogger(n) for n in ("tf2onnx", "tensorflow")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _activation_name(layer: Any) -> str | None:
    """The name of the activation a layer applies last (Dense(..., activation=...),
    Activation(...), Softmax())."""
    cls = type(layer).__name__
    if cls == "Softmax":
        return "softmax"
    act = getattr(layer, "activation", None)
    if act is None:
        return None
    if isinstance(act, str):
        return act
    return getattr(act, "__name__", None)


class KerasAdapter(TensorAdapter):
    """Keras models with one 2-D float input ``[N, features]`` and one output.

    The task comes from the output: one column without a sigmoid is a regressor; one sigmoid
    column is a binary classifier (probability of class 1); k > 1 columns are a classifier over
    classes 0..k-1, read as probabilities when the last layer applies softmax, else as logits
    (a softmax is applied to the ONNX output); k > 1 sigmoid columns (multi-label) are served
    as k values.  Pass ``task="regressor"`` for multi-target regression, or
    ``task="classifier"`` for a one-column logit output.
    """

    framework = "keras"
    explain_note = ("Keras: SHAP over the served ONNX graph (exactly additive, reproducible in the "
                    "bundle without TensorFlow) rather than DeepExplainer/GradientExplainer.")

    @classmethod
    def matches(cls, obj: Any) -> bool:
        mods = class_modules(obj)
        return any(_is_keras_module(m) for m in mods) and hasattr(obj, "layers") \
            and hasattr(obj, "predict")

    def alternative_explainer(self) -> str:
        return "shap.DeepExplainer or shap.GradientExplainer (on the native Keras model)"

    # -- model facts ---------------------------------------------------------------------------
    def check_fitted(self) -> None:
        if not getattr(self.model, "built", True):
            raise UnsupportedModelError(
                f"{self.model_type} has not been built or trained yet.",
                hint="Call model.fit(X, y) (or give it a keras.Input) before deploying it.")
        inputs = getattr(self.model, "inputs", None)
        if inputs is not None and len(inputs) != 1:
            raise UnsupportedModelError(
                f"{self.model_type} has {len(inputs)} inputs; nbdeploy serves Keras models with one "
                "2-D input [rows, features].",
                hint="Concatenate the inputs into one tensor, or export to ONNX yourself and deploy "
                     "the .onnx file.")
        outputs = getattr(self.model, "outputs", None)
        if outputs is not None and len(outputs) != 1:
            raise UnsupportedModelError(
                f"{self.model_type} has {len(outputs)} outputs; nbdeploy serves one output.",
                hint="Deploy a model with a single output head.")

    def n_features(self) -> int | None:
        try:
            shape = self.model.inputs[0].shape
        except Exception:
            shape = getattr(self.model, "input_shape", None)
        if shape is not None and len(shape) == 2 and shape[1] is not None:
            return int(shape[1])
        return None

    def _last_activation(self) -> str | None:
        layers = getattr(self.model, "layers", None) or []
        for layer in reversed(layers):
            name = _activation_name(layer)
            if name is not None and name != "linear":
                return name
            if type(layer).__name__ in ("Dropout", "Activation", "Softmax", "InputLayer"):
                continue
            return name           # a Dense with no/linear activation: raw outputs
        return None

    def _raw(self, X: np.ndarray) -> np.ndarray:
        out = self.model(self._shaped(X), training=False)
        if isinstance(out, (list, tuple)):
            out = out[0]
        out = np.asarray(out.numpy() if hasattr(out, "numpy") else out, dtype=np.float64)
        return out.reshape(len(out), -1) if out.ndim != 2 else out

    def probe(self, X: np.ndarray) -> None:
        """Call the model once (Keras exports only models that have been called) and read the
        output width and whether it is already a probability."""
        out = self._raw(X[: min(len(X), 64)])
        self._probe_width = int(out.shape[1])
        act = self._last_activation()
        if act in _PROBABILITY_ACTIVATIONS:
            self._probabilities = act
        elif out.shape[1] > 1 and np.all(out >= 0) and np.allclose(out.sum(axis=1), 1.0, atol=1e-4):
            self._probabilities = "softmax"     # e.g. a custom layer that normalises
        else:
            self._probabilities = None

    def _probed(self) -> None:
        if getattr(self, "_probe_width", None) is None:
            raise RuntimeError("call probe() first")

    def task(self) -> str:
        if self._task:
            return self._task
        self._probed()
        if self._probe_width > 1 and self._probabilities != "sigmoid":
            return "classifier"
        if self._probe_width == 1 and self._probabilities == "sigmoid":
            return "classifier"
        return "regressor"

    def classes(self):
        if self.task() != "classifier":
            return None
        return [0, 1] if self._probe_width == 1 else list(range(self._probe_width))

    def _postprocess(self) -> str:
        if self.task() != "classifier":
            return "none"
        if self._probabilities is not None:
            return "none"          # softmax rows, or one sigmoid column (P(class 1))
        return "sigmoid" if self._probe_width == 1 else "softmax"

    # -- native ------------------------------------------------------------------------------
    def native_call(self):
        model = self.model
        return (lambda X: model(self._shaped(X), training=False)), "model(x, training=False)"

    def predict(self, X):
        raw = self._raw(X)
        if self.task() == "classifier":
            post = self._postprocess()
            if post == "softmax":
                z = raw - raw.max(axis=1, keepdims=True)
                p = np.exp(z)
                p /= p.sum(axis=1, keepdims=True)
            elif post == "sigmoid" or raw.shape[1] == 1:
                q = 1.0 / (1.0 + np.exp(-raw[:, 0])) if post == "sigmoid" else raw[:, 0]
                p = np.stack([1.0 - q, q], axis=1)
            else:
                p = raw
            return {"label": np.asarray(self.classes())[p.argmax(axis=1)], "probabilities": p}
        return {"value": squeeze_value(raw)}

    # -- conversion ----------------------------------------------------------------------------
    def to_onnx(self, X, *, feature_names=None, opset=None) -> Converted:
        import onnx

        n = tuple(self.input_shape) if self.input_shape else (int(X.shape[1]),)
        self._probed()
        with tempfile.TemporaryDirectory(prefix="nbdeploy-keras-") as tmp:
            path = os.path.join(tmp, "model.onnx")
            try:
                with _quiet():
                    how = self._export(path, n, opset or OPSET)
            except UnsupportedModelError:
                raise
            except Exception as exc:
                msg = str(exc).strip().splitlines()
                raise ConversionError(
                    f"Keras could not export {self.model_type} to ONNX: {type(exc).__name__}: "
                    f"{msg[0][:300] if msg else ''}",
                    hint="The model must take one float tensor [N, features] and use layers "
                         "tf2onnx can convert; custom layers with Python control flow are not "
                         "traceable. Or export to ONNX yourself and deploy the .onnx file.") from exc
            onx = onnx.load(path)
        input_name = onx.graph.input[0].name
        output_name = onx.graph.output[0].name
        task = self.task()
        spec = {"task": task, "input_mode": "tensor", "input_names": [input_name],
                "classes": self.classes(),
                "outputs": {"probabilities": output_name} if task == "classifier"
                else {"value": output_name},
                "postprocess": self._postprocess()}
        notes = []
        if task == "classifier":
            notes.append("Keras output read as " + (
                f"probabilities ({self._probabilities} in the last layer)" if self._probabilities
                else f"logits ({self._postprocess()} applied to the ONNX output)"))
        return Converted(onx, spec, converter=how, notes=notes)

    def _export(self, path: str, n: tuple, opset: int) -> str:
        export = getattr(self.model, "export", None)
        if export is not None and _supports_onnx_export(export):
            import keras

            sig = [keras.InputSpec(shape=(None, *n), dtype="float32", name="input")]
            export(path, format="onnx", verbose=False, input_signature=sig, opset_version=opset)
            return "keras.export(onnx)"
        # Keras 2 (tf_keras): no ONNX export of its own; tf2onnx reads it directly.
        import tensorflow as tf
        import tf2onnx

        tf2onnx.convert.from_keras(
            self.model, input_signature=[tf.TensorSpec([None, *n], tf.float32, name="input")],
            opset=opset, output_path=path)
        return "tf2onnx.from_keras"


def _supports_onnx_export(export) -> bool:
    import inspect

    try:
        params = inspect.signature(export).parameters
    except (TypeError, ValueError):
        return False
    return "format" in params
