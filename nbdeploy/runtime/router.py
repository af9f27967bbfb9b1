"""A stable address served in one process: versions of a bundle hot-swapped between requests.

    python -m nbdeploy.runtime.router --host H --port P --admin-port A --token-file F \\
        --root BENTO/src --tag NAME:VERSION

Each version is the bundle's own app (its ``nbdeploy_runtime`` copy, imported under a name of
its own, so versions built by different nbdeploy releases do not share code) built as under
the direct engine.  A request goes to the primary version, or to the canary with its weight.
A rollout loads the new version beside the old one (in a thread, while the old one serves),
then switches with one assignment between requests; requests already inside the old version
finish there, and the old version is freed when the last of them lets go of it.

Control: ``/__nbdeploy__/...`` on the admin socket only (loopback), with the token from
``--token-file`` (readable by the user who started the server).  ``nbdeploy.serve`` is the
client.  The public socket never answers those paths.

A guard (optional, per canary) rolls the canary back by itself when its error rate or its
mean latency passes a threshold, and records why.

Standard library (+ uvicorn, starlette, which the direct engine needs anyway).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import hmac
import importlib
import importlib.util
import json
import logging
import os
import socket
import sys
import threading
import time
import weakref
from pathlib import Path

log = logging.getLogger("nbdeploy.router")
ADMIN = "/__nbdeploy__/"
MODEL_ROUTES = ("/predict", "/api/predict", "/explain", "/api/explain")
#: one canary /predict in this many is also run through the primary, to count differing predictions
COMPARE_EVERY = 4
COMPARE_MAX_BYTES = 1 << 20
#: every Version still in memory (routed to or not): a swapped-out version must leave it
_ALIVE: weakref.WeakSet[Version] = weakref.WeakSet()


def _runtime_package(src: Path):
    """The bundle's ``nbdeploy_runtime``, imported as ``nbdeploy_runtime_<digest>`` (same code,
    same module)."""
    pkg = src / "nbdeploy_runtime"
    files = sorted(pkg.glob("*.py"))
    if not (pkg / "app.py").is_file():
        raise ValueError(f"{src} holds no nbdeploy_runtime/app.py: not a bundle's src folder")
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    alias = f"nbdeploy_runtime_{h.hexdigest()[:16]}"
    if alias not in sys.modules:
        spec = importlib.util.spec_from_file_location(alias, pkg / "__init__.py",
                                                      submodule_search_locations=[str(pkg)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[alias] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            sys.modules.pop(alias, None)
            raise
    return alias


class Version:
    """One loaded bundle version: its runtime, its app (direct-engine routes) and its metrics."""

    def __init__(self, tag: str, src: Path, pending):
        self.tag, self.src = tag, Path(src)
        alias = _runtime_package(self.src)
        app_mod = importlib.import_module(alias + ".app")
        metrics_mod = importlib.import_module(alias + ".metrics")
        self.runtime = app_mod.Runtime(self.src)
        self.runtime.pending = pending
        self.metrics = metrics_mod.Metrics(tag.split(":")[0])
        self.app = app_mod.build_app(self.runtime, direct=True, metrics=self.metrics)
        try:
            importlib.import_module(alias + ".timeouts").install_header_limits(self.runtime.config)
        except (ImportError, AttributeError):
            pass
        self.runtime.load()
        self.compared = 0      # canary rows also run through the primary
        self.differ = 0        # ... whose predictions differed
        _ALIVE.add(self)

    def model_stats(self) -> dict:
        """Requests, errors (4xx/5xx) and mean seconds on the model routes so far."""
        n = err = 0
        total = 0.0
        for (route, status), c in list(self.metrics.counts.items()):
            if route in MODEL_ROUTES:
                n += c
                if status >= 400:
                    err += c
        for route, h in list(self.metrics.hist.items()):
            if route in MODEL_ROUTES:
                total += h[-2]
        return {"requests": n, "errors": err, "seconds": total}


def _rate(now: dict, base: dict) -> tuple[int, float, float]:
    n = now["requests"] - base["requests"]
    if n <= 0:
        return 0, 0.0, 0.0
    return n, (now["errors"] - base["errors"]) / n, (now["seconds"] - base["seconds"]) / n


class Router:
    """The ASGI app of the stable address."""

    def __init__(self, admin_port: int, token: str):
        self.admin_port = admin_port
        self.token = token.encode()
        self.server = None                       # uvicorn.Server, for the in-flight count
        self.primary: Version | None = None
        self.canary: Version | None = None
        self.weight = 0.0                        # share of requests the canary gets
        self._acc = 0.0
        self.previous: dict | None = None        # {"tag", "src"} of the version before primary
        self.guard: dict | None = None           # thresholds while a canary runs
        self.guard_base: dict | None = None
        self.events: list[dict] = []             # rollouts, promotions, rollbacks (last 50)
        self.lock = asyncio.Lock()               # one control operation at a time
        self._seen = 0                           # canary /predict requests (1 in COMPARE_EVERY compared)

    def pending(self) -> int:
        return len(self.server.server_state.tasks) if self.server is not None else 0

    # -- the request path ------------------------------------------------------------------
    async def __call__(self, scope, receive, send):
        kind = scope["type"]
        if kind == "http":
            if scope["path"].startswith(ADMIN):
                if scope.get("server", (None, None))[1] == self.admin_port:
                    return await self.admin(scope, receive, send)
            elif scope["path"] == "/metrics":
                return await self.prometheus(send)
            canary = self.canary
            if canary is not None:
                # smooth weighted choice: over any n requests, the canary gets n*weight +- 1
                self._acc += self.weight
                if self._acc >= 1.0:
                    self._acc -= 1.0
                    if scope["path"] == "/predict" and scope["method"] == "POST":
                        self._seen += 1
                        if self._seen % COMPARE_EVERY == 0:
                            return await self._compared(canary, scope, receive, send)
                    return await canary.app(scope, receive, self._tagged(send, canary.tag))
                primary = self.primary
                return await primary.app(scope, receive, self._tagged(send, primary.tag))
            return await self.primary.app(scope, receive, send)
        if kind == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    # what uvicorn set up after the first version loaded lives as long as the
                    # process too: out of the collector's reach, as the direct engine does
                    if os.environ.get("NBDEPLOY_GC_FREEZE", "1") != "0":
                        gc.collect()
                        gc.freeze()
                    self._watcher = asyncio.get_running_loop().create_task(self._watch())
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        return await self.primary.app(scope, receive, send)

    async def _compared(self, canary: Version, scope, receive, send):
        """Answer with the canary, then run the same rows through the primary (after the answer
        went out) and count the rows whose predictions differ."""
        chunks: list[bytes] = []
        size = [0]
        answer: list[bytes] = []
        status = [0]

        async def rec():
            msg = await receive()
            if msg.get("type") == "http.request" and size[0] <= COMPARE_MAX_BYTES:
                chunks.append(msg.get("body", b""))
                size[0] += len(chunks[-1])
            return msg

        tagged = self._tagged(send, canary.tag)

        async def snd(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body" and status[0] == 200:
                answer.append(message.get("body", b""))
            await tagged(message)

        await canary.app(scope, rec, snd)
        primary = self.primary
        if status[0] != 200 or size[0] > COMPARE_MAX_BYTES or primary is None or primary is canary:
            return
        try:
            body = json.loads(b"".join(chunks))
            mine = json.loads(b"".join(answer)).get("predictions")
            theirs = primary.runtime.predict(body).get("predictions")
        except Exception:  # noqa: BLE001 - the comparison never fails a request
            return
        if isinstance(mine, list) and isinstance(theirs, list) and len(mine) == len(theirs):
            canary.compared += len(mine)
            canary.differ += sum(1 for a, b in zip(mine, theirs) if a != b)

    @staticmethod
    def _tagged(send, tag: str):
        value = tag.encode()

        async def wrapped(message):
            if message["type"] == "http.response.start":
                message = dict(message, headers=[*message.get("headers", ()), (b"x-nbdeploy-version", value)])
            await send(message)
        return wrapped

    # -- metrics -----------------------------------------------------------------------------
    async def prometheus(self, send):
        families: dict[str, list] = {}
        versions = [v for v in (self.primary, self.canary) if v is not None]
        for v in versions:
            rt = v.runtime
            text = v.metrics.text(in_flight=max(0, self.pending() - 1))
            if rt.drift is not None:
                text += rt.drift.prometheus()
            _merge(families, text, v.tag)
        extra = ["# HELP nbdeploy_version_weight Share of requests each served version gets",
                 "# TYPE nbdeploy_version_weight gauge"]
        if self.primary is not None:
            extra.append(f'nbdeploy_version_weight{{version="{self.primary.tag}",role="primary"}} '
                         f'{1.0 - (self.weight if self.canary else 0.0)}')
        if self.canary is not None:
            extra.append(f'nbdeploy_version_weight{{version="{self.canary.tag}",role="canary"}} {self.weight}')
        if self.canary is not None:
            c = self.canary
            extra += ["# HELP nbdeploy_canary_compared_rows_total Canary rows also predicted by the primary",
                      "# TYPE nbdeploy_canary_compared_rows_total counter",
                      f'nbdeploy_canary_compared_rows_total{{version="{c.tag}"}} {c.compared}',
                      "# HELP nbdeploy_canary_differing_rows_total ... whose predictions differed",
                      "# TYPE nbdeploy_canary_differing_rows_total counter",
                      f'nbdeploy_canary_differing_rows_total{{version="{c.tag}"}} {c.differ}']
        rolled = sum(1 for e in self.events if e.get("by") == "guard")
        extra += ["# HELP nbdeploy_guard_rollbacks_total Canaries the guard rolled back",
                  "# TYPE nbdeploy_guard_rollbacks_total counter", f"nbdeploy_guard_rollbacks_total {rolled}"]
        _merge(families, "\n".join(extra) + "\n", None)
        body = "".join(line + "\n" for lines in families.values() for line in lines).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    # -- control -------------------------------------------------------------------------------
    def state(self) -> dict:
        def desc(v: Version | None, base: dict | None = None) -> dict | None:
            if v is None:
                return None
            n, err, mean = _rate(v.model_stats(), base or {"requests": 0, "errors": 0, "seconds": 0.0})
            out = {"tag": v.tag, "src": str(v.src), "requests": n, "error_rate": round(err, 6),
                   "mean_ms": round(mean * 1000, 4)}
            if v is self.canary:
                out["compared_rows"] = v.compared
                out["differ_share"] = round(v.differ / v.compared, 6) if v.compared else None
            if v.runtime.drift is not None:
                try:
                    r = v.runtime.drift.report()
                    out["drift"] = {k: r.get(k) for k in ("drift", "drifted_features", "observed_rows",
                                                          "enough_data")}
                except Exception:  # noqa: BLE001 - status must answer
                    out["drift"] = None
            return out

        return {"primary": desc(self.primary, self.guard_base),
                "canary": desc(self.canary), "weight": self.weight if self.canary else 0.0,
                "previous": self.previous, "guard": self.guard, "events": self.events[-20:],
                "versions_in_memory": sorted(v.tag for v in list(_ALIVE))}

    def _event(self, **kw) -> None:
        self.events = (self.events + [dict(kw, at=round(time.time(), 3))])[-50:]

    async def _load(self, tag: str, src: str) -> Version:
        for v in (self.primary, self.canary):
            if v is not None and v.tag == tag:
                return v
        return await asyncio.to_thread(Version, tag, Path(src), self.pending)

    async def control(self, op: str, body: dict) -> dict:
        async with self.lock:
            if op == "rollout":
                tag, src = str(body["tag"]), str(body["src"])
                weight = float(body.get("weight", 1.0))
                if not 0.0 < weight <= 1.0:
                    raise ValueError("weight must be in (0, 1]")
                new = await self._load(tag, src)
                if weight >= 1.0:
                    self._switch(new, by="rollout")
                else:
                    if self.primary is not None and new.tag == self.primary.tag:
                        raise ValueError(f"{tag} is already the primary version")
                    self.guard_base = self.primary.model_stats()
                    self.guard = body.get("guard") or None
                    self.canary, self.weight, self._acc = new, weight, 0.0
                    self._event(op="canary", tag=tag, weight=weight)
            elif op == "promote":
                if self.canary is None:
                    raise ValueError("no canary in progress")
                self._switch(self.canary, by="promote")
            elif op == "rollback":
                if self.canary is not None:
                    self._drop_canary(reason=str(body.get("reason") or "rolled back by request"), by="user")
                elif self.previous is not None:
                    prev = await self._load(self.previous["tag"], self.previous["src"])
                    self._switch(prev, by="rollback")
                else:
                    raise ValueError("no previous version to return to")
            elif op != "state":
                raise ValueError(f"unknown operation {op[:40]!r}")
            return self.state()

    def _switch(self, new: Version, *, by: str) -> None:
        old = self.primary
        if old is not None and old is not new:
            self.previous = {"tag": old.tag, "src": str(old.src)}
        # one assignment each; the next request sees the new version
        self.primary, self.canary, self.weight, self.guard, self.guard_base = new, None, 0.0, None, None
        self._event(op=by, tag=new.tag)
        self._free_later()

    def _drop_canary(self, *, reason: str, by: str) -> None:
        tag = self.canary.tag
        self.canary, self.weight, self.guard, self.guard_base = None, 0.0, None, None
        self._event(op="rollback", tag=tag, by=by, reason=reason)
        self._free_later()

    def _free_later(self) -> None:
        def collect():
            # Runtime.load froze the collector's view; versions no longer routed to hold
            # cycles, so collect them once (off the request path, after stragglers finished)
            gc.unfreeze()
            gc.collect()
            gc.freeze()
        asyncio.get_running_loop().call_later(3.0, collect)

    async def _watch(self) -> None:
        """The guard: every 0.25 s, compare the canary with the primary since the canary started."""
        while True:
            await asyncio.sleep(0.25)
            g, canary, primary = self.guard, self.canary, self.primary
            if not g or canary is None or primary is None:
                continue
            n, err, mean = _rate(canary.model_stats(), {"requests": 0, "errors": 0, "seconds": 0.0})
            if n < int(g.get("min_requests", 20)):
                continue
            pn, perr, pmean = _rate(primary.model_stats(), self.guard_base or primary.model_stats())
            reason = None
            max_err = g.get("max_error_rate")
            if max_err is not None and err > perr + float(max_err):
                reason = (f"error rate {err:.1%} over {n} requests (primary {perr:.1%}) passed the "
                          f"guard's {float(max_err):.1%} margin")
            ratio = g.get("max_latency_ratio")
            if reason is None and ratio is not None and pn >= 20 and mean > pmean * float(ratio) \
                    and mean - pmean > float(g.get("min_latency_ms", 1.0)) / 1000:
                reason = (f"mean latency {mean * 1000:.2f} ms over {n} requests is more than "
                          f"{float(ratio):g}x the primary's {pmean * 1000:.2f} ms")
            if reason:
                async with self.lock:
                    if self.canary is canary:
                        log.warning("guard: rolling back %s: %s", canary.tag, reason)
                        self._drop_canary(reason=reason, by="guard")

    async def admin(self, scope, receive, send):
        headers = dict(scope.get("headers") or ())
        given = headers.get(b"x-nbdeploy-token", b"")
        if not hmac.compare_digest(given, self.token):
            return await _json(send, 403, {"error": "forbidden", "message": "Wrong or missing token."})
        raw, more = b"", True
        while more:
            msg = await receive()
            raw += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(raw) > 65536:
                return await _json(send, 413, {"error": "too_large", "message": "Control body too large."})
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            out = await self.control(scope["path"][len(ADMIN):], body)
        except (ValueError, KeyError, TypeError) as exc:
            return await _json(send, 400, {"error": "bad_request", "message": str(exc)[:500]})
        except Exception as exc:  # noqa: BLE001 - a version that fails to load: the old one serves on
            log.exception("control operation failed")
            return await _json(send, 500, {"error": "failed", "message": f"{type(exc).__name__}: {exc}"[:1000]})
        return await _json(send, 200, out)


async def _json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def _merge(families: dict, text: str, version: str | None) -> None:
    """Add Prometheus text to ``families`` (name -> lines), a ``version`` label on each sample;
    a family's HELP/TYPE once, its samples together (the text format wants them so)."""
    current = ""
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split()
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                current = parts[2]
            lines = families.setdefault(current, [])
            if line not in lines:
                lines.append(line)
            continue
        if version is not None:
            label = f'version="{version}"'
            name, sep, rest = line.partition("{")
            if sep:
                line = f"{name}{{{label},{rest}"
            else:
                name, _, value = line.partition(" ")
                line = f"{name}{{{label}}} {value}"
        families.setdefault(current, []).append(line)


