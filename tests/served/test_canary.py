"""Canary releases on a stable address, under steady load (bounded threads on loopback):
the canary's share of requests, promote, rollback, the guard that rolls a broken version back
by itself, and per-version /metrics.  Real servers, real requests."""

from __future__ import annotations

import http.client
import json
import threading
import time
from urllib.parse import urlsplit

import numpy as np
import pytest

import nbdeploy
from nbdeploy import serve
from nbdeploy.errors import InvalidInputError, ServeError

pytestmark = pytest.mark.slow


class Load:
    """``threads`` clients, each on one keep-alive connection, posting ``rows`` to /predict
    until stopped (or 90 s); every answer recorded as (status, version header, body)."""

    def __init__(self, url: str, rows: list, threads: int = 4):
        u = urlsplit(url)
        self.host, self.port, self.rows = u.hostname, u.port, rows
        self.results: list[tuple[int, str | None, dict]] = []
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self):
        body = json.dumps({"inputs": self.rows})
        conn = None
        deadline = time.monotonic() + 90
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                data = r.read()
                self.results.append((r.status, r.getheader("x-nbdeploy-version"), json.loads(data)))
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.results.append((-1, None, {"error": repr(exc)}))
                conn = None
        if conn is not None:
            conn.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        for t in self.threads:
            t.join()

    def wait_for(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.results) < n and time.monotonic() < deadline:
            time.sleep(0.05)

    def mark(self) -> int:
        return len(self.results)


def _by_version(results, tags):
    """Versions told apart by the answers themselves (each model's probabilities)."""
    out = []
    for _status, _, body in results:
        p = np.asarray(body["probabilities"])
        match = [t for t, e in tags.items() if np.allclose(p, e, atol=1e-5)]
        assert len(match) == 1, body
        out.append(match[0])
    return out


@pytest.fixture
def versions(ref_copy, rf_model, breast_cancer):
    from sklearn.ensemble import RandomForestClassifier

    X_train, X_test, y_train, _ = breast_cancer
    v1 = ref_copy("canaried")
    model2 = RandomForestClassifier(n_estimators=5, max_depth=2, random_state=1).fit(X_train, y_train)
    v2 = nbdeploy.deploy(model2, X_test, name="canaried", explain="none", quantize="none").tag
    idx = [0, 1, 17]                  # the two models disagree on the label of row 17 only
    rows = X_test.values[idx].tolist()
    expected = {v1: rf_model.predict_proba(X_test.iloc[idx]), v2: model2.predict_proba(X_test.iloc[idx])}
    assert not np.allclose(expected[v1], expected[v2])
    yield v1, v2, rows, expected
    for h in serve.find("canaried"):
        h.stop()


def test_canary_share_promote_and_rollback_under_load(versions, get):
    v1, v2, rows, expected = versions
    h = serve.start(v1, stable=True)
    try:
        with Load(h.url, rows) as load:
            load.wait_for(100)
            h2 = serve.rollout("canaried", v2, canary=20)
            assert h2.tag == v1 and h2.url == h.url          # the old version stays primary
            start = load.mark() + 8                          # (requests admitted before it)
            load.wait_for(start + 2500)
            canary_part = load.results[start:load.mark()]
            st = serve.rollout_status("canaried")
            promoted = serve.promote("canaried")
            assert promoted.tag == v2
            after_promote = load.mark()
            load.wait_for(after_promote + 300)
            before_rollback = load.mark()
            back = serve.rollback("canaried")                # to the version served before, at any time
            assert back.tag == v1
            after_rollback = load.mark()
            load.wait_for(after_rollback + 300)
        failed = [r for r in load.results if r[0] != 200]
        assert failed == [], failed[:3]
        assert len(canary_part) >= 2000
        # the share lands on the requested one (the header and the answers agree)
        seen = _by_version(canary_part, expected)
        assert [r[1] for r in canary_part] == seen
        share = seen.count(v2) / len(seen)
        assert abs(share - 0.20) <= 0.05, share
        assert st["canary"]["tag"] == v2 and st["weight"] == pytest.approx(0.2)
        assert st["canary"]["requests"] > 0 and st["primary"]["requests"] > 0
        assert st["canary"]["error_rate"] == 0.0
        # 1 in 4 canary requests is also predicted by the primary: the share of rows whose
        # predictions differ is what the two models say on these rows
        labels = {t: np.argmax(e, axis=1) for t, e in expected.items()}
        assert 0 < np.mean(labels[v1] != labels[v2]) < 1
        assert st["canary"]["compared_rows"] >= 3 * 50
        assert st["canary"]["differ_share"] == pytest.approx(np.mean(labels[v1] != labels[v2]))
        assert "drift" in st["canary"] and "drift" in st["primary"]
        # after promote: only v2 (a few requests already admitted may still come from v1)
        tail = _by_version(load.results[after_promote + 50:before_rollback], expected)
        assert set(tail) == {v2}
        tail = _by_version(load.results[after_rollback + 50:], expected)
        assert set(tail) == {v1}
        assert get(h.url + "/metadata")[1]["tag"] == v1
        assert [s.tag for s in serve.find("canaried")] == [v1]
        ops = [e["op"] for e in serve.rollout_status("canaried")["events"]]
        assert ops[-3:] == ["canary", "promote", "rollback"]
    finally:
        serve.stop("canaried")


