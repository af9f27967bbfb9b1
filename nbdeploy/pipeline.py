"""The Deployment: runs detect -> convert -> verify -> benchmark/quantize -> explain -> bundle
(-> serve -> push) in order, keeps every result, and emits progress events.

Every front end (magic, widget, CLI, server extension) is a thin layer over this module.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import re
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import InvalidInputError, NbdeployError
from .verify import Tolerance
from .vocab import QUANTIZE_CHOICES, STEPS, check_quantize, parse_explain

__all__ = ["Deployment", "StepEvent", "deploy", "default_name", "load", "STEPS", "QUANTIZE_CHOICES"]


@dataclass
class StepEvent:
    """One change of one step's state, sent to progress listeners."""

    step: str
    state: str                      # pending | running | done | failed | skipped
    elapsed_s: float = 0.0
    summary: str = ""
    fraction: float | None = None   # progress inside a long step, 0..1

    def to_dict(self) -> dict:
        return {"step": self.step, "state": self.state, "elapsed_s": round(self.elapsed_s, 3),
                "summary": self.summary, "fraction": self.fraction}


def default_name(model: Any) -> str:
    if isinstance(model, (str, Path)):
        base = Path(model).stem
    else:
        base = type(model).__name__
    name = re.sub(r"[^a-z0-9._-]+", "-", base.lower()).strip("-._") or "model"
    return name[:63]


