"""A hostile registry-like peer on loopback: it asks for a login, then answers every
authenticated request (except ``GET /v2/``) with a 400 whose body echoes the request —
its Authorization header, the decoded Basic credentials (raw, JSON- and URL-encoded) —
with terminal escapes and padding around them.  It is a real HTTP server that nbdeploy's
registry client talks to over a socket; nothing in nbdeploy is replaced.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

MARKER = "ECHO-REGISTRY-SAYS"


class EchoRegistry:
    def __init__(self, *, challenge: str | None = None, upload_location: str | None = None):
        self.challenge = challenge or 'Basic realm="echo"'
        self.upload_location = upload_location
        self.requests: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # keep test output quiet
                pass

            def _answer(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                auth = self.headers.get("Authorization")
                owner.requests.append({"method": self.command, "path": self.path, "auth": auth})
                if not auth:
                    return self._send(401, b'{"errors": [{"code": "UNAUTHORIZED"}]}',
                                      {"WWW-Authenticate": owner.challenge})
                if self.command == "GET" and self.path == "/v2/":
                    return self._send(200, b"{}")
                if self.command == "POST" and owner.upload_location and "/blobs/uploads/" in self.path:
                    return self._send(202, b"", {"Location": owner.upload_location})
                decoded = ""
                if auth.lower().startswith("basic "):
                    decoded = base64.b64decode(auth.split(" ", 1)[1]).decode(errors="replace")
                user, _, pw = decoded.partition(":")
                echo = (f"{MARKER} \x1b[31mbad request\x1b[0m: Authorization: {auth} user={user} "
                        f"password={pw} json={json.dumps({'pw': pw})} url={quote(pw, safe='')} raw {pw} "
                        f"{self.command} {self.path}\n"
                        + "".join(f"{k}: {v}\n" for k, v in self.headers.items())
                        + "x" * 300 + f" tail {pw} {auth}")
                self._send(400, echo.encode())

            def _send(self, code: int, body: bytes, headers: dict | None = None):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def secrets_of(user: str, password: str) -> list[str]:
    """Every form of the credentials that must not leak."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return [user, password, token, f"Basic {token}", json.dumps(password)[1:-1], quote(password, safe="")]


def assert_clean(text: str, user: str, password: str) -> None:
    for s in secrets_of(user, password):
        assert s not in text, f"{s!r} leaked into: {text[:300]!r}"