def test_guard_rolls_back_a_broken_canary_by_itself(versions, breast_cancer, get):
    """A version whose model takes 29 columns answers 400 on the rows the old one takes: with
    a guard, the canary is rolled back without anyone asking, and the reason is recorded."""
    from sklearn.ensemble import RandomForestClassifier

    v1, _, rows, expected = versions
    X_train, X_test, y_train, _ = breast_cancer
    broken_model = RandomForestClassifier(n_estimators=3, random_state=0).fit(X_train.iloc[:, :29], y_train)
    broken = nbdeploy.deploy(broken_model, X_test.iloc[:, :29], name="canaried", explain="none",
                             quantize="none").tag
    h = serve.start(v1, stable=True)
    try:
        with Load(h.url, rows) as load:
            load.wait_for(100)
            serve.rollout("canaried", broken, canary=10, guard={"max_error_rate": 0.05, "min_requests": 20})
            deadline = time.monotonic() + 30
            while serve.rollout_status("canaried")["canary"] is not None and time.monotonic() < deadline:
                time.sleep(0.1)
            after = load.mark()
            load.wait_for(after + 300)
        st = serve.rollout_status("canaried")
        assert st["canary"] is None and st["primary"]["tag"] == v1
        last = st["events"][-1]
        assert last["op"] == "rollback" and last["by"] == "guard" and last["tag"] == broken
        assert "error rate" in last["reason"]
        statuses = [r[0] for r in load.results]
        assert -1 not in statuses and set(statuses) <= {200, 400}
        # the broken version got its share only until the guard acted; then none
        assert {r[0] for r in load.results[after + 8:]} == {200}
        assert 20 <= statuses.count(400) < 500
        text = get(h.url + "/metrics")[1]
        text = text.decode() if isinstance(text, bytes) else text
        assert "nbdeploy_guard_rollbacks_total 1" in text.splitlines()
        # samples carry the version they were answered by
        assert any(ln.startswith(f'bentoml_service_request_total{{version="{v1}"') for ln in text.splitlines())
    finally:
        serve.stop("canaried")


def test_rollout_refuses_bad_canary_and_guard_settings(versions):
    v1, v2, _, _ = versions
    h = serve.start(v1, stable=True)
    try:
        for bad in (0, 100, -5, "ten"):
            with pytest.raises(InvalidInputError, match="percentage"):
                serve.rollout("canaried", v2, canary=bad)
        with pytest.raises(InvalidInputError, match="guard"):
            serve.rollout("canaried", v2, guard={"max_error_rate": 0.1})
        with pytest.raises(InvalidInputError, match="Unknown guard"):
            serve.rollout("canaried", v2, canary=10, guard={"max_errors": 1})
        with pytest.raises(ServeError, match="no canary"):
            serve.promote("canaried")
        with pytest.raises(ServeError, match="no previous"):
            serve.rollback("canaried")
        assert serve.rollout_status("canaried")["primary"]["tag"] == v1
    finally:
        h.stop()


def test_admin_socket_needs_the_token_and_the_public_port_hides_it(versions):
    v1, _, _, _ = versions
    h = serve.start(v1, stable=True)
    try:
        for port, token, want in ((h.backend_port, "wrong", 403), (h.port, None, 404)):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request("POST", "/__nbdeploy__/rollback", "{}",
                      {"X-Nbdeploy-Token": token} if token else {})
            assert c.getresponse().status == want
            c.close()
        assert serve.rollout_status("canaried")["events"] == []
    finally:
        h.stop()


def test_cli_canary_status_promote_rollback(versions, post):
    import os
    import subprocess
    import sys

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "nbdeploy.cli", *args], capture_output=True, text=True,
                              env=dict(os.environ), timeout=120)

    v1, v2, rows, expected = versions
    port = serve.free_port()
    try:
        assert cli("serve", v1, "--stable", "--port", str(port)).returncode == 0
        url = f"http://127.0.0.1:{port}"
        out = cli("rollout", "canaried", v2, "--canary", "50", "--guard-error-rate", "0.1")
        assert out.returncode == 0, out.stderr
        assert "50% of requests" in out.stdout and "nbdeploy promote canaried" in out.stdout
        answers = [post(url + "/predict", {"inputs": rows}) for _ in range(40)]
        assert {s for s, _ in answers} == {200}
        got = [np.asarray(b["probabilities"]) for _, b in answers]
        assert sum(np.allclose(g, expected[v2], atol=1e-5) for g in got) == 20   # 50%, exactly
        out = cli("status", "canaried")
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0].startswith(f"primary\t{v1}\t50% of requests\t20 answered")
        assert lines[1].startswith(f"canary\t{v2}\t50% of requests\t20 answered")
        status = json.loads(cli("status", "canaried", "--json").stdout)
        assert status["guard"] == {"max_error_rate": 0.1}
        out = cli("promote", "canaried")
        assert out.returncode == 0 and out.stdout.strip() == f"{url} now serves {v2}"
        out = cli("rollback", "canaried")
        assert out.returncode == 0 and out.stdout.strip() == f"{url} now serves {v1}"
        np.testing.assert_allclose(post(url + "/predict", {"inputs": rows})[1]["probabilities"], expected[v1],
                                   atol=1e-5)
        out = cli("rollout", "canaried", v2, "--canary", "150")
        assert out.returncode != 0 and "percentage" in out.stderr
    finally:
        serve.stop("canaried")


def test_swapped_out_versions_are_freed(versions):
    """The router holds one version, two while a canary runs, and frees the old one after a
    switch (its onnxruntime session and app), however many rollouts follow."""
    v1, v2, _, _ = versions

    def in_memory(want, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = serve.rollout_status("canaried")["versions_in_memory"]
            if got == sorted(want):
                return got
            time.sleep(0.25)
        raise AssertionError(f"in memory: {got}, expected {sorted(want)}")

    h = serve.start(v1, stable=True)
    try:
        in_memory([v1])
        serve.rollout("canaried", v2, canary=30)
        in_memory([v1, v2])
        serve.rollback("canaried")
        in_memory([v1])
        for tag in (v2, v1, v2):
            serve.rollout("canaried", tag)
            in_memory([tag])
    finally:
        h.stop()
