"""The new user's journey, with nothing but defaults (issue 14).

A user deploys a model with the default ``nbdeploy.deploy(model, X)`` arguments (explanations
by SHAP and LIME, quantization "auto"), with the BentoML that pip installed and the default
temporary directory, then exports the bundle, imports it into a fresh BentoML home, serves it
with stock ``bentoml serve``, pushes an image of it to a registry and runs that image.
The oracle at every stop is the native scikit-learn model, never nbdeploy's own numbers.

Each step is its own assertion with the step's name in the message, so a failure says which
step of the journey a user would be stuck at.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _post(url: str, body) -> tuple[int, dict | str]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")[:2000]


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float, step: str) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            pytest.fail(f"[{step}] the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.25)
    pytest.fail(f"[{step}] not ready after {timeout} s:\n{log.read_text()[-3000:]}")


def _assert_like_native(step: str, body, model, rows) -> None:
    """The answer agrees with the native model: the same labels, probabilities to float32 precision."""
    assert isinstance(body, dict) and "predictions" in body, f"[{step}] unexpected answer: {body!r}"[:2000]
    assert body["predictions"] == model.predict(rows).tolist(), f"[{step}] labels differ from the native model"
    np.testing.assert_allclose(np.asarray(body["probabilities"]), model.predict_proba(rows), atol=1e-5,
                               err_msg=f"[{step}] probabilities differ from the native model")


def _nbdeploy_cli() -> list[str]:
    """The `nbdeploy` console script that pip installed next to this Python."""
    script = Path(sys.executable).parent / "nbdeploy"
    if script.is_file():
        return [str(script)]
    found = shutil.which("nbdeploy")
    assert found, "the `nbdeploy` command is not installed next to this Python or on PATH"
    return [found]


def test_new_user_journey_with_defaults(rf_model, breast_cancer, registry, base_image_ref, tmp_path):
    from containers.fixtures import free_port, need_root, need_tools, run_bundle, stop_group, wait_http

    import nbdeploy

    need_tools("skopeo", "umoci")
    need_root()  # running the pulled image: chroot and mounts
    timings: dict[str, float] = {}
    # The user's environment: the temporary directory is whatever Python picks by default
    # (nothing here moves it), which is where nbdeploy stages bundles.
    timings["tempdir " + tempfile.gettempdir()] = 0.0
    _, X_test, _, _ = breast_cancer
    rows = X_test.iloc[:25]
    model = rf_model
    try:
        # 1. deploy, every option at its default
        t = time.perf_counter()
        d = nbdeploy.deploy(model, X_test)
        timings["deploy"] = time.perf_counter() - t
        assert d.tag, "[deploy] no bundle was built"
        assert (Path(d.path) / "env" / "python" / "requirements.txt").read_text().count("lime==") == 1, \
            "[deploy] the default bundle explains with LIME (the sdist-only dependency push must handle)"

        # 2. export
        t = time.perf_counter()
        archive = d.export(str(tmp_path / "model.bento"))
        timings["export"] = time.perf_counter() - t
        assert Path(archive).is_file(), "[export] no archive"

        # 3. import into a fresh BentoML home, through the command a user types
        fresh_home = tmp_path / "fresh-bentoml-home"
        env = {**os.environ, "BENTOML_HOME": str(fresh_home), "BENTOML_DO_NOT_TRACK": "true"}
        t = time.perf_counter()
        imp = subprocess.run([*_nbdeploy_cli(), "import", str(archive)], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
        timings["import"] = time.perf_counter() - t
        assert imp.returncode == 0, f"[import] exit {imp.returncode}: {imp.stdout[-1500:]}{imp.stderr[-1500:]}"
        assert (fresh_home / "bentos" / d.tag.split(":")[0] / d.tag.split(":")[1] / "bento.yaml").is_file(), \
            f"[import] {d.tag} is not in the fresh store: {imp.stdout[-500:]}"

        # 4. stock `bentoml serve` from the fresh home answers like the native model
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = tmp_path / "bentoml-serve.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", d.tag, "--host", "127.0.0.1",
                                     "--port", str(port)], env=env, cwd=tmp_path, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        try:
            timings["serve ready"] = _wait_ready(url, proc, log, 120, "serve")
            status, body = _post(url + "/predict", {"inputs": rows.to_numpy().tolist()})
            assert status == 200, f"[serve] /predict answered {status}: {body!r}"[:2000]
            _assert_like_native("serve", body, model, rows)
        finally:
            stop_group(proc)

        # 5. push to the registry, on the test base image (Docker Hub is out of reach here)
        ref = f"{registry.host}/journey/model:1"
        t = time.perf_counter()
        pushed = d.push(ref, base=base_image_ref)
        timings["push"] = time.perf_counter() - t
        assert str(pushed) == f"{ref}@{pushed.digest}", f"[push] {pushed}"

        # 6. pull the image back (skopeo), unpack it (umoci) and run it: a prediction
        layout, bundle = tmp_path / "oci", tmp_path / "bundle"
        t = time.perf_counter()
        for cmd in (["skopeo", "copy", "--src-tls-verify=false", f"docker://{pushed.by_digest}",
                     f"oci:{layout}:1"],
                    ["umoci", "unpack", "--image", f"{layout}:1", str(bundle)]):
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            assert p.returncode == 0, f"[pull] {cmd[0]}: {p.stderr[-2000:]}"
        timings["pull+unpack"] = time.perf_counter() - t
        port = free_port()
        with run_bundle(bundle, port=port, log_path=tmp_path / "image.log") as proc:
            t = time.perf_counter()
            try:
                wait_http(f"http://127.0.0.1:{port}/readyz", timeout=180)
            except TimeoutError:
                pytest.fail(f"[run image] the server did not start (exit {proc.poll()}):\n"
                            + (tmp_path / "image.log").read_text()[-3000:])
            timings["image ready"] = time.perf_counter() - t
            status, body = _post(f"http://127.0.0.1:{port}/predict", {"inputs": rows.to_numpy().tolist()})
            assert status == 200, f"[run image] /predict answered {status}: {body!r}"[:2000]
            _assert_like_native("run image", body, model, rows)
    finally:
        print("\n[journey] timings (s):", {k: round(v, 1) for k, v in timings.items()})


def test_deploy_magic_push_with_default_options(rf_model, breast_cancer, registry, base_image_ref,
                                                monkeypatch):
    """`%deploy model --sample X --push REF` with every other option at its default (LIME included):
    the image lands in the registry, on the base from $NBDEPLOY_BASE_IMAGE (the README's way where
    Docker Hub is out of reach), and its dependency layer, read back from the registry, has lime."""
    import gzip
    import hashlib
    import io
    import tarfile

    from containers.fixtures import assert_pushed
    from IPython.testing import globalipapp
    from IPython.utils.capture import capture_output

    monkeypatch.setenv("NBDEPLOY_BASE_IMAGE", base_image_ref)
    globalipapp.start_ipython()
    ip = globalipapp.get_ipython()
    ip.run_line_magic("load_ext", "nbdeploy")
    _, X_test, _, _ = breast_cancer
    ip.user_ns.update(model=rf_model, X_test=X_test)
    ref = f"{registry.host}/journey/magic:1"
    with capture_output() as cap:
        d = ip.run_line_magic("deploy", f"model --sample X_test --push {ref}")
    assert d is not None, f"%deploy failed:\n{cap.stdout[-2000:]}{cap.stderr[-2000:]}"
    assert d.steps["push"].state == "done", cap.stdout[-2000:]
    assert "lime==" in (Path(d.path) / "env" / "python" / "requirements.txt").read_text()
    assert_pushed(registry, ref, d.pushed.digest, base=base_image_ref)

    _, manifest = registry.manifest("journey/magic", "1")
    deps = manifest["layers"][-2]  # base layers, then the dependency layer, then the bento
    with urllib.request.urlopen(f"http://{registry.host}/v2/journey/magic/blobs/{deps['digest']}",
                                timeout=120) as r:
        blob = r.read()
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == deps["digest"]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as t:
        names = set(t.getnames())
    assert "opt/nbdeploy/deps/lime/lime_tabular.py" in names
    assert any(n.startswith("opt/nbdeploy/deps/lime-0.2.0.1.dist-info/") for n in names)
