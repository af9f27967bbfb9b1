"""benchmark: structure, providers, truncation and serving hints (no timing assertions)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nbdeploy.benchmark import (
    BenchEntry,
    BenchPoint,
    BenchReport,
    benchmark,
    native_call,
    resolve_providers,
    serving_hints,
    tile_rows,
)
from nbdeploy.convert import convert
from nbdeploy.errors import InvalidInputError


@pytest.fixture(scope="module")
def rf():
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    X, y = make_classification(200, 8, random_state=0)
    model = RandomForestClassifier(10, max_depth=4, random_state=0).fit(X, y)
    return convert(model, X)


@pytest.fixture(scope="module")
def mlp():
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    X = np.random.RandomState(0).randn(120, 12).astype("float32")
    return convert(net, X)


@pytest.fixture(scope="module")
def rf_report(rf):
    return benchmark(rf, batch_sizes=[1, 8, 300], time_budget_s=10)


def test_report_structure_and_json(rf_report):
    r = rf_report
    assert [e.variant for e in r.entries] == ["native", "fp32"]
    assert r.batch_sizes == [1, 8, 300] and r.sample_rows == 200
    fp32 = r.entry("fp32")
    assert fp32.size_bytes > 0 and fp32.load_ms > 0 and fp32.memory_mb >= 0
    assert fp32.threads >= 1 and r.threads["intra_op_default"] >= 1
    for e in r.entries:
        assert e.error is None
        for p in e.points:
            assert p.reps >= 1 and 0 < p.p50_ms <= p.p95_ms <= p.p99_ms
            assert p.rows_per_s > 0 and p.per_row_us > 0
    assert fp32.point(300).tiled and not fp32.point(8).tiled
    assert any("repeat the sample" in n for n in r.notes)
    assert "predict_proba" in r.entry("native").note
    d = json.loads(json.dumps(r.to_dict()))
    assert d["entries"][1]["points"][0]["batch_size"] == 1
    assert "p50 ms" in r._repr_html_()


def test_providers_reported(rf_report):
    import onnxruntime as ort

    assert rf_report.providers_available == ort.get_available_providers()
    fp32 = rf_report.entry("fp32", "CPUExecutionProvider")
    assert fp32.providers_assigned == ["CPUExecutionProvider"] and not fp32.fallback
    if "AzureExecutionProvider" in ort.get_available_providers():
        assert "remote" in rf_report.providers_skipped["AzureExecutionProvider"]


@pytest.mark.gpu     # observes the no-GPU fall-back: cannot run on a machine with a GPU
def test_cuda_request_without_gpu_is_reported_not_hidden(rf):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a GPU is present: no fall-back to observe")
    r = benchmark(rf, device="cuda", batch_sizes=[1], time_budget_s=3, include_native=False)
    e = r.entry("fp32", "CUDAExecutionProvider")
    assert e.fallback and e.providers_assigned == ["CPUExecutionProvider"]
    assert "NOT CUDAExecutionProvider" in e.note
    assert any("CUDAExecutionProvider was requested" in n for n in r.notes)
    assert "FELL BACK" in r._repr_html_()


def test_tiny_budget_truncates_and_reports_partial(mlp):
    # a budget no machine can meet (a 50 ms one was met once by a fast moment of this tiny MLP)
    r = benchmark(mlp, batch_sizes=[1, 4, 16, 64, 256, 1024, 2048], time_budget_s=1e-6)
    assert r.truncated
    assert any("time budget" in n for n in r.notes)
    json.dumps(r.to_dict())


def test_unknown_device_and_bad_batches(rf):
    with pytest.raises(InvalidInputError, match="provider"):
        benchmark(rf, device="tpu-9000", time_budget_s=1)
    with pytest.raises(InvalidInputError, match="positive"):
        benchmark(rf, batch_sizes=[0, 4], time_budget_s=1)


def test_resolve_providers_all_includes_cpu():
    chosen, skipped = resolve_providers("all")
    assert "CPUExecutionProvider" in chosen
    assert not set(chosen) & set(skipped)
    assert resolve_providers("cpu")[0] == ["CPUExecutionProvider"]


def test_tile_rows():
    X = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert tile_rows(X, 2).shape == (2, 2)
    t = tile_rows(X, 7)
    assert t.shape == (7, 2) and (t[3] == X[0]).all() and t.flags["C_CONTIGUOUS"]


def test_native_call_uses_framework_call(mlp, rf):
    fn, how = native_call(mlp.adapter)
    assert "forward" in how and tuple(fn(mlp.X[:2]).shape) == (2, 3)
    fn, how = native_call(rf.adapter)
    assert how == "predict_proba" and fn(rf.X[:3]).shape == (3, 2)


def _report(per_row_us: dict[int, float]) -> BenchReport:
    pts = [BenchPoint(b, 10, us * b / 1e3, us * b / 1e3 * 1.1, us * b / 1e3 * 1.2, us * b / 1e3,
                      1e6 / us, us) for b, us in per_row_us.items()]
    return BenchReport(entries=[BenchEntry("fp32", "CPUExecutionProvider", points=pts)],
                       batch_sizes=list(per_row_us), sample_rows=100, providers_available=[],
                       providers_skipped={}, threads={}, budget_s=1)


def test_serving_hints_batching_rule():
    pays = serving_hints(_report({1: 100.0, 16: 10.0, 64: 3.0, 256: 2.6, 1024: 2.5}), "fp32")
    b = pays["batching"]
    assert b["enabled"] and b["max_batch_size"] == 64 and b["max_latency_ms"] >= 10
    assert pays["row_p50_ms"] == pytest.approx(0.1)      # one row alone: read by serving_policy
    flat = serving_hints(_report({1: 10.0, 16: 9.0, 64: 8.5}), "fp32")
    assert not flat["batching"]["enabled"] and flat["batching"]["max_batch_size"] == 1
    assert "barely" in flat["batching"]["reason"]


def test_serving_hints_threads_from_probe():
    r = _report({1: 10.0, 16: 9.0})
    assert serving_hints(r, "fp32", probe={1: 1.0, 2: 0.98})["threads"] == 1
    assert serving_hints(r, "fp32", probe={1: 2.0, 2: 1.0})["threads"] == 2
    assert serving_hints(r, "int8-static")["batching"]["reason"] == "not measured"
