"""quantize: int8 (dynamic, static) and fp16 variants of the ONNX model, each verified, and the choice.

Every variant is checked against the *native* model's outputs on the sample (and against the
user's labels when given).  A variant that cannot help a graph (int8 on a tree ensemble) is
``not_applicable``; one whose quantizer raises is ``failed``; neither stops the others.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import InvalidInputError
from .report import section, table
from .verify import Tolerance, check_labels, compare
from .vocab import VARIANTS, check_quantize

MIN_CALIBRATION_ROWS = 10
MAX_CALIBRATION_ROWS = 512
MAX_VERIFY_ROWS = 5000
_COMPUTE_OPS = {"MatMul", "Gemm", "Conv", "ConvTranspose", "Attention", "LSTM", "GRU", "RNN"}
# A variant must beat fp32 by this factor on the speed score (shared machines are noisy: a smaller
# gain is not trusted) and may lose at most _MAX_LOSS on either the latency or the throughput side.
_MIN_GAIN, _MAX_LOSS = 1.10, 0.90


@dataclass(frozen=True)
class QuantTolerance:
    """How much a variant may lose against the native model and still be chosen.

    Classifiers: accuracy drop in points against ``labels`` when given, otherwise label
    disagreement with the native model in points.  Regressors: relative RMSE increase against
    ``labels`` when given, otherwise relative L2 error against the native outputs.
    """

    accuracy_points: float = 1.0
    relative_error: float = 0.01

    @classmethod
    def of(cls, tolerance: Any, task: str) -> QuantTolerance:
        """Accept None, a QuantTolerance, or a number (points for classifiers, fraction for regressors)."""
        if tolerance is None or isinstance(tolerance, Tolerance):
            return cls()
        if isinstance(tolerance, cls):
            return tolerance
        if isinstance(tolerance, (int, float)) and not isinstance(tolerance, bool) and tolerance >= 0:
            return cls(accuracy_points=float(tolerance)) if task == "classifier" \
                else cls(relative_error=float(tolerance))
        raise InvalidInputError(f"tolerance must be a non-negative number or QuantTolerance, got {tolerance!r}.",
                                hint="E.g. tolerance=1.0 (accuracy points, classifiers) or 0.01 "
                                     "(relative error, regressors).", received=repr(tolerance))

    def limit(self, task: str) -> float:
        return self.accuracy_points if task == "classifier" else self.relative_error


@dataclass
class VariantResult:
    """One candidate model: fp32 or a quantized variant."""

    name: str
    status: str                          # ok | not_applicable | failed | skipped
    reason: str = ""
    size_bytes: int | None = None
    size_ratio: float | None = None      # size / fp32 size
    seconds: float | None = None         # time to build the variant
    delta: float | None = None           # accuracy points lost, or relative error (see QuantTolerance)
    delta_unit: str = ""                 # "pt" or "rel"
    within_tolerance: bool | None = None
    label_agreement: float | None = None
    metric: str | None = None            # accuracy | rmse (against labels)
    metric_value: float | None = None
    verification: dict | None = None     # VerifyReport.to_dict()
    latency: dict = field(default_factory=dict)   # filled from the benchmark: p50 at batch 1, rows/s
    model: Any = field(default=None, repr=False)  # onnx.ModelProto (not serialised)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("model", None)
        return d

    def delta_text(self) -> str:
        if self.delta is None:
            return "—"
        return f"{self.delta:.2f} pt" if self.delta_unit == "pt" else f"{self.delta:.2%}"


@dataclass
class QuantizeReport:
    """Every variant's status, size, verification and (after benchmarking) latency."""

    task: str
    tolerance: dict
    labels_given: bool
    variants: list[VariantResult]

    def get(self, name: str) -> VariantResult | None:
        return next((v for v in self.variants if v.name == name), None)

    def to_dict(self) -> dict:
        return {"task": self.task, "tolerance": dict(self.tolerance), "labels_given": self.labels_given,
                "variants": [v.to_dict() for v in self.variants]}

    def rows(self) -> list[list]:
        return [[v.name, v.status, v.size_bytes,
                 None if v.size_ratio is None else f"{v.size_ratio:.0%}", v.delta_text(),
                 v.within_tolerance, v.latency.get("p50_ms_batch1"), v.latency.get("rows_per_s_max"),
                 v.reason] for v in self.variants]

    def _repr_html_(self) -> str:
        head = ["variant", "status", "size bytes", "size vs fp32", "delta", "within tol.",
                "p50 ms @1", "rows/s (max)", "reason"]
        return section("Quantization", table(self.rows(), head))


