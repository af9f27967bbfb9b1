"""Explanation costs at serve time, side by side with shap on the native model.

Targets (printed, not asserted):
  * TreeSHAP served from the bundle's artifacts, 100-tree RandomForest, one row:
    p50 <= 20 ms in-process, values equal to shap.TreeExplainer(native) within 1e-5
  * 1,000 rows of the same: no slower than 1.2x shap.TreeExplainer(native)
  * model-agnostic SHAP over ONNX, 30-feature model, one row: < 1 s with the default budget

Run:  python benchmarks/bench_explain.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")


def _times(fn, n: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000.0, q))


def _bundle(converted, report, root: Path):
    from nbdeploy.runtime.explain import ServeExplainer
    from nbdeploy.runtime.model import OnnxModel

    model_dir = root / "model"
    model_dir.mkdir(parents=True)
    (model_dir / "model.onnx").write_bytes(converted.onnx_bytes)
    (model_dir / "spec.json").write_text(json.dumps(converted.spec))
    report.write_artifacts(model_dir)
    size = sum(p.stat().st_size for p in (model_dir / "explain").iterdir())
    spec = json.loads((model_dir / "spec.json").read_text())
    serve = ServeExplainer.from_bundle(model_dir, OnnxModel(model_dir / "model.onnx", spec), {})
    return serve, size


def _interleaved(a, b, n: int, warmup: int = 2) -> tuple[list[float], list[float]]:
    """Time two callables alternately so machine noise hits both alike."""
    for _ in range(warmup):
        a(), b()
    ta, tb = [], []
    for _ in range(n):
        t = time.perf_counter()
        a()
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        b()
        tb.append(time.perf_counter() - t)
    return ta, tb


def bench_tree(quick: bool) -> None:
    import shap
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    from nbdeploy.convert import convert
    from nbdeploy.explain import explain

    X, y = make_classification(n_samples=3000, n_features=20, n_informative=10, random_state=0)
    X = X.astype(np.float32)
    rf = RandomForestClassifier(n_estimators=100, max_depth=10, random_state=0, n_jobs=1).fit(X[:2000], y[:2000])
    nodes = np.mean([e.tree_.node_count for e in rf.estimators_])
    c = convert(rf, X[:1000])
    rep = explain(c, methods=("shap",), max_rows=100)
    with tempfile.TemporaryDirectory() as tmp:
        serve, size = _bundle(c, rep, Path(tmp))
        print(f"TreeSHAP, RandomForest 100 trees (max_depth 10, {nodes:.0f} nodes/tree), 20 features; "
              f"artifacts {size / 1e6:.1f} MB (trees.npz + JSON)")
        native = shap.TreeExplainer(rf)
        row = X[2000:2001]
        serve.explain(row, "shap", {})                             # build the explainer once
        t_serve, t_native = _interleaved(lambda: serve.explain(row, "shap", {}),
                                         lambda: native.shap_values(row, check_additivity=False),
                                         50 if quick else 200)
        print(f"  one row  served (ServeExplainer.explain, JSON-ready) p50 {_pct(t_serve, 50):6.2f} ms  "
              f"p90 {_pct(t_serve, 90):6.2f} ms   (target p50 <= 20 ms)")
        print(f"  one row  native shap.TreeExplainer(rf)             p50 {_pct(t_native, 50):6.2f} ms  "
              f"p90 {_pct(t_native, 90):6.2f} ms   ratio {_pct(t_serve, 50) / _pct(t_native, 50):.2f}x")
        rows = X[2000:3000]
        got = np.transpose(np.asarray(serve.explain(rows, "shap", {"output": "all"})["contributions"]),
                           (0, 2, 1))
        ref = np.asarray(native.shap_values(rows, check_additivity=False))
        print(f"  max |served - native| over 1,000 rows x 20 features x 2 classes: "
              f"{np.max(np.abs(got - ref)):.2e}   (target <= 1e-5)")
        s_serve, s_native = _interleaved(lambda: serve.explain(rows, "shap", {}),
                                         lambda: native.shap_values(rows, check_additivity=False),
                                         2 if quick else 5, warmup=1)
        a, b = statistics.median(s_serve), statistics.median(s_native)
        print(f"  1,000 rows served {a * 1000:8.1f} ms  native {b * 1000:8.1f} ms  "
              f"ratio {a / b:.2f}x   (target <= 1.2x)")


def bench_agnostic(quick: bool) -> None:
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from nbdeploy.convert import convert
    from nbdeploy.explain import explain

    X, y = load_breast_cancer(return_X_y=True)
    X = X.astype(np.float32)
    models = {"logistic regression (pipeline)": make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)),
              "RandomForest 100 trees as ONNX (forced model-agnostic)": RandomForestClassifier(
                  n_estimators=100, random_state=0, n_jobs=1)}
    try:
        import torch

        torch.manual_seed(0)
        models["torch MLP 30-64-64-2"] = None
    except ImportError:  # pragma: no cover
        torch = None
    print("Model-agnostic SHAP over onnxruntime, 30 features, default budget "
          "(max_evals 500 -> 8 antithetic permutation pairs, k-means background of 100)")
    for name, m in models.items():
        if m is None:
            net = torch.nn.Sequential(torch.nn.Linear(30, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                                      torch.nn.ReLU(), torch.nn.Linear(64, 2))
            c = convert(net, (X - X.mean(0)) / X.std(0))
            methods = ("shap",)
        else:
            m.fit(X, y)
            c = convert(m, X)
            methods = ("permutation",)
        rep = explain(c, methods=methods, max_rows=2)
        with tempfile.TemporaryDirectory() as tmp:
            serve, _ = _bundle(c, rep, Path(tmp))
            row = c.X[5:6]
            t = _times(lambda: serve.explain(row, "shap", {}), 5 if quick else 15, warmup=1)
            out = serve.explain(row, "shap", {})
            err = abs(out["base_values"][0] + sum(out["contributions"][0]) - out["outputs"][0])
            print(f"  {name:55s} one row p50 {_pct(t, 50):7.1f} ms  p90 {_pct(t, 90):7.1f} ms  "
                  f"additivity error {err:.1e}   (target < 1000 ms)")


def bench_lime(quick: bool) -> None:
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier

    from nbdeploy.convert import convert
    from nbdeploy.explain import explain

    X, y = load_breast_cancer(return_X_y=True)
    X = X.astype(np.float32)
    c = convert(RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=1).fit(X, y), X)
    rep = explain(c, methods=("shap", "lime"), max_rows=5)
    with tempfile.TemporaryDirectory() as tmp:
        serve, _ = _bundle(c, rep, Path(tmp))
        row = X[5:6]
        t = _times(lambda: serve.explain(row, "lime", {}), 3 if quick else 10, warmup=1)
        a, b = serve.explain(row, "lime", {}), serve.explain(row, "lime", {})
        print(f"LIME over onnxruntime, RandomForest 100 trees, 30 features, 5000 samples: one row p50 "
              f"{_pct(t, 50):.1f} ms; repeat identical: {a['contributions'] == b['contributions']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = ap.parse_args()
    bench_tree(args.quick)
    bench_agnostic(args.quick)
    bench_lime(args.quick)


if __name__ == "__main__":
    main()
