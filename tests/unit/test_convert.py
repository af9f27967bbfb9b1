"""convert: tiny real models -> ONNX + spec; the oracle is the native model's own predictions.

Every converted graph is run with real onnxruntime (through the runtime's OnnxModel, as the
bundle runs it, and once directly with an InferenceSession fed by hand) and compared with the
scikit-learn / torch model's outputs computed here, not with anything nbdeploy reports.
"""

from __future__ import annotations

import numpy as np
import pytest

from nbdeploy.convert import ConvertResult, convert
from nbdeploy.errors import InvalidInputError, NbdeployError, UnsupportedModelError
from nbdeploy.runtime.model import OnnxModel, make_feeds
from nbdeploy.runtime.spec import ModelSpec

SPEC_KEYS = ModelSpec.__required_keys__ | ModelSpec.__optional_keys__


def _run(c: ConvertResult, X) -> dict:
    return OnnxModel(c.onnx_bytes, c.spec).run(X)


def _check_spec(c: ConvertResult) -> None:
    """The spec has the required keys and no key runtime/spec.py does not define."""
    assert ModelSpec.__required_keys__ <= set(c.spec), set(c.spec)
    assert set(c.spec) <= SPEC_KEYS, set(c.spec) - SPEC_KEYS
    assert c.spec["n_features"] == c.X.shape[1]
    assert c.spec["feature_names"] is None or len(c.spec["feature_names"]) == c.X.shape[1]
    assert len(c.spec["columns"]) == c.spec["n_features"]


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target


def test_sklearn_pipeline_classifier_matches_predict_proba(breast_cancer):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X_train, X_test, y_train, _ = breast_cancer
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X_train, y_train)
    c = convert(model, X_test)
    _check_spec(c)
    assert c.spec["task"] == "classifier" and c.spec["input_mode"] == "tensor"
    assert c.spec["feature_names"] == [str(n) for n in X_test.columns]
    assert c.spec["classes"] == [0, 1]
    out = _run(c, c.X)
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(X_test), atol=1e-5)
    np.testing.assert_array_equal(out["label"], model.predict(X_test))
    # the graph fed by hand with onnxruntime agrees too (the spec's input names are the graph's)
    import onnxruntime as ort

    sess = ort.InferenceSession(c.onnx_bytes, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == c.spec["input_names"]
    raw = sess.run(None, {c.spec["input_names"][0]: X_test.to_numpy(np.float32)})
    np.testing.assert_array_equal(np.asarray(raw[0]).reshape(-1), model.predict(X_test))


def test_sklearn_regressor_matches_predict(regression_data):
    from sklearn.ensemble import GradientBoostingRegressor

    X, y = regression_data
    model = GradientBoostingRegressor(n_estimators=30, max_depth=3, random_state=0).fit(X, y)
    c = convert(model, X[:100], feature_names=[f"x{i}" for i in range(X.shape[1])])
    _check_spec(c)
    assert c.spec["task"] == "regressor" and c.spec["feature_names"][0] == "x0"
    np.testing.assert_allclose(_run(c, X[:100])["value"], model.predict(X[:100]), rtol=1e-4, atol=1e-3)


def test_dataframe_with_strings_is_a_table_model():
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"size": rng.normal(size=300),
                       "city": rng.choice(["paris", "oslo", "rome"], size=300)})
    y = ((df["size"] > 0) ^ (df["city"] == "oslo")).astype(int)
    model = Pipeline([("pre", ColumnTransformer([("oh", OneHotEncoder(handle_unknown="ignore"), ["city"])],
                                                remainder="passthrough")),
                      ("clf", LogisticRegression())]).fit(df, y)
    c = convert(model, df[:120])
    _check_spec(c)
    assert c.spec["input_mode"] == "table" and c.is_table
    assert [col["name"] for col in c.spec["columns"]] == ["size", "city"]
    city = c.spec["columns"][1]
    assert city["kind"] == "categorical" and sorted(city["categories"]) == ["oslo", "paris", "rome"]
    assert c.X.dtype == object and c.X.shape == (120, 2)
    out = _run(c, c.X)
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(df[:120]), atol=1e-5)
    feeds = make_feeds(c.X[:3], c.spec)      # one typed [N, 1] input per used column
    assert all(v.shape == (3, 1) for v in feeds.values())


def test_torch_mlp_matches_softmax_of_logits(breast_cancer):
    import torch
    from torch import nn

    X_train, X_test, _, _ = breast_cancer
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    X = ((X_test - X_train.mean()) / X_train.std()).to_numpy(np.float32)
    c = convert(net, X)
    _check_spec(c)
    assert c.spec["task"] == "classifier" and c.spec["postprocess"] == "softmax"
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(X)), dim=1).numpy()
    out = _run(c, X)
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-5)
    np.testing.assert_array_equal(out["label"], expected.argmax(1))


def test_torch_cnn_on_4d_images(digits):
    import torch
    from torch import nn

    images, _ = digits
    X = images[:64, None]                       # (N, 1, 8, 8)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 10)).eval()
    c = convert(net, X)
    _check_spec(c)
    assert c.spec["input_shape"] == [None, 1, 8, 8] and c.spec["layout"] == "NCHW"
    assert c.spec["n_features"] == 64 and c.X.shape == (64, 64)   # flat rows; the graph reshapes
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(X)), dim=1).numpy()
    np.testing.assert_allclose(_run(c, X.reshape(64, -1))["probabilities"], expected, atol=1e-5)


def test_errors_say_what_was_expected(breast_cancer):
    from sklearn.linear_model import LogisticRegression

    X_train, X_test, y_train, _ = breast_cancer
    model = LogisticRegression(max_iter=200).fit(X_train, y_train)
    with pytest.raises(InvalidInputError) as err:                  # a training column is missing
        convert(model, X_test.drop(columns=[X_test.columns[3]]))
    assert "29" in err.value.message and "30" in err.value.message and err.value.hint
    with pytest.raises(InvalidInputError) as err:                  # one name per column
        convert(model, X_test.to_numpy(), feature_names=["a", "b"])
    assert "2 feature names" in err.value.message and err.value.hint
    with pytest.raises(NbdeployError) as err:                      # not fitted
        convert(LogisticRegression(), X_test)
    assert err.value.hint
    with pytest.raises(UnsupportedModelError) as err:
        convert(object(), X_test)
    assert "cannot convert" in err.value.message and "ONNX" in err.value.hint
