"""A header timeout and a header size limit for the HTTP server under ``bentoml serve`` (uvicorn).

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

uvicorn's httptools parser (the one it picks when httptools is installed, as in every
nbdeploy bundle) also accepts request headers of any size (8 MB were answered with a 200);
its h11 parser stops at 16 KB.  :func:`install_header_limits` therefore also caps the
request line plus headers at 64 KiB for httptools: a larger request gets uvicorn's own 400
("Invalid HTTP request received.") and the connection is closed.

Both are installed from the generated ``service.py`` at import, so they apply in BentoML's
worker before uvicorn accepts a connection.  They are installed only where uvicorn is
already imported: BentoML's worker imports it before it loads the service, while BentoML's
arbiter (which imports the service only to read its config, and whose start-up time counts)
never does.  If uvicorn's classes do not look as expected
(another release), it logs a warning and changes nothing rather than break serving.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger("nbdeploy.runtime")

#: seconds from connection open (or the end of the previous response) to complete headers
DEFAULT_HEADER_TIMEOUT_S = 10.0
ENV_VAR = "NBDEPLOY_HEADER_TIMEOUT_S"
#: bytes of request line plus headers (httptools; h11 has its own 16 KB bound)
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
SIZE_ENV_VAR = "NBDEPLOY_MAX_HEADER_BYTES"

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


def max_header_bytes(config: dict | None = None) -> int:
    """``$NBDEPLOY_MAX_HEADER_BYTES``, else the bundle's ``max_header_bytes``, else 64 KiB."""
    raw = os.environ.get(SIZE_ENV_VAR)
    if raw is None and config:
        raw = config.get("max_header_bytes")
    try:
        return int(raw) if raw is not None else DEFAULT_MAX_HEADER_BYTES
    except (TypeError, ValueError):
        log.warning("ignoring %s=%r (not an integer)", SIZE_ENV_VAR, raw)
        return DEFAULT_MAX_HEADER_BYTES


class HeaderTooLarge(Exception):
    """Raised inside httptools' callbacks: uvicorn answers 400 and closes the connection."""


def _patch_header_size(cls, limit: int) -> None:
    begin, on_url, on_header = cls.on_message_begin, cls.on_url, cls.on_header

    def on_message_begin(self, *a, **kw):
        self._nbdeploy_header_bytes = 0
        return begin(self, *a, **kw)

    def _count(self, n: int) -> None:
        self._nbdeploy_header_bytes = getattr(self, "_nbdeploy_header_bytes", 0) + n
        if self._nbdeploy_header_bytes > limit:
            raise HeaderTooLarge(f"request line and headers exceed {limit} bytes")

    def url_hook(self, url, *a, **kw):
        _count(self, len(url))
        return on_url(self, url, *a, **kw)

    def header_hook(self, name, value, *a, **kw):
        _count(self, len(name) + len(value) + 4)
        return on_header(self, name, value, *a, **kw)

    cls.on_message_begin, cls.on_url, cls.on_header = on_message_begin, url_hook, header_hook


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


def install_header_limits(config: dict | None = None) -> dict:
    """Install the header timeout and (for httptools) the header size limit (idempotent).

    Returns ``{"timeout_s": ..., "max_header_bytes": ...}`` with None for what is off or
    could not be installed.
    """
    out = {"timeout_s": None, "max_header_bytes": None}
    if "uvicorn" not in sys.modules:  # not a process that serves HTTP: nothing to bound
        return out
    out["timeout_s"] = install_header_timeout(config)
    limit = max_header_bytes(config)
    key = "uvicorn.protocols.http.httptools_impl.HttpToolsProtocol:size"
    if limit <= 0:
        return out
    if key in _installed:
        out["max_header_bytes"] = limit
        return out
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # no httptools: uvicorn uses h11, which has its own bound
        return out
    if not all(callable(getattr(HttpToolsProtocol, m, None))
               for m in ("on_message_begin", "on_url", "on_header")):
        log.warning("uvicorn's HttpToolsProtocol has changed; request headers have no size limit")
        return out
    _patch_header_size(HttpToolsProtocol, limit)
    _installed[key] = float(limit)
    out["max_header_bytes"] = limit
    return out


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
    return seconds if any(not k.endswith(":size") for k in _installed) else None
