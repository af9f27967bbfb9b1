"""Re-deploying a name with serve leaves one server for that name, at the same address, answering
with the new model (issue 23: the old one kept running, and clients on its URL got the old model)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import http


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_redeploy_with_serve_replaces_the_running_server():
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression

    import nbdeploy
    from nbdeploy.serve import find

    X, y = load_breast_cancer(return_X_y=True)
    X = X[:, :5]
    first = LogisticRegression(max_iter=2000).fit(X, y)
    second = LogisticRegression(max_iter=2000).fit(X, 1 - y)     # answers the opposite class
    opts = dict(name="redeploy", quantize="none", explain="none", benchmark_budget_s=1)
    d1 = nbdeploy.deploy(first, X[:60], serve=True, **opts)
    d2 = None
    try:
        url = d1.server.url
        _, a1 = http("POST", url + "/predict", {"inputs": X[:8].tolist()})
        assert a1["predictions"] == first.predict(X[:8]).tolist()
        d2 = nbdeploy.deploy(second, X[:60], serve=True, **opts)
        running = find("redeploy")
        assert len(running) == 1 and running[0].tag == d2.tag, [h.id for h in running]
        assert d2.server.url == url                   # clients keep their address
        assert not d1.server.is_alive()
        assert d1.tag in d2.steps["serve"].summary and "replaced" in d2.steps["serve"].summary
        _, a2 = http("POST", url + "/predict", {"inputs": X[:8].tolist()})
        assert a2["predictions"] == second.predict(X[:8]).tolist() != a1["predictions"]
        assert np.all(np.array(a2["predictions"]) == 1 - np.array(a1["predictions"]))
    finally:
        for d in (d1, d2):
            if d is not None:
                d.stop()
    assert find("redeploy") == []
