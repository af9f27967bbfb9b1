"""``nbdeploy demo``: the whole path on an embedded model and data set."""

from __future__ import annotations

import json
import time
import urllib.request


def post_json(url: str, body: dict, timeout: float = 30.0) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def run_demo(*, port: int | None = None, keep_serving: bool = False, progress=None) -> int:
    """Train a RandomForest on scikit-learn's breast-cancer data, deploy, serve, query, stop."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import train_test_split

    from .pipeline import deploy

    data = load_breast_cancer(as_frame=True)
    X_train, X_test, y_train, y_test = train_test_split(data.data, data.target, test_size=0.3,
                                                        random_state=0, stratify=data.target)
    print("nbdeploy demo: RandomForest (100 trees, depth 8) on breast-cancer data "
          f"({len(X_train)} training rows, {X_test.shape[1]} features)")
    model = RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0).fit(X_train, y_train)
    t0 = time.perf_counter()
    d = deploy(model, X_test, labels=y_test, name="nbdeploy-demo", progress=progress)
    print(f"bundle {d.tag} built in {time.perf_counter() - t0:.1f} s at {d.path}")
    server = d.serve(port=port)
    try:
        rows = X_test.iloc[:3]
        t1 = time.perf_counter()
        answer = post_json(server.url + "/predict", {"inputs": rows.values.tolist()})
        ms = (time.perf_counter() - t1) * 1000
        native = model.predict(rows).tolist()
        print(f"\nPOST {server.url}/predict with 3 rows ({ms:.1f} ms):")
        print(f"  predictions   {answer['predictions']}  (native model: {native})")
        print(f"  probabilities {[[round(p, 3) for p in r] for r in answer['probabilities']]}")
        print(f"  true labels   {y_test.iloc[:3].tolist()}")
        if d.explanation is not None:
            exp = post_json(server.url + "/explain", {"inputs": rows.values[:1].tolist(), "method": "shap"})
            contrib = exp["contributions"][0]
            top = sorted(zip(exp["feature_names"], contrib), key=lambda t: -abs(t[1]))[:3]
            print(f"\nPOST {server.url}/explain (SHAP, {exp['explainer']}, output: P(class "
                  f"{exp['explained_output'][0]})) for the first row:")
            print(f"  base value {exp['base_values'][0]:.3f} + contributions = {exp['outputs'][0]:.3f}")
            for fname, val in top:
                print(f"  {fname:<24} {val:+.3f}")
        v = d.verify_report
        print(f"\nreport: framework={d.converted.framework} task={d.converted.spec['task']} "
              f"variant={d.chosen_variant}")
        print(f"  verify: {v.summary()}; accuracy native {v.native_metric:.3f} / onnx {v.onnx_metric:.3f}")
        if d.optimized is not None:
            print(f"  benchmark: {d.optimized.benchmark_summary()}")
            print(f"  quantize: {d.optimized.reason}")
        print(f"  try it: curl -X POST {server.url}/predict -H 'Content-Type: application/json' "
              f"-d '{{\"inputs\": [{rows.values[0].tolist()}]}}'")
        ok = answer["predictions"] == native
        print("\nserved predictions match the native model" if ok else
              "\nWARNING: served predictions differ from the native model")
    finally:
        if keep_serving:
            print(f"\nstill serving at {server.url}; stop with: nbdeploy stop {d.name}")
        else:
            server.stop()
            print("server stopped")
    return 0 if ok else 1
