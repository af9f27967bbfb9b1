"""Serving speed, side by side in one run: the nbdeploy bundle vs hand-written baselines.

    python benchmarks/bench_serving.py [--seconds 5] [--starts 5] [--profile-start] [--with-mlflow]

Single-row POST requests to a 100-tree, depth-8 RandomForest on 30 features, with `wrk` on
loopback (Debian package `wrk`), at 1 and 16 connections:

  nbdeploy      the nbdeploy bundle under stock `bentoml serve`
  bento+ort     (a) a hand-written BentoML service around an onnxruntime session
  bento+sklearn (b) a hand-written BentoML service around the scikit-learn model (trained at
                    start-up from the same seed instead of loading a joblib file: nbdeploy never
                    loads pickles, not even in benchmarks)
  mlflow        (c) `mlflow models serve` (only with --with-mlflow and mlflow installed)
  starlette     a bare Starlette + uvicorn app around the same onnxruntime session (the ceiling)

Prints req/s, p50/p99 latency, errors, first answer after start (median of --starts cold starts
per server, interleaved), and the ratios that the targets are stated in (nbdeploy req/s at 16
connections / bento+ort's).  --profile-start shows where the start-up time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

HERE = Path(tempfile.mkdtemp(prefix="nbdeploy-bench-serving-"))
os.environ.setdefault("BENTOML_HOME", str(HERE / "bentoml"))
os.environ.setdefault("NBDEPLOY_HOME", str(HERE / "nbdeploy"))
os.environ["BENTOML_DO_NOT_TRACK"] = "true"

TRAIN = textwrap.dedent("""
    import numpy as np
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier
    X, y = make_classification(n_samples=2000, n_features=30, random_state=0)
    X = X.astype(np.float32)
    MODEL = RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0).fit(X, y)
""")

BENTO_ORT = textwrap.dedent("""
    import bentoml, numpy as np, onnxruntime as ort
    @bentoml.service
    class Svc:
        def __init__(self):
            self.s = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
        @bentoml.api
        def predict(self, inputs: list[list[float]]) -> dict:
            label, proba = self.s.run(None, {"input": np.asarray(inputs, dtype=np.float32)})
            return {"predictions": label.tolist(), "probabilities": proba.tolist()}
""")

BENTO_SKLEARN = TRAIN + textwrap.dedent("""
    import bentoml
    @bentoml.service
    class Svc:
        @bentoml.api
        def predict(self, inputs: list[list[float]]) -> dict:
            x = np.asarray(inputs, dtype=np.float32)
            return {"predictions": MODEL.predict(x).tolist(),
                    "probabilities": MODEL.predict_proba(x).tolist()}
""")

STARLETTE = textwrap.dedent("""
    import json, sys, numpy as np, onnxruntime as ort, uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    s = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
    async def predict(request):
        body = json.loads(await request.body())
        label, proba = s.run(None, {"input": np.asarray(body["inputs"], dtype=np.float32)})
        return JSONResponse({"predictions": label.tolist(), "probabilities": proba.tolist()})
    app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_answer(url: str, body: bytes, proc, timeout: float = 120) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return time.perf_counter() - t0
        except Exception:
            time.sleep(0.02)
    raise RuntimeError("no answer")


def wrk(url: str, body_file: Path, conns: int, seconds: int) -> dict:
    lua = body_file.with_suffix(".lua")
    lua.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                   f'local f = io.open("{body_file}", "r"); wrk.body = f:read("*a"); f:close()\n')
    out = subprocess.run(["wrk", f"-t{min(conns, 2)}", f"-c{conns}", f"-d{seconds}s", "--latency",
                          "-s", str(lua), url], capture_output=True, text=True, timeout=seconds + 30).stdout

    def ms(label):
        m = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)\b", out)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    sock = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return {"rps": rps, "p50_ms": ms("50"), "p99_ms": ms("99"), "errors": non2xx + sock}


