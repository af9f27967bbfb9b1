"""Image bundles (issue 22), explanations and labels: the report's heat map comes from the bundle
(checked against occlusion recomputed here with onnxruntime), /predict answers with class names
(checked against the native model's argmax mapped through the same names), and /explain's SHAP
(partition explainer, image masker) is additive against onnxruntime's own outputs for the full
and the fully masked image.  Small CNNs on scikit-learn's 8x8 digits (no download), served by
stock `bentoml serve`."""

from __future__ import annotations

import base64
import io
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
torch = pytest.importorskip("torch")
from PIL import Image  # noqa: E402

import nbdeploy  # noqa: E402

STD = 240 / 255          # PNG pixels are digits * 15; the model's input is digits / 16
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
HELD = slice(1400, 1440)


def _name(k: int):
    return NAMES[k]


def _png_b64(pixels: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray((pixels * 15).astype(np.uint8), "L").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def torch_served(torch_digits_cnn):
    """A PyTorch CNN [N, 1, 8, 8] deployed with class names and served."""
    m, X, y, images = torch_digits_cnn
    d = nbdeploy.deploy(m, X[1200:1400], labels=y[1200:1400], name="torch-cnn-named", explain="none",
                        quantize="none", class_names=NAMES,
                        preprocess=nbdeploy.ImagePreprocess(size=8, mode="L", mean=[0.0], std=[STD]))
    server = d.serve()
    try:
        yield d, server, m, X, images
    finally:
        server.stop()


def _session(d):
    import onnxruntime as ort

    path = Path(str(d.path)) / "src" / "model" / "model.onnx"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: _softmax(sess.run(None, {name: np.asarray(x, np.float32).reshape(len(x), -1)})[0])


def _heat_png(html: str) -> Image.Image:
    m = re.search(r"<img alt='heat map[^']*'[^>]*src='data:image/png;base64,([^']+)'", html)
    assert m, "no heat-map image in the report"
    return Image.open(io.BytesIO(base64.b64decode(m.group(1)))).convert("RGB")


def test_report_shows_the_bundles_heat_map(torch_served):
    from nbdeploy.report import card_html, deployment_html
    from nbdeploy.store import read_report

    d, _, m, X, _ = torch_served
    html = card_html(d.tag, read_report(d.tag))
    png = _heat_png(html)
    # oracle: occlusion recomputed with onnxruntime on the bundle's model, on the same image
    # (the sample's first), one pixel at a time set to 0 (patch 1 for 8x8 images)
    f = _session(d)
    x = X[1200:1201]
    p = f(x)[0]
    k = int(p.argmax())
    masked = np.repeat(x, 64, axis=0).reshape(64, 64)
    masked[np.arange(64), np.arange(64)] = 0.0
    drop = (p[k] - f(masked)[:, k]).reshape(8, 8)
    # the overlay: red - green is the positive attribution (grey is in every channel)
    rgb = np.asarray(png, dtype=np.float64)
    scale = rgb.shape[0] // 8
    red = (rgb[..., 0] - rgb[..., 1])[::scale, ::scale]
    assert red.shape == (8, 8)
    assert np.unravel_index(red.argmax(), red.shape) == np.unravel_index(drop.argmax(), drop.shape)
    assert np.corrcoef(red.ravel(), np.clip(drop, 0, None).ravel())[0, 1] > 0.99
    # the top classes: the native model's, by name
    native = torch.softmax(m(torch.from_numpy(x)), 1)[0].detach().numpy()
    assert f"<b>{_name(int(native.argmax()))}</b>" in html
    for c in np.argsort(-native)[:3]:
        assert f"<td>{_name(int(c))}</td>" in html
    # the notebook's report of the live deployment shows the same picture
    live = deployment_html(d)
    assert np.array_equal(np.asarray(_heat_png(live)), np.asarray(png))


def test_predict_answers_with_class_names_torch(torch_served, post):
    d, server, m, X, images = torch_served
    native = m(torch.from_numpy(X[HELD])).argmax(1).numpy()
    want = [NAMES[i] for i in native]
    status, body = post(server.url + "/predict", {"inputs": X[HELD].tolist()})
    assert status == 200 and body["predictions"] == want, body
    status, body = post(server.url + "/predict", {"images": [_png_b64(im) for im in images[HELD]]})
    assert status == 200 and body["predictions"] == want, body


def test_image_shap_is_additive_against_onnxruntime(torch_served, post):
    d, server, _, X, _ = torch_served
    f = _session(d)
    x = X[1400:1402]
    body = {"inputs": x.tolist(), "method": "shap", "max_evals": 600}
    status, ex = post(server.url + "/explain", body)
    deadline = time.monotonic() + 180
    while status == 503 and time.monotonic() < deadline:    # shap compiles its code once per process
        assert "starting" in ex["message"], ex
        time.sleep(2)
        status, ex = post(server.url + "/explain", body)
    assert status == 200, ex
    assert ex["method"] == "shap" and ex["explainer"] == "partition"
    A = np.asarray(ex["attributions"], dtype=np.float64)
    assert A.shape == (2, 1, 8, 8)
    full, empty = f(x), f(np.zeros_like(x))
    for n in range(2):
        k = [_name(i) for i in range(10)].index(ex["explained_output"][n])
        assert k == int(full[n].argmax())
        assert ex["outputs"][n] == pytest.approx(full[n, k], abs=1e-5)
        assert ex["base_values"][n] == pytest.approx(empty[0, k], abs=1e-5)
        assert A[n].sum() == pytest.approx(full[n, k] - empty[0, k], abs=1e-4)
    # not all on one pixel, and mostly on the digit's strokes (a 0 pixel is already masked; it gets
    # credit only where the partition tree stops refining a cluster, within max_evals)
    a, ink = np.abs(A[0].reshape(-1)), x[0].reshape(-1) > 0
    assert np.count_nonzero(a > 1e-6) > 5
    assert a[ink].sum() > 2 * a[~ink].sum(), (a[ink].sum(), a[~ink].sum())
    # bounded: too many evaluations is a 413, a bad method a 400
    status, err = post(server.url + "/explain", {"inputs": x[:1].tolist(), "method": "shap",
                                                  "max_evals": 10 ** 9})
    assert status == 413, err
    status, err = post(server.url + "/explain", {"inputs": x[:1].tolist(), "method": "magic"})
    assert status == 400, err


def test_image_lime_superpixels(torch_served, post):
    pytest.importorskip("skimage")
    pytest.importorskip("lime")
    _, server, _, X, _ = torch_served
    status, ex = post(server.url + "/explain", {"inputs": X[1400:1401].tolist(), "method": "lime",
                                                "num_samples": 300})
    assert status == 200, ex
    A = np.asarray(ex["attributions"])
    assert A.shape == (1, 1, 8, 8) and ex["explainer"] == "lime_image"
    assert ex["explained_output"][0] in [_name(i) for i in range(10)] and np.abs(A).max() > 0


def test_predict_answers_with_id2label_keras(keras_digits_cnn, post):
    m, X, y, images = keras_digits_cnn
    id2label = {str(i): n.upper() for i, n in enumerate(NAMES)}     # HF-style: string keys
    d = nbdeploy.deploy(m, X[1200:1400], labels=y[1200:1400], name="keras-cnn-named", explain="none",
                        quantize="none", class_names=id2label,
                        preprocess=nbdeploy.ImagePreprocess(size=8, mode="L", mean=[0.0], std=[STD],
                                                            layout="NHWC"))
    want = [NAMES[i].upper() for i in m.predict(X[HELD], verbose=0).argmax(axis=1)]
    server = d.serve()
    try:
        status, body = post(server.url + "/predict", {"images": [_png_b64(im) for im in images[HELD]]})
        assert status == 200 and body["predictions"] == want, body
        status, body = post(server.url + "/predict", {"inputs": X[HELD].tolist()})
        assert status == 200 and body["predictions"] == want, body
    finally:
        server.stop()


def test_class_names_are_checked():
    from nbdeploy.errors import InvalidInputError
    from nbdeploy.images import named_classes

    assert named_classes(None, [0, 1, 2]) is None
    assert named_classes(["a", "b", "c"], [0, 1, 2]) == ["a", "b", "c"]
    assert named_classes({"1": "b", "0": "a"}, [0, 1]) == ["a", "b"]

    class Config:
        id2label = {0: "neg", 1: "pos"}

    class HFLike:
        config = Config()

    assert named_classes(None, [0, 1], HFLike()) == ["neg", "pos"]
    for bad in (["a", "b"], {0: "a", 1: "b", 3: "c"}, ["a", "a", "b"], "abc"):
        with pytest.raises(InvalidInputError):
            named_classes(bad, [0, 1, 2])
    with pytest.raises(InvalidInputError):
        named_classes(["a"], None)
