"""POST /explain over real HTTP from a deployed bundle under stock `bentoml serve`."""

from __future__ import annotations

import re

import numpy as np
import pytest

pytestmark = pytest.mark.slow
NUM = r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?"


@pytest.fixture(scope="module")
def served(ref_explained, breast_cancer):
    X_test = breast_cancer[1]
    d = ref_explained
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


def test_served_lime_equals_an_independent_lime_run(served, post, rf_model):
    """The oracle is lime itself on the sample rows and scikit-learn's own predict_proba (not
    nbdeploy's stored statistics or its ONNX session): same seed, same sampling, same weights
    up to float32 rounding of the served probabilities."""
    import pandas as pd
    from lime.lime_tabular import LimeTabularExplainer

    d, server, X = served
    rep = d.explanation
    seed = rep.seed
    # the served model's inputs are float32: lime gets the sample as the model sees it
    sample = X.values.astype(np.float32).astype(np.float64)
    for i in (0, 7):
        row = sample[i]
        # a fresh seeded explainer per row, as the bundle documents
        independent = LimeTabularExplainer(sample, mode="classification",
                                           feature_names=list(X.columns), discretize_continuous=True,
                                           discretizer="quartile", random_state=seed)
        exp = independent.explain_instance(
            row, lambda Z: rf_model.predict_proba(pd.DataFrame(Z, columns=X.columns)),
            labels=(1,), num_features=X.shape[1], num_samples=5000)
        want = np.zeros(X.shape[1])
        for j, w in exp.local_exp[1]:
            want[j] = w
        status, body = post(server.url + "/explain", {"inputs": [row.tolist()], "method": "lime"})
        assert status == 200, body
        got = np.asarray(body["contributions"][0])
        assert np.abs(want).max() > 1e-3                  # a real explanation, not all zeros
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
        top = lambda w: list(np.argsort(-np.abs(w))[:5])  # noqa: E731
        assert top(got) == top(want)
        # the same bin of each feature; its printed bounds may differ in the last digit, since
        # the bundle computed the quartiles of the float32 sample
        want_rules = [independent.discretizer.names[j][int(independent.discretizer.lambdas[j](row[j]))]
                      for j in range(X.shape[1])]
        for g, w in zip(body["rules"][0], want_rules):
            assert re.sub(NUM, "#", g) == re.sub(NUM, "#", w), (g, w)
            np.testing.assert_allclose([float(v) for v in re.findall(NUM, g)],
                                       [float(v) for v in re.findall(NUM, w)], atol=0.0101)


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


def test_plot_png_is_served(served, get):
    """GET /plots/NAME.png from the running bundle: a real PNG that Pillow decodes, byte for
    byte the file in the bundle; unknown names and path tricks are 404, not a file."""
    import io

    from PIL import Image

    from nbdeploy import store

    d, server, _ = served
    for name in ("shap_summary.png", "lime_row_0.png"):
        status, raw = get(server.url + "/plots/" + name)
        assert status == 200 and isinstance(raw, bytes), (status, raw[:200])
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        img = Image.open(io.BytesIO(raw))
        img.verify()
        assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100
        assert raw == (store.bundle_dir(d.tag) / "plots" / name).read_bytes()
    for bad in ("no_such_plot.png", "..%2Fbentofile.yaml", "%2e%2e%2fservice.py"):
        status, raw = get(server.url + "/plots/" + bad)
        assert status == 404, (bad, status, raw[:200])


def test_class_names_name_predictions_and_explanations_alike(post):
    """deploy(class_names=...) on a classifier: /predict answers with the names, and /explain
    names its explained output and takes a name as "output" (checked against scikit-learn)."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    import nbdeploy

    X, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(X, y)
    names = ["setosa", "versicolor", "virginica"]
    d = nbdeploy.deploy(model, X[::2], name="iris-named", class_names=names, explain="shap",
                        quantize="none")
    server = d.serve()
    try:
        rows = X[100:106]
        status, out = post(server.url + "/predict", {"inputs": rows.tolist()})
        assert status == 200 and out["predictions"] == [names[k] for k in model.predict(rows)], out
        status, out = post(server.url + "/explain", {"inputs": rows[:1].tolist(), "output": "virginica"})
        assert status == 200, out
        assert out["explained_output"] == ["virginica"], out
        p = model.predict_proba(rows[:1])[0, 2]       # additivity on the named class's probability
        assert abs(out["base_values"][0] + sum(out["contributions"][0]) - p) < 1e-3, out
    finally:
        server.stop()