class Deployment:
    """A model on its way to (or in) production.  Create it with :func:`nbdeploy.deploy`."""

    def __init__(self, model: Any, sample: Any, *, labels: Any = None, name: str | None = None,
                 task: str | None = None, quantize: str = "auto", explain: Any = ("shap", "lime"),
                 device: str = "cpu", allow_cpu_fallback: bool = False,
                 tolerance: Tolerance | None = None,
                 quantize_tolerance: float | None = None, benchmark_budget_s: float = 20.0,
                 feature_names: list[str] | None = None, serving: dict | None = None,
                 tokenizer: Any = None,
                 preprocess: Any = None,
                 class_names: Any = None,
                 progress: Callable[[StepEvent], None] | Iterable[Callable] | None = None):
        from .schema import validate_name

        check_quantize(quantize)
        if device not in ("cpu", "cuda"):
            raise InvalidInputError(f"Unknown device {device!r}.", hint="Use device='cpu' or 'cuda'.",
                                    expected=["cpu", "cuda"], received=device)
        self.model = model
        self.sample = sample
        self.labels = labels
        self.name = validate_name(name) if name is not None else default_name(model)
        self.task = task
        self.quantize = quantize
        self.explain_methods = parse_explain(explain)
        self.device = device
        self.allow_cpu_fallback = allow_cpu_fallback
        self.tolerance = tolerance or Tolerance()
        self.quantize_tolerance = quantize_tolerance
        self.benchmark_budget_s = benchmark_budget_s
        self.feature_names = feature_names
        self.tokenizer = tokenizer      # transformers text classifiers (issue 21)
        self.preprocess = preprocess    # nbdeploy.ImagePreprocess for image models
        self.class_names = class_names  # names of a classifier's outputs 0..k-1 (or id2label)
        self.serving_overrides = dict(serving or {})
        if progress is None:
            self._listeners: list[Callable] = []
        elif callable(progress):
            self._listeners = [progress]
        else:
            self._listeners = list(progress)
        self.steps: dict[str, StepEvent] = {s: StepEvent(s, "pending") for s in STEPS}
        self.converted = None
        self.verify_report = None
        self.optimized = None
        self.explanation = None
        self.bundle = None
        self.server = None
        self.pushed = None
        self.error: NbdeployError | None = None
        self.error_traceback: str | None = None
        self.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        #: execution count of the notebook cell whose output shows this deployment's live view
        #: (set by %deploy), so that displaying it again in that cell does not repeat the view
        self.shown_in_cell: int | None = None

    # -- events ------------------------------------------------------------------------------
    def add_listener(self, fn: Callable[[StepEvent], None]) -> None:
        self._listeners.append(fn)

    def _emit(self, ev: StepEvent) -> None:
        self.steps[ev.step] = ev
        for fn in list(self._listeners):
            try:
                fn(ev)
            except Exception:  # a broken view must never break the deployment
                pass

    def _run_step(self, step: str, fn: Callable[[Callable[[float, str], None]], str]) -> None:
        t0 = time.perf_counter()
        self._emit(StepEvent(step, "running"))

        def progress(fraction: float, message: str = "") -> None:
            self._emit(StepEvent(step, "running", time.perf_counter() - t0, message,
                                 max(0.0, min(1.0, float(fraction)))))

        try:
            summary = fn(progress)
        except Exception as exc:
            err = exc if isinstance(exc, NbdeployError) else NbdeployError(
                f"{step} failed: {type(exc).__name__}: {exc}",
                hint="This looks like a bug in nbdeploy or a library it uses; the traceback "
                     "is in Deployment.error_traceback.")
            if err is not exc:
                err.__cause__ = exc
            self.error = err
            self.error_traceback = traceback.format_exc()
            self._emit(StepEvent(step, "failed", time.perf_counter() - t0, err.message))
            if err is exc:
                raise
            raise err from exc
        self._emit(StepEvent(step, "done", time.perf_counter() - t0, summary or ""))

    def mark_skipped(self, step: str, reason: str) -> None:
        """Record that ``step`` does not run here, and why (e.g. serve: "not requested")."""
        if step not in self.steps:
            raise InvalidInputError(f"Unknown step {step!r}.", hint=f"Steps: {', '.join(STEPS)}.",
                                    expected=list(STEPS), received=step)
        self._emit(StepEvent(step, "skipped", 0.0, reason))

    # -- the pipeline ------------------------------------------------------------------------
    def run(self, *, build: bool = True) -> Deployment:
        """Run every step up to and including the bundle."""
        self._run_step("detect", self._detect)
        self._run_step("convert", self._convert)
        self._run_step("verify", self._verify)
        self._optimize_steps()
        spec = self.converted.spec
        if self.explain_methods and spec.get("input_shape") and int(spec["n_features"]) > 1024:
            # per-pixel SHAP/LIME over thousands of inputs is out of any budget; the bundle's
            # /explain gives occlusion attributions on the ONNX model instead (runtime/images.py)
            self.mark_skipped("explain", f"image model with {spec['n_features']} inputs: explained at "
                                  "serve time (/explain: image SHAP, LIME or occlusion)")
        elif self.explain_methods:
            self._run_step("explain", self._explain)
        else:
            self.mark_skipped("explain", "explain='none'")
        if build:
            self._run_step("bundle", self._bundle)
        else:
            self.mark_skipped("bundle", "build=False")
        return self

    def _detect(self, progress) -> str:
        from .adapters import detect

        self._adapter = detect(self.model, task=self.task)
        if getattr(self._adapter, "input_kind", None) == "text":
            self._adapter.tokenizer = self.tokenizer
        return f"{self._adapter.framework} ({self._adapter.model_type})"

    def _convert(self, progress) -> str:
        from .convert import convert

        self.converted = convert(self.model, self.sample, task=self.task,
                                 feature_names=self.feature_names, adapter=getattr(self, "_adapter", None))
        c = self.converted
        if self.preprocess is not None:     # how the bundle turns image files into inputs
            c.spec["preprocess"] = self.preprocess.check(c.spec.get("input_shape"))
        if c.spec.get("input_shape"):
            return (f"{c.spec['task']}, input {c.spec['input_shape']} ({c.spec.get('layout')}), "
                    f"ONNX {len(c.onnx_bytes) / 1024:.0f} KiB via {c.converter}")
        what = f"{c.schema.n_features} features"
        if c.is_table:
            kinds: dict[str, int] = {}
            for col in c.columns:
                kinds[col["kind"]] = kinds.get(col["kind"], 0) + 1
            what = f"{c.schema.n_features} columns (" + ", ".join(f"{n} {k}" for k, n in kinds.items()) + ")"
        return (f"{c.spec['task']}, {what}, ONNX "
                f"{len(c.onnx_bytes) / 1024:.0f} KiB via {c.converter}")

    def _verify(self, progress) -> str:
        from .verify import verify

        self.verify_report = verify(self.converted, labels=self.labels, tolerance=self.tolerance)
        return self.verify_report.summary()

    def _optimize_steps(self) -> None:
        from .optimize import optimize

        def run(progress) -> str:
            kwargs = dict(labels=self.labels, quantize=self.quantize, device=self.device,
                          time_budget_s=self.benchmark_budget_s, progress=progress)
            if self.quantize_tolerance is not None:
                kwargs["tolerance"] = self.quantize_tolerance
            sizes = getattr(self.converted.adapter, "bench_batch_sizes", None)
            if sizes:   # text models: batch 1 and 16 (a 2048-text native batch would eat the budget)
                kwargs["batch_sizes"] = list(sizes)
            self.optimized = optimize(self.converted, **kwargs)
            return self.optimized.benchmark_summary()

        self._run_step("benchmark", run)  # benchmark and quantization are one measured pass
        self._emit(StepEvent("quantize", "done", 0.0, self.optimized.reason))

    def _explain(self, progress) -> str:
        from .explain import explain

        self.explanation = explain(self.converted, onnx_model=self.chosen_model,
                                   methods=self.explain_methods, progress=progress)
        return self.explanation.summary()

    @property
    def chosen_model(self):
        if self.optimized is not None:
            return self.optimized.chosen_model
        return self.converted.onnx_model if self.converted else None

    @property
    def chosen_spec(self) -> dict:
        return self.optimized.chosen_spec if self.optimized is not None else self.converted.spec

    @property
    def chosen_variant(self) -> str:
        return self.optimized.chosen if self.optimized is not None else "fp32"

    def _hints(self) -> dict:
        return (self.optimized.serving if self.optimized is not None else None) or {}

    def serve_config(self):
        """How the bundle serves (a bundle.ServeConfig): the benchmark's serving hints through
        :func:`nbdeploy.benchmark.serving_policy`, then the ``serving=`` overrides."""
        from .benchmark import serving_policy

        config, _ = serving_policy(self._hints(), device=self.device,
                                   allow_cpu_fallback=self.allow_cpu_fallback,
                                   overrides=self.serving_overrides)
        return config

    def serving_reasons(self, config) -> dict:
        """Why the bundle serves the way it does, in words, for the model card."""
        from .benchmark import serving_reasons

        return serving_reasons(self._hints(), config)

    def _bundle(self, progress) -> str:
        from . import bundle as _bundle
        from .drift import write_baseline

        config = self.serve_config()
        with tempfile.TemporaryDirectory(prefix="nbdeploy-plots-") as tmp:
            plots: list[Path] = []
            for result in (self.optimized, self.explanation):
                if result is not None:
                    plots.extend(Path(p) for p in result.save_plots(tmp))
            progress(0.3, "rendering service")

            def extra(model_dir: Path) -> None:
                if self.converted.spec.get("input_shape"):   # images: per-channel statistics
                    from .images import write_image_baseline

                    write_image_baseline(model_dir, self.converted.X, self.converted.spec)
                elif self.converted.spec.get("input_mode") != "text":   # no numeric drift bins for texts
                    write_baseline(model_dir, self.converted.X, self.converted.schema.feature_names,
                                   columns=self.converted.spec.get("columns"))
                if self.explanation is not None:
                    cfg = getattr(self.explanation, "config", None) or {}
                    if names is not None and cfg.get("classes") is not None:
                        # /explain names its outputs (and accepts "output") as /predict does
                        cfg["classes"] = [str(n) for n in names]
                        if len(cfg.get("output_names") or ()) == len(names):
                            cfg["output_names"] = [str(n) for n in names]
                    self.explanation.write_artifacts(model_dir)
                elif self.explain_methods and len(self.converted.spec.get("input_shape") or ()) > 2:
                    # a large image model is explained at serve time only (image SHAP, LIME,
                    # occlusion): record what was asked for, so that the bundle pins what it needs
                    _write_image_explain_config(model_dir, self.explain_methods)

            from .images import named_classes

            spec = self.chosen_spec
            names = named_classes(self.class_names, spec.get("classes"), self.model)
            if names is not None:   # /predict answers with names (after verify, which compares indices)
                spec = dict(spec, classes=names, class_values=list(spec["classes"]))
            metadata = self.to_dict(include_bundle=False)
            if names is not None:
                metadata["classes"] = names
            # The card describes the finished build, not this moment: the bundle step is done
            # once the card is written, and serve/push are later actions, not build steps.
            metadata["steps"] = [dict(e, state="done", summary="", fraction=None)
                                 if e["step"] == "bundle" else e
                                 for e in metadata["steps"] if e["step"] not in ("serve", "push")]
            metadata["serving"] = dict(config.to_dict(), reasons=self.serving_reasons(config))
            metadata["description"] = (f"{self.converted.framework} {self.converted.spec['task']} "
                                       f"deployed with nbdeploy {__version__}")
            self.bundle = _bundle.build(name=self.name, onnx_bytes=self.chosen_model.SerializeToString(),
                                        spec=spec, metadata=metadata, config=config,
                                        extra=extra, plots=plots)
        return self.bundle.tag

    # -- after the pipeline --------------------------------------------------------------------
    @property
    def tag(self) -> str | None:
        return self.bundle.tag if self.bundle else None

    @property
    def path(self) -> str | None:
        return self.bundle.path if self.bundle else None

    def serve(self, port: int | None = None, *, host: str = "127.0.0.1", timeout: float = 90.0,
              stable: bool = False, engine: str = "bentoml", **options: Any):
        """Serve the bundle in the background (``engine``: "bentoml" for ``bentoml serve``, or
        "direct" for the bundle's own app on uvicorn); returns a ServerHandle.  ``options`` go
        to :func:`nbdeploy.serve.start` (``auth``, ``tls_cert``, ``tls_key``, ``env``)."""
        from .serve import find, rollout, start

        self._require_bundle()
        t0 = time.perf_counter()
        self._emit(StepEvent("serve", "running"))
        # One server per name: a re-deployed name takes over its running server's address
        # (a stable one is rolled with no failed request; otherwise the old one is stopped
        # first), so no client keeps getting the old model from a forgotten port.
        previous = find(self.name)
        note = ""
        try:
            # (a stable address serves every version through nbdeploy.runtime.router, whatever
            # the engine asked for)
            if len(previous) == 1 and previous[0].stable and port is None and not options:
                note = f" (rolled over from {previous[0].tag}, same address)"
                self.server = rollout(previous[0].id, self.tag, timeout=timeout)
            else:
                for h in previous:
                    h.stop()
                if previous:
                    port = port or previous[0].port
                    note = f" (replaced {', '.join(h.tag for h in previous)})"
                self.server = start(self.tag, port=port, host=host, timeout=timeout, stable=stable,
                                    engine=engine, **options)
        except NbdeployError as exc:
            self._emit(StepEvent("serve", "failed", time.perf_counter() - t0, exc.message))
            raise
        self._emit(StepEvent("serve", "done", time.perf_counter() - t0, self.server.url + note))
        return self.server

    def _require_bundle(self) -> None:
        if self.bundle is None:
            raise NbdeployError("This deployment has no bundle yet.",
                                hint="Run the pipeline first: nbdeploy.deploy(model, sample).")

    def push(self, ref: str, **options: Any):
        """Build an OCI image of the bundle (no Docker daemon needed) and push it to ``ref``.

        Returns a PushResult; ``str(result)`` is ``ref@sha256:...``.  Options go to
        :func:`nbdeploy.publish.push` (``base``, ``insecure``, ``credentials``, ``builder``).
        """
        from .publish import push as _push

        self._require_bundle()
        t0 = time.perf_counter()
        self._emit(StepEvent("push", "running", 0.0, f"building the image for {ref}"))
        user_progress = options.pop("progress", None)

        def progress(digest: str, done: int, total: int) -> None:
            self._emit(StepEvent("push", "running", time.perf_counter() - t0,
                                 f"uploading {digest[7:19]}", done / total if total else None))
            if user_progress:
                user_progress(digest, done, total)

        try:
            self.pushed = _push(self.tag, ref, progress=progress, **options)
        except NbdeployError as exc:
            self._emit(StepEvent("push", "failed", time.perf_counter() - t0, exc.message))
            raise
        self._emit(StepEvent("push", "done", time.perf_counter() - t0, str(self.pushed)))
        return self.pushed

    def export(self, path: str, *, overwrite: bool = False) -> Path:
        """Write the bundle as one archive that stock ``bentoml import`` (or ``nbdeploy import``) reads."""
        from .export import export_bundle

        self._require_bundle()
        return export_bundle(self.tag, path, overwrite=overwrite)

    def k8s(self, image: str, path: str | None = None, **options: Any):
        """Kubernetes manifests (Deployment, Service, HPA) for ``image``; written to ``path`` if given."""
        from .k8s import k8s_manifests, write_manifests

        self._require_bundle()
        options.setdefault("gpu", self.device == "cuda")
        manifests = k8s_manifests(self.tag, image, **options)
        return write_manifests(manifests, path) if path else manifests

    def stop(self) -> None:
        """Stop the server this deployment started (if any)."""
        if self.server is not None:
            self.server.stop()
            self._emit(StepEvent("serve", "skipped", 0.0, "stopped"))

    def predict(self, X: Any) -> dict:
        """Predict in-process with the bundled ONNX variant (same code as the server)."""
        from .runtime.model import OnnxModel
        from .schema import as_matrix

        spec = self.chosen_spec
        if spec.get("input_mode") == "table":
            M = _table_input(X, spec)
        else:
            M = as_matrix(X, what="input", n_features=int(spec["n_features"]), allow_nan=True)
            _refuse_nan_where_not_nullable(M, spec.get("columns") or [])
        return OnnxModel(self.chosen_model.SerializeToString(), spec).predict(M)

    # -- reporting -------------------------------------------------------------------------------
    def to_dict(self, *, include_bundle: bool = True) -> dict:
        c = self.converted
        d: dict[str, Any] = {
            "name": self.name,
            "created": self.created,
            "framework": c.framework if c else None,
            "model_type": c.adapter.model_type if c else None,
            "task": c.spec["task"] if c else None,
            "input_schema": c.schema.to_dict() if c else None,
            "classes": c.spec.get("classes") if c else None,
            "convert": c.to_dict() if c else None,
            "verify": self.verify_report.to_dict() if self.verify_report else None,
            "optimize": self.optimized.to_dict() if self.optimized is not None else None,
            "chosen_variant": self.chosen_variant,
            "explain": self.explanation.to_dict() if self.explanation is not None else None,
            "device": self.device,
            "pushed": self.pushed.to_dict() if self.pushed is not None else None,
            "steps": [e.to_dict() for e in self.steps.values()],
            "versions": _versions(),
        }
        if self.error is not None:
            d["error"] = self.error.to_dict()
        if include_bundle:
            d["bundle"] = self.bundle.to_dict() if self.bundle else None
            d["tag"] = self.tag
            d["server"] = self.server.to_dict() if self.server and self.server.is_alive() else None
        return d

    def _repr_html_(self) -> str:
        """The self-contained report; the widget's static fallback is the same HTML."""
        import sys

        from .report import deployment_html

        # the live view's snippets when there is one (widget.view_of, public); else the report's
        view_of = getattr(sys.modules.get("nbdeploy.widget"), "view_of", None)
        view = view_of(self) if view_of is not None else None
        snips = ({"curl": view.curl_snippet, "python": view.python_snippet}
                 if view is not None and view.curl_snippet else None)
        return deployment_html(self, snippets=snips)

    def __repr__(self) -> str:
        lines = [f"Deployment {self.name!r} tag={self.tag}"]
        for e in self.steps.values():
            lines.append(f"  {e.step:<9} {e.state:<8} {e.summary}")
        return "\n".join(lines)


