"""Session-wide test setup: isolated BentoML store and nbdeploy state, shared tiny models,
one reference bundle deployed (and served) once per session, and the CI rule for skips.

CI rule: when ``CI`` is truthy (``1``, ``true``, ``yes``...; not ``false``/``0``/empty), every
skipped test is reported as a failure, because CI installs everything the suite needs.  The
only exception is a test marked ``@pytest.mark.gpu``: whether the machine has a GPU decides
what such a test can observe.  ``xfail`` is not a skip and is left alone.
"""

from __future__ import annotations

import contextlib
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

# the container fixtures (a real registry, a base image, bentos) live beside the container tests;
# front-end tests (push from the magic, the CLI and the sidebar) use them too
pytest_plugins = ["containers.fixtures"]

_FALSY = ("", "0", "false", "no", "off")


def ci_truthy(value: str | None = None) -> bool:
    """Whether ``CI`` (or ``value``) means "this is CI": ``CI=false`` and ``CI=0`` do not."""
    v = os.environ.get("CI", "") if value is None else value
    return v.strip().lower() not in _FALSY


IN_CI = ci_truthy()
REF_NAME = "ref-rf"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "gpu: depends on whether the machine has a GPU (needs one, or observes the "
                   "behaviour without one); the only tests allowed to skip under CI")


def _skip_reason(rep) -> str:
    lr = rep.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:
        return str(lr[2])
    return str(lr)


def _fail_skip_under_ci(rep, where: str) -> None:
    reason = _skip_reason(rep)
    rep.outcome = "failed"
    rep.longrepr = (f"{where} skipped under CI (CI={os.environ.get('CI')!r}); under CI every skip "
                    f"is a failure except tests marked gpu. Skip reason: {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if (IN_CI and rep.skipped and not hasattr(rep, "wasxfail")
            and item.get_closest_marker("gpu") is None):
        _fail_skip_under_ci(rep, item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A module-level skip (``importorskip`` at import time) hides every test in it."""
    outcome = yield
    rep = outcome.get_result()
    if IN_CI and rep.skipped:
        _fail_skip_under_ci(rep, collector.nodeid)


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


@pytest.fixture(scope="session")
def digits_images():
    """scikit-learn's 8x8 digits: (images [N, 8, 8] float32 with values 0..16, labels)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32), d.target


def train_torch_digits_cnn(X, y, *, channels: int = 8, epochs: int = 40, lr: float = 1e-2):
    """A small PyTorch CNN on ``X`` [N, 1, 8, 8]: conv, ReLU, pool, dense (full-batch Adam, seed 0)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                      nn.Linear(channels * 16, 10))
    opt = torch.optim.Adam(m.parameters(), lr)
    Xt, yt = torch.from_numpy(np.ascontiguousarray(X)), torch.from_numpy(np.asarray(y))
    for _ in range(epochs):
        opt.zero_grad()
        nn.functional.cross_entropy(m(Xt), yt).backward()
        opt.step()
    return m.eval()


@pytest.fixture(scope="session")
def torch_digits_cnn(digits_images):
    """(model, X [N, 1, 8, 8] in 0..1, labels, images): trained on the first 1,200 digits."""
    images, y = digits_images
    X = (images / 16.0)[:, None]
    return train_torch_digits_cnn(X[:1200], y[:1200]), X, y, images


@pytest.fixture(scope="session")
def keras_digits_cnn(digits_images):
    """(model, X [N, 8, 8, 1] in 0..1, labels, images): a Keras CNN trained on 1,200 digits."""
    keras = pytest.importorskip("keras")
    pytest.importorskip("tensorflow")
    images, y = digits_images
    X = (images / 16.0)[..., None]
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
                          keras.layers.MaxPooling2D(2), keras.layers.Flatten(),
                          keras.layers.Dense(10, activation="softmax")])
    m.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    m.fit(X[:1200], y[:1200], epochs=5, batch_size=64, verbose=0)
    return m, X, y, images


def read_until_close(sock) -> bytes:
    """Everything a server sends on a raw socket until it closes (a reset ends it too)."""
    data = b""
    while True:
        try:
            part = sock.recv(65536)
        except ConnectionResetError:
            break
        if not part:
            break
        data += part
    return data


def customers(n: int, seed: int):
    """A small customer table as users have them: numbers and a string column, ~10 % missing."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"age": rng.normal(40, 10, n).round(),
                       "city": rng.choice(["Oslo", "Bergen", "Paris", "Lima"], n),
                       "income": rng.lognormal(10, 0.4, n).round(-2)})
    df.loc[rng.random(n) < 0.1, "age"] = np.nan
    df.loc[rng.random(n) < 0.1, "city"] = np.nan
    y = np.where((np.nan_to_num(df["age"], nan=40) > 42) ^ (df["city"] == "Lima"), "churn", "stay")
    return df, y