def _listen(host: str, port: int, backlog: int) -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(backlog)
    s.set_inheritable(True)
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nbdeploy.runtime.router")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--admin-port", type=int, required=True, help="loopback: control + the same app")
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--root", required=True, help="the first version's bundle src folder")
    ap.add_argument("--tag", required=True)
    ap.add_argument("--backlog", type=int, default=2048)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ["NBDEPLOY_ENGINE"] = "direct"   # Runtime reads it: /metadata, the derived limit
    import uvicorn

    token = Path(args.token_file).read_text(encoding="utf-8").strip()
    router = Router(args.admin_port, token)
    socks = [_listen(args.host, args.port, args.backlog), _listen("127.0.0.1", args.admin_port, 128)]
    config = uvicorn.Config(router, log_level="warning", access_log=False, server_header=False,
                            lifespan="on", timeout_keep_alive=5)
    server = uvicorn.Server(config)
    router.server = server
    failed: list[BaseException] = []

    # load before serving: /readyz on the stable address must mean the first version answers
    try:
        router.primary = Version(args.tag, Path(args.root), router.pending)
    except BaseException as exc:  # noqa: BLE001
        log.error("Application startup failed: %s", f"{type(exc).__name__}: {exc}"[:500])
        raise
    threading.current_thread().name = "nbdeploy-router"
    server.run(sockets=socks)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
