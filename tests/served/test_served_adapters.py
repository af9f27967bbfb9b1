"""End to end for every adapter: convert, verify, build a bento, `bentoml serve` it on a free
port, POST /predict over real HTTP, and compare with the native model."""

from __future__ import annotations

import numpy as np
import pytest

import nbdeploy

pytestmark = pytest.mark.slow


def _models(breast_cancer, regression_data):
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    X_train, X_test, y_train, _ = breast_cancer
    Xr, yr = regression_data
    yield "sklearn-pipeline", make_pipeline(StandardScaler(), SVC(probability=True, random_state=0)).fit(
        X_train.values, y_train), X_test.values[:40]
    yield "sklearn-ridge", Ridge().fit(Xr, yr), Xr[:40]
    import xgboost

    yield "xgboost", xgboost.XGBClassifier(n_estimators=15, max_depth=3).fit(X_train.values, y_train), \
        X_test.values[:40]
    import lightgbm

    yield "lightgbm", lightgbm.LGBMRegressor(n_estimators=15, verbose=-1).fit(Xr, yr), Xr[:40]
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(30, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    yield "pytorch", net, X_test.values[:40].astype(np.float32)


def _native(model, X) -> dict:
    """The model's own answer, from its own library (never nbdeploy's adapters)."""
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and isinstance(model, torch.nn.Module):
        with torch.no_grad():
            logits = model(torch.from_numpy(np.asarray(X, dtype=np.float32)))
        probs = torch.softmax(logits, dim=1).numpy()
        return {"label": probs.argmax(axis=1).tolist(), "probabilities": probs}
    if hasattr(model, "predict_proba"):
        return {"label": list(model.predict(X)), "probabilities": model.predict_proba(X)}
    return {"value": np.asarray(model.predict(X)).ravel()}


@pytest.mark.parametrize("which", ["sklearn-pipeline", "sklearn-ridge", "xgboost", "lightgbm", "pytorch",
                                   "onnx-file"])
def test_deploy_serve_predict(which, breast_cancer, regression_data, rf_model, tmp_path, post):
    if which == "onnx-file":
        import onnx

        from nbdeploy.convert import convert

        X = breast_cancer[1].values[:40]
        path = tmp_path / "model.onnx"
        onnx.save(convert(rf_model, X).onnx_model, str(path))
        model, native_model = str(path), rf_model
    else:
        model, X = next((m, x) for n, m, x in _models(breast_cancer, regression_data) if n == which)
        native_model = model
    d = nbdeploy.deploy(model, X, name=f"e2e-{which}", explain="none", quantize="none")
    assert d.tag.startswith(f"e2e-{which}:")
    server = d.serve()
    try:
        status, body = post(server.url + "/predict", {"inputs": X[:10].tolist()})
        assert status == 200, body
        native = _native(native_model, X[:10].astype(np.float32))
        if "label" in native:
            assert [str(p) for p in body["predictions"]] == [str(v) for v in native["label"]]
            np.testing.assert_allclose(body["probabilities"], native["probabilities"], atol=1e-3)
        else:
            np.testing.assert_allclose(body["predictions"], native["value"], rtol=1e-3, atol=1e-3)
    finally:
        server.stop()
    assert not server.is_alive()
