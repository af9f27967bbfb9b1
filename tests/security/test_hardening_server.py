"""The Jupyter server extension against hostile input: deep JSON is a 400, and a push job to
an echoing registry reports its error through the jobs API without the credentials."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from echo_registry import MARKER, EchoRegistry, assert_clean
from tornado.httpclient import HTTPClientError

from nbdeploy.runtime.jsonlimits import MAX_JSON_DEPTH

pytest_plugins = ["pytest_jupyter.jupyter_server"]

USER = "bob-" + os.urandom(3).hex()
PASSWORD = "pw-" + os.urandom(6).hex() + "\\%"


@pytest.fixture
def jp_server_config(jp_server_config):
    jp_server_config["ServerApp"]["jpserver_extensions"]["nbdeploy"] = True
    return jp_server_config


@pytest.fixture(scope="module")
def bundle_tag(regression_data):
    from sklearn.linear_model import LinearRegression

    import nbdeploy

    X, y = regression_data
    return nbdeploy.deploy(LinearRegression().fit(X, y), X[:50], name="hardening-server", explain="none",
                           quantize="none").tag


async def _post(jp_fetch, *parts, body: bytes) -> tuple[int, dict]:
    try:
        r = await jp_fetch(*parts, method="POST", body=body)
        return r.code, json.loads(r.body)
    except HTTPClientError as e:
        return e.code, json.loads(e.response.body)


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 5000, 200_000])
async def test_deep_json_is_400(jp_fetch, depth):
    # serve and push both read a JSON body; the tag need not exist: the body is read first
    for route in ("serve", "push"):
        body = b'{"port": ' + b"[" * depth + b"]" * depth + b"}"
        code, answer = await _post(jp_fetch, "nbdeploy", "bundles", "no-such-bundle", route, body=body)
        assert code == 400, answer
        assert answer["error"] == "InvalidInputError" and "levels deep" in answer["message"]


async def test_push_job_error_has_no_credentials(jp_fetch, bundle_tag, monkeypatch, tmp_path):
    monkeypatch.setenv("NBDEPLOY_REGISTRY_USER", USER)
    monkeypatch.setenv("NBDEPLOY_REGISTRY_PASSWORD", PASSWORD)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker"))
    echo = EchoRegistry()
    try:
        # the base image is on the same registry, so the credentials are used for it at once
        body = json.dumps({"ref": f"{echo.host}/team/m:1", "base": f"{echo.host}/base/python:3.11"})
        r = await jp_fetch("nbdeploy", "bundles", bundle_tag, "push", method="POST", body=body)
        assert r.code == 202
        job = json.loads(r.body)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while job["status"] not in ("done", "failed") and loop.time() < deadline:
            await asyncio.sleep(0.3)
            job = json.loads((await jp_fetch("nbdeploy", "jobs", job["id"])).body)
        assert job["status"] == "failed" and job["http_status"] == 502, job
        assert MARKER in job["error"]["message"]
        assert any(q["auth"] and q["auth"].startswith("Basic ") for q in echo.requests)
        listing = (await jp_fetch("nbdeploy", "jobs")).body.decode()
        one = (await jp_fetch("nbdeploy", "jobs", job["id"])).body.decode()
        for text in (listing, one):
            # the API escapes '<', '>' and '&' as \u00XX; undo that before looking
            assert_clean(json.dumps(json.loads(text), ensure_ascii=False), USER, PASSWORD)
            assert_clean(text, USER, PASSWORD)
    finally:
        echo.close()
