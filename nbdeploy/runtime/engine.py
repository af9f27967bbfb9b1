"""The direct engine: the bundle's own ASGI app on uvicorn, without BentoML's server.

    cd BENTO/src && python -m nbdeploy_runtime.engine --host 127.0.0.1 --port 3000

Same routes and the same validation as under ``bentoml serve`` (the same Starlette app), plus
what BentoML answers there: ``/livez``, ``/readyz``, ``/healthz``, ``/metrics`` (Prometheus
text with request counts, latencies and the drift gauges), BentoML's client routes
``/api/predict`` and ``/api/explain``, and ``/schema.json`` so that ``bentoml.SyncHTTPClient``
works unchanged.  One process, one event loop: scale with replicas.

``NBDEPLOY_ENGINE=direct`` also makes ``bentoml serve BUNDLE`` (the container image's
entrypoint) hand its process over to this engine, on the host and port it was given: see
:func:`exec_if_requested`, called from the generated ``service.py``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from pathlib import Path

ENGINE_ENV = "NBDEPLOY_ENGINE"
log = logging.getLogger("nbdeploy.runtime")


def _bentoml_serve_address(argv: list[str]) -> tuple[str, int] | None:
    """(host, port) if this process is the ``bentoml serve`` CLI, else None (a BentoML worker,
    ``bentoml build``, a notebook importing the service...)."""
    prog = Path(argv[0] if argv else "")
    is_cli = prog.name == "bentoml" or (prog.name == "__main__.py" and prog.parent.name == "bentoml")
    if not is_cli or argv[1:2] != ["serve"]:
        return None
    host = os.environ.get("BENTOML_HOST", "0.0.0.0")
    port = os.environ.get("BENTOML_PORT", "3000")
    args = argv[2:]
    for i, a in enumerate(args):
        for flag in ("--host", "--port", "-p"):
            if a == flag and i + 1 < len(args):
                value = args[i + 1]
            elif a.startswith(flag + "=") and flag.startswith("--"):
                value = a.split("=", 1)[1]
            else:
                continue
            if flag == "--host":
                host = value
            else:
                port = value
    return host, int(port)


def _serves(root: Path, args: list[str]) -> bool:
    """Whether the ``bentoml serve`` arguments name this bundle (and not, say, another service
    that imports it to ``bentoml.depends`` on it)."""
    name = str(_read_json(root / "model" / "metadata.json").get("name") or "")
    here = {root.resolve(), root.resolve().parent}
    positional = [a for a in args if not a.startswith("-")]
    for a in positional:
        if ":" in a and not a.startswith(("service:", "/", ".")):   # NAME:VERSION
            n, v = a.split(":", 1)
            if n == name and v in ("latest", root.resolve().parent.name):
                return True
        elif a.startswith("service:") or a == name:
            if a == name or Path.cwd().resolve() in here:
                return True
        elif Path(a).is_dir() and Path(a).resolve() in here:
            return True
    return not positional and Path.cwd().resolve() in here


def exec_if_requested(root: Path) -> None:
    """With ``NBDEPLOY_ENGINE=direct``, replace a ``bentoml serve`` CLI process by the direct
    engine (same host and port).  Anywhere else (BentoML's workers, builds, notebooks) nothing."""
    if os.environ.get(ENGINE_ENV, "").strip().lower() != "direct":
        return
    addr = _bentoml_serve_address(sys.argv)
    if addr is None or not _serves(root, sys.argv[2:]):
        return
    host, port = addr
    tls, args = [], sys.argv[2:]  # bentoml serve's HTTPS options carry over (absolute: chdir below)
    for i, a in enumerate(args):
        for flag in ("--ssl-certfile", "--ssl-keyfile"):
            if a == flag and i + 1 < len(args):
                tls += [flag, os.path.abspath(args[i + 1])]
            elif a.startswith(flag + "="):
                tls += [flag, os.path.abspath(a.split("=", 1)[1])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(root)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(root)
    os.execve(sys.executable, [sys.executable, "-m", "nbdeploy_runtime.engine", "--host", host,
                               "--port", str(port), *tls], env)


def _read_json(path: Path) -> dict:
    import json

    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f) or {}
    except (OSError, ValueError):
        return {}


def serve(root: Path, host: str, port: int, *, backlog: int = 2048,
          timeout_keep_alive: int = 5, ssl_certfile: str | None = None,
          ssl_keyfile: str | None = None) -> int:
    os.environ[ENGINE_ENV] = "direct"   # Runtime reads it: /metadata, and the derived limit
    import uvicorn

    from .app import Runtime, build_app
    from .auth import TLS_CIPHERS
    from .metrics import Metrics
    from .timeouts import install_header_limits

    runtime = Runtime(root)
    install_header_limits(runtime.config)
    metrics = Metrics(str(_read_json(runtime.model_dir / "metadata.json").get("name") or "nbdeploy"))
    app = build_app(runtime, direct=True, metrics=metrics)
    # no access log (it costs more than a tree model's prediction); uvicorn's own lifespan
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            backlog=backlog, timeout_keep_alive=timeout_keep_alive,
                            server_header=False, lifespan="on",
                            ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,  # HTTPS only
                            ssl_ciphers=TLS_CIPHERS if ssl_certfile else "TLSv1")
    server = uvicorn.Server(config)
    # requests in flight = uvicorn's request tasks, including those waiting for the loop
    runtime.pending = lambda: len(server.server_state.tasks)
    failed: list[BaseException] = []

    def load() -> None:  # /livez answers (and /readyz says 503) while the model loads
        try:
            runtime.load()
        except BaseException as exc:  # noqa: BLE001 - reported, and the process exits 1
            runtime.load_error = f"{type(exc).__name__}: {exc}"[:500]
            failed.append(exc)
            log.error("Application startup failed: %s", runtime.load_error)
            server.should_exit = True

    threading.Thread(target=load, name="nbdeploy-load", daemon=True).start()
    server.run()
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nbdeploy_runtime.engine",
                                 description="Serve this bundle with uvicorn directly.")
    ap.add_argument("--host", default=os.environ.get("BENTOML_HOST", "127.0.0.1"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("BENTOML_PORT", "3000")))
    ap.add_argument("--root", default=None, help="the bundle folder (holds model/); default: "
                                                  "the folder above this package")
    ap.add_argument("--backlog", type=int, default=2048)
    ap.add_argument("--timeout-keep-alive", type=int, default=5)
    ap.add_argument("--ssl-certfile", default=None, help="PEM certificate: serve HTTPS only")
    ap.add_argument("--ssl-keyfile", default=None, help="PEM private key of --ssl-certfile")
    ap.add_argument("--tag", default=None, help="only recorded on the command line, to find the process")
    args = ap.parse_args(argv)
    if args.ssl_certfile is None and args.ssl_keyfile is None:
        # the same certificate variables as the generated service.py under `bentoml serve`
        from .auth import tls_paths

        args.ssl_certfile, args.ssl_keyfile = tls_paths() or (None, None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = Path(args.root) if args.root else Path(__file__).resolve().parent.parent
    return serve(root, args.host, args.port, backlog=args.backlog,
                 timeout_keep_alive=args.timeout_keep_alive, ssl_certfile=args.ssl_certfile,
                 ssl_keyfile=args.ssl_keyfile)


if __name__ == "__main__":
    sys.exit(main())
