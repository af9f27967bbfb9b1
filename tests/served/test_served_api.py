"""The served bundle's HTTP API under stock `bentoml serve`: predict, validation, metadata,
drift, plots, health, the OpenAPI document.  Every check runs twice: against the session's
reference server (access control off) and against a second server of the same bundle with
API keys on, whose client sends ``Authorization: Bearer <key>``; with auth on, every route but
the probes answers 401 without the header.  Drift in depth and metrics: tests/served/test_drift_served.py."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import http, read_until_close

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["off", "key"])
def served(request, ref_deployment, breast_cancer, tmp_path_factory):
    """auth off: the session's reference server (tests/conftest.py); auth key: the same bundle
    under a second ``bentoml serve`` that reads a key file (one extra start for this module).
    The ``api`` fixture (conftest.py) is the client: it sends the key's header."""
    X = breast_cancer[1]
    if request.param == "off":
        yield ref_deployment, request.getfixturevalue("ref_server"), X
        return
    from nbdeploy import keys, serve

    kf = tmp_path_factory.mktemp("served-api-keys") / "api_keys"
    key = keys.create("served-api", kf)
    h = serve.start(ref_deployment.tag, env={"NBDEPLOY_API_KEYS_FILE": str(kf)})
    try:
        assert h.auth == "key"
        yield ref_deployment, h, X, {"Authorization": f"Bearer {key}"}
    finally:
        h.stop()


def test_predict_lists_and_records(api, served, rf_model):
    X = served[2]
    status, body = api.post("/predict", {"inputs": X.values[:5].tolist()})
    assert status == 200, body
    assert body["predictions"] == rf_model.predict(X.iloc[:5]).tolist()
    np.testing.assert_allclose(body["probabilities"], rf_model.predict_proba(X.iloc[:5]), atol=1e-5)
    records = X.iloc[:2].to_dict(orient="records")
    status, body2 = api.post("/predict", {"inputs": records})
    assert status == 200 and body2["predictions"] == body["predictions"][:2]


@pytest.mark.parametrize("payload, words, expected", [
    ({"inputs": [[1.0, 2.0]]}, "30 features", 30),
    ({"inputs": [["a"] * 30]}, "only numbers", "numbers"),
    ({"inputs": []}, "empty", None),
    ({"rows": [[1.0] * 30]}, "no 'inputs'", "inputs"),
    ({"inputs": [[1.0] * 30, [1.0] * 29]}, "different lengths", None),
    ({"inputs": [{"nope": 1}]}, "missing", None),
    ([1, 2, 3], "JSON object", "object"),
])
def test_client_mistakes_get_400(api, payload, words, expected):
    status, body = api.post("/predict", payload)
    assert status == 400, body
    assert words in body["message"]
    assert body["hint"]
    if expected is not None:
        assert body["expected"] == expected, body


def test_nan_and_bad_json_get_400(api):
    status, body = api.post("/predict", None, data=b'{"inputs": [[NaN' + b", 1.0" * 29 + b"]]}")
    assert status == 400 and "NaN" in body["message"]
    assert body["expected"] == "finite numbers", body
    status, body = api.post("/predict", None, data=b'{"inputs": [[1.0,')
    assert status == 400 and "not valid JSON" in body["message"]


def test_wrong_content_type_and_too_many_rows(api):
    status, body = api.post("/predict", None, data=b"\x80\x04K\x01.",
                            headers={"Content-Type": "application/vnd.bentoml+pickle"})
    assert status == 415
    status, body = api.post("/predict", {"inputs": [[0.0] * 30] * 10_001})
    assert status == 400 and "10000" in body["message"]
    assert body["received"] == 10_001, body


def _declared_too_big(url: str, headers: dict) -> tuple[int, bytes]:
    """A POST that declares a body over the 16 MiB default limit and sends only its start:
    the server must answer 413 from the declared length, before reading the rest."""
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(url)
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Content-Type": "application/json", **headers,
                                                  "Content-Length": str(17 << 20)}.items())
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(f"POST {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nConnection: close\r\n{head}\r\n".encode()
                  + b'{"inputs": [' + b"[1.0]," * 1000)
        data = read_until_close(s)
    return int(data.split(b" ", 2)[1]), data.partition(b"\r\n\r\n")[2]