def profile_start(launch, stop, body: bytes, log: Path) -> None:
    """Start the nbdeploy bundle once with PYTHONPROFILEIMPORTTIME; print import time per process.

    `bentoml serve` is two Python processes in a row (the arbiter, then the worker it spawns);
    the worker's stderr goes to the arbiter's, so the log holds both, each after its own header.
    """
    with open(log, "w") as err:
        proc, url = launch("nbdeploy", env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}, stderr=err)
        try:
            took = first_answer(url, body, proc)
        finally:
            stop(proc)
    procs: list[dict[str, int]] = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("import time: self"):
            procs.append({})
        elif procs and (m := re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)):
            top = m.group(2).split(".")[0]
            procs[-1][top] = procs[-1].get(top, 0) + int(m.group(1))
    print(f"\nstart-up import time, nbdeploy bundle (first answer {took:.2f} s with the profiler on):")
    for i, mods in enumerate(procs[:2]):
        total = sum(mods.values()) / 1e6
        top = sorted(mods.items(), key=lambda kv: -kv[1])[:8]
        print(f"  {('arbiter', 'worker')[i]}: {total:.2f} s in imports; "
              + ", ".join(f"{k} {v / 1e6:.2f}" for k, v in top))
    ours = sum(v for mods in procs for k, v in mods.items() if k in ("nbdeploy_runtime", "service"))
    print(f"  the bundle's own modules (service.py, nbdeploy_runtime): {ours / 1e6:.3f} s")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--with-mlflow", action="store_true")
    ap.add_argument("--starts", type=int, default=5, help="cold starts per server for the first-answer time")
    ap.add_argument("--profile-start", action="store_true",
                    help="also start the nbdeploy bundle once with PYTHONPROFILEIMPORTTIME and print "
                         "where the start-up time goes, per process and package")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        print("wrk is needed: apt-get install wrk")
        return 2
    ns: dict = {}
    exec(TRAIN, ns)
    import numpy as np

    import nbdeploy
    from nbdeploy.serve import bentoml_executable

    X, model = ns["X"], ns["MODEL"]
    d = nbdeploy.deploy(model, X[:1000], name="bench-serving", explain="none", quantize="none")
    print(f"nbdeploy bundle {d.tag}: serving config {d.serve_config().to_dict()}")
    work = HERE / "baselines"
    work.mkdir()
    from nbdeploy.convert import convert

    (work / "model.onnx").write_bytes(convert(model, X[:10]).onnx_bytes)
    (work / "bento_ort.py").write_text(BENTO_ORT)
    (work / "bento_sklearn.py").write_text(BENTO_SKLEARN)
    (work / "bare.py").write_text(STARLETTE)
    body = json.dumps({"inputs": [X[0].tolist()]}).encode()
    body_file = work / "body.json"
    body_file.write_bytes(body)

    servers = {
        "nbdeploy": lambda p: [*bentoml_executable(), "serve", d.tag, "--port", str(p), "--host", "127.0.0.1"],
        "bento+ort": lambda p: [*bentoml_executable(), "serve", "bento_ort:Svc", "--port", str(p), "--host", "127.0.0.1"],
        "bento+sklearn": lambda p: [*bentoml_executable(), "serve", "bento_sklearn:Svc", "--port", str(p), "--host", "127.0.0.1"],
        "starlette": lambda p: [sys.executable, "bare.py", str(p)],
    }
    if args.with_mlflow:
        try:
            import mlflow.sklearn  # noqa: F401

            mdir = work / "mlflow-model"
            import mlflow

            mlflow.sklearn.save_model(model, str(mdir))
            servers["mlflow"] = lambda p: ["mlflow", "models", "serve", "-m", str(mdir), "-p", str(p),
                                           "--env-manager", "local", "-h", "127.0.0.1"]
        except ImportError:
            print("mlflow is not installed: skipping baseline (c)")
    def launch(name: str, env: dict | None = None, stderr=subprocess.DEVNULL):
        port = free_port()
        proc = subprocess.Popen(servers[name](port), cwd=work, stdout=subprocess.DEVNULL, stderr=stderr,
                                start_new_session=True, env=env)
        path = "/invocations" if name == "mlflow" else "/predict"
        return proc, f"http://127.0.0.1:{port}{path}"

    def stop(proc) -> None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)

    # First answer after start: one cold start says little on a shared machine, so each server
    # is started --starts times, interleaved so that background load hits all of them alike.
    starts: dict[str, list[float]] = {name: [] for name in servers}
    for _ in range(args.starts):
        for name in servers:
            proc, url = launch(name)
            try:
                starts[name].append(first_answer(url, body, proc))
            except Exception as exc:
                print(f"{name}: failed to start: {exc}")
            finally:
                stop(proc)
    rows = {}
    for name in servers:
        if not starts[name]:
            continue
        proc, url = launch(name)
        try:
            first_answer(url, body, proc)
            wrk(url, body_file, 4, 1)  # warm-up
            one = wrk(url, body_file, 1, args.seconds)
            many = wrk(url, body_file, 16, args.seconds)
            rows[name] = {"first_answer_s": statistics.median(starts[name]), "starts": starts[name],
                          "c1": one, "c16": many}
        except Exception as exc:
            print(f"{name}: failed: {exc}")
        finally:
            stop(proc)
    if args.profile_start:
        profile_start(launch, stop, body, work / "importtime.txt")

    print(f"\n{'server':<14} {'req/s c1':>9} {'p50 c1':>8} {'req/s c16':>10} {'p50 c16':>8} {'p99 c16':>8} "
          f"{'errors':>7} {'first':>7}")
    for name, r in rows.items():
        print(f"{name:<14} {r['c1']['rps']:9.0f} {r['c1']['p50_ms']:7.2f}ms {r['c16']['rps']:10.0f} "
              f"{r['c16']['p50_ms']:7.2f}ms {r['c16']['p99_ms']:7.1f}ms "
              f"{r['c1']['errors'] + r['c16']['errors']:7d} {r['first_answer_s']:6.2f}s")
    print(f"\nfirst answer after start over {args.starts} cold starts each (min / median / max):")
    for name, r in rows.items():
        st = r["starts"]
        print(f"  {name:<14} {min(st):.2f} / {statistics.median(st):.2f} / {max(st):.2f} s")
    if "nbdeploy" in rows and "bento+ort" in rows:
        nb, a = rows["nbdeploy"], rows["bento+ort"]
        print(f"\nnbdeploy / bento+ort at 16 connections: {nb['c16']['rps'] / a['c16']['rps']:.2f}x "
              f"(target >= 3x); at 1 connection: {nb['c1']['rps'] / a['c1']['rps']:.2f}x")
        print(f"nbdeploy p50 at 1 connection: {nb['c1']['p50_ms']:.2f} ms (target <= 1 ms); "
              f"first answer {nb['first_answer_s']:.2f} s after start, median (target <= 2 s; "
              f"bento+ort {a['first_answer_s']:.2f} s); "
              f"errors {nb['c1']['errors'] + nb['c16']['errors']} (target 0)")
    if "starlette" in rows and "nbdeploy" in rows:
        print(f"nbdeploy / bare starlette ceiling at 16 connections: "
              f"{rows['nbdeploy']['c16']['rps'] / rows['starlette']['c16']['rps']:.2f}x")
    shutil.rmtree(HERE, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
