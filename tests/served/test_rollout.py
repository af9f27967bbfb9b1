"""Versions: roll a running (stable-address) server to a new version under load, with zero
failed requests, and correct answers throughout."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import nbdeploy
from nbdeploy import serve
from nbdeploy.errors import InvalidInputError

pytestmark = pytest.mark.slow


def test_rollout_under_load_has_no_failed_request(rf_model, breast_cancer, post, get):
    from sklearn.ensemble import RandomForestClassifier

    X_train, X_test, y_train, _ = breast_cancer
    v1 = nbdeploy.deploy(rf_model, X_test, name="rolling", explain="none", quantize="none")
    model2 = RandomForestClassifier(n_estimators=5, max_depth=2, random_state=1).fit(X_train, y_train)
    v2 = nbdeploy.deploy(model2, X_test, name="rolling", explain="none", quantize="none")
    rows = X_test.values[:4].tolist()
    expected = {v1.tag: rf_model.predict_proba(X_test.iloc[:4]), v2.tag: model2.predict_proba(X_test.iloc[:4])}

    h = serve.start(v1.tag, stable=True)
    url = h.url
    results: list[tuple[int, object]] = []
    stop = threading.Event()

    def load():
        deadline = time.monotonic() + 60  # bounded, whatever happens
        while not stop.is_set() and time.monotonic() < deadline:
            results.append(post(url + "/predict", {"inputs": rows}, timeout=30))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        new = serve.rollout("rolling", v2.tag)
        assert new.url == url and new.tag == v2.tag
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    try:
        failures = [r for r in results if r[0] != 200]
        assert len(results) > 20
        assert failures == [], failures[:3]
        # every answer is exactly one version's answer, and the last ones are the new version's
        probs = [np.asarray(b["probabilities"]) for _, b in results]
        for p in probs:
            assert any(np.allclose(p, e, atol=1e-5) for e in expected.values())
        assert np.allclose(probs[-1], expected[v2.tag], atol=1e-5)
        assert get(url + "/metadata")[1]["tag"] == v2.tag
        assert [s.tag for s in serve.find("rolling")] == [v2.tag]
    finally:
        serve.stop("rolling")
    assert serve.find("rolling") == []      # other tests' servers (the shared one) may be running


def test_rollout_needs_a_stable_server(ref_deployment, ref_server, get):
    """The shared reference server was started without a stable address: no rollout, and it
    keeps serving."""
    with pytest.raises(InvalidInputError, match="stable"):
        serve.rollout(ref_server.id, ref_deployment.tag)
    assert get(ref_server.url + "/readyz")[0] == 200