def _refuse_nan_where_not_nullable(M, columns: list[dict]) -> None:
    """NaN only where the served API would take null (the native model and the graph agree)."""
    import numpy as np

    if not columns or len(columns) != M.shape[1]:
        return
    nan = np.isnan(M)
    for j in np.where(nan.any(axis=0))[0]:
        col = columns[int(j)]
        if not col.get("nullable"):
            row = int(np.where(nan[:, j])[0][0])
            raise InvalidInputError(f"Column {col['name']!r} has NaN (row {row}), and this model does "
                                    "not accept missing values there.",
                                    hint="Impute the value first; GET /metadata (input_schema.columns) "
                                         "marks the columns that take missing values.",
                                    expected="finite numbers", received=f"NaN at row {row}")


def _table_input(X: Any, spec: dict):
    """A DataFrame or a list of records for a table model, checked as the served API checks it."""
    from .runtime.validation import ClientError, parse_table
    from .schema import ColumnSpec, is_frame, table_from_frame

    columns = spec["columns"]
    if is_frame(X):
        missing = [c["name"] for c in columns if c["name"] not in X.columns]
        if missing:
            raise InvalidInputError(f"The input lacks column(s) {missing[:5]}.",
                                    hint="Pass a DataFrame with the model's columns.",
                                    expected=[c["name"] for c in columns][:20],
                                    received=list(map(str, X.columns))[:20])
        T = table_from_frame(X, [ColumnSpec(**c) for c in columns])
        rows = [[None if isinstance(v, float) and v != v else v for v in r] for r in T.tolist()]
    elif isinstance(X, list) and X:
        rows = X
    else:
        raise InvalidInputError(f"A model fit on a DataFrame predicts on a DataFrame or a list of "
                                f"records; got {type(X).__name__}.",
                                hint="Pass rows as a DataFrame with the training columns.",
                                expected="DataFrame or list of dicts", received=type(X).__name__)
    try:
        return parse_table(rows, columns)
    except ClientError as exc:
        raise InvalidInputError(exc.message, hint=exc.hint, expected=exc.expected,
                                received=exc.received) from None


