"""A canary in the JupyterLab sidebar, in a real browser (tests/frontends/browser/drive.js, MODE=canary):
a stable server with a canary in progress under steady load shows the version it serves, the
canary's share and comparison; Promote clicked there and Rollback clicked in the bundle's report
tab change what the real server answers with.  Screenshots: test-output/nbdeploy-sidebar-canary.png,
nbdeploy-sidebar-promoted.png, nbdeploy-report-tab-rollout.png."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest
from test_browser import OUT, _drive, browser_tools, jupyter_lab, lab_env  # noqa: F401 (fixtures)

import nbdeploy
from nbdeploy import serve

pytestmark = pytest.mark.slow
NAME = "browser-canary"


@pytest.fixture
def canary_server(ref_copy, breast_cancer):
    from sklearn.ensemble import RandomForestClassifier

    X_train, X_test, y_train, _ = breast_cancer
    v1 = ref_copy(NAME)
    model2 = RandomForestClassifier(n_estimators=5, max_depth=2, random_state=1).fit(X_train, y_train)
    v2 = nbdeploy.deploy(model2, X_test, name=NAME, explain="none", quantize="none").tag
    h = serve.start(v1, stable=True)
    body = json.dumps({"inputs": X_test.values[[0, 1, 17]].tolist()}).encode()
    stop = threading.Event()
    answers: list[int] = []

    def load():  # one client, bounded in time, on loopback
        deadline = time.monotonic() + 300
        while not stop.is_set() and time.monotonic() < deadline:
            req = urllib.request.Request(h.url + "/predict", data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    answers.append(r.status)
            except OSError:
                answers.append(-1)
            time.sleep(0.02)

    t = threading.Thread(target=load)
    try:
        serve.rollout(NAME, v2, canary=30)
        t.start()
        yield h, v1, v2, answers
    finally:
        stop.set()
        if t.is_alive():
            t.join()
        for s in serve.find(NAME):
            s.stop()


def test_sidebar_canary_promote_and_rollback_in_chromium(browser_tools, canary_server, jupyter_lab):  # noqa: F811
    h, v1, v2, answers = canary_server
    result, detail = _drive(browser_tools, jupyter_lab, v1, MODE="canary", SERVER_ID=h.id, CANARY_TAG=v2)
    assert [s["name"] for s in result["steps"]][-1] == "done", detail
    text = result["canary_text"]
    assert v1.split(":")[1] in text and v2.split(":")[1] in text and "30% of requests" in text, text
    assert "Differing predictions" in text, text
    assert result["promoted_message"] == f"{h.id} now serves {v2}.", detail
    assert result["tab_rolled_text"].startswith(f"Serving {v1.split(':')[1]}"), detail   # Rollback in the report tab
    # the real server followed the clicks
    st = serve.rollout_status(h.id)
    assert st["primary"]["tag"] == v1 and st["canary"] is None
    assert [e["op"] for e in st["events"]][-3:] == ["canary", "promote", "rollback"]
    assert answers and set(answers) == {200}, set(answers)
    assert (OUT / "nbdeploy-sidebar-canary.png").stat().st_size > 10_000
    errors = [e for e in result["console_errors"] if "nbdeploy" in e.lower()]
    assert not errors, detail