# --- applicability ---------------------------------------------------------------------------------

def _op_types(model) -> set[str]:
    ops = set()
    stack = [model.graph]
    while stack:
        g = stack.pop()
        for n in g.node:
            ops.add(n.op_type)
            stack.extend(a.g for a in n.attribute if a.HasField("g"))
    return ops


def applicability(model, variant: str) -> tuple[bool, str]:
    """Whether ``variant`` can change anything on this graph, and why not."""
    ops = _op_types(model)
    heavy = sorted(ops & _COMPUTE_OPS)
    if heavy:
        return True, f"quantizes {', '.join(heavy)}"
    shown = ", ".join(sorted(ops)[:6]) + (", ..." if len(ops) > 6 else "")
    if variant == "fp16":
        return False, (f"no float MatMul/Gemm/Conv to run in half precision (ops: {shown}); "
                       "ai.onnx.ml operators such as TreeEnsemble have no fp16 kernels")
    return False, (f"no MatMul/Gemm/Conv node to quantize (ops: {shown}); int8 quantization in "
                   "onnxruntime applies to linear algebra, not to tree ensembles or ai.onnx.ml operators")


# --- building variants -----------------------------------------------------------------------------

def _calibration_reader(X: np.ndarray, spec: dict, dtype=np.float32, batch: int = 32):
    """The sample in batches, fed as the runtime feeds the graph (``runtime.model.make_feeds``)."""
    from onnxruntime.quantization import CalibrationDataReader

    from .runtime.model import make_feeds

    class SampleReader(CalibrationDataReader):
        def __init__(self):
            self._it = iter([make_feeds(X[i:i + batch], spec, dtype=dtype) for i in range(0, len(X), batch)])

        def get_next(self):
            return next(self._it, None)

    return SampleReader()


def build_variant(model, variant: str, *, spec: dict, calibration: np.ndarray | None = None):
    """Return the ``variant`` of ``model`` as a new ModelProto (the input model is not modified)."""
    import onnx

    if variant == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return convert_float_to_float16(copy, keep_io_types=True)
    # The quantizers save and reload through files (and mutate a ModelProto passed in), so hand
    # them a path in a private folder.
    with tempfile.TemporaryDirectory(prefix="nbdeploy-quant-") as tmp:
        src, dst = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, f"{variant}.onnx")
        onnx.save_model(model, src)
        if variant == "int8-dynamic":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        elif variant == "int8-static":
            if calibration is None:
                raise InvalidInputError("int8-static needs calibration rows.",
                                        hint="Pass calibration=<rows like the sample>, or quantize='int8-dynamic'.")
            _quantize_static(model, src, dst, calibration, spec, tmp)
        else:
            raise InvalidInputError(f"Unknown variant {variant!r}.",
                                    hint="Use one of " + ", ".join(VARIANTS) + ".",
                                    expected=list(VARIANTS), received=variant)
        return onnx.load_model(dst)


