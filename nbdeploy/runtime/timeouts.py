"""A header timeout for the HTTP server under ``bentoml serve`` (uvicorn).

uvicorn, as BentoML 1.4 runs it, bounds the idle time *between* requests
(``timeout_keep_alive``, 5 s; ``bentoml serve --timeout-keep-alive``) and BentoML bounds
a request once its headers are in (``traffic.timeout``, which also covers reading the
body).  Nothing bounds the time *before* the headers are complete: a client that opens a
connection and sends nothing, or trickles one header line every few seconds, holds a
connection (and a file descriptor) forever.  Neither BentoML nor uvicorn has an option
for it, so :func:`install_header_timeout` adds one to uvicorn's two HTTP protocol classes:

* a timer starts when a connection opens, and again when a response ends and the
  connection waits for the next request (the moment uvicorn arms its keep-alive timer);
* it stops when the request's headers are complete;
* when it fires, the connection is closed.

It is called from the generated ``service.py`` at import, so it applies in BentoML's
worker before uvicorn accepts a connection.  If uvicorn's classes do not look as expected
(another release), it logs a warning and changes nothing rather than break serving.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("nbdeploy.runtime")

#: seconds from connection open (or the end of the previous response) to complete headers
DEFAULT_HEADER_TIMEOUT_S = 10.0
ENV_VAR = "NBDEPLOY_HEADER_TIMEOUT_S"

_installed: dict[str, float] = {}


def header_timeout(config: dict | None = None) -> float:
    """The bound in seconds: ``$NBDEPLOY_HEADER_TIMEOUT_S``, else the bundle's
    ``header_timeout_s``, else 10 s.  0 (or less) turns it off."""
    raw = os.environ.get(ENV_VAR)
    if raw is None and config:
        raw = config.get("header_timeout_s")
    if raw is None:
        return DEFAULT_HEADER_TIMEOUT_S
    try:
        value = float(raw)
    except (TypeError, ValueError):
        log.warning("ignoring %s=%r (not a number); using %s s", ENV_VAR, raw, DEFAULT_HEADER_TIMEOUT_S)
        return DEFAULT_HEADER_TIMEOUT_S
    return value if value == value and value != float("inf") else DEFAULT_HEADER_TIMEOUT_S


def _expire(proto) -> None:
    proto._nbdeploy_header_timer = None
    transport = getattr(proto, "transport", None)
    if transport is not None and not transport.is_closing():
        log.info("closing a connection from %s: no complete request headers within the timeout",
                 getattr(proto, "client", None))
        transport.close()


def _arm(proto, seconds: float) -> None:
    _cancel(proto)
    proto._nbdeploy_header_timer = proto.loop.call_later(seconds, _expire, proto)


def _cancel(proto) -> None:
    timer = getattr(proto, "_nbdeploy_header_timer", None)
    if timer is not None:
        timer.cancel()
        proto._nbdeploy_header_timer = None


def _patch(cls, headers_done: str, seconds: float, *, after: bool) -> None:
    """Wrap ``cls``'s connection hooks; ``headers_done`` is the method after which (or before
    which, ``after=False``) the request's headers are known to be complete."""
    made, lost, response = cls.connection_made, cls.connection_lost, cls.on_response_complete
    done = getattr(cls, headers_done)

    def connection_made(self, transport, *a, **kw):
        made(self, transport, *a, **kw)
        _arm(self, seconds)

    def connection_lost(self, exc, *a, **kw):
        _cancel(self)
        return lost(self, exc, *a, **kw)

    def on_response_complete(self, *a, **kw):
        response(self, *a, **kw)
        # uvicorn arms its keep-alive timer only when no pipelined request is waiting:
        # from then on the connection waits for new headers
        if getattr(self, "timeout_keep_alive_task", None) is not None and not self.transport.is_closing():
            _arm(self, seconds)

    if after:  # h11: headers are complete once the connection left the IDLE state
        import h11

        def headers_hook(self, *a, **kw):
            out = done(self, *a, **kw)
            if getattr(self, "conn", None) is not None and self.conn.their_state is not h11.IDLE:
                _cancel(self)
            return out
    else:
        def headers_hook(self, *a, **kw):
            _cancel(self)
            return done(self, *a, **kw)

    cls.connection_made, cls.connection_lost = connection_made, connection_lost
    cls.on_response_complete = on_response_complete
    setattr(cls, headers_done, headers_hook)


def install_header_timeout(config: dict | None = None) -> float | None:
    """Bound the time to complete request headers in uvicorn's protocols (idempotent).

    Returns the bound in seconds, or None when it is off or uvicorn could not be patched.
    """
    seconds = header_timeout(config)
    if seconds <= 0:
        return None
    targets = [("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol", "on_headers_complete", False),
               ("uvicorn.protocols.http.h11_impl", "H11Protocol", "handle_events", True)]
    import importlib

    for module, name, hook, after in targets:
        key = f"{module}.{name}"
        if key in _installed:
            continue
        try:
            cls = getattr(importlib.import_module(module), name)
        except ImportError:  # httptools (or h11) not installed: uvicorn will not use that class
            continue
        needed = ("connection_made", "connection_lost", "on_response_complete", hook)
        if not all(callable(getattr(cls, m, None)) for m in needed):
            log.warning("uvicorn's %s has changed; requests have no header timeout", key)
            return None
        _patch(cls, hook, seconds, after=after)
        _installed[key] = seconds
    return seconds if _installed else None
