"""The served bundle's HTTP API under stock `bentoml serve`: predict, validation, metadata,
health.  Drift and metrics: tests/test_drift_served.py (servers of their own)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def served(ref_deployment, ref_server, breast_cancer):
    """The session's reference bundle and its server (tests/conftest.py): nothing here changes them."""
    return ref_deployment, ref_server, breast_cancer[1]


def test_predict_lists_and_records(served, post, rf_model):
    d, server, X = served
    status, body = post(server.url + "/predict", {"inputs": X.values[:5].tolist()})
    assert status == 200
    assert body["predictions"] == rf_model.predict(X.iloc[:5]).tolist()
    np.testing.assert_allclose(body["probabilities"], rf_model.predict_proba(X.iloc[:5]), atol=1e-5)
    records = X.iloc[:2].to_dict(orient="records")
    status, body2 = post(server.url + "/predict", {"inputs": records})
    assert status == 200 and body2["predictions"] == body["predictions"][:2]


@pytest.mark.parametrize("payload, words", [
    ({"inputs": [[1.0, 2.0]]}, "30 features"),
    ({"inputs": [["a"] * 30]}, "only numbers"),
    ({"inputs": []}, "empty"),
    ({"rows": [[1.0] * 30]}, "no 'inputs'"),
    ({"inputs": [[1.0] * 30, [1.0] * 29]}, "different lengths"),
    ({"inputs": [{"nope": 1}]}, "missing"),
    ([1, 2, 3], "JSON object"),
])
def test_client_mistakes_get_400(served, post, payload, words):
    _, server, _ = served
    status, body = post(server.url + "/predict", payload)
    assert status == 400, body
    assert words in body["message"]
    assert body["hint"]


def test_nan_and_bad_json_get_400(served, post):
    _, server, _ = served
    status, body = post(server.url + "/predict", None, data=b'{"inputs": [[NaN' + b", 1.0" * 29 + b"]]}")
    assert status == 400 and "NaN" in body["message"]
    status, body = post(server.url + "/predict", None, data=b'{"inputs": [[1.0,')
    assert status == 400 and "not valid JSON" in body["message"]


def test_wrong_content_type_and_too_many_rows(served, post):
    _, server, _ = served
    status, body = post(server.url + "/predict", None, data=b"\x80\x04K\x01.",
                        headers={"Content-Type": "application/vnd.bentoml+pickle"})
    assert status == 415
    status, body = post(server.url + "/predict", {"inputs": [[0.0] * 30] * 10_001})
    assert status == 400 and "10000" in body["message"]


def test_metadata_is_a_model_card(served, get):
    d, server, _ = served
    status, meta = get(server.url + "/metadata")
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


def test_health_endpoints(served, get):
    _, server, _ = served
    assert get(server.url + "/readyz")[0] == 200
    assert get(server.url + "/livez")[0] == 200


def test_openapi_document(served, get):
    _, server, _ = served
    status, doc = get(server.url + "/nbdeploy/openapi.json")
    assert status == 200 and "/predict" in doc["paths"]
