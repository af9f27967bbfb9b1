"""GPU bundles on a machine without CUDA: fail loudly, or fall back only when asked.

The CUDA path itself is exercised by benchmarks/gpu_check.py on machines that have a GPU."""

from __future__ import annotations

import numpy as np
import pytest

import nbdeploy
from nbdeploy.errors import ServeError
from nbdeploy.runtime.app import Runtime


@pytest.fixture(scope="module")
def small():
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    X, y = make_classification(200, 5, random_state=0)
    return LogisticRegression().fit(X, y), X.astype(np.float32)


def _cuda_available() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def test_cuda_bundle_is_built_for_gpu(small):
    model, X = small
    d = nbdeploy.deploy(model, X, name="gpu-build", explain="none", quantize="none", device="cuda")
    src = d.path + "/src"
    reqs = open(src + "/requirements.txt").read()
    assert "onnxruntime-gpu==" in reqs and "\nonnxruntime==" not in "\n" + reqs
    service = open(src + "/service.py").read()
    assert "'gpu': 1" in service
    rt = Runtime(src)
    assert rt.config["providers"][0] == "CUDAExecutionProvider"
    if not _cuda_available():
        with pytest.raises(RuntimeError, match="CUDAExecutionProvider was requested"):
            rt.load()
        assert not rt.ready


@pytest.mark.slow
@pytest.mark.gpu     # observes the no-GPU behaviour: cannot run on a machine with a GPU
def test_cuda_bundle_without_gpu_fails_loudly_or_falls_back_on_request(small, get):
    if _cuda_available():
        pytest.skip("this machine has CUDA; the no-GPU behaviour cannot be observed here")
    model, X = small
    d = nbdeploy.deploy(model, X, name="gpu-serve", explain="none", quantize="none", device="cuda")
    with pytest.raises(ServeError, match="CUDAExecutionProvider was requested"):
        d.serve(timeout=60)
    assert nbdeploy.list_servers() == []
    d2 = nbdeploy.deploy(model, X, name="gpu-serve", explain="none", quantize="none", device="cuda",
                         allow_cpu_fallback=True)
    server = d2.serve()
    try:
        status, meta = get(server.url + "/metadata")
        assert meta["serving"]["providers"] == ["CPUExecutionProvider"]
        assert meta["serving"]["cpu_fallback"] is True and meta["serving"]["device"] == "cuda"
    finally:
        server.stop()
