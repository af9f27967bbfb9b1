"""Registry credentials never leave the client: an echoing registry's error bodies are cut
and scrubbed before they reach an error, the CLI, a Deployment's repr/to_dict or a log;
credentials never go over plain HTTP to a token service on another host; the
Authorization header never goes to a URL on another origin."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
from echo_registry import MARKER, EchoRegistry, assert_clean

from nbdeploy.errors import RegistryError
from nbdeploy.image import image_from_rootfs
from nbdeploy.registry import RegistryClient, push_image, scrub

USER = "alice-" + os.urandom(3).hex()
PASSWORD = "s3cr3t-" + os.urandom(6).hex() + '"/+&'


@pytest.fixture
def echo():
    reg = EchoRegistry()
    yield reg
    reg.close()


@pytest.fixture
def creds_env(monkeypatch, tmp_path):
    monkeypatch.setenv("NBDEPLOY_REGISTRY_USER", USER)
    monkeypatch.setenv("NBDEPLOY_REGISTRY_PASSWORD", PASSWORD)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker"))


def small_image(tmp_path):
    root = tmp_path / "rootfs"
    root.mkdir()
    (root / "hello.txt").write_text("hello\n")
    return image_from_rootfs(root, home=tmp_path / "home", compresslevel=1)


@pytest.fixture(scope="module")
def deployed(regression_data):
    """A real nbdeploy bundle in the (session's) BentoML store, and its Deployment."""
    from sklearn.linear_model import LinearRegression

    import nbdeploy

    X, y = regression_data
    return nbdeploy.deploy(LinearRegression().fit(X, y), X[:50], name="secrets-lr", explain="none",
                           quantize="none")


def test_push_error_shows_the_body_but_no_credential(echo, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(RegistryError) as err:
        push_image(small_image(tmp_path), f"{echo.host}/team/m:1", credentials=(USER, PASSWORD))
    exc = err.value
    # the request really carried the credentials, and the registry really echoed them
    assert any(r["auth"] and r["auth"].startswith("Basic ") for r in echo.requests)
    assert MARKER in exc.message and "HTTP 400" in exc.message  # the body is still useful
    assert len(exc.message) < 600 and "\x1b" not in exc.message  # cut short, no terminal escapes
    for text in (str(exc), repr(exc), exc.message, exc.hint or "", json.dumps(exc.to_dict()), caplog.text):
        assert_clean(text, USER, PASSWORD)


def test_cli_deployment_and_report_show_no_credential(echo, creds_env, deployed):
    """`nbdeploy push` and Deployment.push with credentials from the environment; the base image
    is on the same (echoing) registry, so the credentials are used, and its error reaches the user."""
    ref, base = f"{echo.host}/team/m:1", f"{echo.host}/base/python:3.11"
    proc = subprocess.run([sys.executable, "-m", "nbdeploy.cli", "push", deployed.tag, ref, "--base", base],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert MARKER in proc.stderr and "Traceback" not in proc.stderr
    assert any(r["auth"] and r["auth"].startswith("Basic ") for r in echo.requests)
    assert_clean(proc.stdout + proc.stderr, USER, PASSWORD)

    n = len(echo.requests)
    with pytest.raises(RegistryError) as err:
        deployed.push(ref, base=base)
    assert len(echo.requests) > n and MARKER in err.value.message
    push_step = deployed.to_dict()["steps"]
    assert any(s.get("state") == "failed" and MARKER in json.dumps(s) for s in push_step)
    for text in (repr(deployed), json.dumps(deployed.to_dict(), default=str), deployed._repr_html_(),
                 str(err.value), json.dumps(err.value.to_dict())):
        assert_clean(text, USER, PASSWORD)


def test_plain_http_token_realm_on_another_host_gets_no_credentials(tmp_path):
    # '.invalid' never resolves (RFC 2606): were the credentials sent, the error would be
    # "Cannot reach", not a refusal
    reg = EchoRegistry(challenge='Bearer realm="http://token.nbdeploy.invalid/token",service="x"')
    try:
        client = RegistryClient(reg.host, credentials=(USER, PASSWORD), retries=1)
        with pytest.raises(RegistryError, match="refusing to send them") as err:
            client.check()
        assert "token.nbdeploy.invalid" in err.value.message
        assert_clean(json.dumps(err.value.to_dict()), USER, PASSWORD)
    finally:
        reg.close()


def test_upload_location_on_another_origin_gets_no_authorization(tmp_path):
    sink = EchoRegistry()  # another origin (port): records what it receives
    reg = EchoRegistry(upload_location=f"http://{sink.host}/v2/team/m/blobs/uploads/abc?state=1")
    try:
        with pytest.raises(RegistryError) as err:
            push_image(small_image(tmp_path), f"{reg.host}/team/m:1", credentials=(USER, PASSWORD))
        assert any(r["auth"] for r in reg.requests)  # the registry itself got them
        assert sink.requests and all(r["auth"] is None for r in sink.requests)
        assert "credentials only to the registry itself" in err.value.message
    finally:
        reg.close()
        sink.close()


def test_scrub_bounds_and_withholds():
    assert scrub("x" * 10_000).endswith("…") and len(scrub("x" * 10_000)) <= 201
    # a secret too short to replace safely: the whole text is withheld
    out = scrub("the password is q7z", ["q7z"])
    assert "q7z" not in out and "withheld" in out
    # Authorization-like values are scrubbed even when not among the known secrets
    out = scrub("{'Authorization': 'Bearer eyJhbGciOiJ.abc.def'} token=abcdef123456", limit=500)
    assert "eyJhbGciOiJ" not in out and "abcdef123456" not in out
