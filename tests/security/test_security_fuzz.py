"""Property-based fuzzing of a served bundle's HTTP API from its own OpenAPI document
(``GET /nbdeploy/openapi.json``) with schemathesis: no 5xx, answers conform to the document,
for schema-valid and schema-violating inputs alike.  Plus the explicit contract: oversized
bodies are 413, and a wrong shape, dtype or NaN is a 400 that names expected vs received."""

from __future__ import annotations

import json
import socket

import pytest
import schemathesis  # a test dependency (pyproject [test]): missing is an error, never a skip
from conftest import read_until_close
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

import nbdeploy

pytestmark = pytest.mark.slow

MAX_BODY = 64 * 1024   # small limits keep generated bodies (and the run) small
MAX_ROWS = 50


@pytest.fixture(scope="module")
def served(rf_model, breast_cancer):
    from nbdeploy import bundle
    from nbdeploy.bundle import ServeConfig

    _, X_test, _, y_test = breast_cancer
    d = nbdeploy.deploy(rf_model, X_test.iloc[:120], labels=y_test.iloc[:120], name="sec-fuzz",
                        explain="shap", quantize="none", benchmark_budget_s=2)
    # the same bundle, rebuilt with small request limits
    src = bundle.build(name="sec-fuzz", onnx_bytes=d.chosen_model.SerializeToString(),
                       spec=d.chosen_spec, metadata=d.to_dict(include_bundle=False),
                       config=ServeConfig(max_rows=MAX_ROWS, max_body_bytes=MAX_BODY),
                       extra=lambda model_dir: d.explanation.write_artifacts(model_dir))
    from nbdeploy import serve

    server = serve.start(src.tag)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api_schema(served):
    schema = schemathesis.openapi.from_url(served.url + "/nbdeploy/openapi.json", timeout=30)
    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                    max_examples=50, deterministic=True)
    return schema