def test_oversized_body_is_413(api):
    status, body = _declared_too_big(api.url + "/predict", api.headers)
    assert status == 413, body
    assert b"16777216" in body


def test_metadata_is_a_model_card(api, ref_deployment):
    d = ref_deployment
    status, meta = api.get("/metadata")
    assert status == 200
    assert meta["tag"] == d.tag
    assert meta["framework"] == "sklearn" and meta["task"] == "classifier"
    assert meta["input_schema"]["n_features"] == 30
    assert meta["input_schema"]["feature_names"][0] == "mean radius"
    assert meta["verify"]["passed"] is True
    assert meta["serving"]["providers"] == ["CPUExecutionProvider"]
    # the serving choice and why, from the benchmark
    assert meta["chosen_variant"] == "fp32" and meta["optimize"]["reason"]
    assert meta["serving"]["threads"] >= 1 and meta["serving"]["workers"] == 1
    assert set(meta["serving"]["reasons"]) >= {"threads", "batching", "workers"}
    assert meta["optimize"]["benchmark"]
    for dist in ("nbdeploy", "onnxruntime", "bentoml"):
        assert dist in meta["versions"]


def test_drift_counts_the_rows_served(api, served):
    X = served[2]
    status, before = api.get("/drift")
    assert status == 200, before
    assert before["metric"] == "psi"
    assert [f["feature"] for f in before["features"]] == list(X.columns)
    assert api.post("/predict", {"inputs": X.values[10:17].tolist()})[0] == 200
    assert api.post("/predict", {"inputs": [[1.0] * 29]})[0] == 400   # refused rows are not counted
    status, after = api.get("/drift")
    assert status == 200 and after["observed_rows"] - before["observed_rows"] == 7


def test_plots_list_and_unknown_plot(api):
    status, listed = api.get("/plots")
    assert status == 200 and isinstance(listed["plots"], list)
    status, body = api.get("/plots/no-such-plot.png")
    assert status == 404 and body["expected"] == listed["plots"] and body["received"] == "no-such-plot.png"


def test_health_endpoints(api):
    # probes never need a token: sent without the client's headers
    assert http("GET", api.url + "/readyz")[0] == 200
    assert http("GET", api.url + "/livez")[0] == 200


def test_openapi_document(api):
    status, doc = api.get("/nbdeploy/openapi.json")
    assert status == 200 and "/predict" in doc["paths"]
    assert doc["paths"]["/livez"]["get"]["security"] == []
    assert doc["paths"]["/readyz"]["get"]["security"] == []
    if api.auth == "off":
        assert "security" not in doc and "securitySchemes" not in doc.get("components", {})
        assert "401" not in doc["paths"]["/predict"]["post"]["responses"]
        return
    assert doc["components"]["securitySchemes"]["bearerAuth"]["type"] == "http"
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert doc["security"] == [{"bearerAuth": []}]
    for path in ("/predict", "/explain", "/metadata", "/drift"):
        (op,) = doc["paths"][path].values()
        assert "401" in op["responses"] and "security" not in op, path   # the global requirement


ROUTES = [("POST", "/predict"), ("POST", "/explain"), ("GET", "/metadata"), ("GET", "/drift"),
          ("GET", "/plots"), ("GET", "/plots/no-such-plot.png"), ("GET", "/nbdeploy/openapi.json"),
          ("GET", "/metrics"), ("POST", "/api/predict")]


def test_without_the_header_every_route_is_401_with_auth_on(api, served):
    X = served[2]
    if api.auth == "off":   # the checks above already ran there without any header
        return
    body = {"inputs": X.values[:2].tolist()}
    wrong = {"Authorization": "Bearer nbd_" + "A" * 43}
    for method, path in ROUTES:
        for headers in ({}, wrong):
            status, out = http(method, api.url + path, body if method == "POST" else None, headers=headers)
            assert status == 401, (path, headers, status, out)
            assert out["error"] == "unauthorized"
