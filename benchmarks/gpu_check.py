"""Exercise the CUDA path end to end on a machine with a GPU and onnxruntime-gpu.

    pip install -e '.[gpu,torch]' && python benchmarks/gpu_check.py

Builds a GPU bundle of a PyTorch MLP, serves it with `bentoml serve`, checks that onnxruntime
assigned CUDAExecutionProvider (as reported by /metadata), and compares its predictions and
latency with a CPU bundle of the same model.  Exits non-zero when CUDA is not really used.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import urllib.request

import numpy as np


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def main() -> int:
    os.environ.setdefault("BENTOML_HOME", tempfile.mkdtemp(prefix="gpu-check-bentoml-"))
    os.environ.setdefault("NBDEPLOY_HOME", tempfile.mkdtemp(prefix="gpu-check-nbdeploy-"))
    import onnxruntime
    import torch

    import nbdeploy

    print("onnxruntime", onnxruntime.__version__, "providers:", onnxruntime.get_available_providers())
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        print("CUDAExecutionProvider is not available: install onnxruntime-gpu on a CUDA machine")
        return 2
    torch.manual_seed(0)
    X = np.random.default_rng(0).normal(size=(2000, 64)).astype(np.float32)
    net = torch.nn.Sequential(torch.nn.Linear(64, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1024),
                              torch.nn.ReLU(), torch.nn.Linear(1024, 10))
    results = {}
    for device in ("cpu", "cuda"):
        d = nbdeploy.deploy(net, X, name=f"gpu-check-{device}", device=device, explain="none")
        print(device, "chosen variant:", d.chosen_variant)
        server = d.serve()
        try:
            meta = json.load(urllib.request.urlopen(server.url + "/metadata"))
            body = {"inputs": X[:256].tolist()}
            post(server.url + "/predict", body)
            t = time.perf_counter()
            for _ in range(20):
                out = post(server.url + "/predict", body)
            ms = (time.perf_counter() - t) / 20 * 1000
            results[device] = (meta["serving"]["providers"], np.asarray(out["probabilities"]), ms)
            print(f"{device}: providers={meta['serving']['providers']} batch-256 request {ms:.1f} ms")
        finally:
            server.stop()
    providers = results["cuda"][0]
    diff = float(np.abs(results["cuda"][1] - results["cpu"][1]).max())
    print(f"max |cuda - cpu| probability difference: {diff:.2e}; "
          f"speed-up at batch 256: {results['cpu'][2] / results['cuda'][2]:.2f}x")
    if providers[0] != "CUDAExecutionProvider":
        print("FAIL: the GPU bundle did not run on CUDA")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
