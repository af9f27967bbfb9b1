"""Existing ONNX models: a path to a ``.onnx`` file or an ``onnx.ModelProto``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, UnsupportedModelError
from .base import Adapter, Converted, class_modules


def check_external_data(model, base_dir: str | os.PathLike | None) -> None:
    """Refuse external-data locations that escape the model's folder (CVE-2024-27318)."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    base = Path(base_dir or ".").resolve()
    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        loc = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (base / loc).resolve()
        if os.path.isabs(loc) or ".." in Path(loc).parts or base not in target.parents:
            raise InvalidInputError(
                f"ONNX tensor {tensor.name!r} points to external data outside the model folder: {loc!r}.",
                hint="Keep external data files next to the .onnx file and refer to them by plain "
                     "file name; nbdeploy refuses paths with '..' or absolute paths.",
                expected="a file inside " + str(base), received=loc)


_PROBE = """
import json, sys
sys.path.insert(0, sys.argv[3])   # this nbdeploy, whatever the working directory
import onnx
from nbdeploy.adapters.onnx_file import check_external_data
from nbdeploy.errors import InvalidInputError
path, base = sys.argv[1], sys.argv[2]
m = onnx.load(path, load_external_data=False)
try:
    check_external_data(m, base)
except InvalidInputError as exc:
    sys.stderr.write("\\nNBDEPLOY-INVALID " + json.dumps(exc.to_dict()) + "\\n")
    sys.exit(2)
onnx.load_external_data_for_model(m, base)
onnx.checker.check_model(m)
import onnxruntime
onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
"""


