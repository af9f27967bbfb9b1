"""Load shedding: a concurrency limit derived from the model's benchmark.

Under overload an HTTP server that accepts everything answers late rather than not at all:
clients time out after seconds while the server still works on their requests.  A bounded
number of requests in flight (Little's law: ``limit = latency budget / cost per request``)
keeps the wait of admitted requests under the budget; excess requests get an immediate 503
with ``Retry-After`` instead, which a client or a load balancer can act on.

"In flight" must include the requests that wait for the event loop, not only those inside
the app: the app answers a small predict inline, so without this it would never see more
than one request at a time.  The direct engine counts uvicorn's request tasks (O(1));
under ``bentoml serve`` the runtime cannot reach uvicorn's server, so it counts the event
loop's unfinished tasks (request tasks plus a few long-lived ones, measured at start-up).

Standard library only: this runs in BentoML's worker and in the direct engine.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time

ENV_VAR = "NBDEPLOY_MAX_CONCURRENCY"
#: the longest a request admitted under full load should wait for the ones ahead of it
LATENCY_BUDGET_MS = 100.0
#: CPU per single-row request of the HTTP stack alone, measured with a constant-answer app
#: on 2 cores (benchmarks/bench_serving.py): BentoML's middleware + uvicorn, or uvicorn alone
STACK_MS = {"bentoml": 0.65, "direct": 0.22}
MIN_LIMIT, MAX_LIMIT = 4, 1024
RETRY_AFTER_S = 1
#: only model work is shed; health, metrics and metadata always answer
SHED_PATHS = frozenset({"/predict", "/explain", "/v1/predict", "/v1/explain"})


def _model_ms(metadata: dict) -> tuple[float | None, str]:
    """p50 of one single-row call of the served variant, from the build-time benchmark."""
    opt = metadata.get("optimize") or {}
    chosen = opt.get("chosen") or metadata.get("chosen_variant")
    provider = opt.get("provider")
    for e in (opt.get("benchmark") or {}).get("entries") or []:
        if e.get("variant") != chosen or (provider and e.get("provider") != provider):
            continue
        for p in e.get("points") or []:
            if p.get("batch_size") == 1 and p.get("p50_ms") is not None:
                return float(p["p50_ms"]), f"{chosen} on {e.get('provider')}"
    return None, ""


def derive(metadata: dict, config: dict, engine: str) -> dict:
    """``{"limit", "reason", "retry_after_s", "source"}``: ``$NBDEPLOY_MAX_CONCURRENCY``, else
    the bundle's ``max_concurrency``, else the benchmark's cost per request (0 = no limit)."""
    raw = os.environ.get(ENV_VAR)
    if raw is not None:
        try:
            limit = max(0, int(raw))
        except ValueError:
            limit = None
        if limit is not None:
            return {"limit": limit or None, "retry_after_s": RETRY_AFTER_S, "source": ENV_VAR,
                    "reason": f"set by ${ENV_VAR}" if limit else f"turned off by ${ENV_VAR}=0"}
    if config.get("max_concurrency"):
        return {"limit": int(config["max_concurrency"]), "retry_after_s": RETRY_AFTER_S,
                "source": "bundle", "reason": "set when the bundle was built (max_concurrency)"}
    stack = STACK_MS.get(engine, STACK_MS["bentoml"])
    model_ms, what = _model_ms(metadata)
    if model_ms is None:
        model_ms, what = 1.0, "no benchmark in the bundle, 1 ms assumed"
    per_request = model_ms + stack
    limit = int(min(MAX_LIMIT, max(MIN_LIMIT, math.floor(LATENCY_BUDGET_MS / per_request))))
    return {"limit": limit, "retry_after_s": RETRY_AFTER_S, "source": "benchmark",
            "reason": (f"{LATENCY_BUDGET_MS:.0f} ms latency budget / ({model_ms:.3f} ms per single-row "
                       f"model call ({what}) + {stack:.2f} ms of the {engine} HTTP stack) = "
                       f"{LATENCY_BUDGET_MS / per_request:.0f} requests in flight"
                       + (f", clamped to [{MIN_LIMIT}, {MAX_LIMIT}]" if limit != math.floor(
                           LATENCY_BUDGET_MS / per_request) else ""))}


class LoopTasks:
    """Unfinished tasks of the running event loop, less the long-lived ones counted at
    start-up (:meth:`calibrate`, from the app's lifespan), so that the result counts requests."""

    def __init__(self):
        self.base: int | None = None

    def calibrate(self) -> int:
        self.base = len(asyncio.all_tasks())
        return self.base

    def __call__(self) -> int:
        n = len(asyncio.all_tasks())
        if self.base is None:  # no lifespan ran: the caller's own task is the one to leave out
            self.base = max(0, n - 1)
        return n - self.base


def busy_body(limit: int | None, retry_after: int) -> bytes:
    return json.dumps({"error": "overloaded",
                       "message": f"The server has {limit} requests in flight, its limit.",
                       "hint": f"Retry after {retry_after} s, or add replicas."}).encode()


class Gate:
    """ASGI middleware: a 503 with ``Retry-After`` for model work beyond the limit; with
    ``metrics`` (the direct engine) it also times and counts every request."""

    def __init__(self, app, *, runtime, paths=SHED_PATHS, metrics=None):
        self.app = app
        self.runtime = runtime
        self.paths = frozenset(paths)
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rt, m = self.runtime, self.metrics
        path = scope["path"]
        shed = rt.limit and path in self.paths and rt.overloaded()
        if m is None:
            if shed:
                return await send_busy(send, rt.limit, rt.retry_after_s)
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if shed:
                m.shed += 1
                await send_busy(send_status, rt.limit, rt.retry_after_s)
            else:
                await self.app(scope, receive, send_status)
        finally:
            m.observe(path, status[0], time.perf_counter() - t0)


async def send_busy(send, limit: int, retry_after: int) -> None:
    body = busy_body(limit, retry_after)
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"retry-after", str(retry_after).encode())]})
    await send({"type": "http.response.body", "body": body})