def _quantize_static(model, src: str, dst: str, calibration: np.ndarray, spec: dict, tmp: str) -> None:
    """Static int8 (MinMax calibration on ``calibration``) of the model saved at ``src``.

    Convolutional graphs (measured in ``benchmarks/bench_images.py`` on an AVX-512 VNNI CPU: a
    ResNet-18 at 64x64 and 224x224, a 32x32 three-conv CNN) are first run through onnxruntime's
    ``quant_pre_process`` (shape inference and graph clean-up: without it the ``Identity`` nodes
    torch.onnx puts in front of shared weights hide them from the quantizer, which then
    quantizes them on every call) and quantized to QOperator form (``QLinearConv``,
    ``QLinearAdd``, ...) with uint8 activations and uint8 per-channel weights: 2.7-6.8x faster
    than fp32 at batch 1 and 2.8-3.4x at batch 16, where the QDQ form with int8 weights was
    0.55-0.8x on the ResNet.  Other graphs keep QDQ with per-tensor scales.  Either way the
    variant is kept only when the gate measures it faster and accurate enough.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    first = model.graph.input[0].type.tensor_type.elem_type
    dtype = np.float64 if first == onnx.TensorProto.DOUBLE else np.float32
    reader = _calibration_reader(calibration, spec, dtype)
    if "Conv" not in _op_types(model):
        quantize_static(src, dst, reader, quant_format=QuantFormat.QDQ,
                        calibrate_method=CalibrationMethod.MinMax, per_channel=False)
        return
    from onnxruntime.quantization.shape_inference import quant_pre_process

    base = os.path.join(tmp, "preprocessed.onnx")
    try:
        quant_pre_process(src, base)
    except Exception:   # shape inference cannot read every graph: quantize it as converted
        base = src
    # per-channel weight scales: one scale per output filter keeps the small filters' precision
    # (per-tensor loses it to the largest); cheap at run time
    quantize_static(base, dst, reader, quant_format=QuantFormat.QOperator,
                    calibrate_method=CalibrationMethod.MinMax, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QUInt8)
    q = onnx.load_model(dst)
    _drop_unused_opsets(q)
    onnx.save_model(q, dst)


def _drop_unused_opsets(model) -> None:
    """The pre-processed graph declares every domain onnxruntime knows (training, aten, ...);
    keep the default domain and those a node uses."""
    used = {""} | {n.domain for n in model.graph.node}
    keep = [o for o in model.opset_import if (o.domain or "") in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)


# --- verification ----------------------------------------------------------------------------------

def evaluate(result: VariantResult, spec: dict, X: np.ndarray, native: dict, *, labels=None,
             tol: QuantTolerance) -> VariantResult:
    """Run ``result.model`` on ``X`` and fill in its verification and accuracy delta."""
    from .runtime.model import OnnxModel

    task = spec["task"]
    out = OnnxModel(result.model.SerializeToString(), spec).run(X)
    ref = Tolerance(atol=0.0, rtol=tol.relative_error, proba_atol=1.0,
                    min_label_agreement=1 - tol.accuracy_points / 100)
    rep = compare(task, native, out, labels=labels, tolerance=ref)
    if task == "classifier":
        result.label_agreement = rep.label_agreement
        result.delta_unit = "pt"
        if labels is not None:
            result.delta = 100 * (rep.native_metric - rep.onnx_metric)
        else:
            result.delta = 100 * (1 - rep.label_agreement)
    else:
        a = np.asarray(native["value"], dtype=np.float64).reshape(-1)
        b = np.asarray(out["value"], dtype=np.float64).reshape(-1)
        result.delta_unit = "rel"
        if labels is not None and rep.native_metric:
            result.delta = (rep.onnx_metric - rep.native_metric) / rep.native_metric
        else:
            result.delta = float(np.linalg.norm(b - a) / max(np.linalg.norm(a), 1e-12))
    result.metric, result.metric_value = rep.metric, rep.onnx_metric
    # Differences smaller than float32 noise count as exact (a tolerance of 0 then keeps fp32).
    result.within_tolerance = bool(result.delta <= tol.limit(task) + 1e-9)
    rep.passed = result.within_tolerance
    result.verification = rep.to_dict()
    return result


def quantize_variants(converted, *, variants: tuple[str, ...] = VARIANTS, labels=None, tolerance=None,
                      calibration: np.ndarray | None = None, deadline: float = math.inf,
                      progress: Callable[[float, str], None] | None = None) -> QuantizeReport:
    """Build and verify fp32 plus each of ``variants``; never raises for one variant's failure.

    ``calibration`` (default: the sample) feeds int8-static; it needs at least
    ``MIN_CALIBRATION_ROWS`` rows.
    """
    from .benchmark import sample_matrix

    X = sample_matrix(converted.X)
    spec = converted.spec
    task = spec["task"]
    tol = QuantTolerance.of(tolerance, task)
    labels = check_labels(labels, len(X))
    Xv = X[:MAX_VERIFY_ROWS]
    yv = None if labels is None else labels[:MAX_VERIFY_ROWS]
    native = converted.adapter.predict(Xv)
    calib = X[:MAX_CALIBRATION_ROWS] if calibration is None else np.asarray(calibration)
    if "int8-static" in variants and len(calib) < MIN_CALIBRATION_ROWS:
        raise InvalidInputError(f"Static int8 calibration needs at least {MIN_CALIBRATION_ROWS} rows; "
                                f"got {len(calib)}.",
                                hint=f"Pass at least {MIN_CALIBRATION_ROWS} representative rows (a few "
                                     "hundred is better), or quantize='int8-dynamic'.",
                                expected=MIN_CALIBRATION_ROWS, received=int(len(calib)))
    fp32 = VariantResult("fp32", "ok", "the converted model", model=converted.onnx_model,
                         size_bytes=len(converted.onnx_model.SerializeToString()), size_ratio=1.0)
    report = QuantizeReport(task=task, tolerance=asdict(tol), labels_given=labels is not None,
                            variants=[evaluate(fp32, spec, Xv, native, labels=yv, tol=tol)])
    for i, name in enumerate(VARIANTS):
        if progress is not None:
            progress(i / len(VARIANTS), f"quantizing {name}")
        res = VariantResult(name, "skipped")
        report.variants.append(res)
        if name not in variants:
            res.reason = "not requested"
            continue
        ok, why = applicability(converted.onnx_model, name)
        if ok and name == "fp16" and spec.get("input_mode") == "table":
            ok, why = False, ("the graph starts with the DataFrame's preprocessing (ai.onnx.ml "
                              "imputers, encoders, string operators), which has no fp16 kernels")
        if not ok:
            res.status, res.reason = "not_applicable", why
            continue
        if time.perf_counter() >= deadline:
            res.reason = "time budget exhausted before this variant"
            continue
        t0 = time.perf_counter()
        try:
            res.model = build_variant(converted.onnx_model, name, spec=spec, calibration=calib)
            res.seconds = time.perf_counter() - t0
            res.size_bytes = len(res.model.SerializeToString())
            res.size_ratio = res.size_bytes / fp32.size_bytes
            evaluate(res, spec, Xv, native, labels=yv, tol=tol)
        except Exception as exc:  # one quantizer failing must not stop the others
            res.status, res.model = "failed", None
            res.reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
            continue
        res.status = "ok"
        res.reason = why + ("" if res.within_tolerance else
                            f"; outside tolerance ({res.delta_text()} > {_limit_text(tol, task)})")
        if name == "fp16":
            res.reason += "; meant for GPUs: most CPUs lack fp16 kernels, so onnxruntime may insert casts"
    if progress is not None:
        progress(1.0, "quantization done")
    return report


def _limit_text(tol: QuantTolerance, task: str) -> str:
    return f"{tol.accuracy_points:g} pt" if task == "classifier" else f"{tol.relative_error:.2%}"


# --- the choice ------------------------------------------------------------------------------------

def attach_latency(report: QuantizeReport, bench, provider: str) -> None:
    """Copy each variant's headline timings on ``provider`` from the benchmark into the report."""
    for v in report.variants:
        e = bench.entry(v.name, provider) if bench is not None else None
        if e is None or not e.points:
            continue
        one = e.point(1)
        v.latency = {"provider": provider, "fallback": e.fallback,
                     "p50_ms_batch1": None if one is None else one.p50_ms,
                     "rows_per_s_max": max(p.rows_per_s for p in e.points),
                     "largest_batch": max(p.batch_size for p in e.points)}