def _versions() -> dict:
    from importlib import metadata

    out = {"nbdeploy": __version__, "python": platform.python_version()}
    for dist in ("onnxruntime", "onnxruntime-gpu", "onnx", "bentoml", "skl2onnx", "onnxmltools",
                 "scikit-learn", "numpy", "shap", "lime"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _write_image_explain_config(model_dir: Path, methods: tuple[str, ...]) -> None:
    """``model/explain/explain_config.json`` of an image bundle explained only at serve time."""
    from .runtime.explain import CONFIG_FILE, EXPLAIN_DIR
    from .vocab import SHAP_MODES

    folder = Path(model_dir) / EXPLAIN_DIR
    folder.mkdir(parents=True, exist_ok=True)
    asked = sorted({"shap" if m in SHAP_MODES else m for m in methods})
    (folder / CONFIG_FILE).write_text(json.dumps({"kind": "image", "methods": asked}), encoding="utf-8")


def deploy(model: Any, sample: Any, *, labels: Any = None, name: str | None = None,
           serve: bool = False, port: int | None = None, push: str | None = None,
           **options: Any) -> Deployment:
    """Convert, verify, benchmark, quantize, explain and bundle ``model``; optionally serve it.

    ``sample`` is a few hundred rows of real input (ndarray or DataFrame); ``labels`` are
    optional true targets for accuracy numbers.  Options: ``task``, ``quantize``
    (auto|none|int8-dynamic|int8-static|fp16), ``explain`` ('shap,lime' or 'none'),
    ``device`` (cpu|cuda), ``tolerance`` (:class:`nbdeploy.Tolerance`), ``progress``.
    """
    d = Deployment(model, sample, labels=labels, name=name, **options)
    d.run()
    if serve:
        d.serve(port=port)
    else:
        d.mark_skipped("serve", "not requested")
    if push:
        d.push(push)
    else:
        d.mark_skipped("push", "not requested")
    return d


def load(tag: str) -> dict:
    """The stored report (model card) of a bundle."""
    from .store import read_report

    return read_report(tag)
