"""Every adapter: detect, convert with the real converter, verify with real onnxruntime."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from nbdeploy.adapters import detect
from nbdeploy.convert import convert
from nbdeploy.verify import verify


def _ort_outputs(onnx_model, X) -> dict[str, np.ndarray]:
    """Run an ONNX model with onnxruntime directly (not through nbdeploy): outputs by name."""
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    outs = sess.run(None, {name: np.asarray(X, dtype=np.float32)})
    return {o.name: np.asarray(v) for o, v in zip(sess.get_outputs(), outs)}


def _check(model, X, y=None, framework=None, task=None):
    c = convert(model, X)
    rep = verify(c, labels=y)
    assert rep.passed, rep.summary()
    if framework:
        assert c.framework == framework
    if task:
        assert c.spec["task"] == task
    assert c.schema.n_features == np.asarray(X).shape[1]
    return c, rep


def test_sklearn_random_forest(rf_model, breast_cancer):
    _, X_test, _, y_test = breast_cancer
    c, rep = _check(rf_model, X_test, y_test, "sklearn", "classifier")
    assert c.schema.feature_names == list(X_test.columns)
    assert rep.label_agreement >= 0.99
    assert rep.native_metric == pytest.approx(rep.onnx_metric, abs=0.01)
    assert c.spec["classes"] == [0, 1]


def test_sklearn_pipeline_and_regressor(breast_cancer, regression_data):
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X_train, X_test, y_train, y_test = breast_cancer
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X_train.values, y_train)
    _check(pipe, X_test.values, y_test, "sklearn", "classifier")
    X, y = regression_data
    c, rep = _check(Ridge().fit(X, y), X, y, "sklearn", "regressor")
    assert rep.metric == "rmse" and rep.max_abs_diff < 1e-3


def test_sklearn_column_transformer_by_name(breast_cancer):
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X_train, X_test, y_train, y_test = breast_cancer
    cols = list(X_train.columns[:5])
    model = make_pipeline(ColumnTransformer([("s", StandardScaler(), cols)], remainder="passthrough"),
                          LogisticRegression(max_iter=3000)).fit(X_train, y_train)
    c, _ = _check(model, X_test, y_test, "sklearn", "classifier")
    assert c.spec["input_mode"] == "columns"
    assert len(c.spec["input_names"]) == X_test.shape[1]


def test_string_labels_classifier():
    from sklearn.tree import DecisionTreeClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4)).astype(np.float32)
    y = np.where(X[:, 0] > 0, "yes", "no")
    c, rep = _check(DecisionTreeClassifier(max_depth=3).fit(X, y), X, y, "sklearn", "classifier")
    assert c.spec["classes"] == ["no", "yes"]
    assert rep.onnx_metric == rep.native_metric


def test_xgboost(breast_cancer, regression_data):
    xgboost = pytest.importorskip("xgboost")
    X_train, X_test, y_train, y_test = breast_cancer
    _check(xgboost.XGBClassifier(n_estimators=20, max_depth=3).fit(X_train.values, y_train),
           X_test.values, y_test, "xgboost", "classifier")
    X, y = regression_data
    _check(xgboost.XGBRegressor(n_estimators=20).fit(X, y), X, y, "xgboost", "regressor")


def test_lightgbm(breast_cancer, regression_data):
    lightgbm = pytest.importorskip("lightgbm")
    X_train, X_test, y_train, y_test = breast_cancer
    clf = lightgbm.LGBMClassifier(n_estimators=20, verbose=-1).fit(X_train.values, y_train)
    c, _ = _check(clf, X_test.values, y_test, "lightgbm", "classifier")
    # the oracle is lightgbm itself, not nbdeploy's verify
    outs = _ort_outputs(c.onnx_model, X_test.values)
    probs = next(v for v in outs.values() if v.ndim == 2 and v.shape[1] == 2 and v.dtype.kind == "f")
    labels = next(v for v in outs.values() if v.dtype.kind in "iu")
    np.testing.assert_allclose(probs, clf.predict_proba(X_test.values), atol=1e-5)
    assert (labels.ravel() == clf.predict(X_test.values)).all()
    X, y = regression_data
    reg = lightgbm.LGBMRegressor(n_estimators=20, verbose=-1).fit(X, y)
    c, _ = _check(reg, X, y, "lightgbm", "regressor")
    (value,) = _ort_outputs(c.onnx_model, X).values()
    np.testing.assert_allclose(value.ravel(), reg.predict(X), rtol=1e-4, atol=1e-3)


def test_xgboost_inside_sklearn_pipeline(breast_cancer):
    xgboost = pytest.importorskip("xgboost")
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X_train, X_test, y_train, y_test = breast_cancer
    pipe = make_pipeline(StandardScaler(), xgboost.XGBClassifier(n_estimators=10)).fit(X_train.values, y_train)
    _check(pipe, X_test.values, y_test, "sklearn", "classifier")


def test_torch_classifier_and_regressor(breast_cancer, regression_data):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    _, X_test, _, _ = breast_cancer
    net = torch.nn.Sequential(torch.nn.Linear(30, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    c, rep = _check(net, X_test.values.astype(np.float32), framework="pytorch", task="classifier")
    assert c.spec["postprocess"] == "softmax"
    X, _ = regression_data
    reg = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    _check(reg, X, framework="pytorch", task="regressor")


def test_onnx_path_and_modelproto(tmp_path, rf_model, breast_cancer):
    import onnx

    _, X_test, _, _ = breast_cancer
    c = convert(rf_model, X_test)
    path = tmp_path / "rf.onnx"
    onnx.save(c.onnx_model, str(path))
    for model in (str(path), path, c.onnx_model):
        c2, _ = _check(model, X_test.values, framework="onnx", task="classifier")
        # an ONNX file's "native" side is onnxruntime itself, so verify alone proves nothing:
        # the oracle is the scikit-learn model the file was made from
        outs = _ort_outputs(c2.onnx_model, X_test.values)
        probs = next(v for v in outs.values() if v.ndim == 2 and v.dtype.kind == "f")
        labels = next(v for v in outs.values() if v.dtype.kind in "iu")
        np.testing.assert_allclose(probs, rf_model.predict_proba(X_test), atol=1e-5)
        assert (labels.ravel() == rf_model.predict(X_test)).all()


def test_detect_does_not_import_frameworks():
    code = ("import sys, numpy as np\n"
            "from sklearn.linear_model import LinearRegression\n"
            "import nbdeploy\n"
            "assert 'bentoml' not in sys.modules and 'shap' not in sys.modules, 'import nbdeploy is heavy'\n"
            "from nbdeploy.adapters import detect\n"
            "a = detect(LinearRegression().fit(np.eye(3), [1, 2, 3]))\n"
            "assert a.framework == 'sklearn'\n"
            "bad = [m for m in ('torch', 'xgboost', 'lightgbm', 'bentoml', 'shap', 'lime') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_detect_picks_frameworks(rf_model):
    assert detect(rf_model).framework == "sklearn"
    xgboost = pytest.importorskip("xgboost")
    assert detect(xgboost.XGBClassifier()).framework == "xgboost"
