"""A small reverse proxy that gives a served bundle a stable address across versions.

``nbdeploy serve NAME --stable`` puts this proxy on the user-facing port and the bundle's
``bentoml serve`` on a private one.  ``nbdeploy rollout`` starts the new version, waits for it
to be ready, points the proxy at it (SIGHUP + a state file), then drains and stops the old
one, so clients see no failed request.  Run as ``python -m nbdeploy.proxy``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from pathlib import Path

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailers", "transfer-encoding", "upgrade", "host", "content-length"}


def build_app(state_file: Path):
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    state = {"backend": json.loads(state_file.read_text())["backend"]}
    client = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0),
                               limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))

    def reload(*_):
        try:
            state["backend"] = json.loads(state_file.read_text())["backend"]
            state_file.with_suffix(".ack").write_text(state["backend"])
        except (OSError, ValueError, KeyError):
            pass

    async def forward(request: Request) -> Response:
        if request.url.path == "/__nbdeploy_proxy__":
            return JSONResponse({"backend": state["backend"]})
        body = await request.body()
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        for attempt in range(3):
            backend = state["backend"]
            try:
                r = await client.request(request.method, backend + request.url.path,
                                         params=request.query_params, content=body, headers=headers)
                break
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
                # the old version is going away: retry on the (possibly new) current backend
                if attempt == 2:
                    return JSONResponse({"error": "unavailable", "message": "The bundle server is not reachable.",
                                         "hint": "Check `nbdeploy list`."}, status_code=503)
                await asyncio.sleep(0.05)
        out_headers = {k: v for k, v in r.headers.items() if k.lower() not in HOP_BY_HOP}
        return Response(r.content, status_code=r.status_code, headers=out_headers)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
        yield
        await client.aclose()

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)


def main(argv=None) -> None:
    import uvicorn

    p = argparse.ArgumentParser(prog="python -m nbdeploy.proxy")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--state", type=Path, required=True)
    args = p.parse_args(argv)
    uvicorn.run(build_app(args.state), host=args.host, port=args.port, log_level="warning",
                access_log=False, timeout_graceful_shutdown=10)


if __name__ == "__main__":
    main()
