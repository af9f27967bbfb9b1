"""POST /explain over real HTTP from a deployed bundle under stock `bentoml serve`."""

from __future__ import annotations

import numpy as np
import pytest

import nbdeploy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(rf_model, breast_cancer):
    _, X_test, _, y_test = breast_cancer
    d = nbdeploy.deploy(rf_model, X_test, labels=y_test, name="explain-test", explain="shap,lime",
                        quantize="none")
    server = d.serve()
    yield d, server, X_test
    server.stop()


def test_shap_over_http_equals_notebook(served, post, rf_model):
    import shap

    d, server, X = served
    rep = d.explanation
    rows = rep.X[:3]
    status, body = post(server.url + "/explain", {"inputs": rows.tolist(), "method": "shap"})
    assert status == 200, body
    assert body["method"] == "shap" and body["explainer"] == "tree"
    assert body["output_space"] == "probability" and body["feature_names"] == list(X.columns)
    for i in range(3):
        nb = rep.explain_row(i, "shap")
        np.testing.assert_allclose(body["contributions"][i], nb["contributions"], atol=1e-9)
        assert body["base_values"][i] == pytest.approx(nb["base_value"], abs=1e-9)
        assert body["outputs"][i] == pytest.approx(nb["output"], abs=1e-9)
    ref = np.asarray(shap.TreeExplainer(rf_model).shap_values(rows))[:, :, 1]
    np.testing.assert_allclose(body["contributions"], ref, atol=1e-5)


def test_lime_over_http_equals_notebook_and_repeats(served, post):
    d, server, _ = served
    rep = d.explanation
    req = {"inputs": rep.X[:1].tolist(), "method": "lime"}
    status, a = post(server.url + "/explain", req)
    assert status == 200, a
    status, b = post(server.url + "/explain", req)
    assert a["contributions"] == b["contributions"]
    nb = rep.explain_row(0, "lime")
    # same seed, same stored statistics: equal up to float32 rounding of the served session's
    # probabilities (its thread settings may sum the trees in another order)
    np.testing.assert_allclose(a["contributions"][0], nb["contributions"], rtol=1e-4, atol=1e-7)
    assert a["rules"][0] == nb["rules"]


def test_explain_errors_over_http(served, post):
    _, server, X = served
    status, body = post(server.url + "/explain", {"inputs": X.values[:1].tolist(), "method": "anchors"})
    assert status == 400 and "'lime'" in body["message"]
    status, body = post(server.url + "/explain", {"inputs": X.values[:11].tolist(), "method": "lime"})
    assert status == 413 and "limit of 10" in body["message"]
    status, body = post(server.url + "/explain", {"inputs": [[1.0, 2.0]], "method": "shap"})
    assert status == 400 and "30 features" in body["message"]


def test_plots_are_served(served, get):
    _, server, _ = served
    status, body = get(server.url + "/plots")
    assert status == 200
    assert {"shap_summary.png", "shap_importance.png", "lime_row_0.png"} <= set(body["plots"])
