"""Keras 3 models: trained here, deployed with defaults, served by stock `bentoml serve`, and
compared with the native model's own ``model.predict``."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")

import nbdeploy  # noqa: E402  (after the importorskip lines)
from nbdeploy.convert import convert  # noqa: E402
from nbdeploy.verify import verify  # noqa: E402


def _data(n=300, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y3 = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 0.8).astype(int)
    yr = (3 * X[:, 0] - 2 * X[:, 1] * X[:, 2] + 0.5 * X[:, 3] + 10).astype(np.float32)
    return X, y3, yr


def _fit(model, X, y, loss, epochs=15):
    model.compile(optimizer=keras.optimizers.Adam(0.03), loss=loss)
    model.fit(X, y, epochs=epochs, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="module")
def softmax_mlp():
    keras.utils.set_random_seed(0)
    X, y, _ = _data()
    m = keras.Sequential([keras.Input((6,)), keras.layers.Dense(32, activation="relu"),
                          keras.layers.Dense(16, activation="relu"),
                          keras.layers.Dense(3, activation="softmax")])
    return _fit(m, X, y, "sparse_categorical_crossentropy"), X, y


@pytest.mark.slow
def test_keras_mlp_defaults_served_equals_model_predict(softmax_mlp, post):
    model, X, y = softmax_mlp
    d = nbdeploy.deploy(model, X, labels=y, name="keras-mlp")     # every default, as a user would
    c = d.converted
    assert c.framework == "keras" and c.spec["task"] == "classifier"
    assert c.spec["postprocess"] == "none"       # softmax already in the last layer
    assert d.verify_report.passed
    # quantization ran on the graph like it does for PyTorch: every variant verified and measured
    q = d.optimized.to_dict()["quantization"]
    names = {v["name"]: v for v in q["variants"]}
    assert {"int8-dynamic", "fp16"} <= set(names), names.keys()
    assert all(v.get("error") is None for v in names.values()), names
    # benchmark compared against Keras' own call
    native = [e for e in d.optimized.to_dict()["benchmark"]["entries"] if e["variant"] == "native"]
    assert native and native[0]["error"] is None and "keras" in native[0]["note"]
    # TensorFlow never goes into the bundle
    with open(os.path.join(str(d.path), "env", "python", "requirements.txt")) as f:
        reqs = f.read()
    assert "onnxruntime" in reqs
    assert "tensorflow" not in reqs and "keras" not in reqs and "tf2onnx" not in reqs

    expected = model.predict(X[:25], verbose=0)
    server = d.serve()
    try:
        status, body = post(server.url + "/predict", {"inputs": X[:25].tolist()})
        assert status == 200, body
        assert body["predictions"] == expected.argmax(axis=1).tolist()
        np.testing.assert_allclose(body["probabilities"], expected, atol=1e-5)

        status, ex = post(server.url + "/explain", {"inputs": X[:3].tolist(), "method": "shap"})
        assert status == 200, ex
        contrib = np.asarray(ex["contributions"], dtype=np.float64)
        assert contrib.shape[0] == 3 and contrib.shape[1] == 6
        # additive, and in the native model's probability space
        total = np.asarray(ex["base_values"]) + contrib.sum(axis=1)
        np.testing.assert_allclose(total, ex["outputs"], atol=1e-4)
        # each row explains one class: its output is the native probability of that class
        picked = [expected[i, int(k)] for i, k in enumerate(ex["explained_output"])]
        np.testing.assert_allclose(ex["outputs"], picked, atol=1e-4)

        status, lime = post(server.url + "/explain", {"inputs": X[:1].tolist(), "method": "lime"})
        assert status == 200, lime
        assert len(lime["contributions"][0]) == 6
    finally:
        server.stop()


def test_functional_regressor_equals_model_predict():
    keras.utils.set_random_seed(1)
    X, _, yr = _data(seed=1)
    inp = keras.Input((6,))
    h = keras.layers.Dense(32, activation="relu")(inp)
    h = keras.layers.Dense(16, activation="tanh")(h)
    model = _fit(keras.Model(inp, keras.layers.Dense(1)(h)), X, yr, "mse", epochs=20)
    c = convert(model, X)
    assert c.framework == "keras" and c.spec["task"] == "regressor"
    assert verify(c).passed
    from nbdeploy.runtime.model import OnnxModel

    got = OnnxModel(c.onnx_bytes, c.spec).run(X)["value"]
    want = model.predict(X, verbose=0)[:, 0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("head", ["sigmoid", "logits"])
def test_binary_heads(head):
    """One sigmoid column is P(class 1); one linear column is a logit when task='classifier'."""
    keras.utils.set_random_seed(2)
    X, y3, _ = _data(seed=2)
    y = (y3 > 0).astype(np.float32)
    act = "sigmoid" if head == "sigmoid" else None
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(1, activation=act)])
    model = _fit(model, X, y, keras.losses.BinaryCrossentropy(from_logits=head == "logits"))
    c = convert(model, X, task="classifier" if head == "logits" else None)
    assert c.spec["task"] == "classifier" and c.spec["classes"] == [0, 1]
    assert c.spec["postprocess"] == ("none" if head == "sigmoid" else "sigmoid")
    assert verify(c).passed
    from nbdeploy.runtime.model import OnnxModel

    out = OnnxModel(c.onnx_bytes, c.spec).run(X)
    raw = model.predict(X, verbose=0)[:, 0].astype(np.float64)
    p1 = raw if head == "sigmoid" else 1 / (1 + np.exp(-raw))
    np.testing.assert_allclose(out["probabilities"][:, 1], p1, atol=1e-5)
    assert out["label"].tolist() == (p1 > 0.5).astype(int).tolist()


def test_logits_head_gets_softmax():
    keras.utils.set_random_seed(3)
    X, y, _ = _data(seed=3)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3)])
    model = _fit(model, X, y, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    c = convert(model, X)
    assert c.spec["task"] == "classifier" and c.spec["postprocess"] == "softmax"
    from nbdeploy.runtime.model import OnnxModel

    out = OnnxModel(c.onnx_bytes, c.spec).run(X)
    logits = model.predict(X, verbose=0).astype(np.float64)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out["probabilities"], p, atol=1e-5)


def test_unsupported_keras_models_get_bounded_errors():
    from nbdeploy.errors import NbdeployError

    X, _, _ = _data()
    a, b = keras.Input((3,)), keras.Input((3,))
    two = keras.Model([a, b], keras.layers.Dense(1)(keras.layers.Concatenate()([a, b])))
    with pytest.raises(NbdeployError) as e:
        convert(two, X)
    assert "2 inputs" in str(e.value) and len(str(e.value)) < 600
    unbuilt = keras.Sequential([keras.layers.Dense(3)])
    with pytest.raises(NbdeployError) as e:
        convert(unbuilt, X)
    assert "not been built" in str(e.value) and len(str(e.value)) < 600


def test_import_and_detect_stay_light():
    """nbdeploy never imports TensorFlow/Keras itself to recognise a model."""
    code = ("import sys, numpy as np\n"
            "import nbdeploy\n"
            "from nbdeploy.adapters import detect\n"
            "from sklearn.linear_model import LinearRegression\n"
            "detect(LinearRegression().fit(np.eye(3), [1, 2, 3]))\n"
            "bad = [m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tf_keras_functional_model_is_detected_and_converted():
    """tf.keras (TensorFlow's bundled Keras) models go the same way."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(4)
    X, y, _ = _data(seed=4)
    inp = tf.keras.Input((6,))
    out = tf.keras.layers.Dense(3, activation="softmax")(tf.keras.layers.Dense(8, activation="relu")(inp))
    model = tf.keras.Model(inp, out)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(X, y, epochs=3, verbose=0)
    c = convert(model, X)
    assert c.framework == "keras" and c.converter == "keras.export(onnx)"
    assert verify(c).passed
    from nbdeploy.runtime.model import OnnxModel

    got = OnnxModel(c.onnx_bytes, c.spec).run(X)["probabilities"]
    np.testing.assert_allclose(got, model.predict(X, verbose=0), atol=1e-5)
