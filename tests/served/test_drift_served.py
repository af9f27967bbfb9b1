"""Input drift in a served bundle, against an independent computation: the deciles and the
Population Stability Index are written here from their definitions (not nbdeploy's code),
PSI = sum_b (served_b - base_b) * ln(served_b / base_b) over the sample's decile bins, with
empty bins floored at 1e-4 as the bundle documents.  A control from the same distribution
must not flag; a shifted stream must, on exactly the features the definition says."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nbdeploy import serve, store

pytestmark = pytest.mark.slow

FLOOR = 1e-4
THRESHOLD = 0.25
# The bundle reports PSI rounded to 6 decimals; it bins served rows against the same float64
# edges as the baseline (deciles of 171 rows often land exactly on a data value, so a float32
# rounding of an edge would move rows between bins: the replay test below pins that).
TIES = 2e-6


def deciles(col: np.ndarray) -> np.ndarray:
    return np.unique(np.quantile(col.astype(np.float64), np.arange(1, 10) / 10))


def shares(col: np.ndarray, edges: np.ndarray) -> np.ndarray:
    # bin b holds the values v with edges[b-1] <= v < edges[b] (bin = number of edges <= v)
    b = np.array([int((v >= edges).sum()) for v in col.astype(np.float64)])
    return np.bincount(b, minlength=10)[:10] / len(col)


def psi(base: np.ndarray, served: np.ndarray) -> float:
    e, a = np.maximum(base, FLOOR), np.maximum(served, FLOOR)
    return float(((a - e) * np.log(a / e)).sum())


def expected_psi(sample: np.ndarray, stream: np.ndarray, edges: list) -> np.ndarray:
    """PSI per feature over the bins the bundle documents (its stored decile edges, checked
    against the sample's deciles in the first test)."""
    out = []
    for j in range(sample.shape[1]):
        e = np.asarray(edges[j], dtype=np.float64)
        out.append(psi(shares(sample[:, j], e), shares(stream[:, j], e)))
    return np.array(out)


@pytest.fixture
def fresh_server(ref_deployment):
    """A server of its own: drift counts start at zero."""
    h = serve.start(ref_deployment.tag)
    yield h
    h.stop()


@pytest.fixture(scope="module")
def sample(breast_cancer):
    # the model's inputs are float32: the sample as the bundle saw it
    return breast_cancer[1].values.astype(np.float32)


def _baseline(d) -> dict:
    return json.loads((store.bundle_dir(d.tag) / "model" / "baseline.json").read_text())


def test_bundle_bins_are_the_sample_deciles(ref_deployment, sample):
    base = _baseline(ref_deployment)
    assert base["threshold"] == THRESHOLD and base["bins"] == 10
    for j in range(sample.shape[1]):
        np.testing.assert_allclose(base["edges"][j], deciles(sample[:, j]), rtol=1e-9)
        # the stored shares are the sample counted into the stored edges
        np.testing.assert_allclose(base["shares"][j], shares(sample[:, j], np.asarray(base["edges"][j])),
                                   atol=1e-12)


def _send(post, server, rows: np.ndarray, chunk: int = 100) -> None:
    for i in range(0, len(rows), chunk):
        status, body = post(server.url + "/predict", {"inputs": rows[i:i + chunk].tolist()})
        assert status == 200, body


def test_in_distribution_stream_does_not_flag(fresh_server, ref_deployment, post, get, breast_cancer,
                                              sample):
    """Control: held-out rows of the same data set (the training split, never the sample)."""
    stream = breast_cancer[0].values.astype(np.float32)
    _send(post, fresh_server, stream)
    status, rep = get(fresh_server.url + "/drift")
    assert status == 200 and rep["observed_rows"] == len(stream) and rep["enough_data"]
    want = expected_psi(sample, stream, _baseline(ref_deployment)["edges"])
    got = np.array([f["psi"] for f in rep["features"]])
    np.testing.assert_allclose(got, want, atol=TIES)
    assert want.max() < THRESHOLD, want.max()         # the definition agrees: nothing drifted
    assert rep["drift"] is False and rep["drifted_features"] == []


def test_shifted_stream_flags_exactly_the_shifted_features(fresh_server, ref_deployment, post, get,
                                                         breast_cancer, sample):
    X = breast_cancer[0].values.astype(np.float32)
    shifted = X.copy()
    moved = [0, 3, 7]                                  # mean radius, mean area, mean concave points
    shifted[:, moved] *= np.float32(1.6)
    shifted[:, 1] += np.float32(2.0)                   # mean texture: a small shift (below threshold)
    _send(post, fresh_server, shifted)
    status, rep = get(fresh_server.url + "/drift")
    assert status == 200 and rep["observed_rows"] == len(shifted)
    want = expected_psi(sample, shifted, _baseline(ref_deployment)["edges"])
    got = np.array([f["psi"] for f in rep["features"]])
    np.testing.assert_allclose(got, want, atol=TIES)
    names = list(breast_cancer[1].columns)
    flagged = {names[j] for j in range(len(names)) if want[j] > THRESHOLD}
    assert {names[j] for j in moved} <= flagged
    assert rep["drift"] is True and set(rep["drifted_features"]) == flagged
    status, metrics = get(fresh_server.url + "/metrics")
    text = metrics.decode() if isinstance(metrics, bytes) else json.dumps(metrics)
    line = next(ln for ln in text.splitlines() if ln.startswith('nbdeploy_drift_psi{feature="mean radius"}'))
    assert float(line.split()[-1]) == pytest.approx(want[0], abs=TIES)
    assert "nbdeploy_drift_detected 1" in text
    assert "bentoml_service_request" in text          # BentoML's own metrics are still there


def test_replaying_the_sample_is_zero_psi(fresh_server, post, get, sample):
    """By definition, serving exactly the sample's rows gives every feature PSI 0."""
    _send(post, fresh_server, sample)
    status, rep = get(fresh_server.url + "/drift")
    assert status == 200 and rep["observed_rows"] == len(sample)
    got = {f["feature"]: f["psi"] for f in rep["features"]}
    assert {k: v for k, v in got.items() if v > 1e-9} == {}


def test_too_few_rows_never_flag(fresh_server, post, get, breast_cancer):
    X = breast_cancer[0].values.astype(np.float32)[:50] * np.float32(3.0)
    _send(post, fresh_server, X)
    status, rep = get(fresh_server.url + "/drift")
    assert rep["observed_rows"] == 50 and rep["enough_data"] is False and rep["drift"] is False
    assert max(f["psi"] for f in rep["features"]) > THRESHOLD    # large, but not yet evidence
