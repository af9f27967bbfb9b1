"""Serve-side explanations from the written artifacts: exactness, no pickle, budget, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nbdeploy.convert import convert
from nbdeploy.explain import explain
from nbdeploy.runtime.explain import ServeExplainer
from nbdeploy.runtime.model import OnnxModel
from nbdeploy.runtime.validation import ClientError


@pytest.fixture(scope="module")
def data():
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=200, n_features=10, n_informative=5, random_state=0)
    return X.astype(np.float32), y


def _bundle(tmp_path: Path, converted, report) -> Path:
    model_dir = tmp_path / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "model.onnx").write_bytes(converted.onnx_bytes)
    (model_dir / "spec.json").write_text(json.dumps(converted.spec))
    report.write_artifacts(model_dir)
    return model_dir


def _load(model_dir: Path, config: dict | None = None) -> ServeExplainer:
    spec = json.loads((model_dir / "spec.json").read_text())
    return ServeExplainer.from_bundle(model_dir, OnnxModel(model_dir / "model.onnx", spec), config or {})


@pytest.fixture(scope="module")
def rf_bundle(tmp_path_factory, data):
    from sklearn.ensemble import RandomForestClassifier

    X, y = data
    m = RandomForestClassifier(n_estimators=25, max_depth=8, random_state=0).fit(X, y)
    c = convert(m, X)
    rep = explain(c, methods=("shap", "lime"), max_rows=20, seed=5)
    return m, c, rep, _bundle(tmp_path_factory.mktemp("rf"), c, rep)


@pytest.fixture(scope="module")
def linear_bundle(tmp_path_factory, data):
    from sklearn.linear_model import LogisticRegression

    X, y = data
    c = convert(LogisticRegression(max_iter=300).fit(X, y), X)
    rep = explain(c, methods=("shap", "lime"), max_rows=4, max_background=30, seed=2)
    return c, rep, _bundle(tmp_path_factory.mktemp("lin"), c, rep)


def test_served_treeshap_equals_native_treeexplainer(rf_bundle, data):
    import shap

    m, _, rep, model_dir = rf_bundle
    X, _ = data
    serve = _load(model_dir)
    out = serve.explain(X[:50], "shap", {"output": "all"})
    native = shap.TreeExplainer(m)
    ref = np.asarray(native.shap_values(X[:50]))                     # [N, F, K]
    got = np.transpose(np.asarray(out["contributions"]), (0, 2, 1))
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(out["base_values"], native.expected_value, atol=1e-5)
    np.testing.assert_allclose(out["outputs"], m.predict_proba(X[:50]), atol=1e-9)
    assert out["output_space"] == "probability" and out["explainer"] == "tree"
    # default: the positive class of a binary classifier, one vector per row
    one = serve.explain(X[:3], "shap", {})
    assert one["explained_output"] == ["1", "1", "1"]
    np.testing.assert_allclose(one["contributions"], ref[:3, :, 1], atol=1e-5)
    recon = np.asarray(one["base_values"]) + np.asarray(one["contributions"]).sum(1)
    np.testing.assert_allclose(recon, one["outputs"], atol=1e-9)


def test_served_values_equal_notebook_values(rf_bundle, linear_bundle):
    _, _, rep, model_dir = rf_bundle
    served = _load(model_dir).explain(rep.X[:5], "shap", {"output": "all"})
    np.testing.assert_allclose(np.transpose(served["contributions"], (0, 2, 1)), rep.shap_values[:5],
                               atol=1e-9)
    lime_nb = rep.explain_row(2, "lime")
    lime_sv = _load(model_dir).explain(rep.X[2:3], "lime", {"seed": 5})
    assert lime_sv["contributions"][0] == lime_nb["contributions"]
    assert lime_sv["rules"][0] == lime_nb["rules"]

    _, lrep, ldir = linear_bundle
    lserve = _load(ldir)
    out = lserve.explain(lrep.X[:3], "shap", {"output": "all", "seed": 2})
    assert out["explainer"] == "permutation"
    np.testing.assert_allclose(np.transpose(out["contributions"], (0, 2, 1)), lrep.shap_values[:3],
                               atol=1e-12)


def test_same_seed_same_answer(linear_bundle):
    _, rep, model_dir = linear_bundle
    serve = _load(model_dir)
    a = serve.explain(rep.X[:2], "shap", {"seed": 11})
    b = _load(model_dir).explain(rep.X[:2], "shap", {"seed": 11})
    c = serve.explain(rep.X[:2], "shap", {"seed": 12})
    assert a["contributions"] == b["contributions"]
    assert a["contributions"] != c["contributions"]
    # additivity holds for every seed
    for r in (a, c):
        np.testing.assert_allclose(np.asarray(r["base_values"]) + np.sum(r["contributions"], axis=1),
                                   r["outputs"], atol=1e-9)
    la = serve.explain(rep.X[:1], "lime", {"seed": 3, "num_samples": 500})
    lb = serve.explain(rep.X[:1], "lime", {"seed": 3, "num_samples": 500})
    assert la["contributions"] == lb["contributions"] and la["num_samples"] == 500


def test_artifacts_contain_no_pickle(rf_bundle, linear_bundle):
    for model_dir in (rf_bundle[3], linear_bundle[2]):
        files = sorted(p for p in (model_dir / "explain").rglob("*") if p.is_file())
        assert files
        for p in files:
            assert p.suffix in {".json", ".npy", ".npz"}, p
            head = p.read_bytes()[:2]
            assert head != b"\x80\x04" and head != b"\x80\x05"       # not a raw pickle stream
            if p.suffix == ".npy":
                assert np.load(p, allow_pickle=False).dtype != object
            elif p.suffix == ".npz":
                with np.load(p, allow_pickle=False) as z:
                    assert all(z[k].dtype != object for k in z.files)
            else:
                json.loads(p.read_text())
    assert (rf_bundle[3] / "explain" / "trees.npz").is_file()
    assert (linear_bundle[2] / "explain" / "background.npy").is_file()
    cfg = json.loads((rf_bundle[3] / "explain" / "explain_config.json").read_text())
    assert cfg["output_space"] == "probability" and cfg["feature_names"] and cfg["budget"]["max_rows"]


def test_budget_limits_are_enforced(rf_bundle, linear_bundle, data):
    X, _ = data
    serve = _load(rf_bundle[3], {"explain_budget": {"max_rows": 5, "max_rows_lime": 2}})
    assert serve.max_rows == 5
    with pytest.raises(ClientError) as e:
        serve.explain(X[:6], "shap", {})
    assert e.value.status == 413 and "limit of 5" in e.value.message
    with pytest.raises(ClientError) as e:
        serve.explain(X[:3], "lime", {})
    assert e.value.status == 413 and "limit of 2" in e.value.message
    with pytest.raises(ClientError) as e:
        serve.explain(X[:1], "lime", {"num_samples": 10 ** 7})
    assert e.value.status == 413 and "20000" in e.value.message
    lserve = _load(linear_bundle[2])
    with pytest.raises(ClientError) as e:
        lserve.explain(X[:1], "shap", {"max_evals": 10 ** 6})
    assert e.value.status == 413 and "5000" in e.value.message
    with pytest.raises(ClientError) as e:
        lserve.explain(X[:21], "shap", {})
    assert e.value.status == 413 and "20" in e.value.message
    with pytest.raises(ClientError) as e:
        lserve.explain(X[:1], "shap", {"max_evals": "lots"})
    assert e.value.status == 400


def test_bad_requests(rf_bundle, data):
    X, _ = data
    serve = _load(rf_bundle[3])
    with pytest.raises(ClientError) as e:
        serve.explain(X[:1], "anchors", {})
    assert e.value.status == 400 and "'shap'" in e.value.message and "'lime'" in e.value.message
    with pytest.raises(ClientError) as e:
        serve.explain(X[:1, :4], "shap", {})
    assert e.value.status == 400 and "10 features" in e.value.message
    with pytest.raises(ClientError) as e:
        serve.explain(X[:1], "shap", {"output": "purple"})
    assert e.value.status == 400
    with pytest.raises(ClientError) as e:
        ServeExplainer.from_bundle(rf_bundle[3].parent / "nowhere", None, {})
    assert e.value.status == 501


def test_through_the_runtime_app(rf_bundle, data):
    """The bundle's Runtime.explain: parse the body, then the explainer (no HTTP)."""
    from nbdeploy.runtime.app import Runtime

    m, _, _, model_dir = rf_bundle
    X, _ = data
    rt = Runtime(model_dir.parent)
    rt.load()
    body = rt.explain({"inputs": X[:2].tolist(), "method": "shap"})
    assert len(body["contributions"]) == 2 and len(body["contributions"][0]) == 10
    json.dumps(body)
    with pytest.raises(ClientError):
        rt.explain({"inputs": [[1.0, "x"] + [0.0] * 8], "method": "shap"})


def test_runtime_module_stays_light():
    src = Path(__file__).parents[2] / "nbdeploy" / "runtime" / "explain.py"
    text = src.read_text()
    assert "import nbdeploy" not in text and "from nbdeploy" not in text
    code = ("import sys, nbdeploy.runtime.explain; "
            "print(sorted(m for m in ('shap', 'lime', 'sklearn', 'torch', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
