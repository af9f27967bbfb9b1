"""PyTorch ``nn.Module`` models, exported with ``torch.onnx.export``."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from ..errors import ConversionError
from .base import Converted, TensorAdapter, class_modules, squeeze_value

OPSET = 17


class TorchAdapter(TensorAdapter):
    """Classifiers are assumed to return logits ([N, k], k > 1); one output column means regression.

    Pass ``task="regressor"`` for multi-target regression.
    """

    framework = "pytorch"
    explain_note = ("PyTorch: SHAP over the served ONNX graph (exactly additive, reproducible in "
                    "the bundle without torch) rather than DeepExplainer/GradientExplainer.")

    def alternative_explainer(self) -> str:
        return "shap.DeepExplainer or shap.GradientExplainer (on the native torch module)"

    def native_call(self):
        import torch

        model = self.model
        model.eval()

        def forward(X):
            with torch.no_grad():
                return model(torch.from_numpy(self._shaped(X)))
        return forward, "forward (no_grad)"

    @classmethod
    def matches(cls, obj: Any) -> bool:
        return any(m.startswith("torch.nn") for m in class_modules(obj))

    def _raw(self, X: np.ndarray) -> np.ndarray:
        import torch

        self.model.eval()
        try:
            param = next(self.model.parameters())
            dtype, device = param.dtype, param.device
        except StopIteration:
            dtype, device = torch.float32, "cpu"
        with torch.no_grad():
            out = self.model(torch.from_numpy(self._shaped(X)).to(device=device, dtype=dtype))
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.detach().to("cpu", torch.float64).numpy()

    def task(self) -> str:
        if self._task:
            return self._task
        if getattr(self, "_probe_width", None) is None:
            raise RuntimeError("call probe() first")
        return "classifier" if self._probe_width > 1 else "regressor"

    def probe(self, X: np.ndarray) -> None:
        out = self._raw(X[:2])
        self._probe_width = 1 if out.ndim == 1 else int(out.shape[1])

    def n_features(self):
        if self.input_shape:
            return None
        for m in self.model.modules():
            if type(m).__name__.startswith("Conv"):
                return None     # the first Linear's width is not the input's
            n = getattr(m, "in_features", None)
            if n is not None:
                return int(n)
        return None

    def classes(self):
        if self.task() != "classifier":
            return None
        return list(range(self._probe_width))

    def to_onnx(self, X, *, feature_names=None, opset=None) -> Converted:
        import torch

        self.model.eval()
        dummy = torch.from_numpy(self._shaped(X[:2]))
        buf = io.BytesIO()
        try:
            torch.onnx.export(self.model, (dummy,), buf, input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "N"}, "output": {0: "N"}},  # any rank: batch only
                              opset_version=opset or OPSET, dynamo=False)
        except Exception as exc:
            raise ConversionError(f"torch.onnx.export failed for {self.model_type}: {exc}",
                                  hint="The forward() must take one float tensor [N, features] and "
                                       "return a tensor; data-dependent Python control flow is not "
                                       "traceable.") from exc
        import onnx

        onx = onnx.load_model_from_string(buf.getvalue())
        task = self.task()
        spec = {"task": task, "input_mode": "tensor", "input_names": ["input"],
                "classes": self.classes(),
                "outputs": {"probabilities": "output"} if task == "classifier" else {"value": "output"},
                "postprocess": "softmax" if task == "classifier" else "none"}
        return Converted(onx, spec, converter="torch.onnx")

    def predict(self, X):
        raw = self._raw(X)
        if self.task() == "classifier":
            z = raw - raw.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            return {"label": p.argmax(axis=1), "probabilities": p}
        return {"value": squeeze_value(raw)}
