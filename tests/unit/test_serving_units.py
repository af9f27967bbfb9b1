"""Fast checks of the serving pieces that need no server: where the concurrency limit comes
from, the direct engine's Prometheus text (read back with prometheus_client's own parser), and
when `bentoml serve` hands over to the direct engine."""

from __future__ import annotations

import json
import math

import pytest

from nbdeploy.bundle import ServeConfig
from nbdeploy.runtime import engine, limits
from nbdeploy.runtime.metrics import Metrics

META = {"optimize": {"chosen": "fp32", "provider": "CPUExecutionProvider", "benchmark": {"entries": [
    {"variant": "native", "provider": "native", "points": [{"batch_size": 1, "p50_ms": 40.0}]},
    {"variant": "fp32", "provider": "CPUExecutionProvider",
     "points": [{"batch_size": 64, "p50_ms": 0.5}, {"batch_size": 1, "p50_ms": 0.35}]}]}}}


def test_limit_is_littles_law_over_the_served_variant(monkeypatch):
    monkeypatch.delenv(limits.ENV_VAR, raising=False)
    for eng, stack in limits.STACK_MS.items():
        got = limits.derive(META, {}, eng)
        assert got["source"] == "benchmark"
        assert got["limit"] == math.floor(limits.LATENCY_BUDGET_MS / (0.35 + stack))
        assert "0.350 ms" in got["reason"] and eng in got["reason"]
    # a slow model is clamped to the floor, a model with no benchmark assumes 1 ms
    slow = json.loads(json.dumps(META).replace('"p50_ms": 0.35', '"p50_ms": 90.0'))
    assert limits.derive(slow, {}, "direct")["limit"] == limits.MIN_LIMIT
    assert "no benchmark" in limits.derive({}, {}, "direct")["reason"]


def test_limit_set_at_build_time_or_by_environment(monkeypatch):
    monkeypatch.delenv(limits.ENV_VAR, raising=False)
    config = ServeConfig(max_concurrency=7).runtime_config()
    assert limits.derive(META, config, "bentoml")["limit"] == 7
    assert limits.derive(META, config, "bentoml")["source"] == "bundle"
    monkeypatch.setenv(limits.ENV_VAR, "3")
    assert limits.derive(META, config, "bentoml")["limit"] == 3
    monkeypatch.setenv(limits.ENV_VAR, "0")
    assert limits.derive(META, config, "bentoml")["limit"] is None
    monkeypatch.setenv(limits.ENV_VAR, "lots")          # not a number: ignored, not a crash
    assert limits.derive(META, config, "bentoml")["limit"] == 7


def test_metrics_text_parses_as_prometheus():
    from prometheus_client.parser import text_string_to_metric_families

    m = Metrics('svc"x')
    for path, status, s in (("/predict", 200, 0.0004), ("/predict", 200, 0.003), ("/predict", 400, 0.0002),
                            ("/plots/a.png", 200, 0.01), ("/../etc/passwd", 404, 0.0001)):
        m.observe(path, status, s)
    m.shed = 5
    fams = {f.name: f for f in text_string_to_metric_families(m.text(in_flight=2) +
                                                              "nbdeploy_drift_detected 0\n")}
    total = {(s.labels["endpoint"], s.labels["http_response_code"]): s.value
             for s in fams["bentoml_service_request"].samples}
    assert total == {("/predict", "200"): 2, ("/predict", "400"): 1, ("/plots", "200"): 1,
                     ("other", "404"): 1}   # client paths never become label values
    hist = fams["bentoml_service_request_duration_seconds"].samples
    buckets = {s.labels["le"]: s.value for s in hist
               if s.name.endswith("_bucket") and s.labels["endpoint"] == "/predict"}
    assert buckets["0.0005"] == 2 and buckets["0.005"] == 3 and buckets["+Inf"] == 3
    assert fams["nbdeploy_requests_shed"].samples[0].value == 5
    assert fams["bentoml_service_request_in_progress"].samples[0].value == 2


@pytest.mark.parametrize("argv, address", [
    (["/venv/bin/bentoml", "serve", "churn:latest", "--port", "3001"], ("0.0.0.0", 3001)),
    (["/usr/lib/python3/site-packages/bentoml/__main__.py", "serve", "/home/bentoml/bento"], ("0.0.0.0", 3000)),
    (["/venv/bin/bentoml", "serve", "x", "--host=127.0.0.1", "-p", "9"], ("127.0.0.1", 9)),
    (["/venv/bin/bentoml", "build"], None),
    (["/venv/lib/_bentoml_impl/worker/service.py", "serve"], None),   # BentoML's worker
    (["ipykernel_launcher.py", "-f", "k.json"], None),
])
def test_which_processes_hand_over(argv, address, monkeypatch):
    monkeypatch.delenv("BENTOML_HOST", raising=False)
    monkeypatch.delenv("BENTOML_PORT", raising=False)
    assert engine._bentoml_serve_address(argv) == address


def test_hand_over_only_when_serving_this_bundle(tmp_path, monkeypatch):
    src = tmp_path / "churn" / "20260101-000000-abc" / "src"
    (src / "model").mkdir(parents=True)
    (src / "model" / "metadata.json").write_text(json.dumps({"name": "churn"}))
    assert engine._serves(src, ["churn:latest"]) and engine._serves(src, ["churn:20260101-000000-abc"])
    assert engine._serves(src, ["churn"]) and engine._serves(src, [str(src.parent)])
    assert not engine._serves(src, ["churn:20250101-000000-old"])
    assert not engine._serves(src, ["composer:Composer"]) and not engine._serves(src, ["other:latest"])
    monkeypatch.chdir(src)
    assert engine._serves(src, ["service:ChurnService"]) and engine._serves(src, [])
    monkeypatch.chdir(tmp_path)
    assert not engine._serves(src, ["service:ChurnService"])
