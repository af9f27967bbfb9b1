"""benchmark: latency, throughput, size, memory and load time of the native model and ONNX variants.

Measurements are interleaved (batch size outer, variant inner) so that when the time budget
runs out, every variant has been measured at the same batch sizes so far and the comparison
stays fair.  ONNX timings are ``session.run`` on prepared feeds; native timings are the
framework's own call (``predict_proba`` / ``predict`` / ``forward``) on the same rows.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import InvalidInputError
from .report import section, table

DEFAULT_BATCH_SIZES = (1, 16, 64, 256, 1024, 2048)
MIN_BENCH_ROWS = 1
POINT_TARGET_S = 0.2       # measure each (variant, batch) point for about this long...
MIN_REPS, MAX_REPS = 3, 2000  # ...with at least / at most this many timed runs

# Providers we can run locally on a sample; the others are reported as skipped with the reason.
_LOCAL = ("CUDAExecutionProvider", "ROCMExecutionProvider", "MIGraphXExecutionProvider",
          "DmlExecutionProvider", "CoreMLExecutionProvider", "OpenVINOExecutionProvider",
          "DnnlExecutionProvider", "CPUExecutionProvider")
_SKIP_REASONS = {
    "AzureExecutionProvider": "calls a remote Azure endpoint; it is not a local compute device",
    "TensorrtExecutionProvider": "builds a TensorRT engine per shape (minutes); benchmark CUDA instead",
}
_DEVICE_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                   "gpu": "CUDAExecutionProvider", "rocm": "ROCMExecutionProvider"}


@dataclass
class BenchPoint:
    """Timings of one (variant, provider, batch size)."""

    batch_size: int
    reps: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    rows_per_s: float
    per_row_us: float
    tiled: bool = False     # the batch repeats sample rows (sample smaller than the batch)


@dataclass
class BenchEntry:
    """One variant on one execution provider (or the native model in Python)."""

    variant: str                         # "native", "fp32", "int8-dynamic", "int8-static", "fp16"
    provider: str                        # requested provider, or "native"
    providers_assigned: list[str] = field(default_factory=list)
    fallback: bool = False               # requested provider missing from the session's providers
    threads: int | None = None           # intra-op threads the session was configured with
    size_bytes: int | None = None
    load_ms: float | None = None
    memory_mb: float | None = None       # RSS growth over session creation + warm-up runs
    points: list[BenchPoint] = field(default_factory=list)
    error: str | None = None
    note: str | None = None

    def point(self, batch_size: int) -> BenchPoint | None:
        return next((p for p in self.points if p.batch_size == batch_size), None)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BenchReport:
    """All measurements of one benchmark run."""

    entries: list[BenchEntry]
    batch_sizes: list[int]
    sample_rows: int
    providers_available: list[str]
    providers_skipped: dict[str, str]
    threads: dict
    budget_s: float
    elapsed_s: float = 0.0
    truncated: bool = False
    notes: list[str] = field(default_factory=list)

    def entry(self, variant: str, provider: str = "CPUExecutionProvider") -> BenchEntry | None:
        if variant == "native":
            provider = "native"
        return next((e for e in self.entries if e.variant == variant and e.provider == provider), None)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["entries"] = [e.to_dict() for e in self.entries]
        return d

    def rows(self) -> list[list]:
        out = []
        for e in self.entries:
            prov = "python" if e.provider == "native" else ",".join(p.replace("ExecutionProvider", "")
                                                                  for p in e.providers_assigned)
            if e.fallback:
                prov += f" (asked {e.provider.replace('ExecutionProvider', '')}: FELL BACK)"
            for p in e.points:
                out.append([e.variant, prov, p.batch_size, p.p50_ms, p.p95_ms, p.p99_ms,
                            round(p.rows_per_s), p.reps])
            if e.error:
                out.append([e.variant, prov, "—", "—", "—", "—", "—", e.error])
        return out

    def _repr_html_(self) -> str:
        head = ["variant", "provider", "batch", "p50 ms", "p95 ms", "p99 ms", "rows/s", "reps"]
        summary = table([[e.variant, e.provider, e.size_bytes, e.load_ms, e.memory_mb, e.threads]
                         for e in self.entries],
                        ["variant", "provider", "size bytes", "load ms", "memory MB", "threads"])
        flag = " (TRUNCATED: time budget ran out)" if self.truncated else ""
        notes = "".join(f"<p>{n}</p>" for n in self.notes)
        return section(f"Benchmark, {self.elapsed_s:.1f} s{flag}", table(self.rows(), head) + summary + notes)


# --- providers ------------------------------------------------------------------------------------

def resolve_providers(device: str | list[str] | None = "all") -> tuple[list[str], dict[str, str]]:
    """Providers to benchmark, and the available ones we skip with the reason.

    ``"all"``: every usable provider onnxruntime lists (CPU always).  ``"cpu"``/``"cuda"`` or a list
    of provider names: exactly those, even when onnxruntime does not list them, so that a missing
    GPU shows up as an explicit fall-back instead of silently timing the CPU.
    """
    import onnxruntime as ort

    available = list(ort.get_available_providers())
    skipped = {p: _SKIP_REASONS.get(p, "not a provider nbdeploy knows how to benchmark locally")
               for p in available if p not in _LOCAL}
    if device in (None, "all", "auto"):
        chosen = [p for p in _LOCAL if p in available]
    else:
        names = [device] if isinstance(device, str) else list(device)
        chosen = []
        for n in names:
            p = _DEVICE_ALIASES.get(n.lower(), n)
            if p not in _LOCAL and p not in available:
                raise InvalidInputError(f"Unknown execution provider or device {n!r}.",
                                        hint="Use 'cpu', 'cuda', 'all' or a name from "
                                             "onnxruntime.get_available_providers().",
                                        expected=sorted(set(_DEVICE_ALIASES) | set(available)), received=n)
            if p not in chosen:
                chosen.append(p)
    return chosen, skipped


def create_session(model_bytes: bytes, provider: str, *, threads: int | None = None):
    """A session on ``provider`` (CPU as the last resort); returns (session, fell_back)."""
    from .runtime.model import make_session

    providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    with warnings.catch_warnings():  # onnxruntime warns about a missing provider; we report it instead
        warnings.filterwarnings("ignore", message=".*not in available provider names.*")
        sess = make_session(model_bytes, providers=providers, threads=threads)
    return sess, provider not in sess.get_providers()


def default_threads() -> int:
    """What onnxruntime uses when intra_op_num_threads is 0: one per physical core."""
    try:
        import psutil

        return int(psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    except Exception:  # pragma: no cover
        return int(os.cpu_count() or 1)


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


# --- timing ----------------------------------------------------------------------------------------

def sample_matrix(X) -> np.ndarray:
    """The sample as float32, or as it is when it is a table (an object array of a DataFrame
    model's cells: strings stay strings)."""
    X = np.asarray(X)
    return X if X.dtype == object else X.astype(np.float32, copy=False)


def tile_rows(X: np.ndarray, n: int) -> np.ndarray:
    """``n`` rows taken from the sample, repeating it when it is smaller than ``n``."""
    if n <= len(X):
        return np.ascontiguousarray(X[:n])
    reps = math.ceil(n / len(X))
    return np.ascontiguousarray(np.tile(X, (reps, 1))[:n])


def measure(fn: Callable[[], Any], batch_size: int, *, target_s: float, deadline: float,
            max_reps: int = MAX_REPS) -> BenchPoint | None:
    """Time ``fn`` after one warm-up call; None if the deadline allowed no timed run."""
    fn()  # warm-up (first run at a new shape allocates buffers)
    times: list[float] = []
    total = 0.0
    while len(times) < max_reps:
        now = time.perf_counter()
        if now >= deadline:
            break
        fn()
        dt = time.perf_counter() - now
        times.append(dt)
        total += dt
        if (total >= target_s and len(times) >= MIN_REPS) or total >= 3 * target_s:
            break
    if not times:
        return None
    t = np.asarray(times) * 1e3
    p50 = float(np.percentile(t, 50))
    return BenchPoint(batch_size=batch_size, reps=len(times), p50_ms=p50,
                      p95_ms=float(np.percentile(t, 95)), p99_ms=float(np.percentile(t, 99)),
                      mean_ms=float(t.mean()), rows_per_s=batch_size / (p50 / 1e3) if p50 > 0 else 0.0,
                      per_row_us=p50 * 1e3 / batch_size)


def native_call(adapter) -> tuple[Callable[[np.ndarray], Any], str]:
    """The framework's own prediction call, without nbdeploy's normalisation on top."""
    return adapter.native_call()


# --- the benchmark -------------------------------------------------------------------------------

def benchmark(converted, *, variants: dict[str, Any] | None = None, device: str | list[str] = "all",
              batch_sizes: list[int] | None = None, time_budget_s: float = 20.0,
              threads: int | None = None, include_native: bool = True,
              deadline: float | None = None, progress: Callable[[float, str], None] | None = None
              ) -> BenchReport:
    """Benchmark the native model and each ONNX variant on ``converted.X``.

    ``variants`` maps names to ``onnx.ModelProto`` (default: ``{"fp32": converted.onnx_model}``).
    Each variant runs on every provider of ``device`` (see :func:`resolve_providers`).  Stops when
    ``time_budget_s`` (or the absolute ``deadline``, a ``time.perf_counter()`` value) is reached and
    flags the report ``truncated``.
    """
    X = sample_matrix(converted.X)
    if len(X) < MIN_BENCH_ROWS:
        raise InvalidInputError(f"The sample has {len(X)} rows; benchmarking needs at least {MIN_BENCH_ROWS}.",
                                hint="Pass a few representative rows as the sample.",
                                expected=MIN_BENCH_ROWS, received=len(X))
    start = time.perf_counter()
    deadline = min(deadline or math.inf, start + float(time_budget_s))
    sizes = sorted({int(b) for b in (batch_sizes or DEFAULT_BATCH_SIZES)})
    if not sizes or sizes[0] < 1:
        raise InvalidInputError(f"Batch sizes must be positive integers, got {batch_sizes!r}.",
                                hint="For example batch_sizes=[1, 16, 64, 256].")
    providers, skipped = resolve_providers(device)
    import onnxruntime as ort

    report = BenchReport(entries=[], batch_sizes=sizes, sample_rows=int(len(X)),
                         providers_available=list(ort.get_available_providers()),
                         providers_skipped=skipped,
                         threads={"intra_op_configured": threads or 0,
                                  "intra_op_default": default_threads(),
                                  "cpu_count_logical": os.cpu_count()},
                         budget_s=float(time_budget_s))
    if sizes[-1] > len(X):
        report.notes.append(f"Batches above {len(X)} rows repeat the sample (it has {len(X)} rows).")
    variants = variants if variants is not None else {"fp32": converted.onnx_model}
    batches = {b: tile_rows(X, b) for b in sizes}
    big = batches[sizes[-1]]
    runners: list[tuple[BenchEntry, Callable[[np.ndarray], Any]]] = []

    def say(frac: float, msg: str) -> None:
        if progress is not None:
            progress(min(max(frac, 0.0), 1.0), msg)

    # Setup pass: load each session and warm it up at the largest batch; the RSS growth over
    # this is the session's memory (sessions stay alive, so growth is not reused by the next).
    if include_native:
        fn, how = native_call(converted.adapter)
        entry = BenchEntry("native", "native", note=f"{converted.framework} {how}",
                           size_bytes=converted.adapter.native_size())
        try:
            rss0 = _rss()
            fn(batches[sizes[0]])
            fn(big)
            entry.memory_mb = max(0.0, (_rss() - rss0) / 2**20)
            runners.append((entry, fn))
        except Exception as exc:
            entry.error = f"{type(exc).__name__}: {exc}"
        report.entries.append(entry)
    for name, model in variants.items():
        data = model if isinstance(model, bytes) else model.SerializeToString()
        for prov in providers:
            if time.perf_counter() >= deadline:
                report.truncated = True
                break
            say(0.05 * len(report.entries) / max(1, len(variants) * len(providers)),
                f"loading {name} on {prov}")
            entry = BenchEntry(name, prov, size_bytes=len(data), threads=threads or default_threads())
            try:
                rss0 = _rss()
                t0 = time.perf_counter()
                sess, fell_back = create_session(data, prov, threads=threads)
                entry.load_ms = (time.perf_counter() - t0) * 1e3
                entry.providers_assigned = list(sess.get_providers())
                entry.fallback = fell_back
                if fell_back:
                    entry.note = (f"{prov} was requested but the session got only "
                                  f"{', '.join(entry.providers_assigned)}; these timings are NOT {prov}")
                    report.notes.append(f"{name}: {entry.note}.")
                run = _session_runner(sess, converted.spec)
                run(batches[sizes[0]])
                run(big)
                entry.memory_mb = max(0.0, (_rss() - rss0) / 2**20)
                runners.append((entry, run))
            except Exception as exc:
                entry.error = f"{type(exc).__name__}: {exc}"
            report.entries.append(entry)

    plan = [(b, e, fn) for b in sizes for e, fn in runners]
    for i, (b, entry, fn) in enumerate(plan):
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            report.truncated = True
            break
        say(0.05 + 0.95 * i / len(plan), f"timing {entry.variant} at batch {b}")
        target = min(POINT_TARGET_S, remaining / (len(plan) - i))
        try:
            pt = measure(lambda fn=fn, Xb=batches[b]: fn(Xb), b, target_s=target, deadline=deadline)
        except Exception as exc:
            entry.error = f"batch {b}: {type(exc).__name__}: {exc}"
            continue
        if pt is None:
            report.truncated = True
            break
        pt.tiled = b > len(X)
        entry.points.append(pt)
    report.elapsed_s = time.perf_counter() - start
    if report.truncated:
        report.notes.append(f"Stopped when the time budget ran out after {report.elapsed_s:.1f} s; the "
                            "table shows what was measured so far.")
    say(1.0, "benchmark done")
    return report


def _session_runner(sess, spec: dict) -> Callable[[np.ndarray], Any]:
    from .runtime.model import OnnxModel

    model = OnnxModel(None, spec, session=sess)
    outs = [o.name for o in sess.get_outputs()]
    cache: dict[int, dict] = {}

    def run(X: np.ndarray):
        feeds = cache.get(id(X))
        if feeds is None:  # prepare feeds once per batch array: we time the model, not the casting
            feeds = cache[id(X)] = model.feeds(X)
        return sess.run(outs, feeds)
    return run


# --- serving hints ---------------------------------------------------------------------------------

def thread_probe(model_bytes: bytes, spec: dict, X: np.ndarray, *, provider: str = "CPUExecutionProvider",
                 batch_size: int = 1, deadline: float = math.inf, target_s: float = 0.1) -> dict[int, float]:
    """p50 ms at ``batch_size`` for 1 intra-op thread and for the default (one per core)."""
    out: dict[int, float] = {}
    Xb = tile_rows(sample_matrix(X), batch_size)
    for n in sorted({1, default_threads()}):
        if time.perf_counter() >= deadline:
            break
        sess, _ = create_session(model_bytes, provider, threads=n)
        run = _session_runner(sess, spec)
        pt = measure(lambda run=run: run(Xb), batch_size, target_s=target_s, deadline=deadline)
        if pt is not None:
            out[n] = pt.p50_ms
    return out


def serving_hints(report: BenchReport, variant: str, provider: str = "CPUExecutionProvider", *,
                  probe: dict[int, float] | None = None, max_latency_slo_ms: float = 100.0) -> dict:
    """Threads and adaptive-batching settings for the served bundle, from the latency curve.

    Batching pays when the per-row latency at batch 16 or 64 is at most half of batch 1's.  The
    max batch is the smallest measured batch reaching 80% of the best throughput whose p95 stays
    under ``max_latency_slo_ms``; max_latency_ms leaves room to fill and run one such batch.
    """
    entry = report.entry(variant, provider)
    hints: dict = {"variant": variant, "provider": provider,
                   "threads": default_threads(), "threads_reason": "onnxruntime default (one per core)",
                   "batching": {"enabled": False, "max_batch_size": 1, "max_latency_ms": None,
                                "reason": "not measured"}}
    if entry is None or entry.point(1) is None:
        return hints
    pts = sorted(entry.points, key=lambda p: p.batch_size)
    one = entry.point(1)
    hints["row_p50_ms"] = one.p50_ms     # what one row costs alone (serving_policy reads it)
    gains = {p.batch_size: one.per_row_us / p.per_row_us for p in pts if p.batch_size in (16, 64)}
    b = hints["batching"]
    if gains and max(gains.values()) >= 2.0:
        ok = [p for p in pts if p.p95_ms <= max_latency_slo_ms] or pts[:1]
        best = max(p.rows_per_s for p in ok)
        pick = next(p for p in ok if p.rows_per_s >= 0.8 * best)
        b.update(enabled=pick.batch_size > 1, max_batch_size=pick.batch_size,
                 max_latency_ms=int(max(10, math.ceil(3 * pick.p95_ms))),
                 reason=f"per-row latency at batch {max(gains, key=gains.get)} is "
                        f"{max(gains.values()):.1f}x lower than at batch 1; batch {pick.batch_size} reaches "
                        f"{pick.rows_per_s / best:.0%} of the best throughput ({best:,.0f} rows/s)")
    else:
        b.update(reason="per-row latency barely drops with batch size "
                        + (", ".join(f"{k}: {v:.1f}x" for k, v in gains.items()) or "(batch 16/64 not measured)")
                        + "; serve rows as they come")
    if probe and len(probe) > 1:
        single, multi = probe.get(1), min(v for k, v in probe.items() if k != 1)
        nmulti = next(k for k, v in probe.items() if k != 1 and v == multi)
        if single is not None and single <= 1.15 * multi:
            hints.update(threads=1, threads_reason=f"1 thread {single:.3f} ms vs {nmulti} threads {multi:.3f} ms "
                                                   "at the serving batch: run one thread per worker, "
                                                   "more workers")
        else:
            hints.update(threads=nmulti, threads_reason=f"{nmulti} threads {multi:.3f} ms vs 1 thread "
                                                         f"{single:.3f} ms at the serving batch")
        hints["thread_probe_ms"] = {str(k): v for k, v in probe.items()}
    return hints


# --- serving policy --------------------------------------------------------------------------------

#: below this p50 for one row, the HTTP stack dominates a request: a batcher's thread hop and
#: extra intra-op threads would cost more than they save
CHEAP_ROW_MS = 0.2

_WHY_CHEAP_BATCH = ("the benchmark favours batches, but one row takes under 0.2 ms, so the HTTP "
                    "stack dominates and a batcher would only add a thread hop")
_WHY_CHEAP_THREADS = ("1: rows are served as they come and one row takes under 0.2 ms, so more "
                      "threads would only compete with the HTTP event loop")
_WHY_ONE_WORKER = ("one worker per replica: drift statistics live in the worker, and on a small "
                   "machine a second worker competes with onnxruntime's threads; scale out with "
                   "replicas (nbdeploy k8s)")
_WHY_NO_ACCESS_LOG = "off: BentoML's per-request log line costs more than a tree model's prediction"


def row_too_cheap_to_batch(hints: dict) -> bool:
    """The benchmark favours batches, but one row costs under CHEAP_ROW_MS: the HTTP stack then
    dominates and a batcher's thread hop would cost more than it saves."""
    if not (hints.get("batching") or {}).get("enabled"):
        return False
    one = hints.get("row_p50_ms")
    return one is not None and one < CHEAP_ROW_MS


def serving_policy(hints: dict, *, device: str = "cpu", allow_cpu_fallback: bool = False,
                   overrides: dict | None = None):
    """The served bundle's ServeConfig from :func:`serving_hints` (``{}`` when nothing was
    measured), then ``overrides`` (ServeConfig fields); returns ``(config, reasons)``, the reasons
    in words for the model card (see :func:`serving_reasons`)."""
    import dataclasses

    from .bundle import ServeConfig

    batching = hints.get("batching") or {}
    cheap = row_too_cheap_to_batch(hints)
    # Rows served one request at a time gain nothing from more intra-op threads, which would
    # only compete with the HTTP event loop for the cores.
    config = ServeConfig(device=device, threads=1 if cheap else (hints.get("threads") or 1),
                         allow_cpu_fallback=allow_cpu_fallback,
                         batching={"max_batch_size": int(batching.get("max_batch_size", 64)),
                                   "max_latency_ms": float(batching.get("max_latency_ms", 2.0))}
                         if batching.get("enabled") and not cheap else None)
    if overrides:
        known = {f.name for f in dataclasses.fields(ServeConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise InvalidInputError(f"Unknown serving option(s) {unknown}.",
                                    hint=f"Known: {sorted(known)}.", expected=sorted(known),
                                    received=unknown)
        config = dataclasses.replace(config, **overrides)
    return config, serving_reasons(hints, config)


def serving_reasons(hints: dict, config: Any) -> dict:
    """Why ``config`` serves the way it does, given the :func:`serving_hints` it came from."""
    batching = hints.get("batching") or {}
    cheap = row_too_cheap_to_batch(hints)
    if config.batching:
        why_batch = batching.get("reason", "requested")
    elif cheap:
        why_batch = _WHY_CHEAP_BATCH
    else:
        why_batch = batching.get("reason", "no benchmark: rows are served as they come")
    return {
        "threads": _WHY_CHEAP_THREADS if cheap and config.threads == 1
        else hints.get("threads_reason", "default"),
        "batching": why_batch,
        "workers": _WHY_ONE_WORKER,
        "access_log": _WHY_NO_ACCESS_LOG if not config.access_log else "on",
    }
