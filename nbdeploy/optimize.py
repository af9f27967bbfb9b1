"""optimize: quantize + benchmark + choose, the one entry point the pipeline calls."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .benchmark import BenchReport, benchmark, resolve_providers, serving_hints, thread_probe
from .errors import InvalidInputError
from .quantize import (
    MIN_CALIBRATION_ROWS,
    QuantizeReport,
    QuantTolerance,
    attach_latency,
    choose,
    quantize_variants,
)
from .report import kv_table, section
from .vocab import VARIANTS, check_quantize

MIN_SAMPLE_ROWS = MIN_CALIBRATION_ROWS


@dataclass
class OptimizeResult:
    """Benchmark, quantization report and the chosen model with the reason for the choice."""

    benchmark: BenchReport
    quantization: QuantizeReport
    chosen: str
    chosen_model: Any                   # onnx.ModelProto to bundle
    chosen_spec: dict
    reason: str
    serving: dict
    device: str = "cpu"
    provider: str = "CPUExecutionProvider"
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def truncated(self) -> bool:
        return self.benchmark.truncated

    def benchmark_summary(self) -> str:
        """One line for progress logs: batch-1 latency of native, fp32 and the chosen variant."""
        def p50(variant):
            e = self.benchmark.entry(variant, self.provider)
            p = e.point(1) if e is not None else None
            return None if p is None else p.p50_ms

        from .formatting import ms

        nat, fp32, best = p50("native"), p50("fp32"), p50(self.chosen)
        parts = []
        if fp32 is not None:
            parts.append(f"fp32 p50 {ms(fp32)} at batch 1"
                         + (f" ({nat / fp32:.0f}x faster than native {ms(nat)})" if nat else ""))
        if self.chosen != "fp32" and best is not None:
            parts.append(f"{self.chosen} {ms(best)}")
        text = "; ".join(parts) or "nothing measured"
        return text + (" (truncated at the time budget)" if self.truncated else "")

    def to_dict(self) -> dict:
        """JSON-serialisable summary (no models, no numpy types)."""
        return _plain({"chosen": self.chosen, "reason": self.reason, "device": self.device,
                       "provider": self.provider, "serving": self.serving,
                       "elapsed_s": self.elapsed_s, "truncated": self.truncated, "notes": self.notes,
                       "chosen_size_bytes": len(self.chosen_model.SerializeToString()),
                       "benchmark": self.benchmark.to_dict(), "quantization": self.quantization.to_dict()})

    def _repr_html_(self) -> str:
        b = self.serving.get("batching", {})
        head = kv_table({"chosen": self.chosen, "reason": self.reason,
                         "serving threads": self.serving.get("threads"),
                         "adaptive batching": (f"max batch {b.get('max_batch_size')}, max latency "
                                               f"{b.get('max_latency_ms')} ms") if b.get("enabled") else "off",
                         "elapsed s": round(self.elapsed_s, 2), "truncated": self.truncated})
        return section("Optimization", head) + self.quantization._repr_html_() + self.benchmark._repr_html_()

    def figures(self) -> list:
        """Matplotlib figures: latency vs batch size (log-log), and size / accuracy delta per variant."""
        from .plots import optimize_figures

        return optimize_figures(self)

    def save_plots(self, directory: str | Path) -> list[Path]:
        """Write the figures as PNG files in ``directory``; returns their paths."""
        from .plots import save_optimize_plots

        return save_optimize_plots(self, directory)


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def optimize(converted, *, labels=None, quantize: str = "auto", tolerance=None, device: str = "cpu",
             time_budget_s: float = 20.0, batch_sizes: list[int] | None = None,
             progress: Callable[[float, str], None] | None = None,
             calibration: np.ndarray | None = None) -> OptimizeResult:
    """Quantize, verify and benchmark ``converted`` (a ConvertResult), then choose what to bundle.

    ``quantize``: ``"auto"`` (fastest variant within ``tolerance``), ``"none"`` (fp32), or one of
    ``"int8-dynamic"``, ``"int8-static"``, ``"fp16"`` (forced; an inapplicable one raises).
    ``tolerance``: a :class:`~nbdeploy.quantize.QuantTolerance`, or a number (accuracy points for
    classifiers, relative error for regressors); default 1 point / 1%.
    ``device``: the provider whose timings drive the choice (``"cpu"``, ``"cuda"``); every usable
    provider is benchmarked and reported.  The whole step stops at ``time_budget_s`` and reports
    what it measured (``result.truncated``).  ``calibration`` overrides the int8-static rows.
    """
    start = time.perf_counter()
    deadline = start + float(time_budget_s)
    check_quantize(quantize)
    n = len(converted.X)
    if n < MIN_SAMPLE_ROWS:
        raise InvalidInputError(
            f"The sample has {n} rows; benchmarking and quantization need at least {MIN_SAMPLE_ROWS} "
            f"(static int8 calibration and the accuracy check use them).",
            hint=f"Pass at least {MIN_SAMPLE_ROWS} representative rows (a few hundred is better), "
                 "or quantize='none'.", expected=MIN_SAMPLE_ROWS, received=n)
    if not time_budget_s or time_budget_s <= 0:
        raise InvalidInputError(f"time_budget_s must be positive, got {time_budget_s!r}.",
                                hint="The default is 20 seconds.")
    chosen_providers, _ = resolve_providers(device)  # validates; "cpu" -> CPUExecutionProvider
    if len(chosen_providers) != 1:
        raise InvalidInputError(f"device={device!r} must name one device, e.g. 'cpu' or 'cuda'.",
                                hint="Every usable provider is benchmarked anyway; device picks the "
                                     "one whose timings drive the choice.", received=device)
    provider = chosen_providers[0]
    bench_providers, _ = resolve_providers("all")
    if provider not in bench_providers:
        bench_providers.append(provider)  # benchmarked anyway, so a fall-back shows in the report

    def say(lo: float, hi: float):
        if progress is None:
            return None
        return lambda f, msg: progress(lo + (hi - lo) * f, msg)

    wanted = VARIANTS if quantize == "auto" else ((quantize,) if quantize != "none" else ())
    qrep = quantize_variants(converted, variants=wanted, labels=labels, tolerance=tolerance,
                             calibration=calibration, deadline=deadline, progress=say(0.0, 0.25))
    models = {v.name: v.model for v in qrep.variants if v.status == "ok"}
    bench = benchmark(converted, variants=models, device=bench_providers, batch_sizes=batch_sizes,
                      time_budget_s=max(0.0, deadline - time.perf_counter()), deadline=deadline,
                      progress=say(0.25, 0.95))
    attach_latency(qrep, bench, provider)
    chosen, reason = choose(qrep, bench, quantize=quantize, provider=provider)
    model = qrep.get(chosen).model
    notes = list(bench.notes)
    entry = bench.entry(chosen, provider)
    if entry is not None and entry.fallback:
        reason += f" (timings are from {', '.join(entry.providers_assigned)}: {provider} was not available)"

    hints = serving_hints(bench, chosen, provider)
    serve_batch = hints["batching"]["max_batch_size"] or 1
    if provider == "CPUExecutionProvider" and time.perf_counter() < deadline:
        probe = thread_probe(model.SerializeToString(), converted.spec, converted.X, provider=provider,
                             batch_size=serve_batch, deadline=deadline, target_s=0.05)
        hints = serving_hints(bench, chosen, provider, probe=probe)
    if progress is not None:
        progress(1.0, f"chose {chosen}")
    return OptimizeResult(benchmark=bench, quantization=qrep, chosen=chosen, chosen_model=model,
                          chosen_spec=dict(converted.spec), reason=reason, serving=hints,
                          device=device, provider=provider, elapsed_s=time.perf_counter() - start,
                          notes=notes)


__all__ = ["optimize", "OptimizeResult", "QuantTolerance", "MIN_SAMPLE_ROWS"]
