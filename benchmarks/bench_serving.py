"""Serving speed and memory, side by side in one run: the nbdeploy bundle under both engines and
its BentoML typed endpoint, against the bare-ASGI ceiling, BentoML's own floor and peers.

    python benchmarks/bench_serving.py [--seconds 3] [--rounds 2] [--starts 0]
                                       [--litserve-python PATH] [--with-sklearn] [--with-mlflow]

Single-row POST requests to a 100-tree, depth-8 RandomForest on 30 features (deployed with
TreeSHAP explanations), with `wrk` on loopback (Debian package `wrk`), at 1 and 16 connections:

  ceiling       a bare Starlette + uvicorn app around the same onnxruntime session
  floor         a constant-answer Starlette app mounted in a BentoML service (BentoML's own cost)
  nbdeploy      the bundle under stock `bentoml serve`, POST /predict (the mounted app)
  nbdeploy-api  the same server, POST /api/predict (the @bentoml.api endpoint BentoML's client uses)
  direct        the bundle under the direct engine (`nbdeploy serve --engine direct`)
  bento+ort     a hand-written BentoML service around an onnxruntime session
  litserve      LitServe around the same session (--litserve-python: a Python that has litserve)
  bento+sklearn, mlflow   optional (--with-sklearn, --with-mlflow)

All servers run at once and are measured in turns, round after round (--rounds), so that the
background load of a shared machine hits them alike; the table gives medians over rounds and
each server's req/s and p99 as a ratio to the ceiling's.  Then: memory (RSS of all of a
server's processes, after a predict and after one /explain), /explain latency, and overload
(64 and 256 connections with the default, benchmark-derived concurrency limit).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
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

FLOOR = textwrap.dedent("""
    import bentoml
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    async def predict(request):
        await request.body()
        return JSONResponse({"predictions": [1], "probabilities": [[0.2, 0.8]]})
    app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
    @bentoml.asgi_app(app, path="/")
    @bentoml.service
    class Svc:
        pass
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

LITSERVE = textwrap.dedent("""
    import sys, numpy as np, onnxruntime as ort, litserve as ls
    class API(ls.LitAPI):
        def setup(self, device):
            self.s = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
        def decode_request(self, request):
            return np.asarray(request["inputs"], dtype=np.float32)
        def predict(self, x):
            return self.s.run(None, {"input": x})
        def encode_response(self, out):
            return {"predictions": out[0].tolist(), "probabilities": out[1].tolist()}
    if __name__ == "__main__":
        ls.LitServer(API(), accelerator="cpu", workers_per_device=1).run(
            port=int(sys.argv[1]), host="127.0.0.1", log_level="warning", generate_client_file=False)
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
                          "--timeout", "2s", "-s", str(lua), url], capture_output=True, text=True,
                         timeout=seconds + 30).stdout

    def ms(label):
        m = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)\b", out)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    timeouts = int(m.group(1)) if (m := re.search(r"timeout (\d+)", out)) else 0
    sock = sum(int(x) for x in re.findall(r"(?:connect|read|write) (\d+)", out))
    return {"rps": rps, "p50_ms": ms("50"), "p99_ms": ms("99"), "errors": non2xx + sock + timeouts,
            "non2xx": non2xx, "timeouts": timeouts, "requests": total, "ok_rps": rps * (1 - non2xx / max(total, 1))}


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a server: the process and all its children (BentoML: arbiter + worker)."""
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p] + p.children(recursive=True)
    except psutil.NoSuchProcess:
        return float("nan")
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2 ** 20


