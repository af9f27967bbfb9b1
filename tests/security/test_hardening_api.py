"""Hostile client input against a real `bentoml serve` of a deployed bundle.

Deep JSON and non-finite /explain options must be 400s (they were RecursionError /
OverflowError 500s); a client that never finishes its request headers must be cut off
within the header timeout, one whose headers are huge refused, one that trickles its body
cut off by the request timeout; ordinary keep-alive traffic must be unaffected.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.parse

import pytest

from nbdeploy.runtime.jsonlimits import MAX_JSON_DEPTH
from nbdeploy.runtime.timeouts import DEFAULT_HEADER_TIMEOUT_S, DEFAULT_MAX_HEADER_BYTES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(ref_explained, breast_cancer):
    server = ref_explained.serve()
    yield server, breast_cancer[1].values
    server.stop()


def _raw_post(url: str, raw: bytes) -> tuple[int, dict]:
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request("POST", u.path, body=raw, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


@pytest.mark.parametrize("route", ["/predict", "/explain"])
def test_deep_json_is_400(served, route):
    server, _ = served
    for depth in (5000, 100_000, MAX_JSON_DEPTH + 1):
        raw = b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}"
        status, body = _raw_post(server.url + route, raw)
        assert status == 400, (depth, body)
        assert "levels deep" in body["message"] and body["expected"] == f"<= {MAX_JSON_DEPTH} levels"
    # an object chain, and brackets hidden inside strings do not count
    raw = b'{"a":' * 3000 + b"1" + b"}" * 3000
    assert _raw_post(server.url + route, raw)[0] == 400
    status, body = _raw_post(server.url + route, b'{"inputs": "' + b"[" * 5000 + b'"}')
    assert status == 400 and "levels deep" not in body["message"]


def test_deep_json_below_the_bound_is_an_ordinary_400(served):
    server, _ = served
    depth = MAX_JSON_DEPTH - 1  # plus the outer object: exactly at the bound
    raw = b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}"
    status, body = _raw_post(server.url + "/predict", raw)
    assert status == 400 and "levels deep" not in body["message"]


@pytest.mark.parametrize("option,method", [("seed", "shap"), ("max_evals", "shap"),
                                           ("seed", "lime"), ("num_samples", "lime")])
@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"-Infinity", b"1e309", b"-1e309", b"1e300",
                                   b"2.5", b'"7"', b"true", b"[1]", b"-1"])
def test_explain_numeric_options_are_validated(served, option, method, value):
    server, X = served
    row = json.dumps(X[:1].tolist()).encode()
    raw = (b'{"inputs": ' + row + b', "method": "' + method.encode() + b'", "' + option.encode()
           + b'": ' + value + b"}")
    status, body = _raw_post(server.url + "/explain", raw)
    assert status in (400, 413), body
    assert repr(option) in body["message"]
    assert len(json.dumps(body)) < 1000


def test_explain_still_answers_with_valid_options(served, post):
    server, X = served
    status, body = post(server.url + "/explain", {"inputs": X[:1].tolist(), "method": "lime",
                                                  "seed": 3, "num_samples": 200})
    assert status == 200, body
    assert body["seed"] == 3 and body["num_samples"] == 200


def _closed_after(sock: socket.socket, trickle: bytes | None, limit: float) -> float | None:
    """Seconds until the server closes ``sock`` (sending ``trickle`` every second), or None."""
    t0 = time.monotonic()
    sock.settimeout(1.0)
    while time.monotonic() - t0 < limit:
        try:
            if trickle:
                sock.sendall(trickle)
            data = sock.recv(4096)
            if data == b"":
                return time.monotonic() - t0
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - t0
    return None


def test_slow_headers_are_cut_off(served):
    server, _ = served
    u = urllib.parse.urlsplit(server.url)
    bound = DEFAULT_HEADER_TIMEOUT_S
    with socket.create_connection((u.hostname, u.port)) as trickler, \
            socket.create_connection((u.hostname, u.port)) as silent:
        trickler.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        # both in parallel: the silent one is checked once the trickler has its answer
        took = _closed_after(trickler, b"X-Slow: 1\r\n", bound + 5)
        assert took is not None, "a client trickling header lines was never disconnected"
        assert bound - 1.5 <= took <= bound + 3, took
        silent.settimeout(3.0)
        assert silent.recv(1) == b"", "an idle connection that sent nothing is still open"


def test_keep_alive_requests_are_unaffected(served):
    server, X = served
    u = urllib.parse.urlsplit(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    body = json.dumps({"inputs": X[:1].tolist()})
    try:
        for _ in range(3):  # one connection, pauses shorter than uvicorn's 5 s keep-alive
            conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            assert r.status == 200, r.read()
            r.read()
            time.sleep(2.0)
        assert conn.sock is not None  # still the same connection
    finally:
        conn.close()


def test_huge_headers_are_refused(served):
    server, X = served
    u = urllib.parse.urlsplit(server.url)
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        big = b"a" * (DEFAULT_MAX_HEADER_BYTES + 1)
        try:  # the server may close before it has read all of it
            s.sendall(b"GET /metadata HTTP/1.1\r\nHost: x\r\nX-Big: " + big + b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    # just under the limit is an ordinary request
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(b"GET /metadata HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: "
                  + b"a" * (DEFAULT_MAX_HEADER_BYTES - 200) + b"\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200"), "a 64 KiB header block was refused"


def test_slow_body_is_cut_off_by_the_request_timeout(served):
    """BentoML's traffic timeout (ServeConfig.timeout_s, 30 s by default) covers reading the
    body: a client that trickles one byte a second gets a 504 instead of a connection held."""
    from nbdeploy.bundle import ServeConfig

    server, _ = served
    bound = ServeConfig().timeout_s
    u = urllib.parse.urlsplit(server.url)
    with socket.create_connection((u.hostname, u.port)) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100000\r\n\r\n{")
        t0 = time.monotonic()
        s.settimeout(1.0)
        answer = b""
        while time.monotonic() - t0 < bound + 10 and not answer:
            try:
                s.sendall(b" ")
                answer = s.recv(4096)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        took = time.monotonic() - t0
    assert answer.startswith(b"HTTP/1.1 504"), (took, answer[:200])
    assert bound - 2 <= took <= bound + 5, took
