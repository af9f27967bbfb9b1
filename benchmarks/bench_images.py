"""Image models: fp32 vs static int8 with onnxruntime on CPU, for a small CNN on 8x8 digits, a
32x32 three-conv CNN (the one tests/served/test_images.py deploys) and a ResNet-18 (built here
layer by layer with random weights, the torchvision architecture with ``weights=None``: nothing
is downloaded, and torchvision is not needed).

    python benchmarks/bench_images.py [--size 224] [--repeats 30] [--threads 1]

Two int8 variants side by side, each against fp32 on the same run:
``qdq`` is the earlier recipe (QDQ, int8 per-channel weights, the graph as converted);
``nbdeploy`` is ``quantize.build_variant(..., "int8-static")`` as it is now (onnxruntime's
``quant_pre_process``, then QOperator with uint8 activations and per-channel uint8 weights).
Prints p50 latency per batch size (1 and 16), the speed-up over fp32 and label agreement with
fp32.  Latency is the median of interleaved runs: the variants alternate, so the machine's other
load hits all alike.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def resnet18(num_classes: int = 1000):
    """torchvision.models.resnet18(weights=None), written out (BasicBlock x [2, 2, 2, 2])."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            idt = x if self.down is None else self.down(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + idt)

    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
              nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers).eval()


def small_cnn():
    import torch
    from sklearn.datasets import load_digits
    from torch import nn

    d = load_digits()
    X = (d.images / 16.0).astype(np.float32)[:, None]
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                      nn.Linear(8 * 16, 10))
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for _ in range(40):
        opt.zero_grad()
        nn.functional.cross_entropy(m(torch.from_numpy(X[:1200])), torch.from_numpy(d.target[:1200])).backward()
        opt.step()
    return m.eval(), X[1200:1400]


def session(model, threads: int):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), o, providers=["CPUExecutionProvider"])


def qdq_before(c):
    """The recipe used before: QDQ, int8 per-channel weights, on the graph as converted."""
    import os
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, quantize_static

    feed = c.spec["input_names"][0]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{feed: c.X[i:i + 32]} for i in range(0, len(c.X), 32)])

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "a.onnx"), os.path.join(tmp, "b.onnx")
        onnx.save_model(c.onnx_model, src)
        quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        calibrate_method=CalibrationMethod.MinMax)
        return onnx.load_model(dst)


def measure(name: str, model, sample: np.ndarray, *, repeats: int, threads: int) -> list[dict]:
    from nbdeploy.convert import convert
    from nbdeploy.quantize import build_variant

    c = convert(model, sample)
    t0 = time.perf_counter()
    variants = {"fp32": c.onnx_model, "qdq": qdq_before(c)}
    t_qdq = time.perf_counter() - t0
    t0 = time.perf_counter()
    variants["nbdeploy"] = build_variant(c.onnx_model, "int8-static", spec=c.spec, calibration=c.X)
    t_now = time.perf_counter() - t0
    sessions = {k: session(m, threads) for k, m in variants.items()}
    feed = c.spec["input_names"][0]
    ref = sessions["fp32"].run(None, {feed: c.X})[0].argmax(1)
    agree = {k: float((s.run(None, {feed: c.X})[0].argmax(1) == ref).mean()) for k, s in sessions.items()}
    rows = []
    for batch in (1, 16):
        xb = np.ascontiguousarray(np.resize(c.X, (batch, c.X.shape[1])))
        times = {k: [] for k in sessions}
        for _ in range(repeats):
            for k, s in sessions.items():
                t = time.perf_counter()
                s.run(None, {feed: xb})
                times[k].append(time.perf_counter() - t)
        p50 = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        rows.append({"model": name, "input": c.spec["input_shape"], "batch": batch, "p50": p50,
                     "speedup": {k: p50["fp32"] / p50[k] for k in ("qdq", "nbdeploy")},
                     "agreement": agree, "quantize_s": {"qdq": t_qdq, "nbdeploy": t_now},
                     "mb": {k: m.ByteSize() / 2 ** 20 for k, m in variants.items()}})
    return rows


def cnn32():
    """tests/served/test_images.py's 32x32 CNN (three convolutions), trained briefly on digits."""
    import torch
    from sklearn.datasets import load_digits
    from torch import nn

    d = load_digits()
    X = nn.functional.interpolate(torch.from_numpy(d.images / 16.0).float()[:, None], size=32,
                                  mode="bilinear").numpy()
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                      nn.MaxPool2d(2), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Flatten(), nn.Linear(64 * 64, 10))
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    for _ in range(4):
        for i in range(0, 1200, 100):
            opt.zero_grad()
            nn.functional.cross_entropy(m(torch.from_numpy(X[i:i + 100])),
                                        torch.from_numpy(d.target[i:i + 100])).backward()
            opt.step()
    return m.eval(), X[1200:1400]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224, help="ResNet-18 input size (default 224)")
    ap.add_argument("--calibration", type=int, default=32, help="calibration images for ResNet-18")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    rows = []
    cnn, sample = small_cnn()
    rows += measure("small CNN (digits 8x8)", cnn, sample, repeats=args.repeats, threads=args.threads)
    cnn, sample = cnn32()
    rows += measure("CNN 32x32 (3 conv)", cnn, sample, repeats=args.repeats, threads=args.threads)
    rng = np.random.default_rng(0)
    # random images: agreement then measures int8 rounding on a 1000-way argmax, a hard case
    imgs = rng.normal(size=(args.calibration, 3, args.size, args.size)).astype(np.float32)
    rows += measure("ResNet-18 (weights=None)", resnet18(), imgs, repeats=args.repeats, threads=args.threads)
    print(f"{'model':<26}{'input':<20}{'batch':>6}{'fp32 ms':>10}{'qdq ms':>9}{'x':>7}{'agree':>7}"
          f"{'nbdeploy ms':>13}{'x':>7}{'agree':>7}{'MB fp32/qdq/nbd':>18}")
    for r in rows:
        p, x, a, mb = r["p50"], r["speedup"], r["agreement"], r["mb"]
        print(f"{r['model']:<26}{str(r['input']):<20}{r['batch']:>6}{p['fp32']:>10.3f}{p['qdq']:>9.3f}"
              f"{x['qdq']:>6.2f}x{a['qdq']:>7.0%}{p['nbdeploy']:>13.3f}{x['nbdeploy']:>6.2f}x"
              f"{a['nbdeploy']:>7.0%}  {mb['fp32']:.2f}/{mb['qdq']:.2f}/{mb['nbdeploy']:.2f}")


if __name__ == "__main__":
    main()