def post(url: str, body: bytes) -> dict:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


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
    ap.add_argument("--seconds", type=int, default=3, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds over all servers")
    ap.add_argument("--starts", type=int, default=0, help="cold starts per server for the first-answer time")
    ap.add_argument("--litserve-python", default=None,
                    help="a Python with litserve installed (e.g. a venv made with --system-site-packages)")
    ap.add_argument("--with-sklearn", action="store_true", help="also the hand-written BentoML + scikit-learn")
    ap.add_argument("--with-mlflow", action="store_true")
    ap.add_argument("--profile-start", action="store_true",
                    help="also start the nbdeploy bundle once with PYTHONPROFILEIMPORTTIME and print "
                         "where the start-up time goes, per process and package")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        print("wrk is needed: apt-get install wrk")
        return 2
    ns: dict = {}
    exec(TRAIN, ns)
    import bentoml

    import nbdeploy
    from nbdeploy.serve import bentoml_executable

    X, model = ns["X"], ns["MODEL"]
    d = nbdeploy.deploy(model, X[:1000], name="bench-serving", explain="shap", quantize="none")
    print(f"nbdeploy bundle {d.tag}: serving config {d.serve_config().to_dict()}")
    src = Path(bentoml.get(d.tag).path) / "src"
    work = HERE / "baselines"
    work.mkdir()
    from nbdeploy.convert import convert

    (work / "model.onnx").write_bytes(convert(model, X[:10]).onnx_bytes)
    for name, code in (("bento_ort.py", BENTO_ORT), ("bento_sklearn.py", BENTO_SKLEARN),
                       ("bare.py", STARLETTE), ("floor.py", FLOOR), ("lit.py", LITSERVE)):
        (work / name).write_text(code)
    body = json.dumps({"inputs": [X[0].tolist()]}).encode()
    body_file = work / "body.json"
    body_file.write_bytes(body)
    explain_file = work / "explain.json"
    explain_file.write_bytes(json.dumps({"inputs": [X[1].tolist()], "method": "shap"}).encode())
    bentoml_cmd = lambda target: lambda p: [*bentoml_executable(), "serve", target, "--port", str(p),  # noqa: E731
                                            "--host", "127.0.0.1"]
    # name -> (command for a port, working folder, path); nbdeploy-api shares nbdeploy's server
    servers: dict = {
        "ceiling": (lambda p: [sys.executable, "bare.py", str(p)], work, "/predict"),
        "floor": (bentoml_cmd("floor:Svc"), work, "/predict"),
        "nbdeploy": (bentoml_cmd(d.tag), work, "/predict"),
        "direct": (lambda p: [sys.executable, "-m", "nbdeploy_runtime.engine", "--port", str(p)], src,
                   "/predict"),
        "bento+ort": (bentoml_cmd("bento_ort:Svc"), work, "/predict"),
    }
    if args.litserve_python:
        servers["litserve"] = (lambda p: [args.litserve_python, "lit.py", str(p)], work, "/predict")
    if args.with_sklearn:
        servers["bento+sklearn"] = (bentoml_cmd("bento_sklearn:Svc"), work, "/predict")
    if args.with_mlflow:
        try:
            import mlflow
            import mlflow.sklearn  # noqa: F401

            mdir = work / "mlflow-model"
            mlflow.sklearn.save_model(model, str(mdir))
            servers["mlflow"] = (lambda p: ["mlflow", "models", "serve", "-m", str(mdir), "-p", str(p),
                                            "--env-manager", "local", "-h", "127.0.0.1"], work, "/invocations")
        except ImportError:
            print("mlflow is not installed: skipping it")

    def launch(name: str, env: dict | None = None, stderr=subprocess.DEVNULL):
        cmd, cwd, path = servers[name]
        port = free_port()
        proc = subprocess.Popen(cmd(port), cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr,
                                start_new_session=True, env=env)
        return proc, f"http://127.0.0.1:{port}{path}"

    def stop(proc) -> None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

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

    running: dict = {}
    try:
        for name in servers:
            proc, url = launch(name)
            try:
                first_answer(url, body, proc)
            except Exception as exc:
                print(f"{name}: failed to start: {exc}")
                stop(proc)
                continue
            running[name] = (proc, url)
        if "nbdeploy" in running:
            proc, url = running["nbdeploy"]
            running["nbdeploy-api"] = (proc, url.replace("/predict", "/api/predict"))
        order = [n for n in ("ceiling", "floor", "nbdeploy", "nbdeploy-api", "direct", "bento+ort",
                             "litserve", "bento+sklearn", "mlflow") if n in running]
        memory: dict = {}
        for name in order:  # warm-up, and memory of a replica that has only predicted
            wrk(running[name][1], body_file, 4, 1)
            memory[name] = {"predict": tree_rss_mb(running[name][0].pid)}
        runs: dict = {name: {"c1": [], "c16": []} for name in order}
        for _ in range(args.rounds):
            for name in order:
                runs[name]["c1"].append(wrk(running[name][1], body_file, 1, args.seconds))
                runs[name]["c16"].append(wrk(running[name][1], body_file, 16, args.seconds))
        explain: dict = {}
        inproc_ms = _shap_in_process_ms(model, X[1:2])
        for name in ("nbdeploy", "direct"):
            if name not in running:
                continue
            url = running[name][1].replace("/predict", "/explain")
            t0 = time.perf_counter()
            first = post(url, explain_file.read_bytes())
            first_s = time.perf_counter() - t0
            memory[name]["explain"] = tree_rss_mb(running[name][0].pid)
            ref = _shap_reference(model, X[1:2])
            err = float(abs(__import__("numpy").asarray(first["contributions"]) - ref).max())
            e = wrk(url, explain_file, 1, args.seconds)
            explain[name] = {"first_s": first_s, "p50_ms": e["p50_ms"], "p99_ms": e["p99_ms"],
                             "rps": e["rps"], "max_abs_err": err}
        overload: dict = {}
        for name in ("nbdeploy", "direct", "floor", "ceiling"):
            if name in running:
                overload[name] = {c: wrk(running[name][1], body_file, c, args.seconds + 1) for c in (64, 256)}
    finally:
        for proc, _ in {id(v[0]): v for v in running.values()}.values():
            stop(proc)
    if args.profile_start:
        profile_start(launch, stop, body, work / "importtime.txt")

    def med(name, conns, key):
        return statistics.median(r[key] for r in runs[name][conns])

    ceiling = ("ceiling" in runs and med("ceiling", "c16", "rps")) or float("nan")
    ceiling_p99 = ("ceiling" in runs and med("ceiling", "c16", "p99_ms")) or float("nan")
    print(f"\nmedians over {args.rounds} interleaved rounds of {args.seconds} s per run (wrk, single-row POST)")
    print(f"{'server':<14} {'req/s c1':>9} {'p50 c1':>8} {'req/s c16':>10} {'p50 c16':>8} {'p99 c16':>8} "
          f"{'x ceiling':>9} {'p99 x ceil':>10} {'errors':>7} {'RSS MB':>7}")
    for name in order:
        errs = sum(r["errors"] for c in ("c1", "c16") for r in runs[name][c])
        print(f"{name:<14} {med(name, 'c1', 'rps'):9.0f} {med(name, 'c1', 'p50_ms'):7.2f}ms "
              f"{med(name, 'c16', 'rps'):10.0f} {med(name, 'c16', 'p50_ms'):7.2f}ms "
              f"{med(name, 'c16', 'p99_ms'):7.1f}ms {med(name, 'c16', 'rps') / ceiling:9.2f} "
              f"{med(name, 'c16', 'p99_ms') / ceiling_p99:10.1f} {errs:7d} "
              f"{memory.get(name, {}).get('predict', float('nan')):7.0f}")
    print("\nmemory per replica (RSS of all its processes, MB): after predicts / after one /explain")
    for name in order:
        m = memory.get(name, {})
        if name == "nbdeploy-api":
            continue
        print(f"  {name:<14} {m.get('predict', float('nan')):6.0f}" +
              (f" / {m['explain']:6.0f}" if "explain" in m else ""))
    if explain:
        print("\n/explain, one row, TreeSHAP over HTTP at 1 connection (max |served - shap.TreeExplainer|):")
        for name, e in explain.items():
            print(f"  {name:<14} p50 {e['p50_ms']:.2f} ms ({e['p50_ms'] / inproc_ms:.1f}x shap.TreeExplainer in "
                  f"process, {inproc_ms:.2f} ms), p99 {e['p99_ms']:.2f} ms, {e['rps']:.0f} req/s; "
                  f"first call {e['first_s']:.2f} s (loads shap); max abs error {e['max_abs_err']:.1e}")
    if overload:
        print("\noverload (default configuration; wrk --timeout 2s): ok req/s, 503 shed, timeouts, p99")
        for name, o in overload.items():
            print("  " + f"{name:<14}" + "; ".join(
                f"{c} conns: {r['ok_rps']:.0f} ok/s, {r['non2xx']} shed of {r['requests']}, "
                f"{r['timeouts']} timeouts, p99 {r['p99_ms']:.0f} ms" for c, r in o.items()))
    if args.starts:
        print(f"\nfirst answer after start over {args.starts} cold starts each (min / median / max):")
        for name, st in starts.items():
            if st:
                print(f"  {name:<14} {min(st):.2f} / {statistics.median(st):.2f} / {max(st):.2f} s")
    shutil.rmtree(HERE, ignore_errors=True)
    return 0


def _shap_in_process_ms(model, x, n: int = 200) -> float:
    """Median ms of shap.TreeExplainer(native model).shap_values for one row, in this process."""
    import shap

    te = shap.TreeExplainer(model)
    te.shap_values(x)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        te.shap_values(x, check_additivity=False)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _shap_reference(model, x):
    import numpy as np
    import shap

    out = np.asarray(shap.TreeExplainer(model).shap_values(x))
    return out[..., 1] if out.ndim == 3 else out


if __name__ == "__main__":
    sys.exit(main())