def _speed(bench, name: str, provider: str, base: str = "fp32") -> tuple[float, float, int] | None:
    """(batch-1 speed-up, throughput gain at the largest batch both measured, that batch) vs ``base``."""
    e, f = bench.entry(name, provider), bench.entry(base, provider)
    if e is None or f is None or e.fallback or e.point(1) is None or f.point(1) is None:
        return None
    common = sorted({p.batch_size for p in e.points} & {p.batch_size for p in f.points})
    big = common[-1]
    return (f.point(1).p50_ms / e.point(1).p50_ms,
            e.point(big).rows_per_s / f.point(big).rows_per_s, big)


def choose(report: QuantizeReport, bench, *, quantize: str = "auto",
           provider: str = "CPUExecutionProvider") -> tuple[str, str]:
    """Pick the variant to bundle; returns (name, human reason).

    ``auto``: among variants within tolerance, the one with the best speed score (geometric mean
    of the batch-1 latency speed-up and the largest-batch throughput gain over fp32), if that score
    is at least 1.10 and neither side is more than 10% worse; otherwise fp32.
    """
    check_quantize(quantize)
    if quantize == "none":
        return "fp32", "fp32: quantization turned off (quantize='none')"
    if quantize != "auto":
        v = report.get(quantize)
        if v is None or v.status != "ok":
            status = "not built" if v is None else v.status.replace("_", " ")
            raise InvalidInputError(f"quantize={quantize!r} was requested but that variant is {status}: "
                                f"{v.reason if v else ''}".rstrip(": "),
                                hint="Use quantize='auto' to pick among the variants that apply, or "
                                     "quantize='none' to deploy the fp32 model.")
        text = _describe(v, bench, provider)
        if not v.within_tolerance:
            text += " — WARNING: outside the tolerance, kept because it was forced"
        return v.name, text + " (forced)"
    best, best_score, notes = None, _MIN_GAIN, []
    for v in report.variants[1:]:
        if v.status != "ok":
            continue
        if not v.within_tolerance:
            notes.append(f"{v.name}: outside tolerance ({v.delta_text()})")
            continue
        sp = _speed(bench, v.name, provider) if bench is not None else None
        if sp is None:
            notes.append(f"{v.name}: not benchmarked on {provider}")
            continue
        lat, tput, big = sp
        score = math.sqrt(lat * tput)
        notes.append(f"{v.name}: {lat:.2f}x at batch 1, {tput:.2f}x throughput at batch {big}")
        if lat >= _MAX_LOSS and tput >= _MAX_LOSS and score > best_score:
            best, best_score = v, score
    if best is None:
        if not notes:
            na = [v for v in report.variants[1:] if v.status in ("not_applicable", "failed")]
            why = na[0].reason if na else "no variant was built"
            return "fp32", f"fp32: no quantized variant applies to this model ({why})"
        return "fp32", (f"fp32: no variant is ≥{_MIN_GAIN:.2f}x faster within tolerance "
                        f"({'; '.join(notes)})")
    return best.name, _describe(best, bench, provider)


def _describe(v: VariantResult, bench, provider: str) -> str:
    parts = []
    sp = _speed(bench, v.name, provider) if bench is not None else None
    if sp is not None:
        lat, tput, big = sp
        parts.append(f"{lat:.1f}x faster than fp32 at batch 1")
        parts.append(f"{tput:.1f}x throughput at batch {big}")
    if v.size_ratio is not None:
        parts.append(f"size {v.size_ratio:.0%}")
    parts.append(("accuracy delta " if v.delta_unit == "pt" else "relative error ") + v.delta_text())
    return f"{v.name}: " + ", ".join(parts)
