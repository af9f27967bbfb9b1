"""The served bundle's HTTP API as a Starlette app, mounted into the BentoML service.

Routes: POST /predict, POST /explain, GET /metadata, GET /drift, GET /plots/{name}, and
GET /nbdeploy/openapi.json.  Under ``bentoml serve`` BentoML itself answers /livez, /readyz
(via the service's ``__is_ready__``) and /metrics, and the service's ``@bentoml.api`` methods
(``/api/predict``, ``/api/explain``, for BentoML's clients) call :meth:`Runtime.api`.  Under the
direct engine (``engine.py``) the same app, built with ``direct=True``, answers those too.

Model work beyond the concurrency limit (``limits.py``) gets a 503 with ``Retry-After``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import auth as _auth
from . import limits as _limits
from .jsonlimits import JsonTooDeep, loads_bounded
from .validation import ClientError, parse_rows

if TYPE_CHECKING:  # numpy loads in the worker (Runtime.load), not in BentoML's arbiter,
    import numpy as np  # which imports this module only to read the service's config

log = logging.getLogger("nbdeploy.runtime")

JSON_TYPES = ("application/json", "text/json")
ENGINE_ENV = "NBDEPLOY_ENGINE"
ENGINES = ("bentoml", "direct")
#: when the explainer stack (shap: numba, scipy...) is loaded: on the first /explain (lazy,
#: the default: a predict-only replica never pays its memory), right after start-up (eager),
#: or never (off: /explain answers 501)
EXPLAIN_ENV = "NBDEPLOY_EXPLAIN"
EXPLAIN_POLICIES = ("lazy", "eager", "off")
GC_FREEZE_ENV = "NBDEPLOY_GC_FREEZE"
#: most event-loop time one inline /explain may take (measured per row, see explain_inline)
INLINE_EXPLAIN_MS = 2.0


def _read_json(path: Path, default: Any = None) -> Any:
    if not path.is_file():
        return default
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _memory() -> dict:
    """Resident memory of this process (the worker under bentoml serve), from /proc."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return {"rss_mb": round(int(line.split()[1]) / 1024, 1), "process": os.getpid()}
    except (OSError, ValueError, IndexError):
        pass
    return {}


def not_ready_body() -> dict:
    return {"error": "unavailable", "message": "The model is still loading.",
            "hint": "Retry after GET /readyz answers 200."}


