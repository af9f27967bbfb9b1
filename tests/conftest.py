"""Session-wide test setup: isolated BentoML store and nbdeploy state, shared tiny models."""

from __future__ import annotations

import json
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

# Must happen before bentoml is imported anywhere: every test run gets its own store.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="nbdeploy-tests-"))
os.environ.setdefault("BENTOML_HOME", str(_SESSION_HOME / "bentoml"))
os.environ.setdefault("NBDEPLOY_HOME", str(_SESSION_HOME / "nbdeploy"))
os.environ["BENTOML_DO_NOT_TRACK"] = "true"
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
    """Never leave a server behind, whatever a test did."""
    try:
        from nbdeploy.serve import list_servers

        for h in list_servers():
            h.stop()
    except Exception:
        pass


@pytest.fixture(scope="session")
def breast_cancer():
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer(as_frame=True)
    X_train, X_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.3, random_state=0, stratify=data.target)
    return X_train, X_test, y_train, y_test


@pytest.fixture(scope="session")
def rf_model(breast_cancer):
    from sklearn.ensemble import RandomForestClassifier

    X_train, _, y_train, _ = breast_cancer
    return RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0).fit(X_train, y_train)


@pytest.fixture(scope="session")
def regression_data():
    from sklearn.datasets import make_regression

    X, y = make_regression(n_samples=300, n_features=8, noise=0.5, random_state=0)
    return X.astype(np.float32), y


def http(method: str, url: str, body=None, *, headers=None, data: bytes | None = None,
         timeout: float = 30.0):
    """A real HTTP request; returns (status, parsed JSON or raw bytes)."""
    hdrs = {"Content-Type": "application/json"}
    hdrs.update(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


@pytest.fixture
def post():
    return lambda url, body, **kw: http("POST", url, body, **kw)


@pytest.fixture
def get():
    return lambda url, **kw: http("GET", url, **kw)
