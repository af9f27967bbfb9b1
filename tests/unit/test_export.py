"""Export / import of bundles (issue 10): BentoML archives, self-containment, hostile archives,
and the real thing: a fresh virtual environment that has never seen nbdeploy serves the bundle
with stock `bentoml` and answers like the notebook."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import nbdeploy
from nbdeploy.archive import import_bundle, inspect_archive
from nbdeploy.errors import BundleError, InvalidInputError
from nbdeploy.export import export_bundle
from nbdeploy.portability import check_bundle


@pytest.fixture(scope="module")
def deployed(rf_model, breast_cancer):
    """The demo's kind of bundle, with its default explanations (SHAP and LIME): a broken
    explainer fails here rather than turning into a skip."""
    _, X_test, _, y_test = breast_cancer
    d = nbdeploy.deploy(rf_model, X_test, labels=y_test, name="export-test", quantize="none",
                        benchmark_budget_s=2.0)
    assert (Path(d.path) / "src" / "model" / "explain").is_dir()
    d.native_model = rf_model
    return d, X_test


@pytest.fixture(scope="module")
def archive(deployed, tmp_path_factory):
    d, _ = deployed
    return export_bundle(d.tag, tmp_path_factory.mktemp("export") / "bundle.bento")


def _members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path, "r:*") as tar:
        return {"/".join(p for p in m.name.split("/") if p not in ("", ".")): m for m in tar}


def _read_member(path: Path, name: str) -> bytes:
    with tarfile.open(path, "r:*") as tar:
        for m in tar:
            if "/".join(p for p in m.name.split("/") if p not in ("", ".")) == name:
                return tar.extractfile(m).read()
    raise KeyError(name)


def _bentoml_cli() -> list[str]:
    exe = Path(sys.executable).with_name("bentoml")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "bentoml"]


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------
def test_export_writes_a_bentoml_archive_that_stock_bentoml_imports(deployed, archive, tmp_path):
    d, _ = deployed
    assert archive.is_file() and archive.name == "bundle.bento"
    with open(archive, "rb") as f:
        assert f.read(6) == b"\xfd7zXZ\x00"          # BentoML's default: xz tar
    names = _members(archive)
    for must in ("bento.yaml", "env/python/requirements.txt", "src/service.py",
                 "src/model/model.onnx", "src/model/spec.json", "src/model/metadata.json"):
        assert must in names, must
    assert not [n for n in names if n.endswith((".pkl", ".pickle", ".joblib"))]
    assert not [p for p in archive.parent.iterdir() if p.name.startswith(".")], "temp file left"
    # stock `bentoml import` into another store
    env = dict(os.environ, BENTOML_HOME=str(tmp_path / "other-store"), BENTOML_DO_NOT_TRACK="true")
    r = subprocess.run([*_bentoml_cli(), "import", str(archive)], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([*_bentoml_cli(), "list", "-o", "json"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert d.tag in {b["tag"] for b in json.loads(r.stdout)}


def test_export_refuses_to_overwrite_and_names_files(deployed, archive, tmp_path):
    d, _ = deployed
    before = archive.stat().st_mtime_ns, archive.stat().st_size
    with pytest.raises(InvalidInputError, match="already exists") as e:
        export_bundle(d.tag, archive)
    assert "overwrite" in e.value.hint
    assert (archive.stat().st_mtime_ns, archive.stat().st_size) == before
    # a folder gets NAME-VERSION.bento; a bare name gets .bento; other formats by suffix
    name, version = d.tag.split(":")
    assert export_bundle(d.tag, tmp_path) == tmp_path / f"{name}-{version}.bento"
    assert export_bundle(d.tag, tmp_path / "plain") == tmp_path / "plain.bento"
    gz = export_bundle(d.tag, tmp_path / "b.tar.gz")
    assert tarfile.open(gz, "r:gz").getmember("./bento.yaml")
    for other in (gz, export_bundle(d.tag, tmp_path / "b.zip"), export_bundle(d.tag, tmp_path / "b.tar")):
        assert "src/model/model.onnx" in inspect_archive(other)   # our own exports pass inspection
    again = export_bundle(d.tag, tmp_path / "plain", overwrite=True)
    assert again.is_file()
    with pytest.raises(InvalidInputError, match="Unknown archive type"):
        export_bundle(d.tag, tmp_path / "b.rar")
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_bundle_is_self_contained(deployed, archive):
    d, _ = deployed
    assert check_bundle(d.tag) == []
    reqs = _read_member(archive, "env/python/requirements.txt").decode().split()
    names = {r.split("==")[0].lower() for r in reqs}
    assert all("==" in r for r in reqs), reqs
    assert {"bentoml", "numpy"} <= names and names & {"onnxruntime", "onnxruntime-gpu"}
    assert not names & {"nbdeploy", "ipywidgets", "torch", "jupyterlab", "jupyter-server", "ipykernel"}
    # nothing in the bundle points back at this machine; BentoML's generated image recipe
    # (env/docker) names paths inside the image, such as /tmp/uv-requirements.txt
    home, tmp = str(Path.home()), tempfile.gettempdir()
    assert "/tmp/" in _read_member(archive, "env/docker/Dockerfile").decode()
    for name, m in _members(archive).items():
        if name.startswith("env/docker/"):
            continue
        if m.isfile() and not name.endswith((".onnx", ".npz", ".npy", ".png")):
            text = _read_member(archive, name).decode("utf-8", "replace")
            assert home + "/" not in text and tmp + "/" not in text, name


def test_check_bundle_finds_each_problem(deployed, tmp_path):
    d, _ = deployed
    bad = tmp_path / "bento"
    shutil.copytree(d.path, bad)
    assert check_bundle(bad) == []
    req = bad / "env" / "python" / "requirements.txt"
    lines = [ln for ln in req.read_text().splitlines() if not ln.startswith("onnxruntime")]
    lines = [("numpy>=1.0" if ln.startswith("numpy==") else ln) for ln in lines]
    req.write_text("\n".join(lines + ["torch==2.5.0", "ipywidgets==8.1.0", "nbdeploy==0.1.0"]) + "\n")
    (bad / "src" / "model" / "weights.pkl").write_bytes(pickle.dumps({"a": 1}))
    (bad / "src" / "model" / "innocent.bin").write_bytes(pickle.dumps([1, 2], protocol=4))
    np.save(bad / "src" / "model" / "objects.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    (bad / "src" / "model" / "paths.json").write_text(json.dumps({"data": str(Path.home() / "data.csv")}))
    with open(bad / "src" / "service.py", "a") as f:
        f.write("\nimport torch\nimport pandas\n")
    problems = "\n".join(check_bundle(bad))
    for words in ("do not include onnxruntime", "'numpy>=1.0' is not pinned", "include torch",
                  "include ipywidgets", "include nbdeploy", "weights.pkl is a pickle file",
                  "innocent.bin is a pickle", "objects.npy is a .npy array",
                  "paths.json:1 refers to the build machine's path", "imports torch",
                  "imports pandas but no requirement provides it"):
        assert words in problems, (words, problems)
    # export refuses such a bundle (a real one in the store) unless told otherwise
    import bentoml

    name, version = d.tag.split(":")
    bad_version = f"{version}-bad"
    store_copy = Path(d.path).parent / bad_version
    shutil.copytree(bad, store_copy)
    yaml_path = store_copy / "bento.yaml"
    yaml_path.write_text(yaml_path.read_text().replace(f"version: {version}", f"version: {bad_version}"))
    bad_tag = f"{name}:{bad_version}"
    try:
        with pytest.raises(BundleError, match="not self-contained") as e:
            export_bundle(bad_tag, tmp_path / "refused.bento")
        assert "weights.pkl" in e.value.message and "check=False" in e.value.hint
        assert not (tmp_path / "refused.bento").exists()
        assert export_bundle(bad_tag, tmp_path / "forced.bento", check=False).is_file()
    finally:
        bentoml.bentos.delete(bad_tag)


def test_input_libraries_are_needed_only_for_their_kind_of_input(deployed, tmp_path):
    """Every bundle carries the whole runtime, whose image and text modules import Pillow and
    tokenizers lazily: a tabular bundle needs neither; a bundle whose spec says it takes images
    or text must pin the library (the check reads the bundle's own spec.json)."""
    d, _ = deployed
    copy = tmp_path / "bento"
    shutil.copytree(d.path, copy)
    problems = "\n".join(check_bundle(copy))
    assert "PIL" not in problems and "tokenizers" not in problems, problems
    spec_path = copy / "src" / "model" / "spec.json"
    spec = json.loads(spec_path.read_text())
    spec_path.write_text(json.dumps(dict(spec, input_mode="text", preprocess={"size": [8, 8]})))
    problems = "\n".join(check_bundle(copy))
    assert "imports tokenizers but no requirement provides it" in problems, problems
    assert "imports PIL but no requirement provides it" in problems, problems


def test_bundle_from_an_onnx_file_does_not_refer_to_its_path(tmp_path):
    from skl2onnx import to_onnx
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression

    X, y = load_breast_cancer(return_X_y=True)
    X = X.astype(np.float32)
    model = LogisticRegression(max_iter=3000).fit(X, y)
    path = tmp_path / "notebook-dir" / "model.onnx"
    path.parent.mkdir()
    path.write_bytes(to_onnx(model, X[:1], options={"zipmap": False}).SerializeToString())
    d = nbdeploy.deploy(str(path), X[:100], name="export-onnx-file", explain="none",
                        quantize="none", benchmark_budget_s=1.0)
    assert check_bundle(d.tag) == []


def test_import_bundle_round_trip(deployed, archive):
    import bentoml

    d, _ = deployed
    before = sorted(p.relative_to(d.path).as_posix() for p in Path(d.path).rglob("*") if p.is_file())
    with pytest.raises(InvalidInputError, match="already in the BentoML store"):
        import_bundle(archive)
    bentoml.bentos.delete(d.tag)
    assert import_bundle(archive) == d.tag
    path = Path(bentoml.get(d.tag).path)
    after = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    assert after == before
    assert check_bundle(d.tag) == []


# ---------------------------------------------------------------------------------------------
# the real thing: another machine, played by a fresh venv and a fresh BENTOML_HOME
# ---------------------------------------------------------------------------------------------
def _post(url: str, body) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"bentoml serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"bentoml serve not ready after {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_fresh_venv_serves_the_exported_bundle_like_the_notebook(deployed, archive, tmp_path):
    """Issue 10's 'done when': a venv that has never seen nbdeploy, only the bundle's own
    requirements, a fresh BENTOML_HOME, stock `bentoml import` + `bentoml serve`."""
    from nbdeploy.serve import free_port

    d, X = deployed
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    timings["venv"] = time.perf_counter() - t0
    bin_ = venv / "bin"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONSTARTUP")}
    env.update(VIRTUAL_ENV=str(venv), PATH=f"{bin_}{os.pathsep}{env.get('PATH', '')}",
               BENTOML_HOME=str(tmp_path / "bentoml-home"), BENTOML_DO_NOT_TRACK="true",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    run = dict(env=env, cwd=str(tmp_path), capture_output=True, text=True)

    # the only thing installed: the bundle's own requirements file, read from the archive
    req = tmp_path / "requirements.txt"
    req.write_bytes(_read_member(archive, "env/python/requirements.txt"))
    t1 = time.perf_counter()
    r = subprocess.run([str(bin_ / "python"), "-m", "pip", "install", "-q", "--no-compile",
                        "-r", str(req)], timeout=360, **run)
    timings["pip install"] = time.perf_counter() - t1
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([str(bin_ / "python"), "-c", "import nbdeploy"], timeout=60, **run)
    assert r.returncode != 0 and "No module named 'nbdeploy'" in r.stderr, "the venv must not see nbdeploy"

    t2 = time.perf_counter()
    r = subprocess.run([str(bin_ / "bentoml"), "import", str(archive)], timeout=120, **run)
    timings["bentoml import"] = time.perf_counter() - t2
    assert r.returncode == 0, r.stderr[-3000:]

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    t3 = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(bin_ / "bentoml"), "serve", d.tag, "--host", "127.0.0.1",
                                 "--port", str(port)], env=env, cwd=str(tmp_path), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    family: list = []
    try:
        _wait_ready(url, proc, 120, log)
        import psutil  # bentoml's own dependency; its workers run in their own process groups

        family = psutil.Process(proc.pid).children(recursive=True)
        timings["serve ready"] = time.perf_counter() - t3
        # the oracle is the native scikit-learn model and the shap library, not nbdeploy
        rf = d.native_model
        rows = X.iloc[:25]
        status, body = _post(url + "/predict", {"inputs": rows.to_numpy(dtype=np.float64).tolist()})
        assert status == 200, body
        proba = rf.predict_proba(rows)
        np.testing.assert_allclose(body["probabilities"], proba, atol=1e-5)
        clear = np.abs(proba[:, 1] - 0.5) > 1e-4          # float32 ONNX may break exact ties
        assert clear.sum() >= 20
        assert np.asarray(body["predictions"])[clear].astype(str).tolist() == \
            rf.predict(rows)[clear].astype(str).tolist()

        import shap

        n = 5
        status, ex = _post(url + "/explain", {"inputs": rows.iloc[:n].to_numpy().tolist(),
                                              "method": "shap"})
        assert status == 200, ex
        explainer = shap.TreeExplainer(rf)
        sv = np.asarray(explainer.shap_values(rows.iloc[:n]))       # (rows, features, classes)
        classes = [str(c) for c in rf.classes_]
        for i in range(n):
            k = classes.index(str(ex["explained_output"][i]))
            np.testing.assert_allclose(ex["contributions"][i], sv[i, :, k], atol=1e-5)
            np.testing.assert_allclose(ex["base_values"][i], np.ravel(explainer.expected_value)[k],
                                       atol=1e-5)
            np.testing.assert_allclose(ex["outputs"][i], proba[i, k], atol=1e-5)
        # LIME: seeded per row, so the served numbers equal the notebook's report
        rep = d.explanation
        assert "lime" in rep.methods
        status, ex = _post(url + "/explain", {"inputs": np.asarray(rep.X[:2]).tolist(), "method": "lime"})
        assert status == 200, ex
        for i in range(2):
            mine = rep.explain_row(i, "lime")
            assert ex["explained_output"][i] == mine["explained_output"]
            np.testing.assert_allclose(ex["contributions"][i], mine["contributions"], atol=1e-6)
            np.testing.assert_allclose(ex["base_values"][i], mine["intercept"], atol=1e-6)
    finally:
        timings["total"] = time.perf_counter() - t0
        print("fresh-venv timings (s):", {k: round(v, 1) for k, v in timings.items()})
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        for child in family:  # workers the arbiter did not take down with it
            try:
                child.kill()
            except Exception:
                pass
        assert not [c.pid for c in family if c.is_running() and c.status() != "zombie"]
