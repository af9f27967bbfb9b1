"""The registry client under transient failures: a real registry (Debian's docker-registry)
behind a small fault-injecting HTTP proxy on loopback, written here.  The proxy answers
chosen requests with 5xx/429 itself and forwards everything else unchanged; the registry's own
state (read directly, not through the proxy) is the oracle for what really got stored."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from nbdeploy.errors import RegistryError
from nbdeploy.image import image_from_rootfs
from nbdeploy.registry import push_image

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
       "proxy-authorization", "proxy-authenticate"}


class FaultProxy:
    """Forwards to ``upstream`` (host:port); ``rules`` is a list of
    ``[method, path_regex, status, times]``: the next ``times`` matching requests (``None`` =
    all) get ``status`` from the proxy instead of reaching the registry.  ``log`` records
    (method, path, status, injected) for every request."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.rules: list[list] = []
        self.log: list[tuple[str, str, int, bool]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):   # quiet
                pass

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _handle(self):
                body = self._body()
                fault = proxy._fault(self.command, self.path)
                if fault is not None:
                    # recorded before answering: the client may act on the answer (and the test
                    # read the log) before this thread runs again
                    proxy._record(self.command, self.path, fault, True)
                    payload = b'{"errors":[{"code":"UNAVAILABLE","message":"injected by the test"}]}'
                    self.send_response(fault)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                proxy._record(self.command, self.path, resp.status, False)
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _fault(self, method: str, path: str) -> int | None:
        with self._lock:
            for rule in self.rules:
                m, rx, status, times = rule
                if m == method and re.search(rx, path) and (times is None or times > 0):
                    if times is not None:
                        rule[3] -= 1
                    return status
        return None

    def _record(self, method, path, status, injected):
        with self._lock:
            self.log.append((method, path, status, injected))

    def requests(self, method: str, rx: str) -> list[tuple[int, bool]]:
        return [(s, inj) for m, p, s, inj in self.log if m == method and re.search(rx, p)]

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def small_image(tmp_path: Path, mb: int = 1):
    root = tmp_path / "rootfs"
    (root / "data").mkdir(parents=True)
    (root / "data" / "blob.bin").write_bytes(os.urandom(mb << 20))
    (root / "hello.txt").write_text("hello\n")
    return image_from_rootfs(root, home=tmp_path / "home", compresslevel=1)


def registry_has_blob(reg, repo: str, digest: str) -> bool:
    req = urllib.request.Request(f"http://{reg.host}/v2/{repo}/blobs/{digest}", method="HEAD")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status == 200
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return False
        raise


BLOB_HEAD = r"^/v2/.+/blobs/sha256:[0-9a-f]{64}$"
UPLOAD_START = r"^/v2/.+/blobs/uploads/$"
MANIFEST = r"^/v2/.+/manifests/"


def test_push_retries_transient_5xx_and_429(fresh_registry, tmp_path):
    img = small_image(tmp_path)
    with FaultProxy(fresh_registry.host) as proxy:
        proxy.rules = [["HEAD", BLOB_HEAD, 503, 1],          # "is it there?"  -> 503 once
                       ["POST", UPLOAD_START, 429, 1],        # start an upload -> 429 once
                       ["PUT", MANIFEST, 500, 1],             # the tag         -> 500 once
                       ["GET", r"^/v2/$", 502, 1]]            # the API check   -> 502 once
        result = push_image(img, f"{proxy.host}/faults/retry:1")
        for method, rx, status in (("HEAD", BLOB_HEAD, 503), ("POST", UPLOAD_START, 429),
                                   ("PUT", MANIFEST, 500), ("GET", r"^/v2/$", 502)):
            seen = proxy.requests(method, rx)
            # the injected failure came first; the same request was sent again and reached the
            # registry (a HEAD for a missing blob rightly answers 404)
            assert seen[0] == (status, True), (method, seen)
            assert seen[1][1] is False and seen[1][0] < 500 and seen[1][0] != 429, (method, seen)
    # what the registry itself holds, read directly
    digest, manifest = fresh_registry.manifest("faults/retry", "1")
    assert digest == result.digest == "sha256:" + hashlib.sha256(img.manifest_bytes).hexdigest()
    for d in [layer["digest"] for layer in manifest["layers"]] + [manifest["config"]["digest"]]:
        assert registry_has_blob(fresh_registry, "faults/retry", d)
    assert len(result.uploaded) == 2 and not result.skipped


def test_a_registry_that_keeps_failing_is_a_clear_error_after_bounded_retries(fresh_registry, tmp_path):
    img = small_image(tmp_path)
    with FaultProxy(fresh_registry.host) as proxy:
        proxy.rules = [["PUT", MANIFEST, 503, None]]          # never recovers
        with pytest.raises(RegistryError) as ei:
            push_image(img, f"{proxy.host}/faults/down:1")
        tries = proxy.requests("PUT", MANIFEST)
    assert 2 <= len(tries) <= 5 and all(s == 503 for s, _ in tries), tries
    assert "503" in ei.value.message or "unavailable" in ei.value.message.lower(), ei.value.message
    assert "Traceback" not in str(ei.value)
    # no tag was created
    req = urllib.request.Request(f"http://{fresh_registry.host}/v2/faults/down/manifests/1", method="HEAD")
    with pytest.raises(urllib.error.HTTPError) as nf:
        urllib.request.urlopen(req, timeout=10)
    assert nf.value.code == 404


def test_resumed_push_counts_uploaded_and_skipped(fresh_registry, tmp_path):
    """The first push dies after the layer is stored (every later upload start is refused);
    the resumed push uploads only what the registry lacks, and says so in its counts."""
    img = small_image(tmp_path, mb=2)
    repo = "faults/resume"
    blobs = [(d, Path(p)) for d, p in img.blobs()]
    assert len(blobs) == 2                                   # the layer, then the config
    with FaultProxy(fresh_registry.host) as proxy:
        # let the first upload session through, refuse every one after it
        proxy.rules = [["POST", UPLOAD_START, 500, None]]
        first_post = {"seen": False}
        orig = proxy._fault

        def fault(method, path):
            if method == "POST" and re.search(UPLOAD_START, path) and not first_post["seen"]:
                first_post["seen"] = True
                return None
            return orig(method, path)

        proxy._fault = fault
        with pytest.raises(RegistryError):
            push_image(img, f"{proxy.host}/{repo}:1")
    # the registry's own view, directly: which blobs made it
    present = {d for d, _ in blobs if registry_has_blob(fresh_registry, repo, d)}
    assert present == {blobs[0][0]}, present
    with FaultProxy(fresh_registry.host) as proxy:
        result = push_image(img, f"{proxy.host}/{repo}:1")
        heads = proxy.requests("HEAD", BLOB_HEAD)
        posts = proxy.requests("POST", UPLOAD_START)
    assert list(result.skipped) == [blobs[0][0]]
    assert list(result.uploaded) == [blobs[1][0]]
    assert result.bytes_uploaded == blobs[1][1].stat().st_size
    assert len(posts) == 1 and len(heads) >= 2               # one new upload session, for the config
    digest, _ = fresh_registry.manifest(repo, "1")
    assert digest == result.digest
    # and once more: nothing left to upload
    again = push_image(img, f"{fresh_registry.host}/{repo}:2")
    assert not again.uploaded and sorted(again.skipped) == sorted(d for d, _ in blobs)
    assert again.bytes_uploaded == 0 and again.digest == result.digest
