"""Daemonless OCI image build: reproducible layers, cached dependency layer, and an image that
really runs: pushed to a real registry, pulled back by skopeo, unpacked by umoci, run in a chroot."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest

from nbdeploy.errors import BundleError, InvalidInputError
from nbdeploy.image import LayerWriter, build_image, image_from_rootfs
from nbdeploy.publish import build


def _tree(root: Path) -> Path:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text("print('a')\n")
    (root / "pkg" / "sub" / "b.bin").write_bytes(os.urandom(0) + b"\x00\x01" * 1000)
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    (root / "pkg" / "__pycache__").mkdir()
    (root / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"junk")
    os.symlink("pkg/a.py", root / "link.py")
    return root


def _layer(store: Path, src: Path):
    w = LayerWriter(store)
    w.add_parents("/opt/app/x")
    w.add_tree(src, "/opt/app")
    return w.close()


def test_layers_are_reproducible(tmp_path):
    src = _tree(tmp_path / "src")
    a = _layer(tmp_path / "store", src)
    # Same content, different mtimes, owners and umask: same digest.
    os.utime(src / "pkg" / "a.py", (1, 1))
    (src / "pkg" / "sub" / "b.bin").chmod(0o600)
    b = _layer(tmp_path / "store2", src)
    assert (a.digest, a.diff_id, a.size) == (b.digest, b.diff_id, b.size)
    # The blob is what its name says, and gzip carries no name or timestamp.
    raw = a.path.read_bytes()
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == a.digest
    assert raw[4:8] == b"\x00\x00\x00\x00" and not raw[3] & 0x08  # MTIME 0, no FNAME flag
    assert "sha256:" + hashlib.sha256(gzip.decompress(raw)).hexdigest() == a.diff_id
    with tarfile.open(a.path) as t:
        members = t.getmembers()
    names = [m.name for m in members]
    assert names[:2] == ["opt", "opt/app"] and "opt/app/pkg/__pycache__" not in names
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in members)
    assert {m.name: m.mode for m in members}["opt/app/run.sh"] == 0o755
    assert {m.name: m.linkname for m in members if m.issym()} == {"opt/app/link.py": "pkg/a.py"}
    # A content change changes the digest.
    (src / "pkg" / "a.py").write_text("print('b')\n")
    assert _layer(tmp_path / "store3", src).digest != a.digest


def test_oci_layout_is_readable_by_umoci(tmp_path):
    from containers.fixtures import need_tools

    need_tools("umoci")
    src = _tree(tmp_path / "src")
    img = image_from_rootfs(src, home=tmp_path / "home")
    layout = img.write_oci_layout(tmp_path / "layout", "t1")
    out = subprocess.run(["umoci", "stat", "--json", "--image", f"{layout}:t1"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["history"][0]["created_by"].startswith("rootfs ")


def test_bad_inputs(tmp_path):
    with pytest.raises(InvalidInputError):
        build_image(tmp_path, base=None, home=tmp_path / "home")  # a dir without bento.yaml
    with pytest.raises(InvalidInputError):
        image_from_rootfs(tmp_path / "nope", home=tmp_path / "home")


def test_pip_failure_is_a_clear_bundle_error(bentos, tmp_path):
    # --no-index: pip cannot find anything, like a dependency without a wheel for the platform.
    with pytest.raises(BundleError) as ei:
        build_image(bentos["v1"], base=None, home=tmp_path / "home", pip_args=["--no-index"])
    assert "linux/amd64" in ei.value.message and "wheel" in ei.value.hint
    assert "No matching distribution found for " in ei.value.hint  # pip's own words, bounded
    assert len(ei.value.hint) < 2000


def _sdist(folder: Path, name: str, *, native: bool) -> Path:
    """A source distribution as a package index serves it: NAME-1.0.tar.gz with a setup.py.
    ``native`` declares compiled code the way setuptools sees a C extension (has_ext_modules),
    so the wheel pip builds from it is tagged for this machine (cp311-cp311-linux_x86_64)."""
    import io

    mod = name.replace("-", "_")
    files = {
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        "pyproject.toml": '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n',
        f"{mod}.py": "ANSWER = 42\n",
        "setup.py": ("from setuptools import setup\nfrom setuptools.dist import Distribution\n\n\n"
                     "class Native(Distribution):\n    def has_ext_modules(self):\n        return True\n\n\n"
                     f"setup(name={name!r}, version='1.0', py_modules=[{mod!r}]"
                     + (", distclass=Native)\n" if native else ")\n")),
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{mod}-1.0.tar.gz"
    with tarfile.open(path, "w:gz") as t:
        for fname, text in files.items():
            data = text.encode()
            ti = tarfile.TarInfo(f"{mod}-1.0/{fname}")
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    return path


def _bento_requiring(src: Path, dest: Path, requirement: str) -> Path:
    """A copy of a built bento whose requirements lock names only ``requirement``."""
    import shutil

    shutil.copytree(src, dest)
    (dest / "env" / "python" / "requirements.txt").write_text(requirement + "\n")
    return dest


def test_pure_python_sdist_is_built_into_a_wheel_for_the_image(bentos, tmp_path):
    """A dependency published only as source (like lime) lands in the dependency layer,
    installed from a py3-none-any wheel built here; the layer is reproducible and cached."""
    links = tmp_path / "index"
    _sdist(links, "nbdeploy-probe-pure", native=False)
    bento = _bento_requiring(bentos["v1"], tmp_path / "bento", "nbdeploy-probe-pure==1.0")
    args = ["--find-links", str(links)]
    a = build_image(bento, base=None, home=tmp_path / "home", pip_args=args)
    assert a.info["deps_cached"] is False
    deps = a.layers[0]
    with tarfile.open(deps.path) as t:
        names = {m.name: m for m in t.getmembers()}
        wheel_meta = t.extractfile("opt/nbdeploy/deps/nbdeploy_probe_pure-1.0.dist-info/WHEEL").read().decode()
        module = t.extractfile("opt/nbdeploy/deps/nbdeploy_probe_pure.py").read().decode()
    assert module == "ANSWER = 42\n"
    assert "Tag: py3-none-any" in wheel_meta and "Root-Is-Purelib: true" in wheel_meta
    assert all(m.mtime == 0 for m in names.values())
    # Cached on the second build; rebuilt byte-identically with an empty cache.
    b = build_image(bento, base=None, home=tmp_path / "home", pip_args=args)
    assert b.info["deps_cached"] is True and b.digest == a.digest
    c = build_image(bento, base=None, home=tmp_path / "cold", pip_args=args)
    assert c.info["deps_cached"] is False and c.layers[0].digest == deps.digest


def test_sdist_with_native_code_is_a_clear_error(bentos, tmp_path):
    links = tmp_path / "index"
    _sdist(links, "nbdeploy-probe-native", native=True)
    bento = _bento_requiring(bentos["v1"], tmp_path / "bento", "nbdeploy-probe-native==1.0")
    home = tmp_path / "home"
    with pytest.raises(BundleError) as ei:
        build_image(bento, base=None, home=home, pip_args=["--find-links", str(links)])
    err = ei.value
    assert "nbdeploy-probe-native 1.0" in err.message and "native code" in err.message
    assert "linux/amd64" in err.message and "-linux_" in err.message  # the tag it built as here
    assert "--find-links" in err.hint and "manylinux" in err.hint
    assert len(err.message) + len(err.hint) < 2000
    # nothing half-written: no dependency layer recorded in the cache
    assert list((home / "cache" / "deps").glob("*.json")) == []


@pytest.mark.slow
def test_build_reproducible_and_dependency_layer_reused(bentos, base_image_ref, nbdeploy_home, tmp_path):
    t0 = time.perf_counter()
    a = build(bentos["v1"], base=base_image_ref, home=nbdeploy_home, source="https://example.com/nb.ipynb")
    first = time.perf_counter() - t0
    b = build(bentos["v1"], base=base_image_ref, home=nbdeploy_home, source="https://example.com/nb.ipynb")
    assert a.digest == b.digest and a.manifest_bytes == b.manifest_bytes
    assert b.info["deps_cached"] is True
    # Only the model/service changed: the same dependency layer, a different bento layer.
    c = build(bentos["v2"], base=base_image_ref, home=nbdeploy_home)
    assert c.info["deps_cached"] is True
    assert c.layers[-2].digest == a.layers[-2].digest
    assert c.layers[-1].digest != a.layers[-1].digest
    assert c.digest != a.digest
    # The dependency layer is rebuilt byte-identically from scratch (empty cache).
    d = build(bentos["v1"], base=base_image_ref, home=tmp_path / "cold",
                    source="https://example.com/nb.ipynb")
    assert d.info["deps_cached"] is False and d.digest == a.digest
    print(f"\n[image] first build {first:.1f}s, cached {b.info['build_seconds']:.2f}s, "
          f"size {a.size / 1e6:.1f} MB compressed ({a.layers[-2].size / 1e6:.1f} MB deps)")


@pytest.mark.slow
def test_image_config(bentos, base_image_ref, nbdeploy_home):
    img = build(bentos["v1"], base=base_image_ref, home=nbdeploy_home, source="https://example.com/nb.ipynb")
    cfg = img.config["config"]
    assert cfg["Entrypoint"][:4] == ["python3", "-m", "bentoml", "serve"]
    assert cfg["ExposedPorts"] == {"3000/tcp": {}}
    env = dict(e.split("=", 1) for e in cfg["Env"])
    assert env["PYTHONPATH"] == "/opt/nbdeploy/deps" and env["BENTOML_PORT"] == "3000"
    assert env["LANG"] == "C.UTF-8"  # the base image's env is kept
    labels = cfg["Labels"]
    assert labels["org.opencontainers.image.source"] == "https://example.com/nb.ipynb"
    assert labels["org.opencontainers.image.version"] == "v1"
    assert labels["org.opencontainers.image.created"].endswith("Z")
    assert labels["ai.nbdeploy.version"]
    assert labels["org.opencontainers.image.base.name"] == base_image_ref
    assert img.manifest["annotations"]["org.opencontainers.image.version"] == "v1"
    assert len(img.config["rootfs"]["diff_ids"]) == len(img.layers) == len(img.config["history"]) == 3
    assert cfg["User"] == "1034:1034"


@pytest.mark.slow
def test_end_to_end_push_pull_run_predict(bentos, base_image_ref, nbdeploy_home, registry, tmp_path):
    """Build, push, pull back with skopeo, unpack with umoci, run the entrypoint, predict over HTTP."""
    from containers.fixtures import free_port, need_root, need_tools, run_bundle, wait_http

    need_tools("skopeo", "umoci")
    need_root()
    from nbdeploy.publish import push

    t0 = time.perf_counter()
    result = push(bentos["v2"], f"{registry.host}/models/tiny:v2", base=base_image_ref, home=nbdeploy_home)
    push_s = time.perf_counter() - t0
    assert str(result).startswith(f"{registry.host}/models/tiny:v2@sha256:")
    layout = tmp_path / "oci"
    cp = subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{registry.host}/models/tiny:v2",
                         f"oci:{layout}:v2"], capture_output=True, text=True)
    assert cp.returncode == 0, cp.stderr
    index = json.loads((layout / "index.json").read_text())
    assert index["manifests"][0]["digest"] == result.digest  # what skopeo pulled is what we pushed
    bundle = tmp_path / "bundle"
    up = subprocess.run(["umoci", "unpack", "--image", f"{layout}:v2", str(bundle)], capture_output=True, text=True)
    assert up.returncode == 0, up.stderr
    port = free_port()
    t1 = time.perf_counter()
    with run_bundle(bundle, port=port, log_path=tmp_path / "serve.log") as proc:
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz", timeout=90)
        except TimeoutError:
            pytest.fail(f"server did not start (exit {proc.poll()}):\n"
                        + (tmp_path / "serve.log").read_text()[-3000:])
        started = time.perf_counter() - t1
        req = urllib.request.Request(f"http://127.0.0.1:{port}/predict",
                                     data=json.dumps({"inputs": [[1, 2], [3, 4.5]]}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            answer = json.loads(r.read())
    assert answer == {"predictions": [6.0, 15.0]}  # bento v2 doubles the row sums
    print(f"\n[e2e] push {push_s:.1f}s ({result.bytes_uploaded / 1e6:.1f} MB uploaded), "
          f"server ready in {started:.1f}s")


@pytest.fixture(scope="module")
def iris_bundle():
    """A real nbdeploy bundle (ONNX + nbdeploy_runtime) of a small scikit-learn model."""
    import numpy as np
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    import nbdeploy

    X, y = load_iris(return_X_y=True)
    X = X.astype(np.float32)
    model = LogisticRegression(max_iter=500).fit(X, y)
    d = nbdeploy.deploy(model, X[::3], name="iris_img", quantize="none", explain="none")
    return d.path, model, X


@pytest.mark.slow
def test_nbdeploy_bundle_image_runs_and_predicts(iris_bundle, base_image_ref, nbdeploy_home, registry, tmp_path):
    """The image of a real nbdeploy bundle answers /predict like the notebook model."""
    from containers.fixtures import free_port, need_root, need_tools, run_bundle, wait_http

    need_tools("skopeo", "umoci")
    need_root()
    from nbdeploy.publish import push

    path, model, X = iris_bundle
    t0 = time.perf_counter()
    result = push(path, f"{registry.host}/models/iris:1", base=base_image_ref, home=nbdeploy_home)
    build_push_s = time.perf_counter() - t0
    layout, bundle = tmp_path / "oci", tmp_path / "bundle"
    for cmd in (["skopeo", "copy", "--src-tls-verify=false", f"docker://{result.by_digest}", f"oci:{layout}:1"],
                ["umoci", "unpack", "--image", f"{layout}:1", str(bundle)]):
        p = subprocess.run(cmd, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
    port = free_port()
    rows = X[[0, 60, 120, 149]]
    with run_bundle(bundle, port=port, log_path=tmp_path / "serve.log") as proc:
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz", timeout=120)
        except TimeoutError:
            pytest.fail(f"server did not start (exit {proc.poll()}):\n" + (tmp_path / "serve.log").read_text()[-3000:])
        req = urllib.request.Request(f"http://127.0.0.1:{port}/predict",
                                     data=json.dumps({"inputs": rows.tolist()}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=20) as r:
            answer = json.loads(r.read())
    assert answer["predictions"] == model.predict(rows).tolist()
    import numpy as np

    np.testing.assert_allclose(answer["probabilities"], model.predict_proba(rows), atol=1e-4)
    print(f"\n[iris] build+push {build_push_s:.1f}s, image {result.bytes_uploaded / 1e6:.1f} MB uploaded")


def test_python_version_follows_the_base_image(bentos, tmp_path):
    """Wheels are chosen for the base's Python: a mismatch is refused before any download."""
    src = tmp_path / "root"
    (src / "etc").mkdir(parents=True)
    base = image_from_rootfs(src, home=tmp_path / "home", env={"PYTHON_VERSION": "3.12.7", "PATH": "/usr/bin"})
    with pytest.raises(InvalidInputError, match="Python 3.12"):
        build_image(bentos["v1"], base=base, python_version="3.11", home=tmp_path / "home")
