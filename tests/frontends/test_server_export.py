"""POST bundles/{tag}/export through a real jupyter_server: a job that writes a real archive under
the Jupyter root (which `nbdeploy import` reads back), refusing paths outside the root."""

from __future__ import annotations

import asyncio
import json

import pytest
from tornado.httpclient import HTTPClientError

pytest_plugins = ["pytest_jupyter.jupyter_server"]


@pytest.fixture
def jp_server_config(jp_server_config):
    jp_server_config["ServerApp"]["jpserver_extensions"]["nbdeploy"] = True
    return jp_server_config


async def _wait_job(jp_fetch, job: dict, timeout: float = 120.0) -> dict:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        j = json.loads((await jp_fetch("nbdeploy", "jobs", job["id"])).body)
        if j["status"] in ("done", "failed"):
            return j
        await asyncio.sleep(0.2)
    raise AssertionError(f"job {job} did not finish")


async def test_export_job_writes_an_archive_under_the_root(jp_fetch, jp_root_dir, ref_deployment):
    from nbdeploy.archive import inspect_archive

    tag = ref_deployment.tag
    (jp_root_dir / "exports").mkdir()
    r = await jp_fetch("nbdeploy", "bundles", tag, "export", method="POST",
                       body=json.dumps({"path": "exports/model.bento"}))
    assert r.code == 202
    done = await _wait_job(jp_fetch, json.loads(r.body))
    assert done["status"] == "done" and done["kind"] == "export", done
    # the job's progress ends: a full bar, "done"
    assert done["progress"]["fraction"] == 1.0 and done["progress"]["message"] == "done", done
    assert done["result"]["path"] == "exports/model.bento" and done["result"]["tag"] == tag
    archive = jp_root_dir / "exports" / "model.bento"
    assert archive.stat().st_size == done["result"]["size_bytes"] > 1000
    files = inspect_archive(archive)                      # passes every import check
    assert any(f.endswith("bento.yaml") for f in files), files[:10]
    # a second export to the same path is refused without overwrite, done with it
    r = await jp_fetch("nbdeploy", "bundles", tag, "export", method="POST",
                       body=json.dumps({"path": "exports/model.bento"}))
    failed = await _wait_job(jp_fetch, json.loads(r.body))
    assert failed["status"] == "failed" and "already exists" in failed["error"]["message"]
    assert failed["progress"]["message"].startswith("writing model.bento"), failed   # where it stopped
    r = await jp_fetch("nbdeploy", "bundles", tag, "export", method="POST",
                       body=json.dumps({"path": "exports/model.bento", "overwrite": True}))
    assert (await _wait_job(jp_fetch, json.loads(r.body)))["status"] == "done"


@pytest.mark.parametrize("body", [{}, {"path": ""}, {"path": 3}, {"path": "../outside.bento"},
                                  {"path": "/tmp/outside.bento"}, {"path": "x.bento", "overwrite": "yes"}])
async def test_export_refuses_bad_paths_before_starting_a_job(jp_fetch, jp_root_dir, ref_deployment, body):
    jobs_before = len(json.loads((await jp_fetch("nbdeploy", "jobs")).body)["jobs"])
    with pytest.raises(HTTPClientError) as e:
        await jp_fetch("nbdeploy", "bundles", ref_deployment.tag, "export", method="POST", body=json.dumps(body))
    assert e.value.code == 400, e.value.response.body
    assert len(json.loads((await jp_fetch("nbdeploy", "jobs")).body)["jobs"]) == jobs_before
    assert not list(jp_root_dir.parent.glob("outside.bento"))


async def test_serve_with_auth_key_requires_a_key_and_says_how_to_get_one(jp_fetch, ref_copy):
    """serve with {"auth": "key"}: the server answers 401 without a key, 200 with one made by
    `nbdeploy keys create`; the replies say how to get a key and never carry one."""
    import urllib.error
    import urllib.request

    from nbdeploy import keys, serve

    key = keys.create("ui-test")          # in the test home's key file, which auth="key" serves
    tag = ref_copy("serve-key")
    r = await jp_fetch("nbdeploy", "bundles", tag, "serve", method="POST", body=json.dumps({"auth": "key"}))
    done = await _wait_job(jp_fetch, json.loads(r.body))
    try:
        assert done["status"] == "done", (done.get("error"), done.get("progress"))
        s = done["result"]
        assert s["auth"] == "key" and "nbdeploy keys create" in s["auth_hint"]
        listed = [x for x in json.loads((await jp_fetch("nbdeploy", "servers")).body)["servers"]
                  if x["id"] == s["id"]]
        assert listed[0]["auth"] == "key" and listed[0]["auth_hint"] == s["auth_hint"]
        assert key not in json.dumps(done) and key not in json.dumps(listed)
        body = json.dumps({"inputs": [[0.0] * 30]}).encode()
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(urllib.request.Request(s["url"] + "/predict", data=body,
                                                          headers={"Content-Type": "application/json"}), timeout=10)
        assert e.value.code == 401
        req = urllib.request.Request(s["url"] + "/predict", data=body, headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(req, timeout=10) as ok:
            assert ok.status == 200
    finally:
        serve.stop("serve-key")
        keys.revoke("ui-test")
    with pytest.raises(HTTPClientError) as e:
        await jp_fetch("nbdeploy", "bundles", tag, "serve", method="POST", body=json.dumps({"auth": "nope"}))
    assert e.value.code == 400
