"""The server extension's rollout routes against a real stable server with a canary in progress:
GET servers/{id}/rollout shows both versions and their comparison; promote and rollback (jobs)
change what the real server answers with."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from tornado.httpclient import HTTPClientError

import nbdeploy
from nbdeploy import serve

pytest_plugins = ["pytest_jupyter.jupyter_server"]
pytestmark = pytest.mark.slow

NAME = "rollout-ui"


@pytest.fixture
def jp_server_config(jp_server_config):
    jp_server_config["ServerApp"]["jpserver_extensions"]["nbdeploy"] = True
    return jp_server_config


@pytest.fixture(scope="module")
def two_versions(ref_copy, breast_cancer):
    from sklearn.ensemble import RandomForestClassifier

    X_train, X_test, y_train, _ = breast_cancer
    v1 = ref_copy(NAME)
    model2 = RandomForestClassifier(n_estimators=5, max_depth=2, random_state=1).fit(X_train, y_train)
    v2 = nbdeploy.deploy(model2, X_test, name=NAME, explain="none", quantize="none").tag
    yield v1, v2, X_test.values[[0, 1, 17]].tolist()
    for h in serve.find(NAME):
        h.stop()


def _json(resp):
    return json.loads(resp.body)


async def _wait_job(jp_fetch, job: dict, timeout: float = 120.0) -> dict:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        j = _json(await jp_fetch("nbdeploy", "jobs", job["id"]))
        if j["status"] in ("done", "failed"):
            return j
        await asyncio.sleep(0.2)
    raise AssertionError(f"job {job} did not finish")


def _check(name: str, instance) -> None:
    import openapi_schema_validator as oas
    import yaml

    spec = yaml.safe_load((Path(nbdeploy.__file__).parent / "server" / "openapi.yaml").read_text())
    oas.validate(instance, dict(spec["components"]["schemas"][name], components=spec["components"]),
                 cls=oas.OAS30Validator)


async def _predict(url: str, rows, n: int) -> None:
    from tornado.httpclient import AsyncHTTPClient

    client = AsyncHTTPClient()
    for _ in range(n):
        r = await client.fetch(url + "/predict", method="POST", body=json.dumps({"inputs": rows}),
                               headers={"Content-Type": "application/json"})
        assert r.code == 200


async def test_rollout_status_promote_and_rollback_routes(jp_fetch, two_versions):
    v1, v2, rows = two_versions
    # start it through the extension, as the sidebar does
    r = await jp_fetch("nbdeploy", "bundles", v1, "serve", method="POST", body=json.dumps({"stable": True}))
    started = await _wait_job(jp_fetch, _json(r))
    assert started["status"] == "done", (started.get("error"), started.get("progress"))
    sid = started["result"]["id"]
    assert started["result"]["stable"] is True
    try:
        listed = [s for s in _json(await jp_fetch("nbdeploy", "servers"))["servers"] if s["id"] == sid]
        assert listed and listed[0]["stable"] is True
        st = _json(await jp_fetch("nbdeploy", "servers", sid, "rollout"))
        _check("Rollout", st)
        assert st["stable"] is True and st["primary"]["tag"] == v1 and st["canary"] is None

        await asyncio.get_running_loop().run_in_executor(None, lambda: serve.rollout(sid, v2, canary=50))
        await _predict(started["result"]["url"], rows, 80)
        st = _json(await jp_fetch("nbdeploy", "servers", sid, "rollout"))
        _check("Rollout", st)
        assert st["primary"]["tag"] == v1 and st["canary"]["tag"] == v2
        assert st["weight"] == pytest.approx(0.5)
        assert st["canary"]["requests"] > 0 and st["primary"]["requests"] > 0
        assert st["canary"]["error_rate"] == 0.0 and st["canary"]["mean_ms"] > 0
        assert st["canary"]["compared_rows"] > 0
        # the two models disagree on row 17 of the three: a third of compared rows differ
        assert st["canary"]["differ_share"] == pytest.approx(1 / 3)
        assert "src" not in st["primary"] and "src" not in st["canary"]   # no local paths
        assert st["events"][-1]["op"] == "canary"

        r = await jp_fetch("nbdeploy", "servers", sid, "promote", method="POST", body="{}")
        assert r.code == 202
        done = await _wait_job(jp_fetch, _json(r))
        assert done["status"] == "done" and done["result"] == {"id": sid, "tag": v2}, done
        st = _json(await jp_fetch("nbdeploy", "servers", sid, "rollout"))
        assert st["primary"]["tag"] == v2 and st["canary"] is None and st["previous"] == {"tag": v1}
        assert serve.find(sid)[0].tag == v2

        r = await jp_fetch("nbdeploy", "servers", sid, "rollback", method="POST", body="{}")
        done = await _wait_job(jp_fetch, _json(r))
        assert done["status"] == "done" and done["result"] == {"id": sid, "tag": v1}, done
        st = _json(await jp_fetch("nbdeploy", "servers", sid, "rollout"))
        assert st["primary"]["tag"] == v1
        assert [e["op"] for e in st["events"]][-3:] == ["canary", "promote", "rollback"]
        # what the real server answers with follows
        from tornado.httpclient import AsyncHTTPClient

        meta = await AsyncHTTPClient().fetch(started["result"]["url"] + "/metadata")
        assert json.loads(meta.body)["tag"] == v1
    finally:
        serve.stop(sid)


async def test_rollout_of_a_plain_server_says_not_stable_and_promote_fails(jp_fetch, two_versions):
    v1, _, _ = two_versions
    h = serve.start(v1)
    try:
        st = _json(await jp_fetch("nbdeploy", "servers", h.id, "rollout"))
        _check("Rollout", st)
        assert st == {"id": h.id, "name": NAME, "stable": False, "primary": {"tag": v1}, "canary": None}
        r = await jp_fetch("nbdeploy", "servers", h.id, "promote", method="POST", body="{}")
        failed = await _wait_job(jp_fetch, _json(r))
        assert failed["status"] == "failed" and failed["http_status"] == 400
        assert "stable address" in failed["error"]["message"]
    finally:
        h.stop()


async def test_rollout_routes_404_for_unknown_server(jp_fetch):
    for parts, method in [(("servers", "no-such-1", "rollout"), "GET"),
                          (("servers", "no-such-1", "promote"), "POST"),
                          (("servers", "no-such-1", "rollback"), "POST")]:
        with pytest.raises(HTTPClientError) as e:
            await jp_fetch("nbdeploy", *parts, method=method, body="{}" if method == "POST" else None)
        assert e.value.code == 404
