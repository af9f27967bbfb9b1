"""BentoML's own clients against a served bundle, under both engines: typed predict and explain
calls (``bentoml.SyncHTTPClient`` / ``AsyncHTTPClient``) answered like scikit-learn and
``shap.TreeExplainer`` answer in process; client mistakes raised as BentoML's 400; BentoML's
``/docs.json`` lists the endpoints; another service reaches the bundle with ``bentoml.depends``."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from nbdeploy import serve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def explain_deployment(ref_explained):
    return ref_explained


@pytest.fixture(scope="module", params=["bentoml", "direct"])
def server(request, explain_deployment):
    h = serve.start(explain_deployment.tag, engine=request.param)
    yield h
    h.stop()


@pytest.fixture
def client(server):
    import bentoml

    with bentoml.SyncHTTPClient(server.url, timeout=60) as c:
        yield c


def test_explainer_stack_loads_on_first_explain(server, get, post, breast_cancer):
    """A replica that only predicts never imports shap (its memory is the point); the first
    /explain loads it.  (First in this module, so no test before it has explained.)"""
    status, meta = get(server.url + "/metadata")
    explainer = meta["serving"]["explainer"]
    assert (explainer["load"], explainer["loaded"], explainer["shap_imported"]) == ("lazy", False, False)
    status, body = post(server.url + "/explain", {"inputs": breast_cancer[1].values[:1].tolist()})
    assert status == 200, body
    status, meta = get(server.url + "/metadata")
    assert meta["serving"]["explainer"]["loaded"] is True and meta["serving"]["explainer"]["shap_imported"]


def test_sync_client_predict_equals_sklearn(client, rf_model, breast_cancer):
    X = breast_cancer[1]
    rows = X.values[:7]
    out = client.predict(inputs=rows.tolist())
    assert out["predictions"] == rf_model.predict(rows).tolist()
    np.testing.assert_allclose(out["probabilities"], rf_model.predict_proba(rows), atol=1e-5)
    # records by feature name, and the argument given by position
    records = X.iloc[:3].to_dict(orient="records")
    out2 = client.predict(records)
    assert out2["predictions"] == out["predictions"][:3]


def test_sync_client_explain_equals_shap_tree_explainer(client, rf_model, breast_cancer):
    import shap

    rows = breast_cancer[1].values[:4]
    out = client.explain(inputs=rows.tolist(), method="shap")
    assert out["method"] == "shap" and out["explainer"] == "tree"
    ref = np.asarray(shap.TreeExplainer(rf_model).shap_values(rows))[:, :, 1]
    np.testing.assert_allclose(out["contributions"], ref, atol=1e-5)
    # one row at a time: once TreeSHAP is measured cheap it runs on the event loop, same answer
    for i in range(len(rows)):
        one = client.explain(inputs=rows[i:i + 1].tolist())
        np.testing.assert_allclose(one["contributions"][0], ref[i], atol=1e-5)
    # the options of POST /explain are typed parameters: every output, a fixed seed
    both = client.explain(inputs=rows[:1].tolist(), output="all", seed=3)
    assert np.asarray(both["contributions"]).shape == (1, 2, rows.shape[1])


def test_sync_client_mistakes_are_bentoml_400s(client):
    from bentoml.exceptions import BentoMLException

    with pytest.raises(BentoMLException) as info:
        client.predict(inputs=[[1.0, 2.0]])
    assert info.value.error_code.value == 400 and "30 features" in str(info.value)
    with pytest.raises(BentoMLException) as info:
        client.explain(inputs=[[0.0] * 30], method="nope")
    assert info.value.error_code.value == 400 and "nope" in str(info.value)


def test_async_client_predict(server, rf_model, breast_cancer):
    import bentoml

    rows = breast_cancer[1].values[10:15]

    async def go():
        async with bentoml.AsyncHTTPClient(server.url, timeout=60) as c:
            return await asyncio.gather(*(c.predict(inputs=[r.tolist()]) for r in rows))

    outs = asyncio.run(go())
    assert [o["predictions"][0] for o in outs] == rf_model.predict(rows).tolist()


def test_docs_json_lists_the_endpoints(server, get, explain_deployment):
    if server.engine == "direct":  # BentoML's /docs are BentoML's; the direct engine has its own
        status, doc = get(server.url + "/nbdeploy/openapi.json")
        assert status == 200 and {"/predict", "/explain"} <= set(doc["paths"])
        status, schema = get(server.url + "/schema.json")
        assert status == 200 and {r["route"] for r in schema["routes"]} == {"/api/predict", "/api/explain"}
        return
    status, doc = get(server.url + "/docs.json")
    assert status == 200
    for route in ("/api/predict", "/api/explain"):
        assert "post" in doc["paths"][route], sorted(doc["paths"])
        body = doc["paths"][route]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert "inputs" in str(body) or "$ref" in str(body)
    status, schema = get(server.url + "/schema.json")
    assert status == 200 and {r["name"] for r in schema["routes"]} == {"predict", "explain"}


COMPOSER = """
import os
import bentoml

BUNDLE = bentoml.load(os.environ["BUNDLE_TAG"])  # the bento's own service.py, for typed calls


@bentoml.service
class Composer:
    bundle = bentoml.depends(url=os.environ["BUNDLE_URL"], on=BUNDLE)

    @bentoml.api
    async def label(self, row: list[float]) -> int:
        out = await self.bundle.predict(inputs=[row])
        return out["predictions"][0]
"""


def test_another_service_depends_on_the_bundle(server, explain_deployment, rf_model, breast_cancer,
                                               tmp_path, post):
    """A second BentoML service, under its own `bentoml serve`, reaches the bundle with
    ``bentoml.depends(url=..., on=<the bundle's service>)`` and calls it like a method."""
    import os
    import signal
    import subprocess
    import time

    (tmp_path / "composer.py").write_text(COMPOSER)
    port = serve.free_port()
    env = dict(os.environ, BUNDLE_TAG=explain_deployment.tag, BUNDLE_URL=server.url,
               NBDEPLOY_ENGINE="direct")  # must not turn the composer into the bundle
    proc = subprocess.Popen([*serve.bentoml_executable(), "serve", "composer:Composer", "--port",
                             str(port), "--host", "127.0.0.1"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while serve._http_status(url + "/readyz") != 200:
            assert proc.poll() is None and time.monotonic() < deadline, "the composer did not start"
            time.sleep(0.2)
        rows = breast_cancer[1].values[20:23]
        for row in rows:
            status, label = post(url + "/label", {"row": row.tolist()})
            assert status == 200, label
            assert label == rf_model.predict(row[None])[0]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_typed_endpoints_never_load_pickle(server, post, tmp_path):
    """BentoML's endpoints would deserialise ``application/vnd.bentoml+pickle`` bodies; the
    bundle answers 415 before the body is read, so the payload's side effect never happens."""
    import os
    import pickle

    marker = tmp_path / "pickle-was-loaded"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    for route in ("/api/predict", "/api/explain", "/predict"):
        for ctype in ("application/vnd.bentoml+pickle", "multipart/form-data; boundary=x"):
            status, body = post(server.url + route, None, data=pickle.dumps(Payload()),
                                headers={"Content-Type": ctype})
            assert status == 415, (route, ctype, body)
            assert body["message"].startswith("Unsupported content type")
    assert not marker.exists()
