"""Readiness of a served bundle before its model is loaded.

Over HTTP this state cannot be reached: BentoML runs the service's ``__init__`` (which loads the
ONNX session) inside the worker's start-up, before the worker accepts a connection, so a
request sent while the model loads waits and is answered after it (see
``test_requests_during_start_up_wait_for_the_model``).  The "still loading" answers are
therefore tested on the bundle's own code, in a fresh interpreter that imports the built
bundle exactly as ``bentoml serve`` does (its ``service.py`` and its ``nbdeploy_runtime``
copy), with Starlette's test client in front of the bundle's ASGI app: nothing is mocked,
the model is simply not loaded yet."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from nbdeploy import serve, store

pytestmark = pytest.mark.slow

SCRIPT = r'''
import json, sys
sys.path.insert(0, sys.argv[1])            # the bundle folder, as bentoml serve does
import service                              # the bundle's generated service.py
from starlette.testclient import TestClient
rows = json.loads(sys.argv[2])
cls = [v for v in vars(service).values() if hasattr(v, "inner") and hasattr(v.inner, "__is_ready__")][0]
svc = cls.inner.__new__(cls.inner)          # the service object BentoML asks for /readyz, not initialised
client = TestClient(service.build_app(service.runtime))
out = {"ready_before": svc.__is_ready__()}
r = client.post("/predict", json={"inputs": rows})
out["predict_before"] = [r.status_code, r.json()]
r = client.post("/explain", json={"inputs": rows, "method": "shap"})
out["explain_before"] = [r.status_code, r.json()]
out["metadata_before"] = client.get("/metadata").json()["serving"]["ready"]
svc.__init__()                              # what BentoML runs at start-up: loads the model
out["ready_after"] = svc.__is_ready__()
r = client.post("/predict", json={"inputs": rows})
out["predict_after"] = [r.status_code, r.json()]
print("RESULT " + json.dumps(out))
'''


def test_predict_is_503_and_readyz_false_until_the_model_loads(ref_deployment, rf_model, breast_cancer):
    X = breast_cancer[1].iloc[:3]
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(store.bundle_dir(ref_deployment.tag)),
                           json.dumps(X.values.tolist())], capture_output=True, text=True, timeout=180)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and line, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = json.loads(line[-1][len("RESULT "):])
    assert out["ready_before"] is False and out["metadata_before"] is False
    for key in ("predict_before", "explain_before"):
        status, body = out[key]
        assert status == 503, (key, body)
        assert "loading" in body["message"] and "/readyz" in body["hint"], body
    assert out["ready_after"] is True
    status, body = out["predict_after"]
    assert status == 200, body
    np.testing.assert_allclose(body["probabilities"], rf_model.predict_proba(X), atol=1e-5)


def test_requests_during_start_up_wait_for_the_model(ref_deployment, rf_model, breast_cancer):
    """A real `bentoml serve`: /readyz and /predict sent right after the process starts, before
    it is ready, are never answered 200 before the model is loaded, and /predict's first 200 is
    already the right answer (no half-loaded model ever answers)."""
    X = breast_cancer[1].iloc[:2]
    h = serve.start(ref_deployment.tag, wait=False)
    seen: list[tuple[str, float, object]] = []
    stop = threading.Event()

    def poll(path: str, body: bytes | None) -> None:
        deadline = time.monotonic() + 90
        while not stop.is_set() and time.monotonic() < deadline:
            req = urllib.request.Request(h.url + path, data=body, method="POST" if body else "GET",
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    seen.append((path, time.monotonic(), (r.status, r.read())))
                    if r.status == 200:
                        return
            except urllib.error.HTTPError as e:
                seen.append((path, time.monotonic(), (e.code, e.read())))
            except OSError as e:                      # not listening yet
                seen.append((path, time.monotonic(), type(e).__name__))
                time.sleep(0.02)

    try:
        threads = [threading.Thread(target=poll, args=("/readyz", None)),
                   threading.Thread(target=poll, args=("/predict", json.dumps({"inputs": X.values.tolist()}).encode()))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        stop.set()
        answers = [(p, a) for p, _, a in seen if isinstance(a, tuple)]
        assert ("/readyz", (200, b"")) in [(p, (a[0], b"")) for p, a in answers], seen[-5:]
        # before the first 200 of each path, only "not ready" answers (503) or no answer at all
        for path in ("/readyz", "/predict"):
            codes = [a[0] for p, a in answers if p == path]
            assert codes and codes[-1] == 200, (path, codes)
            assert set(codes[:-1]) <= {503}, (path, codes)
        status, raw = [a for p, a in answers if p == "/predict"][-1]
        np.testing.assert_allclose(json.loads(raw)["probabilities"], rf_model.predict_proba(X), atol=1e-5)
    finally:
        stop.set()
        h.stop()
