"""The stable address (``serve --stable``) against the same bundle served directly, side by side.

    python benchmarks/bench_rollout.py [--seconds 3] [--rounds 3] [--conns 8] [--rollout]

Two servers of one bundle (a 100-tree RandomForest on 30 features, built by nbdeploy):

  backend  the direct engine on its own port (``serve.start(engine="direct")``): the ceiling
  stable   ``serve.start(stable=True)``: the router process that hot-swaps versions

Single-row POST /predict with `wrk` (Debian package `wrk`) on loopback, the two runs
interleaved round by round.  Prints req/s and p99 of each (medians over rounds) and
stable/backend (issue 20's goal: req/s >= 0.90 of the backend, p99 <= 1.5x).  The proxy it
replaced measured 298 vs 2,724 req/s (0.11) with 8 connections.

``--rollout`` also rolls the stable server to a second version during one more wrk run and
prints that run's req/s and errors (0 expected).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(tempfile.mkdtemp(prefix="nbdeploy-bench-rollout-"))
os.environ.setdefault("BENTOML_HOME", str(HERE / "bentoml"))
os.environ.setdefault("NBDEPLOY_HOME", str(HERE / "nbdeploy"))
os.environ["BENTOML_DO_NOT_TRACK"] = "true"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serving import wrk  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--trees", type=int, default=100)
    ap.add_argument("--rollout", action="store_true")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        print("wrk is needed: apt-get install wrk")
        return 2
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    import nbdeploy
    from nbdeploy import serve

    X, y = make_classification(n_samples=2000, n_features=30, random_state=0)
    model = RandomForestClassifier(n_estimators=args.trees, max_depth=8, random_state=0).fit(X, y)
    v1 = nbdeploy.deploy(model, X[:200], name="benchroll", explain="none", quantize="none").tag
    body = HERE / "row.json"
    body.write_text(json.dumps({"inputs": X[:1].tolist()}))
    servers = {}
    try:
        servers["backend"] = serve.start(v1, engine="direct")
        servers["stable"] = serve.start(v1, stable=True)
        for h in servers.values():
            wrk(h.url + "/predict", body, 4, 1)   # warm-up
        runs = {k: [] for k in servers}
        for r in range(args.rounds):
            order = list(servers) if r % 2 == 0 else list(reversed(servers))
            for k in order:
                runs[k].append(wrk(servers[k].url + "/predict", body, args.conns, args.seconds))
        med = {k: {m: statistics.median(x[m] for x in v) for m in ("rps", "p50_ms", "p99_ms")}
               for k, v in runs.items()}
        errors = {k: sum(x["errors"] for x in v) for k, v in runs.items()}
        print(f"\nmedians over {args.rounds} interleaved rounds of {args.seconds} s, {args.conns} connections "
              f"(wrk, single-row POST /predict, {args.trees}-tree forest)")
        print(f"{'server':10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
        for k in servers:
            print(f"{k:10} {med[k]['rps']:9.0f} {med[k]['p50_ms']:8.2f} {med[k]['p99_ms']:8.2f} {errors[k]:7d}")
        ratio = med["stable"]["rps"] / med["backend"]["rps"]
        p99 = med["stable"]["p99_ms"] / med["backend"]["p99_ms"]
        print(f"stable/backend: req/s {ratio:.2f} (goal >= 0.90), p99 {p99:.2f}x (goal <= 1.5x); "
              f"the Python proxy it replaced: 0.11")
        if args.rollout:
            model2 = RandomForestClassifier(n_estimators=args.trees // 2, max_depth=6, random_state=1).fit(X, y)
            v2 = nbdeploy.deploy(model2, X[:200], name="benchroll", explain="none", quantize="none").tag
            seconds = max(args.seconds, 4)
            result: dict = {}
            t = threading.Thread(target=lambda: result.update(
                wrk(servers["stable"].url + "/predict", body, args.conns, seconds)))
            t.start()
            time.sleep(seconds / 3)
            t0 = time.perf_counter()
            serve.rollout(servers["stable"].id, v2)
            took = time.perf_counter() - t0
            t.join()
            print(f"rollout under load: switched in {took:.2f} s; that run {result['rps']:.0f} req/s, "
                  f"p99 {result['p99_ms']:.2f} ms, {result['errors']} errors of {result['requests']}")
    finally:
        for h in servers.values():
            h.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