def probe_onnx_file(path: str | os.PathLike, *, timeout: float = 120.0) -> None:
    """Open an untrusted ONNX file in a throw-away process first.

    A crafted file can crash the protobuf parser or onnxruntime; that must cost a subprocess,
    not the user's notebook kernel or server.
    """
    import subprocess
    import sys

    import tempfile

    p = Path(path).resolve()
    try:
        # an empty working directory: `python -c` puts it first on sys.path, and the model's
        # own folder (or the notebook's) may hold an onnx.py shipped with the untrusted file
        with tempfile.TemporaryDirectory(prefix="nbdeploy-probe-") as cwd:
            r = subprocess.run([sys.executable, "-c", _PROBE, str(p), str(p.parent),
                                str(Path(__file__).resolve().parents[2])],
                               capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        raise InvalidInputError(f"Loading {str(p)!r} took longer than {timeout:.0f} s.",
                                hint="The file may be malformed or far too large.") from exc
    if r.returncode == 0:
        return
    lines = r.stderr.strip().splitlines() or ["(no message)"]
    marked = [ln for ln in lines if ln.startswith("NBDEPLOY-INVALID ")]
    if marked:
        import json

        err = json.loads(marked[-1].split(" ", 1)[1])
        raise InvalidInputError(err["message"], hint=err.get("hint"), expected=err.get("expected"),
                                received=err.get("received"))
    last = lines[-1]
    if r.returncode < 0:
        raise InvalidInputError(f"{str(p)!r} crashed the ONNX loader (signal {-r.returncode}); "
                                f"it is not a valid ONNX model.",
                                hint="Re-export the model; the file may be truncated or crafted.")
    if "nbdeploy.errors.InvalidInputError" in last:
        last = last.split(":", 1)[1].strip()
    raise InvalidInputError(f"{str(p)!r} is not a valid ONNX model: {last}",
                            hint="Re-export the model; the file may be truncated or corrupted.")


def load_onnx(path: str | os.PathLike, *, probe: bool = True):
    """Load an ONNX file safely: probed in a subprocess, checked external data, clear errors."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"ONNX file not found: {str(p)!r}.",
                                hint="Pass the path of an existing .onnx file.")
    if probe:
        probe_onnx_file(p)
    try:
        model = onnx.load(str(p), load_external_data=False)
        check_external_data(model, p.parent)
        onnx.load_external_data_for_model(model, str(p.parent))
        onnx.checker.check_model(model)
    except InvalidInputError:
        raise
    except Exception as exc:
        raise InvalidInputError(f"{str(p)!r} is not a valid ONNX model: {type(exc).__name__}: {exc}",
                                hint="Re-export the model; the file may be truncated or corrupted.") from exc
    return model


def _tensor_width(value_info) -> int | None:
    dims = value_info.type.tensor_type.shape.dim
    if len(dims) == 2 and dims[1].HasField("dim_value"):
        return int(dims[1].dim_value)
    return None


class OnnxAdapter(Adapter):
    framework = "onnx"
    has_native_pickle = False

    @classmethod
    def matches(cls, obj: Any) -> bool:
        if isinstance(obj, (str, os.PathLike)):
            return str(obj).lower().endswith(".onnx")
        return "onnx.onnx_ml_pb2" in class_modules(obj) or type(obj).__name__ == "ModelProto" \
            and any(m.startswith("onnx") for m in class_modules(obj))

    def __init__(self, model: Any, *, task: str | None = None):
        if isinstance(model, (str, os.PathLike)):
            self.source = str(model)
            model = load_onnx(model)
        else:
            self.source = None
            check_external_data(model, None)
        super().__init__(model, task=task)
        graph = model.graph
        init_names = {i.name for i in graph.initializer}
        self.inputs = [i for i in graph.input if i.name not in init_names]
        self.outputs = list(graph.output)
        if not self.inputs:
            raise UnsupportedModelError("The ONNX model has no inputs.", hint="Check the exported graph.")
        for o in self.outputs:
            if o.type.WhichOneof("value") != "tensor_type":
                raise UnsupportedModelError(
                    f"ONNX output {o.name!r} is not a tensor (a ZipMap or sequence output).",
                    hint="Re-convert classifiers with zipmap=False (skl2onnx: options={'zipmap': False}).")
        self._session = None

    @property
    def model_type(self) -> str:
        # only the file name: the notebook's folders must not leak into the bundle's model card
        return f"onnx.ModelProto ({Path(self.source).name})" if self.source else "onnx.ModelProto"

    def _is_columns(self) -> bool:
        return len(self.inputs) > 1

    def n_features(self):
        if self._is_columns():
            return len(self.inputs)
        return _tensor_width(self.inputs[0])

    def feature_names(self):
        return [i.name for i in self.inputs] if self._is_columns() else None

    def task(self) -> str:
        if self._task:
            return self._task
        names = [o.name.lower() for o in self.outputs]
        if len(self.outputs) >= 2 and any("label" in n for n in names) or any("prob" in n for n in names):
            return "classifier"
        return "regressor"

    def _spec(self) -> dict:
        task = self.task()
        names = [o.name for o in self.outputs]
        if task == "classifier":
            label = next((n for n in names if "label" in n.lower()), None)
            proba = next((n for n in names if "prob" in n.lower()), names[-1])
            out = {"probabilities": proba}
            if label:
                out["label"] = label
            post = "none" if "prob" in proba.lower() else "softmax"
        else:
            out, post = {"value": names[0]}, "none"
        return {"task": task, "input_mode": "columns" if self._is_columns() else "tensor",
                "input_names": [i.name for i in self.inputs], "classes": None, "outputs": out,
                "postprocess": post}

    def to_onnx(self, X, *, feature_names=None, opset=None) -> Converted:
        return Converted(self.model, self._spec(), converter="none (already ONNX)")

    def predict(self, X):
        from ..runtime.model import OnnxModel

        if self._session is None:
            spec = dict(self._spec(), n_features=X.shape[1])
            self._session = OnnxModel(self.model.SerializeToString(), spec)
        return self._session.run(X)


__all__ = ["OnnxAdapter", "load_onnx", "probe_onnx_file", "check_external_data", "np"]
