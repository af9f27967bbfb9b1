"""Image models: fp32 vs static int8 (QDQ, per-channel) with onnxruntime on CPU, for a small
CNN on 8x8 digits and a ResNet-18 (built here layer by layer with random weights, the
torchvision architecture with ``weights=None``: nothing is downloaded, and torchvision is not
needed).

    python benchmarks/bench_images.py [--size 224] [--repeats 30] [--threads 1]

Prints p50 latency per batch size (1 and 16), the int8 speed-up and label agreement with fp32.
Latency is the best-of-interleaved median: fp32 and int8 alternate, so the machine's other load
hits both alike.
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
    return ort.InferenceSession(model.SerializeToString(), o, providers=["CPUExecutionProvider"])


def measure(name: str, model, sample: np.ndarray, *, repeats: int, threads: int) -> list[dict]:
    from nbdeploy.convert import convert
    from nbdeploy.quantize import build_variant

    t0 = time.perf_counter()
    c = convert(model, sample)
    t_conv = time.perf_counter() - t0
    t0 = time.perf_counter()
    q = build_variant(c.onnx_model, "int8-static", spec=c.spec, calibration=c.X)
    t_quant = time.perf_counter() - t0
    s32, s8 = session(c.onnx_model, threads), session(q, threads)
    feed = c.spec["input_names"][0]
    agree = float((s32.run(None, {feed: c.X})[0].argmax(1) == s8.run(None, {feed: c.X})[0].argmax(1)).mean())
    rows = []
    for batch in (1, 16):
        xb = np.ascontiguousarray(np.resize(c.X, (batch, c.X.shape[1])))
        times = {"fp32": [], "int8": []}
        for _ in range(repeats):
            for k, s in (("fp32", s32), ("int8", s8)):
                t = time.perf_counter()
                s.run(None, {feed: xb})
                times[k].append(time.perf_counter() - t)
        p50 = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        rows.append({"model": name, "input": c.spec["input_shape"], "batch": batch,
                     "fp32_ms": p50["fp32"], "int8_ms": p50["int8"], "speedup": p50["fp32"] / p50["int8"],
                     "agreement": agree, "convert_s": t_conv, "quantize_s": t_quant,
                     "fp32_mb": len(c.onnx_bytes) / 2 ** 20, "int8_mb": q.ByteSize() / 2 ** 20})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224, help="ResNet-18 input size (default 224)")
    ap.add_argument("--calibration", type=int, default=32, help="calibration images for ResNet-18")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    rows = []
    cnn, sample = small_cnn()
    rows += measure("small CNN (digits)", cnn, sample, repeats=args.repeats, threads=args.threads)
    rng = np.random.default_rng(0)
    # random images: agreement then measures int8 rounding on a 1000-way argmax, a hard case
    imgs = rng.normal(size=(args.calibration, 3, args.size, args.size)).astype(np.float32)
    rows += measure("ResNet-18 (weights=None)", resnet18(), imgs, repeats=args.repeats, threads=args.threads)
    print(f"{'model':<26}{'input':<20}{'batch':>6}{'fp32 ms':>10}{'int8 ms':>10}{'speed-up':>10}"
          f"{'agree':>8}{'MB fp32/int8':>16}")
    for r in rows:
        print(f"{r['model']:<26}{str(r['input']):<20}{r['batch']:>6}{r['fp32_ms']:>10.3f}{r['int8_ms']:>10.3f}"
              f"{r['speedup']:>9.2f}x{r['agreement']:>8.1%}{r['fp32_mb']:>8.2f}/{r['int8_mb']:.2f}")


if __name__ == "__main__":
    main()