def test_openapi_conformance(api_schema, served, get):
    """Every GET operation of the document: no 5xx, documented status codes, content types and
    bodies; schema-violating input is rejected with 4xx, valid input is accepted.

    (Driven through hypothesis strategies rather than schemathesis' pytest plugin, whose lazy
    fixture support breaks on pytest 9.2.)"""
    _, doc = get(served.url + "/nbdeploy/openapi.json")
    paths = [p for p, ops in doc["paths"].items() if "get" in ops]
    assert {"/metadata", "/drift"} <= set(paths), paths
    for path in paths:
        # invalid input exists only where the operation takes parameters
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE]
                                             if doc["paths"][path]["get"].get("parameters") else [])
        for mode in modes:
            @given(case=api_schema[path]["GET"].as_strategy(generation_mode=mode))
            @settings(max_examples=50, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def check(case):
                case.call_and_validate(base_url=served.url, timeout=30)

            check()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("path", ["/predict", "/explain"])
def test_openapi_conformance_model_routes(api_schema, served, path, mode):
    """The same for POST /predict and POST /explain, valid and invalid inputs."""
    @given(case=api_schema[path]["POST"].as_strategy(generation_mode=mode))
    @settings(max_examples=50, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case):
        case.call_and_validate(base_url=served.url, timeout=30)

    check()


def test_document_covers_the_routes(served, get):
    status, doc = get(served.url + "/nbdeploy/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    assert {"/predict", "/explain", "/metadata", "/drift"} <= set(doc["paths"])
    body = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    # the configured row limit is in the document (however the rows schema is arranged)
    assert f'"maxItems": {MAX_ROWS}' in json.dumps(body["properties"]["inputs"]), body


# -- explicit checks --------------------------------------------------------------------------
def _raw_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    """A POST written by hand on a socket, so the declared length can lie or be absent."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    req = (f"POST {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nConnection: close\r\n{head}\r\n").encode()
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(req)
        try:
            if headers.get("Transfer-Encoding") == "chunked":
                step = 16 * 1024
                for i in range(0, len(body), step):
                    chunk = body[i:i + step]
                    s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                s.sendall(b"0\r\n\r\n")
            else:
                s.sendall(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer 413 and close before reading everything
        data = read_until_close(s)
    head, _, payload = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        out, rest = b"", payload
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.strip() or b"0", 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2:]
        payload = out
    return status, json.loads(payload)


def _big_body(n_bytes: int) -> bytes:
    row = "[" + ",".join(["1.0"] * 30) + "]"
    n = n_bytes // (len(row) + 1) + 1
    return ('{"inputs": [' + ",".join([row] * n) + "]}").encode()


@pytest.mark.parametrize("route", ["/predict", "/explain"])
@pytest.mark.parametrize("how", ["content-length", "chunked"])
def test_oversized_body_is_413(served, route, how):
    body = _big_body(MAX_BODY * 2)
    headers = {"Content-Type": "application/json"}
    if how == "content-length":
        headers["Content-Length"] = str(len(body))
    else:  # no declared length: the streamed byte count must stop it
        headers["Transfer-Encoding"] = "chunked"
    status, out = _raw_post(served.url + route, body, headers)
    assert status == 413, out
    assert str(MAX_BODY) in out["message"] and out["hint"]


def _mixed_bool(payload) -> bool:
    """A row where booleans sit among numbers."""
    rows = payload.get("inputs") if isinstance(payload, dict) else None
    if not isinstance(rows, list) or not rows or not isinstance(rows[0], list):
        return False
    return {type(v) is bool for v in rows[0]} == {True, False}


@pytest.mark.parametrize("payload, expected, received, words", [
    ({"inputs": [[1.0] * 29]}, 30, 29, "30 features"),
    ({"inputs": [[1.0] * 31, [1.0] * 31]}, 30, 31, "30 features"),
    ({"inputs": [1.0] * 30}, "list of numbers", "float", "not a list"),
    ({"inputs": [[[1.0]] * 30]}, "numbers", None, "numbers"),
    ({"inputs": [["1.0"] * 30]}, "numbers", None, "only numbers"),
    ({"inputs": [[True] * 30]}, "numbers", None, "only numbers"),
    ({"inputs": [[1.0] * 29 + [True]]}, "numbers", None, "only numbers"),
    ({"inputs": [[1.0] * 15 + [False] + [1.0] * 14]}, "numbers", None, "only numbers"),
    ({"inputs": [[None] * 30]}, "numbers", None, "numbers"),
    ({"inputs": [[1.0] * 30] * (MAX_ROWS + 1)}, f"<= {MAX_ROWS} rows", MAX_ROWS + 1, "Too many rows"),
    ({"inputs": "1,2,3"}, "list of rows", "str", "list of rows"),
    ({"inputs": {"a": 1}}, "list of rows", "dict", "list of rows"),
    ({"rows": [[1.0] * 30]}, "inputs", None, "no 'inputs'"),
    ([[1.0] * 30], "object", "list", "JSON object"),
])
@pytest.mark.parametrize("route", ["/predict", "/explain"])
def test_wrong_shape_or_dtype_is_400_naming_expected_and_received(served, post, route, payload,
                                                                 expected, received, words,
                                                                 request):
    status, body = post(served.url + route, payload)
    assert status == 400, body
    assert words in body["message"], body
    assert body["expected"] == expected, body
    if received is not None:
        assert body["received"] == received, body
    else:
        assert body.get("received") not in (None, ""), body
    assert body["hint"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e39"])
@pytest.mark.parametrize("route", ["/predict", "/explain"])
def test_nan_inf_overflow_is_400(served, post, route, literal):
    raw = ('{"inputs": [[' + ", ".join(["1.0"] * 29 + [literal]) + "]]}").encode()
    status, body = post(served.url + route, None, data=raw)
    assert status == 400, body
    assert ("NaN" in body["message"] or "overflow" in body["message"]), body
    assert body["expected"] == "finite numbers" and "1 rows" in body["received"]


def test_explain_with_unknown_method_is_400(served, post):
    status, body = post(served.url + "/explain", {"inputs": [[1.0] * 30], "method": "pickle"})
    assert status == 400, body
    assert "pickle" in json.dumps(body.get("received", "")) + body["message"]


# -- the same with API keys on ------------------------------------------------------------------
# One more server of the same bundle that reads a key file: the document declares the bearer
# scheme, schemathesis sends the key (and its ignored_auth check replays requests without it,
# expecting 401), and the explicit 413/400 contract holds behind the key check.

@pytest.fixture(scope="module")
def served_key(served, tmp_path_factory):
    from nbdeploy import keys, serve

    kf = tmp_path_factory.mktemp("fuzz-keys") / "api_keys"
    key = keys.create("fuzz", kf)
    h = serve.start(served.tag, env={"NBDEPLOY_API_KEYS_FILE": str(kf)})
    yield h, {"Authorization": f"Bearer {key}"}
    h.stop()


@pytest.mark.parametrize("path, method", [("/predict", "POST"), ("/explain", "POST"),
                                          ("/metadata", "GET"), ("/drift", "GET")])
def test_openapi_conformance_with_api_keys(served_key, path, method):
    server, hdr = served_key
    assert get_status(server.url + "/nbdeploy/openapi.json") == 401
    schema = schemathesis.openapi.from_url(server.url + "/nbdeploy/openapi.json", headers=hdr, timeout=30)
    assert schema.raw_schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    # an invalid body can also be too large for this bundle's 64 KiB limit: refused with 413
    schema.config.checks.negative_data_rejection.expected_statuses.append("413")
    seen: set[int] = set()
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if method == "POST" else (GenerationMode.POSITIVE,)
    for mode in modes:
        @given(case=schema[path][method].as_strategy(generation_mode=mode))
        @settings(max_examples=25, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            response = case.call_and_validate(base_url=server.url, headers=hdr, timeout=30)
            sent_key = response.request.headers.get("Authorization") == hdr["Authorization"]
            # negative generation also leaves the declared credentials out: that must be a 401
            assert (response.status_code == 401) is not sent_key, (sent_key, response.status_code)
            seen.add(response.status_code)

        check()
    # valid requests got through the key check (this bundle has no drift baseline: 404)
    assert (404 if path == "/drift" else 200) in seen and 403 not in seen, seen


def get_status(url: str, headers: dict | None = None) -> int:
    from conftest import http

    return http("GET", url, headers=headers)[0]


@pytest.mark.parametrize("route", ["/predict", "/explain"])
def test_contract_holds_behind_the_key_check(served_key, post, route):
    server, hdr = served_key
    body = _big_body(MAX_BODY * 2)
    status, out = _raw_post(server.url + route, body, {"Content-Type": "application/json",
                                                       "Content-Length": str(len(body)), **hdr})
    assert status == 413 and str(MAX_BODY) in out["message"], out
    status, out = _raw_post(server.url + route, body, {"Content-Type": "application/json",
                                                       "Content-Length": str(len(body))})
    assert status == 401, out   # refused before the body is read
    status, out = post(server.url + route, {"inputs": [[1.0] * 29]}, headers=hdr)
    assert status == 400 and out["expected"] == 30 and out["received"] == 29, out
    assert post(server.url + route, {"inputs": [[1.0] * 29]})[0] == 401
