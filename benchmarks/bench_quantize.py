"""Headline table: native vs ONNX fp32 vs quantized, measured side by side in one run.

    python benchmarks/bench_quantize.py [--budget 20] [--models rf,gbm,mlp]

For each model this runs the same ``nbdeploy.optimize`` step the pipeline runs (quantize,
verify, benchmark, choose) and prints ratios from that one run.  Targets (issue 3):
  * RandomForest (100 trees, depth 8, 30 features), single row: ONNX >= 100x faster than predict_proba
  * PyTorch MLP (a few million params): int8-dynamic >= 1.5x faster than fp32 at batch 1-64,
    size <= 30% of fp32, accuracy delta within tolerance
  * the whole step per model < 30 s on 2 cores
Timings on a shared machine are noisy; ratios are what to read.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from nbdeploy.convert import convert  # noqa: E402
from nbdeploy.optimize import optimize  # noqa: E402


def data(n_features: int, n_classes: int = 2, n: int = 4000, seed: int = 0):
    from sklearn.datasets import make_classification
    from sklearn.model_selection import train_test_split

    X, y = make_classification(n, n_features, n_informative=min(20, n_features), n_classes=n_classes,
                               random_state=seed)
    return train_test_split(X.astype(np.float32), y, test_size=1000, random_state=seed)


def random_forest():
    from sklearn.ensemble import RandomForestClassifier

    Xtr, Xte, ytr, yte = data(30)
    return "RandomForest 100x depth 8, 30 feat", \
        RandomForestClassifier(100, max_depth=8, random_state=0, n_jobs=1).fit(Xtr, ytr), Xte, yte


def gradient_boosting():
    import xgboost

    Xtr, Xte, ytr, yte = data(30)
    model = xgboost.XGBClassifier(n_estimators=200, max_depth=6, n_jobs=1).fit(Xtr, ytr)
    return "XGBoost 200x depth 6, 30 feat", model, Xte, yte


def mlp(widths=(128, 2048, 1536, 10), epochs: int = 3):
    import torch

    Xtr, Xte, ytr, yte = data(widths[0], n_classes=widths[-1], n=5000)
    torch.manual_seed(0)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers[:-1])
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(Xtr), torch.from_numpy(ytr).long()
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 128):
            idx = perm[i:i + 128]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    n_params = sum(p.numel() for p in net.parameters())
    return f"PyTorch MLP {'-'.join(map(str, widths))} ({n_params / 1e6:.1f}M params)", net, Xte, yte


def p50(res, variant: str, batch: int):
    e = res.benchmark.entry(variant, res.provider)
    p = e.point(batch) if e is not None else None
    return None if p is None else p.p50_ms


def ratio(a, b) -> str:
    return "—" if a is None or b is None else f"{a / b:.1f}x"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=20.0, help="time budget of the benchmark step (s)")
    ap.add_argument("--models", default="rf,gbm,mlp")
    args = ap.parse_args(argv)
    makers = {"rf": random_forest, "gbm": gradient_boosting, "mlp": mlp}
    rows = []
    print(f"load average before: {os.getloadavg()} on {os.cpu_count()} cores (other work slows "
          "multi-threaded runs most)")
    for key in args.models.split(","):
        name, model, X, y = makers[key]()
        conv = convert(model, X)
        t0 = time.perf_counter()
        res = optimize(conv, labels=y, time_budget_s=args.budget)
        step = time.perf_counter() - t0
        q = res.quantization
        print(f"\n## {name}  (step {step:.1f} s{', TRUNCATED' if res.truncated else ''})")
        print(f"native call: {res.benchmark.entry('native').note}; threads {res.benchmark.threads}")
        print("| variant | status | size | delta | p50 @1 ms | p50 @16 | p50 @64 | rows/s max |")
        print("|---|---|---|---|---|---|---|---|")
        nat = res.benchmark.entry("native")
        print(f"| native | — | {nat.size_bytes or 0:,} B | — | {p50(res, 'native', 1) or 0:.4f} | "
              f"{p50(res, 'native', 16) or 0:.4f} | {p50(res, 'native', 64) or 0:.4f} | "
              f"{max((p.rows_per_s for p in nat.points), default=0):,.0f} |")
        for v in q.variants:
            if v.status != "ok":
                print(f"| {v.name} | {v.status} | | | | | | {v.reason[:80]} |")
                continue
            print(f"| {v.name} | ok | {v.size_bytes:,} B ({v.size_ratio:.0%}) | {v.delta_text()} | "
                  f"{p50(res, v.name, 1) or 0:.4f} | {p50(res, v.name, 16) or 0:.4f} | "
                  f"{p50(res, v.name, 64) or 0:.4f} | {v.latency.get('rows_per_s_max', 0):,.0f} |")
        print(f"chosen: {res.reason}")
        print(f"serving: threads {res.serving['threads']}, batching {res.serving['batching']}")
        dyn = q.get("int8-dynamic")
        rows.append([name, ratio(p50(res, "native", 1), p50(res, "fp32", 1)),
                     ratio(p50(res, "fp32", 1), p50(res, "int8-dynamic", 1)),
                     ratio(p50(res, "fp32", 16), p50(res, "int8-dynamic", 16)),
                     ratio(p50(res, "fp32", 64), p50(res, "int8-dynamic", 64)),
                     f"{dyn.size_ratio:.0%}" if dyn.size_ratio else "n/a",
                     dyn.delta_text() if dyn.status == "ok" else "n/a", res.chosen, f"{step:.1f} s"])
    print("\n## Headline (ratios measured side by side in this run)")
    print("| model | fp32 vs native @1 | int8-dyn vs fp32 @1 | @16 | @64 | int8 size | int8 delta "
          "| chosen | step time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
