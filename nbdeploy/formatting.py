"""One number format for every front end (widget, report, sidebar payloads, CLI, magic).

Rates read "1.41 M rows/s", sizes "412 KiB", times "3.2 ms" / "1.8 s" / "2 min 5 s",
fractions "96.5 %", providers "CPU" / "CUDA" / "Python (native)".  Plain functions of plain values,
no dependencies: importable anywhere, including the served bundle's tooling.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["rate", "size", "duration", "ms", "percent", "provider", "metric_name", "number",
           "metric", "metric_value"]

_SI = ((1e9, "G"), (1e6, "M"), (1e3, "k"))

#: what each metric key means, named as a reader expects it
METRIC_NAMES = {"accuracy": "accuracy", "rmse": "RMSE", "mae": "MAE", "r2": "R²", "auc": "ROC AUC",
                "f1": "F1", "log_loss": "log loss"}

#: providers as a person says them
PROVIDER_NAMES = {"native": "Python (native)", "python": "Python (native)",
                  "CPUExecutionProvider": "CPU", "CUDAExecutionProvider": "CUDA",
                  "TensorrtExecutionProvider": "TensorRT", "ROCMExecutionProvider": "ROCm",
                  "CoreMLExecutionProvider": "CoreML", "DmlExecutionProvider": "DirectML",
                  "OpenVINOExecutionProvider": "OpenVINO"}


def _bad(v: Any) -> bool:
    return v is None or (isinstance(v, float) and not math.isfinite(v))


def number(v: Any, digits: int = 3) -> str:
    """A float with ``digits`` significant digits, no exponent below a billion; ints as is."""
    if _bad(v):
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}".replace(",", " ") if abs(v) >= 10_000 else str(v)
    v = float(v)
    if v == 0:
        return "0"
    if abs(v) < 1e-3:
        return f"{v:.{max(digits - 1, 1)}e}"
    if abs(v) >= 1e4:
        return number(int(round(v)))
    text = f"{v:.{digits}g}"
    return text if "e" not in text else f"{v:.0f}"


def rate(v: Any, unit: str = "rows/s") -> str:
    """1412474 -> '1.41 M rows/s'; 342 -> '342 rows/s'."""
    if _bad(v):
        return "—"
    v = float(v)
    for scale, prefix in _SI:
        if abs(v) >= scale:
            return f"{v / scale:.3g} {prefix} {unit}"
    return f"{v:.3g} {unit}"


def size(n: Any) -> str:
    """Bytes in binary units: 900 B, 12.3 KiB, 4.1 MiB, 1.2 GiB."""
    if _bad(n):
        return "—"
    n = float(n)
    for scale, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def duration(seconds: Any) -> str:
    """Seconds in the unit that reads best: 12 µs, 3.2 ms, 1.8 s, 2 min 5 s, 1 h 3 min."""
    if _bad(seconds):
        return "—"
    s = float(seconds)
    if s < 0:
        return "-" + duration(-s)
    if s == 0:
        return "0 s"
    if s < 1e-3:
        return f"{s * 1e6:.3g} µs"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    if s < 60:
        return f"{s:.3g} s"
    if s < 3600:
        m, r = divmod(int(round(s)), 60)
        return f"{m} min {r} s" if r else f"{m} min"
    h, r = divmod(int(round(s)), 3600)
    return f"{h} h {r // 60} min" if r // 60 else f"{h} h"


def ms(milliseconds: Any) -> str:
    """A latency given in milliseconds, formatted like :func:`duration`."""
    return "—" if _bad(milliseconds) else duration(float(milliseconds) / 1e3)


def percent(fraction: Any, digits: int = 1) -> str:
    """0.965 -> '96.5 %'; 1.0 -> '100 %'."""
    if _bad(fraction):
        return "—"
    p = float(fraction) * 100
    text = f"{p:.{digits}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text} %"


def provider(name: Any) -> str:
    """'CPUExecutionProvider' -> 'CPU'; 'native'/'python' -> 'Python (native)'."""
    if not name:
        return "—"
    name = str(name)
    if name in PROVIDER_NAMES:
        return PROVIDER_NAMES[name]
    return name[:-len("ExecutionProvider")] if name.endswith("ExecutionProvider") else name


def metric_name(key: Any, task: str | None = None) -> str:
    """'accuracy' -> 'accuracy', 'rmse' -> 'RMSE', 'r2' -> 'R²'; None: what the task measures."""
    if not key:
        return {"classifier": "accuracy", "regressor": "RMSE"}.get(task or "", "metric")
    return METRIC_NAMES.get(str(key).lower(), str(key))


def metric_value(key: Any, value: Any, task: str | None = None) -> str:
    """A metric's value alone: accuracy as a percentage, the others as numbers."""
    return percent(value) if metric_name(key, task) == "accuracy" else number(value, 4)


def metric(key: Any, value: Any, task: str | None = None) -> str:
    """A named metric value: 'accuracy 96.5 %', 'RMSE 0.412'."""
    return f"{metric_name(key, task)} {metric_value(key, value, task)}"
