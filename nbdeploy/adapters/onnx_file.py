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


# The throw-away process.  It limits its own address space and CPU time before it imports
# anything, then reports each stage it enters and, on a Python-level failure, a JSON line;
# the parent decides from those markers and the exit status, never from message text.
_PROBE = """
import json, sys
args = json.loads(sys.argv[1])
import resource
if args["memory"]:
    resource.setrlimit(resource.RLIMIT_AS, (args["memory"], args["memory"]))
if args["cpu"]:
    resource.setrlimit(resource.RLIMIT_CPU, (args["cpu"], args["cpu"] + 5))
sys.path.insert(0, args["root"])   # this nbdeploy, whatever the working directory

def stage(name):
    sys.stderr.write("\\nNBDEPLOY-STAGE " + name + "\\n")
    sys.stderr.flush()

def fail(name, exc, invalid=None):
    sys.stderr.write("\\nNBDEPLOY-FAILED " + json.dumps({"stage": name, "type": type(exc).__name__,
                     "message": str(exc)[:1000], "invalid": invalid}) + "\\n")
    sys.stderr.flush()
    sys.exit(2)

stage("load")
import onnx
from nbdeploy.adapters.onnx_file import check_external_data
from nbdeploy.errors import InvalidInputError
try:
    m = onnx.load(args["model"], load_external_data=False)
    check_external_data(m, args["base"])
    onnx.load_external_data_for_model(m, args["base"])
    onnx.checker.check_model(m)
except InvalidInputError as exc:
    fail("load", exc, exc.to_dict())
except Exception as exc:
    fail("load", exc)
stage("session")
try:
    import onnxruntime
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    onnxruntime.InferenceSession(m.SerializeToString(), sess_options=opts,
                                 providers=["CPUExecutionProvider"])
except Exception as exc:
    fail("session", exc)
if args["x"]:
    stage("run")
    try:
        import numpy as np
        from nbdeploy.runtime.model import OnnxModel
        X = np.load(args["x"], allow_pickle=False)
        OnnxModel(m.SerializeToString(), args["spec"], threads=1).run(X)
    except Exception as exc:  # MemoryError or onnxruntime's allocation failure included
        fail("run", exc)
stage("done")
"""

#: environment variables that raise the throw-away process's limits for a large model
MEMORY_ENV = "NBDEPLOY_ONNX_PROBE_MEMORY_MB"
_MIN_PROBE_MEMORY = 4 << 30


def probe_memory_limit(model_bytes: int = 0) -> int:
    """Address-space limit of the throw-away process, in bytes: ``$NBDEPLOY_ONNX_PROBE_MEMORY_MB``,
    else 4 GiB or four times the model plus 2 GiB, whichever is larger, at most the machine's RAM."""
    raw = os.environ.get(MEMORY_ENV, "").strip()
    if raw:
        try:
            value = int(float(raw) * (1 << 20))
        except ValueError:
            raise InvalidInputError(f"{MEMORY_ENV} must be a number of MiB; got {raw!r}.",
                                    expected="e.g. 8192", received=raw) from None
        if value < (512 << 20):
            raise InvalidInputError(f"{MEMORY_ENV} of {raw} MiB is too small to even start the probe.",
                                    expected=">= 512", received=raw)
        return value
    want = max(_MIN_PROBE_MEMORY, 4 * int(model_bytes) + (2 << 30))
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not Linux
        return want
    return max(_MIN_PROBE_MEMORY, min(want, ram))