class Runtime:
    """Everything the service needs, loaded from the bundle folder (no pickle, ever)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.model_dir = self.root / "model"
        self.spec = _read_json(self.model_dir / "spec.json")
        self.config = _read_json(self.model_dir / "config.json", {}) or {}
        self.max_rows = int(self.config.get("max_rows", 10_000))
        self.max_body = int(self.config.get("max_body_bytes", 16 * 1024 * 1024))
        self.model = None
        self.providers: list[str] = []
        self.ready = False
        self.cpu_fallback = False
        self.load_error: str | None = None
        self._lock = threading.Lock()
        self.drift = None
        self.batcher = None
        self.explainer = None
        self.started = time.time()
        engine = os.environ.get(ENGINE_ENV, "bentoml").strip().lower()
        self.engine = engine if engine in ENGINES else "bentoml"
        policy = os.environ.get(EXPLAIN_ENV) or self.config.get("explain_load") or "lazy"
        self.explain_policy = policy if policy in EXPLAIN_POLICIES else "lazy"
        self.limit: int | None = None       # requests in flight before model work is shed
        self.limit_info: dict = {}
        self.retry_after_s = _limits.RETRY_AFTER_S
        self.pending = _limits.LoopTasks()  # the direct engine counts uvicorn's tasks instead
        self.shed = 0
        self._admit_credit = 0.0            # see overloaded()
        self._explain_row_ms: float | None = None   # measured TreeSHAP cost per row

    # -- loading ---------------------------------------------------------------------------
    def load(self) -> None:
        """Create the onnxruntime session; refuse to run on the wrong provider."""
        from .model import OnnxModel

        wanted = list(self.config.get("providers") or ["CPUExecutionProvider"])
        model_path = self.model_dir / self.config.get("model_file", "model.onnx")
        self.model = OnnxModel(model_path, self.spec, providers=wanted,
                               threads=self.config.get("threads"))
        self.providers = self.model.providers
        if wanted[0] != "CPUExecutionProvider" and self.providers[0] != wanted[0]:
            msg = (f"{wanted[0]} was requested but onnxruntime assigned {self.providers}. "
                   "Install onnxruntime-gpu with a matching CUDA, or rebuild with device='cpu'.")
            if not self.config.get("allow_cpu_fallback"):
                raise RuntimeError(msg)
            log.warning("%s Falling back to CPU because allow_cpu_fallback is set.", msg)
            self.cpu_fallback = True
        try:
            from .drift import DriftMonitor

            self.drift = DriftMonitor.from_bundle(self.model_dir)
        except ImportError:
            self.drift = None
        batching = self.config.get("batching")
        if batching:
            from .batching import Batcher

            self.batcher = Batcher(self.model.run, max_batch_size=int(batching.get("max_batch_size", 64)))
        # one warm-up run so the first request does not pay for lazy initialisation
        import numpy as np

        self.model.run(np.array([["warm up"]], dtype=object) if self.spec.get("input_mode") == "text"
                       else np.zeros((1, int(self.spec["n_features"])), dtype=np.float32))
        self.limit_info = _limits.derive(_read_json(self.model_dir / "metadata.json", {}) or {},
                                         self.config, self.engine)
        self.limit = self.limit_info["limit"]
        if os.environ.get(GC_FREEZE_ENV, "1") != "0":
            # Everything imported so far (BentoML, pydantic, onnxruntime...) lives as long as the
            # process: move it out of the collector's reach, so a full collection scans only what
            # requests allocate instead of pausing every request in flight for it.
            import gc

            gc.collect()
            gc.freeze()
        self.ready = True
        log.info("nbdeploy bundle ready on %s (%s engine; at most %s requests in flight)",
                 self.providers, self.engine, self.limit)
        if (self.model_dir / "explain").is_dir() and self.explain_policy == "eager":
            # importing shap/lime takes seconds: do it after readiness, off the request path
            threading.Thread(target=self._warm_explainer, name="nbdeploy-explain-warmup",
                             daemon=True).start()
        if self.explain_policy == "eager" and len(self.spec.get("input_shape") or ()) > 2:
            from .images import start_shap_warmup  # image SHAP compiles once per process

            start_shap_warmup()

    def _in_flight(self) -> int | None:
        try:
            return int(self.pending())
        except RuntimeError:  # no running event loop (a test calling metadata() directly)
            return None

    def overloaded(self) -> bool:
        """Whether model work should be refused now (counts it when so).

        With ``pending`` requests waiting beyond the limit, about ``limit / pending`` of them
        are admitted (a credit that fills by that share per request): the admitted ones among
        the waiting stay about ``limit``, so their wait stays bounded, and no stream of
        requests starves — refusing every request while more than ``limit`` wait would answer
        nothing at all under a steady overload (a small inline predict never leaves the queue
        shorter than the limit)."""
        if not self.limit:
            return False
        pending = self.pending()
        if pending <= self.limit:
            return False
        self._admit_credit += self.limit / pending
        if self._admit_credit >= 1.0:
            self._admit_credit -= 1.0
            return False
        self.shed += 1
        return True

    def _warm_explainer(self) -> None:
        try:
            ex = self._get_explainer()
            import numpy as np

            zero = np.zeros((1, int(self.spec["n_features"])), dtype=np.float32)
            ex.explain(zero, method="shap", options={})
            try:
                import lime.lime_tabular  # noqa: F401  (only present when the bundle uses LIME)
            except ImportError:
                pass
        except Exception as exc:  # reported to the client on the first /explain instead
            log.warning("explainer warm-up failed: %s", exc)

    def metadata(self) -> dict:
        meta = _read_json(self.model_dir / "metadata.json", {}) or {}
        meta = dict(meta)
        versions = dict(meta.get("versions") or {})
        try:
            import onnxruntime

            versions["onnxruntime_serving"] = onnxruntime.__version__
        except Exception:  # pragma: no cover
            pass
        meta["versions"] = versions
        meta["serving"] = dict(meta.get("serving") or {}, providers=self.providers,
                               cpu_fallback=self.cpu_fallback,
                               batching=({"max_batch_size": self.batcher.max_batch_size,
                                          "batches": self.batcher.batches, "rows": self.batcher.rows}
                                         if self.batcher else None),
                               ready=self.ready, uptime_s=round(time.time() - self.started, 1),
                               max_rows=self.max_rows, engine=self.engine,
                               concurrency_limit=dict(self.limit_info, shed=self.shed,
                                                      in_flight=self._in_flight()),
                               explainer={"load": self.explain_policy,
                                          "loaded": self.explainer is not None,
                                          "shap_imported": "shap" in sys.modules,
                                          "tree_shap_row_ms": (round(self._explain_row_ms, 3)
                                                               if self._explain_row_ms else None),
                                          "inline_up_to_ms": INLINE_EXPLAIN_MS},
                               memory=_memory())
        if (self.spec or {}).get("input_shape"):     # N-D / image models (runtime/images.py)
            meta["input"] = {k: self.spec.get(k) for k in ("input_shape", "layout", "dtype", "preprocess")}
        if "tag" not in meta:
            meta["tag"] = os.environ.get("BENTOML_BENTO_TAG")
        return meta

    # -- request handling --------------------------------------------------------------------
    def parse(self, body: Any) -> np.ndarray:
        X = parse_rows(body, n_features=int(self.spec["n_features"]),
                       feature_names=self.spec.get("feature_names"), max_rows=self.max_rows,
                       spec=self.spec)
        if self.drift is not None:
            self.drift.observe(X)
        return X

    def predict(self, body: Any) -> dict:
        return self.model.predict(self.parse(body))

    def explain(self, body: Any) -> dict:
        if (self.spec or {}).get("input_shape") and isinstance(body, dict) \
                and body.get("method", "occlusion") == "occlusion":   # images: runtime/images.py
            from .images import MAX_EXPLAIN_IMAGES, occlusion

            X = parse_rows(body, n_features=int(self.spec["n_features"]), feature_names=None,
                           max_rows=min(self.max_rows, MAX_EXPLAIN_IMAGES), spec=self.spec)
            return occlusion(self.model, X, self.spec, body)
        self._get_explainer()
        X = parse_rows(body, n_features=int(self.spec["n_features"]),
                       feature_names=self.spec.get("feature_names"),
                       max_rows=min(self.max_rows, self.explainer.max_rows), spec=self.spec)
        method = body.get("method", "shap")
        return self._timed_explain(X, method, body)

    def explain_inline(self, body: Any) -> bool:
        """Whether to explain on the event loop: TreeSHAP already loaded and measured here at
        under INLINE_EXPLAIN_MS for these rows.  On a busy machine, waking a worker thread
        costs more than a small forest's TreeSHAP (~0.5 ms a row for 100 trees of depth 8);
        first calls (which import shap) and costly models always go to a thread."""
        ex, per_row = self.explainer, self._explain_row_ms
        if ex is None or per_row is None or not isinstance(body, dict):
            return False
        rows = body.get("inputs")
        return (isinstance(rows, list) and 0 < len(rows) * per_row <= INLINE_EXPLAIN_MS
                and body.get("method", "shap") == "shap" and getattr(ex, "kind", None) == "tree")

    def _timed_explain(self, X, method: str, body: dict) -> dict:
        warm = getattr(self.explainer, "_tree_explainer", None) is not None  # shap imported already
        t0 = time.perf_counter()
        out = self.explainer.explain(X, method=method, options=body)
        if warm and method == "shap" and getattr(self.explainer, "kind", None) == "tree" and len(X):
            ms = (time.perf_counter() - t0) * 1e3 / len(X)
            prev = self._explain_row_ms
            self._explain_row_ms = ms if prev is None else 0.8 * prev + 0.2 * ms
        return out

    def _get_explainer(self):
        if self.explainer is None and self.explain_policy == "off":
            raise ClientError(501, f"Explanations are turned off in this replica (${EXPLAIN_ENV}=off).",
                              hint="Send /explain to a replica started without it.")
        if self.explainer is None:
            with self._lock:
                if self.explainer is None:
                    try:
                        from .explain import ServeExplainer
                    except ImportError as exc:
                        raise ClientError(501, "This bundle was built without explanations.",
                                          hint="Rebuild with explain='shap,lime'.") from exc
                    self.explainer = ServeExplainer.from_bundle(self.model_dir, self.model, self.config)
        return self.explainer


def build_app(runtime: Runtime, *, direct: bool = False, metrics=None):
    """The Starlette app with nbdeploy's routes.

    ``direct=True`` (the direct engine) adds what BentoML answers otherwise: /livez, /readyz,
    /healthz, /metrics (``metrics``: a :class:`metrics.Metrics`), BentoML's client routes
    /api/predict and /api/explain, and /schema.json for BentoML's clients.
    """
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    def error(exc: ClientError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.status)

    async def read_json(request: Request) -> Any:
        ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        multipart = ctype == "multipart/form-data" and bool((runtime.spec or {}).get("preprocess"))
        if ctype not in JSON_TYPES and not multipart:   # image bundles also take file uploads
            raise ClientError(415, f"Unsupported content type {ctype!r}; this API takes JSON only.",
                              hint="Send Content-Type: application/json.",
                              expected="application/json", received=ctype)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > runtime.max_body:
            raise ClientError(413, f"Request body of {int(length)} bytes exceeds the limit of "
                                   f"{runtime.max_body} bytes.",
                              hint="Send fewer rows per request.", expected=f"<= {runtime.max_body}",
                              received=int(length))
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > runtime.max_body:
                raise ClientError(413, f"Request body exceeds the limit of {runtime.max_body} bytes.",
                                  hint="Send fewer rows per request.")
            chunks.append(chunk)
        raw = b"".join(chunks)
        if multipart:
            from .images import multipart_images

            return multipart_images(raw, request.headers["content-type"])
        try:
            return loads_bounded(raw)
        except JsonTooDeep as exc:
            raise ClientError(400, f"The request body nests arrays/objects more than {exc.limit} "
                                   "levels deep.",
                              hint='Send rows as {"inputs": [[1.0, 2.0], ...]} (3 levels).',
                              expected=f"<= {exc.limit} levels", received=f"> {exc.limit} levels") from exc
        except (ValueError, UnicodeDecodeError) as exc:
            raise ClientError(400, f"The request body is not valid JSON: {exc}.",
                              hint='Send e.g. {"inputs": [[1.0, 2.0]]}.') from exc

    def not_ready() -> JSONResponse:
        return JSONResponse(not_ready_body(), status_code=503)

    async def predict(request: Request) -> Response:
        if not runtime.ready:
            return not_ready()
        try:
            out = await predict_body(runtime, await read_json(request))
        except ClientError as exc:
            return error(exc)
        return JSONResponse(out)

    async def explain(request: Request) -> Response:
        if not runtime.ready:
            return not_ready()
        try:
            out = await explain_body(runtime, await read_json(request))
        except ClientError as exc:
            return error(exc)
        return JSONResponse(out)

    async def metadata(request: Request) -> Response:
        return JSONResponse(runtime.metadata())

    async def drift(request: Request) -> Response:
        if runtime.drift is None:
            return error(ClientError(404, "This bundle has no drift baseline.",
                                     hint="Rebuild it with a newer nbdeploy."))
        return JSONResponse(runtime.drift.report())

    async def plot(request: Request) -> Response:
        name = request.path_params["name"]
        plots = runtime.root / "plots"
        available = sorted(p.name for p in plots.glob("*.png")) if plots.is_dir() else []
        if name not in available:  # only names we listed ourselves: no path tricks
            return error(ClientError(404, f"No plot named {name!r}.", expected=available, received=name))
        return FileResponse(plots / name, media_type="image/png")

    async def plot_list(request: Request) -> Response:
        plots = runtime.root / "plots"
        names = sorted(p.name for p in plots.glob("*.png")) if plots.is_dir() else []
        return JSONResponse({"plots": names})

    async def openapi(request: Request) -> Response:
        from .openapi import openapi_document

        return JSONResponse(openapi_document(runtime))

    routes = [
        Route("/predict", predict, methods=["POST"]),
        Route("/explain", explain, methods=["POST"]),
        Route("/metadata", metadata, methods=["GET"]),
        Route("/drift", drift, methods=["GET"]),
        Route("/plots", plot_list, methods=["GET"]),
        Route("/plots/{name}", plot, methods=["GET"]),
        Route("/nbdeploy/openapi.json", openapi, methods=["GET"]),
    ]
    if direct:
        async def livez(request: Request) -> Response:
            return PlainTextResponse("\n")

        async def readyz(request: Request) -> Response:
            if runtime.ready:
                return PlainTextResponse("\n")
            if runtime.load_error:
                return PlainTextResponse(f"load failed: {runtime.load_error}\n", status_code=503)
            return PlainTextResponse("Service is not ready.\n", status_code=503)

        async def prometheus(request: Request) -> Response:
            text = metrics.text(in_flight=max(0, runtime.pending() - 1)) if metrics else ""
            if runtime.drift is not None:
                text += runtime.drift.prometheus()
            text += _auth.prometheus()
            return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

        async def schema(request: Request) -> Response:
            from .clientschema import client_schema

            return JSONResponse(client_schema(runtime))

        routes += [Route("/livez", livez, methods=["GET"]), Route("/healthz", livez, methods=["GET"]),
                   Route("/readyz", readyz, methods=["GET"]),
                   Route("/metrics", prometheus, methods=["GET"]),
                   # BentoML's client posts {"inputs": ..., "method": ...}: the same bodies
                   Route("/api/predict", predict, methods=["POST"]),
                   Route("/api/explain", explain, methods=["POST"]),
                   Route("/schema.json", schema, methods=["GET"])]
    paths = _limits.SHED_PATHS | ({"/api/predict", "/api/explain"} if direct else frozenset())
    gate = Middleware(_limits.Gate, runtime=runtime, paths=paths, metrics=metrics)
    # access control (off unless configured); under bentoml serve the service adds it around
    # BentoML's whole app instead, so that its own routes are guarded too
    guard = [Middleware(_auth.AuthMiddleware, config=runtime.config)] if direct else []
    return Starlette(routes=routes, middleware=[*guard, gate],
                     lifespan=_lifespan(runtime))


def _lifespan(runtime: Runtime):
    import contextlib

    @contextlib.asynccontextmanager
    async def lifespan(app):
        # the event loop's long-lived tasks (BentoML's), counted before any request arrives
        calibrate = getattr(runtime.pending, "calibrate", None)
        if calibrate is not None:
            calibrate()
        yield

    return lifespan


async def predict_body(runtime: Runtime, body: Any) -> dict:
    from starlette.concurrency import run_in_threadpool

    rows = body.get("inputs") if isinstance(body, dict) else None
    small = isinstance(rows, list) and len(rows) <= 64
    if runtime.batcher is not None and small:
        X = runtime.parse(body)
        return runtime.model.to_json(await runtime.batcher.submit(X))
    if small:
        return runtime.predict(body)         # cheaper inline than a thread hop
    return await run_in_threadpool(runtime.predict, body)


async def explain_body(runtime: Runtime, body: Any) -> dict:
    from starlette.concurrency import run_in_threadpool

    if runtime.explain_inline(body):   # a few TreeSHAP rows: cheaper than waking a thread
        return runtime.explain(body)
    return await run_in_threadpool(runtime.explain, body)


async def api_call(runtime: Runtime, route: str, body: dict):
    """For the service's ``@bentoml.api`` methods: the mounted routes' checks and answers
    (a dict, or a JSON response with the same error body and status)."""
    from starlette.responses import JSONResponse

    if not runtime.ready:
        return JSONResponse(not_ready_body(), status_code=503)
    if runtime.overloaded():
        return JSONResponse(json.loads(_limits.busy_body(runtime.limit, runtime.retry_after_s)),
                            status_code=503, headers={"Retry-After": str(runtime.retry_after_s)})
    try:
        if route == "predict":
            return await predict_body(runtime, body)
        return await explain_body(runtime, body)
    except ClientError as exc:
        return JSONResponse(exc.to_dict(), status_code=exc.status)


class JsonOnly:
    """ASGI middleware for BentoML's own app: its ``@bentoml.api`` endpoints pick a
    deserialiser by Content-Type, and one of them is pickle (``application/vnd.bentoml+pickle``,
    which BentoML uses between co-served services).  A bundle never loads pickle, so anything
    but JSON sent to those routes gets the mounted routes' 415 before BentoML reads the body."""

    ROUTES = frozenset({"/api/predict", "/api/explain"})

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] in self.ROUTES:
            ctype = ""
            for k, v in scope.get("headers") or ():
                if k == b"content-type":
                    ctype = v.decode("latin-1").split(";")[0].strip().lower()
            if ctype not in JSON_TYPES:
                exc = ClientError(415, f"Unsupported content type {ctype!r}; this API takes JSON only.",
                                  hint="Send Content-Type: application/json.",
                                  expected="application/json", received=ctype[:100])
                body = json.dumps(exc.to_dict()).encode()
                await send({"type": "http.response.start", "status": 415,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

