"""HTTPS served by a bundle itself, as an image serves it (issue 19, TLS part).

The generated ``service.py`` reads ``NBDEPLOY_TLS_CERT`` / ``NBDEPLOY_TLS_KEY`` (paths of PEM
files mounted where the bundle runs) and hands them to BentoML's ``ssl`` service config, so the
image's unchanged entrypoint, stock ``python3 -m bentoml serve``, speaks HTTPS only on its
port.  Unset: plain HTTP (the default).  A certificate named but missing stops the server.

Real components only: certificates made here with ``cryptography``, verified by the client
against the test CA; a real ``bentoml serve``; a real pushed image, pulled with skopeo, unpacked
with umoci and run in a chroot with its own entrypoint; manifests checked by
kubernetes-validate live in tests/containers/test_k8s.py.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_auth import tls_files

from nbdeploy.runtime import auth


def _get(url: str, ctx: ssl.SSLContext | None = None, body=None, timeout: float = 10.0):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _wait_https(url: str, ctx: ssl.SSLContext, proc: subprocess.Popen, log: Path, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            pytest.fail(f"the server exited ({proc.returncode}):\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if _get(url, ctx, timeout=2)[0] == 200:
                return time.monotonic() - t0
        except (urllib.error.URLError, OSError) as exc:
            if isinstance(getattr(exc, "reason", exc), ssl.SSLError):  # the port is up: is it plain HTTP?
                try:
                    plain = _get("http://" + url.split("://", 1)[1], timeout=2)[0]
                except (urllib.error.URLError, OSError):
                    plain = None
                if plain is not None:
                    pytest.fail(f"{url}: the server answered plain HTTP ({plain}) instead of HTTPS")
        time.sleep(0.2)
    pytest.fail(f"{url} did not answer over HTTPS within {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")


def _plain_http_refused(port: int) -> None:
    """Plain HTTP on the TLS port gets no HTTP answer (uvicorn drops the connection)."""
    got = None
    try:
        got = _get(f"http://127.0.0.1:{port}/readyz", timeout=5)[0]
    except (urllib.error.URLError, ConnectionError, OSError):
        pass
    assert got is None, f"plain HTTP answered {got} on the HTTPS port"


def _tls_versions(port: int, ca: Path) -> dict[str, str]:
    """The version each client negotiates with the server: one that offers only TLS 1.3, one
    that offers at most 1.2, and one that offers only 1.0/1.1 (its own security level lowered so
    that it really offers them; the server must refuse)."""
    got = {}
    for label, lo, hi in (("1.3", ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3),
                          ("1.2", ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2),
                          ("1.0-1.1", ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)):
        c = ssl.create_default_context(cafile=str(ca))
        if label == "1.0-1.1":
            c.set_ciphers("DEFAULT:@SECLEVEL=0")
        c.minimum_version, c.maximum_version = lo, hi
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                    c.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                got[label] = tls.version()
        except (ssl.SSLError, OSError) as exc:
            got[label] = f"refused ({type(exc).__name__})"
    return got


def _stop(proc: subprocess.Popen) -> None:
    from containers.fixtures import stop_group

    stop_group(proc)


def _assert_like_native(body: bytes, model, rows) -> None:
    import numpy as np

    out = json.loads(body)
    assert out["predictions"] == model.predict(rows).tolist()
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(rows), atol=1e-4)


# -- the settings: both or neither, and files that can really serve TLS ---------------------------

def test_tls_paths_default_is_plain_http_and_bad_settings_refuse_to_start(tmp_path):
    ca, cert, key = tls_files(tmp_path)
    assert auth.tls_paths({}) is None and auth.tls_service_config({}) == {}   # the default: plain HTTP
    ok = {"NBDEPLOY_TLS_CERT": str(cert), "NBDEPLOY_TLS_KEY": str(key)}
    assert auth.tls_paths(ok) == (str(cert), str(key))
    assert auth.tls_service_config(ok) == {"ssl": {"enabled": True, "certfile": str(cert), "keyfile": str(key),
                                                   "ciphers": auth.TLS_CIPHERS}}
    with pytest.raises(auth.TLSConfigError, match="NBDEPLOY_TLS_KEY is not"):
        auth.tls_paths({"NBDEPLOY_TLS_CERT": str(cert)})
    with pytest.raises(auth.TLSConfigError, match="NBDEPLOY_TLS_CERT is not"):
        auth.tls_paths({"NBDEPLOY_TLS_KEY": str(key)})
    with pytest.raises(auth.TLSConfigError, match="NBDEPLOY_TLS_CERT=.*missing.pem cannot be read"):
        auth.tls_paths({**ok, "NBDEPLOY_TLS_CERT": str(tmp_path / "missing.pem")})
    other = tmp_path / "other"
    other.mkdir()
    _, _, other_key = tls_files(other)
    with pytest.raises(auth.TLSConfigError, match="not a PEM certificate and its"):
        auth.tls_paths({**ok, "NBDEPLOY_TLS_KEY": str(other_key)})   # a key that is not the certificate's
    with pytest.raises(auth.TLSConfigError, match="not a PEM certificate and its"):
        auth.tls_paths({"NBDEPLOY_TLS_CERT": str(key), "NBDEPLOY_TLS_KEY": str(cert)})  # swapped


# -- stock `bentoml serve` of a default bundle, the certificate named by the environment ----------

@pytest.mark.slow
# NBDEPLOY_ENGINE=direct: `bentoml serve` hands its process to nbdeploy_runtime.engine, which reads
# the same variables
@pytest.mark.parametrize("engine", ["bentoml", "direct"])
def test_stock_bentoml_serve_speaks_https_from_the_environment(engine, ref_deployment, rf_model, breast_cancer,
                                                                tmp_path):
    from containers.fixtures import free_port

    ca, cert, key = tls_files(tmp_path)
    ctx = ssl.create_default_context(cafile=str(ca))
    port = free_port()
    env = {**os.environ, "NBDEPLOY_TLS_CERT": str(cert), "NBDEPLOY_TLS_KEY": str(key)}
    if engine == "direct":
        env["NBDEPLOY_ENGINE"] = "direct"
    else:
        env.pop("NBDEPLOY_ENGINE", None)
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", ref_deployment.tag,
                                 "--host", "127.0.0.1", "--port", str(port)], env=env, cwd=tmp_path,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ready_s = _wait_https(f"https://127.0.0.1:{port}/readyz", ctx, proc, log, 60 if engine == "direct" else 120)
        _, X_test, _, _ = breast_cancer
        rows = X_test.iloc[:8]
        status, body = _get(f"https://127.0.0.1:{port}/predict", ctx, {"inputs": rows.to_numpy().tolist()})
        assert status == 200, body[:500]
        _assert_like_native(body, rf_model, rows)
        with pytest.raises(urllib.error.URLError) as e:  # a client without the test CA refuses it
            _get(f"https://127.0.0.1:{port}/readyz", ssl.create_default_context())
        assert isinstance(e.value.reason, ssl.SSLCertVerificationError)
        _plain_http_refused(port)
        versions = _tls_versions(port, ca)
        assert versions["1.3"] == "TLSv1.3" and versions["1.2"] == "TLSv1.2", versions
        assert versions["1.0-1.1"].startswith("refused"), versions
        print(f"\n[tls] bentoml serve ({engine}): HTTPS ready after {ready_s:.1f} s; {versions}")
    finally:
        _stop(proc)


@pytest.mark.slow
def test_a_missing_certificate_stops_bentoml_serve_instead_of_serving_http(ref_deployment, tmp_path):
    from containers.fixtures import free_port

    _, _, key = tls_files(tmp_path)
    port = free_port()
    env = {**os.environ, "NBDEPLOY_TLS_CERT": str(tmp_path / "not-mounted" / "tls.crt"),
           "NBDEPLOY_TLS_KEY": str(key)}
    proc = subprocess.run([sys.executable, "-m", "bentoml", "serve", ref_deployment.tag, "--host", "127.0.0.1",
                           "--port", str(port)], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-2000:]
    assert "NBDEPLOY_TLS_CERT=" in out and "not-mounted/tls.crt cannot be read" in out, out[-2000:]
    assert "BEGIN" not in out   # no key material in the message
    print("\n[tls] refused at start:", out.strip().splitlines()[-1][:300])


# -- the pushed image: its own entrypoint, the secret mounted, the env set -------------------------

def _oci_files(layout: Path):
    """(name, bytes) of every blob of an OCI layout: manifests and config as they are, layers
    file by file (decompressed), one at a time."""
    for blob in (layout / "blobs" / "sha256").iterdir():
        try:
            with tarfile.open(blob) as tf:
                for m in tf:
                    if m.isfile():
                        yield f"{blob.name[:12]}:{m.name}", tf.extractfile(m).read()
        except tarfile.ReadError:
            yield blob.name[:12], blob.read_bytes()   # manifest, config, index


@pytest.mark.slow
def test_pushed_image_serves_https_with_a_mounted_certificate(ref_deployment, rf_model, breast_cancer, registry,
                                                              base_image_ref, nbdeploy_home, tmp_path):
    from containers.fixtures import free_port, need_root, need_tools, run_bundle

    need_tools("skopeo", "umoci")
    need_root()
    from nbdeploy.publish import push

    ca, cert, key = tls_files(tmp_path)
    ctx = ssl.create_default_context(cafile=str(ca))
    result = push(ref_deployment.path, f"{registry.host}/tls/ref:1", base=base_image_ref, home=nbdeploy_home)
    layout, bundle = tmp_path / "oci", tmp_path / "bundle"
    for cmd in (["skopeo", "copy", "--src-tls-verify=false", f"docker://{result.by_digest}", f"oci:{layout}:1"],
                ["umoci", "unpack", "--image", f"{layout}:1", str(bundle)]):
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-2000:]
    spec = json.loads((bundle / "config.json").read_text())
    assert spec["process"]["args"][:4] == ["python3", "-m", "bentoml", "serve"]   # the stock entrypoint
    # what `kubectl` does with the manifests' tls volume (k8s.py): the Secret's tls.crt/tls.key
    # mounted read-only, readable by the image's user, and the two variables naming them
    mount = bundle / "rootfs" / "etc" / "nbdeploy" / "tls"
    mount.mkdir(parents=True)
    shutil.copy(cert, mount / "tls.crt")
    shutil.copy(key, mount / "tls.key")
    uid, gid = spec["process"]["user"]["uid"], spec["process"]["user"]["gid"]
    for f in (mount / "tls.crt", mount / "tls.key"):
        os.chown(f, 0, gid)
        os.chmod(f, 0o440)
    spec["process"]["env"] += ["NBDEPLOY_TLS_CERT=/etc/nbdeploy/tls/tls.crt",
                               "NBDEPLOY_TLS_KEY=/etc/nbdeploy/tls/tls.key"]
    (bundle / "config.json").write_text(json.dumps(spec))
    port = free_port()
    log = tmp_path / "image.log"
    _, X_test, _, _ = breast_cancer
    rows = X_test.iloc[:8]
    with run_bundle(bundle, port=port, log_path=log) as proc:
        ready_s = _wait_https(f"https://127.0.0.1:{port}/readyz", ctx, proc, log, 180)
        status, body = _get(f"https://127.0.0.1:{port}/predict", ctx, {"inputs": rows.to_numpy().tolist()})
        assert status == 200, body[:500]
        _assert_like_native(body, rf_model, rows)
        status, meta = _get(f"https://127.0.0.1:{port}/metadata", ctx)
        assert status == 200
        _plain_http_refused(port)
        versions = _tls_versions(port, ca)   # the image's own Python and OpenSSL
        assert versions["1.3"] == "TLSv1.3" and versions["1.2"] == "TLSv1.2", versions
        assert versions["1.0-1.1"].startswith("refused"), versions
    print(f"\n[tls] image (uid {uid}): HTTPS ready after {ready_s:.1f} s; {versions}")

    # the key and the certificate are nowhere in the image (layers, config, manifest) or /metadata
    key_body = "".join(key.read_text().splitlines()[1:-1])
    cert_body = "".join(cert.read_text().splitlines()[1:-1])
    secrets_ = [key_body[:40], key_body[-40:], cert_body[:40], cert_body[-40:]]
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509 import load_pem_x509_certificate

    der = load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    needles = [x.encode() for x in secrets_] + [der[-64:]]
    seen = 0
    for where, data in [("/metadata", meta), *_oci_files(layout)]:
        seen += 1
        for s in needles:
            assert s not in data, f"TLS material in {where}"
    assert seen > 1000, seen   # the layers really were read file by file


@pytest.mark.slow
def test_certificate_variables_in_the_notebook_serve_https_locally_and_stay_out_of_builds(
        rf_model, breast_cancer, tmp_path, monkeypatch):
    """NBDEPLOY_TLS_CERT/_KEY set where the notebook runs: a local server speaks HTTPS and its
    handle knows it (https URL, probed over TLS), and a bundle built there records no
    certificate path (they configure servers, not bundles)."""
    import nbdeploy

    ca, cert, key = tls_files(tmp_path)
    monkeypatch.setenv("NBDEPLOY_TLS_CERT", str(cert))
    monkeypatch.setenv("NBDEPLOY_TLS_KEY", str(key))
    _, X_test, _, _ = breast_cancer
    d = nbdeploy.deploy(rf_model, X_test, name="tls-from-env", explain="none", quantize="none")
    bento_yaml = (Path(d.path) / "bento.yaml").read_text()
    assert str(cert) not in bento_yaml and str(key) not in bento_yaml
    server = d.serve()
    try:
        assert server.url.startswith("https://"), server.url
        rows = X_test.iloc[:4]
        status, body = _get(server.url + "/predict", ssl.create_default_context(cafile=str(ca)),
                            {"inputs": rows.to_numpy().tolist()})
        assert status == 200, body[:300]
        _assert_like_native(body, rf_model, rows)
    finally:
        server.stop()
    monkeypatch.setenv("NBDEPLOY_TLS_KEY", str(tmp_path / "missing.pem"))
    with pytest.raises(nbdeploy.NbdeployError, match="NBDEPLOY_TLS_KEY"):
        d.serve()