def _run_probe(model_path: Path, *, timeout: float, x_path: Path | None = None,
               spec: dict | None = None, label: str) -> None:
    """Run :data:`_PROBE` on ``model_path`` (and, with ``x_path``, one inference) and turn
    whatever went wrong into an InvalidInputError that names ``label``."""
    import json
    import subprocess
    import sys
    import tempfile

    memory = probe_memory_limit(model_path.stat().st_size)
    args = {"model": str(model_path), "base": str(model_path.parent),
            "root": str(Path(__file__).resolve().parents[2]), "x": str(x_path) if x_path else None,
            "spec": spec, "memory": memory, "cpu": max(1, int(timeout))}
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    limits = f"{memory / (1 << 30):.1f} GiB of memory, {timeout:.0f} s"
    try:
        # an empty working directory: `python -c` puts it first on sys.path, and the model's
        # own folder (or the notebook's) may hold an onnx.py shipped with the untrusted file
        with tempfile.TemporaryDirectory(prefix="nbdeploy-probe-") as cwd:
            r = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(args)], capture_output=True,
                               text=True, timeout=timeout, cwd=cwd, env=env)
    except subprocess.TimeoutExpired as exc:
        what = "Running" if x_path else "Loading"
        raise InvalidInputError(f"{what} {label} took longer than {timeout:.0f} s in a throw-away process.",
                                hint="The file may be malformed, crafted, or far too large.") from exc
    if r.returncode == 0:
        return
    lines = r.stderr.splitlines()
    stages = [ln.split(" ", 1)[1].strip() for ln in lines if ln.startswith("NBDEPLOY-STAGE ")]
    failed = [ln.split(" ", 1)[1] for ln in lines if ln.startswith("NBDEPLOY-FAILED ")]
    info = json.loads(failed[-1]) if failed else None
    stage = info["stage"] if info else (stages[-1] if stages else "load")
    if info and info.get("invalid"):
        err = info["invalid"]
        raise InvalidInputError(err["message"], hint=err.get("hint"), expected=err.get("expected"),
                                received=err.get("received"))
    if stage == "run":
        if info:
            why = f"{info['type']}: {_brief(info['message'])}"
        elif r.returncode == -signal_number("SIGXCPU"):
            why = "it used up its CPU time"
        else:
            why = f"the process died (signal {-r.returncode})" if r.returncode < 0 else f"exit {r.returncode}"
        raise InvalidInputError(
            f"{label} failed its first inference on the sample in a throw-away process limited to "
            f"{limits}: {why}.",
            hint=f"A model that needs far more memory than its inputs may be crafted; do not run it here. "
                 f"If it is yours and really needs more, raise the limit with {MEMORY_ENV}=<MiB>.",
            expected=f"<= {limits}", received=why)
    if r.returncode < 0:
        raise InvalidInputError(f"{label} crashed the ONNX loader (signal {-r.returncode}); "
                                f"it is not a valid ONNX model.",
                                hint="Re-export the model; the file may be truncated or crafted.")
    why = f"{info['type']}: {_brief(info['message'])}" if info else _brief(lines[-1] if lines else "(no message)")
    raise InvalidInputError(f"{label} is not a valid ONNX model: {why}",
                            hint="Re-export the model; the file may be truncated or corrupted.")


def signal_number(name: str) -> int:
    import signal

    return int(getattr(signal, name, 0)) or -1


def _brief(text: str, n: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def probe_onnx_file(path: str | os.PathLike, *, timeout: float = 120.0) -> None:
    """Open an untrusted ONNX file in a throw-away process first.

    A crafted file can crash the protobuf parser or onnxruntime, or ask for far more memory
    than the machine has; that must cost a subprocess (limited with ``setrlimit``), not the
    user's notebook kernel or server.
    """
    p = Path(path).resolve()
    _run_probe(p, timeout=timeout, label=repr(str(p)))


#: the probe runs the rows it is given repeated up to this many (nbdeploy's own in-process
#: runs go as far: verify's column probe, benchmark's largest batch) ...
PROBE_ROWS = 16384
#: ... unless that input would exceed this many bytes
PROBE_INPUT_BYTES = 64 << 20


def probe_first_inference(model, spec: dict, X: np.ndarray, *, timeout: float = 120.0,
                          label: str = "The ONNX model") -> int:
    """Run ``model`` (an ``onnx.ModelProto``) on ``X`` in a throw-away process under memory and
    CPU-time limits, the way :class:`~nbdeploy.runtime.model.OnnxModel` will run it here.

    ``X``'s rows are repeated up to :data:`PROBE_ROWS` rows (at most :data:`PROBE_INPUT_BYTES`),
    the largest batch nbdeploy itself runs.  Returns the number of rows the probe ran.
    """
    import json
    import tempfile

    X = np.asarray(X)
    if X.dtype == object:
        try:
            X = X.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError("An ONNX model takes numeric input; the sample has other values.",
                                    received=str(X.dtype)) from exc
    if len(X):
        row_bytes = max(1, X[:1].nbytes)
        rows = max(len(X), min(PROBE_ROWS, PROBE_INPUT_BYTES // row_bytes))
        X = np.take(X, np.arange(rows) % len(X), axis=0)
    with tempfile.TemporaryDirectory(prefix="nbdeploy-probe-data-") as tmp:
        model_path, x_path = Path(tmp) / "model.onnx", Path(tmp) / "x.npy"
        model_path.write_bytes(model.SerializeToString())
        np.save(x_path, X, allow_pickle=False)
        json.dumps(spec)  # the spec travels as JSON: fail here, not in the child
        _run_probe(model_path, timeout=timeout, x_path=x_path, spec=spec, label=label)
    return len(X)


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
        self._probed_rows = 0

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

        spec = dict(self._spec(), n_features=X.shape[1])
        # an untrusted graph can ask for any amount of memory once it runs: the first call (and
        # any with more rows than were probed) runs first in a limited throw-away process
        if len(X) > self._probed_rows:
            label = repr(Path(self.source).name) if self.source else "The ONNX model"
            self._probed_rows = probe_first_inference(self.model, spec, X, label=label)
        if self._session is None:
            self._session = OnnxModel(self.model.SerializeToString(), spec)
        return self._session.run(X)


__all__ = ["OnnxAdapter", "load_onnx", "probe_onnx_file", "probe_first_inference", "check_external_data", "np"]