@pytest.fixture(scope="session")
def customer_table():
    """(pipeline, deployment): impute + one-hot + LogisticRegression on ``customers``, deployed
    in table mode (explain and quantize off: the batch-scoring tests need only predictions)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    import nbdeploy

    X, y = customers(600, 1)
    pre = ColumnTransformer([
        ("num", SimpleImputer(strategy="median"), ["age", "income"]),
        ("city", make_pipeline(SimpleImputer(strategy="constant", fill_value="missing"),
                               OneHotEncoder(handle_unknown="ignore")), ["city"])])
    model = make_pipeline(pre, LogisticRegression(max_iter=500)).fit(X, y)
    d = nbdeploy.deploy(model, customers(200, 2)[0], name="customer-table", explain="none",
                        quantize="none")
    assert d.chosen_spec.get("input_mode") == "table"
    return model, d


@contextlib.contextmanager
def deployed_and_served(models: dict, sample, *, prefix: str):
    """Deploy each ``{name: fitted model}`` on ``sample`` with defaults (as a user would) and serve
    it; yields ``{name: (model, deployment, server)}`` and stops every server afterwards."""
    import nbdeploy

    out, servers = {}, []
    try:
        for name, model in models.items():
            d = nbdeploy.deploy(model, sample, name=f"{prefix}-{name}")
            server = d.serve()
            servers.append(server)
            out[name] = (model, d, server)
        yield out
    finally:
        for s in servers:
            s.stop()


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


# --- the reference bundle, shared by every module that needs "the RandomForest, deployed" ---------
# Read-only for tests: do not delete it, add files to it or stop its server; tests that need to
# change a bundle or a server deploy or start their own.  Serving a second copy of it
# (``serve.start(ref_deployment.tag)``) is fine and cheap.

@pytest.fixture(scope="session")
def ref_deployment(rf_model, breast_cancer):
    """The 20-tree RandomForest on breast-cancer data, deployed once: labels, no explanation,
    no quantization (the defaults that cost minutes are not what these tests are about)."""
    import nbdeploy

    _, X_test, _, y_test = breast_cancer
    return nbdeploy.deploy(rf_model, X_test, labels=y_test, name=REF_NAME, explain="none",
                           quantize="none")


@pytest.fixture(scope="session")
def ref_explained(rf_model, breast_cancer):
    """The same RandomForest deployed once with SHAP and LIME (no quantization), for the tests
    of explanations over HTTP, BentoML's client, Spark and the hardened API."""
    import nbdeploy

    _, X_test, _, y_test = breast_cancer
    return nbdeploy.deploy(rf_model, X_test, labels=y_test, name="ref-explained", explain="shap,lime",
                           quantize="none")


@pytest.fixture(scope="module")
def ref_server(ref_deployment):
    """``ref_deployment`` served by stock ``bentoml serve`` on a free loopback port, shared by
    the tests of one module.  Module-scoped on purpose: a server left running across modules
    would break the tests that check that no server runs (the sidebar's empty server list,
    ``list_servers() == []``) and be stopped by those that stop every server."""
    from nbdeploy import serve

    h = serve.start(ref_deployment.tag)
    yield h
    h.stop()


@pytest.fixture(scope="session")
def ref_copy(ref_deployment):
    """``make(name)`` builds one more bundle of the reference model under ``name`` (a new
    version each call) and returns its tag: about 2 s instead of a whole deploy, for tests that
    change, push or delete a bundle.  Same ONNX model, spec, model card, serving config and
    drift baseline as ``ref_deployment``."""
    def make(name: str) -> str:
        from nbdeploy import bundle
        from nbdeploy.drift import write_baseline

        d = ref_deployment
        info = bundle.build(name=name, onnx_bytes=d.chosen_model.SerializeToString(), spec=d.chosen_spec,
                            metadata=d.to_dict(include_bundle=False), config=d.serve_config(),
                            extra=lambda model_dir: write_baseline(model_dir, d.converted.X,
                                                                   d.converted.schema.feature_names))
        return info.tag

    return make


class Api:
    """A client for one served bundle: ``headers`` (e.g. ``Authorization``) go with every request."""

    def __init__(self, url: str, headers: dict | None = None):
        self.url, self.headers = url, dict(headers or {})
        self.auth = "key" if "Authorization" in self.headers else "off"

    def post(self, path, body, *, headers=None, **kw):
        return http("POST", self.url + path, body, headers={**self.headers, **(headers or {})}, **kw)

    def get(self, path, **kw):
        return http("GET", self.url + path, headers=self.headers, **kw)


@pytest.fixture
def api(served):
    """An :class:`Api` for the module's ``served`` fixture: ``(deployment, server, X)``, or
    ``(deployment, server, X, headers)`` for a server that requires a bearer key."""
    _, server, _, *rest = served
    return Api(server.url, rest[0] if rest else None)
