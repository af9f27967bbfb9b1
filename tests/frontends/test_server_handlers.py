"""The Jupyter server extension's REST API, through a real jupyter_server (pytest-jupyter)."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.parse
from pathlib import Path

import pytest
from conftest import http
from tornado.httpclient import HTTPClientError

pytest_plugins = ["pytest_jupyter.jupyter_server"]

NAME = "handlers-rf"
# the smallest valid PNG (1x1, transparent)
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c63000100000500010d0a2db40000000049454e44ae426082")


@pytest.fixture(scope="module")
def bundle(ref_copy):
    """One bundle made by nbdeploy (a copy of the session's reference bundle, which this module
    changes), plus a plot (and a hostile symlink) in its plots folder."""
    from nbdeploy import store

    tag = ref_copy(NAME)
    assert store.list_bundles(NAME)[0].tag == tag
    plots = store.bundle_dir(tag) / "plots"
    plots.mkdir(exist_ok=True)
    (plots / "test-plot.png").write_bytes(PNG)
    secret = Path(store.bundle_dir(tag)).parents[4] / "outside-secret.png"
    secret.write_bytes(b"SECRET")
    link = plots / "escape.png"
    if not link.exists():
        link.symlink_to(secret)
    yield tag


@pytest.fixture
def jp_server_config(jp_server_config):
    jp_server_config["ServerApp"]["jpserver_extensions"]["nbdeploy"] = True
    return jp_server_config


def _json(resp):
    return json.loads(resp.body)


async def _status(fetch, *parts, **kw) -> tuple[int, bytes]:
    try:
        r = await fetch(*parts, **kw)
        return r.code, r.body
    except HTTPClientError as e:
        return e.code, (e.response.body if e.response is not None else b"")


@pytest.fixture
def raw_fetch(http_server_client, jp_base_url, jp_auth_header):
    """Like jp_fetch, but each path segment is fully %-encoded ('/' too), so hostile names
    reach the server as one segment, and errors come back as (code, body)."""

    async def fetch(*segments, method="GET", body=None, params=None, auth=True):
        path = "/".join(urllib.parse.quote(s, safe="") for s in segments)
        url = jp_base_url + "nbdeploy/" + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        r = await http_server_client.fetch(url, method=method, body=body, raise_error=False,
                                           headers=dict(jp_auth_header) if auth else {},
                                           allow_nonstandard_methods=True)
        return r.code, r.body

    return fetch


async def _wait_job(jp_fetch, job: dict, timeout: float = 120.0, seen: list | None = None) -> dict:
    """Poll a job to its end; ``seen`` collects every progress report polled on the way."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        j = _json(await jp_fetch("nbdeploy", "jobs", job["id"]))
        if seen is not None:
            seen.append(j["progress"])
        if j["status"] in ("done", "failed"):
            return j
        await asyncio.sleep(0.3)
    raise AssertionError(f"job {job} did not finish in {timeout} s")


def _assert_progress_ends(seen: list, done: dict) -> None:
    """Fractions only go forward, and a finished job's bar is full with the message 'done'."""
    fractions = [p["fraction"] for p in seen if p["fraction"] is not None]
    assert fractions == sorted(fractions), seen
    assert all(0.0 <= f <= 1.0 for f in fractions), seen
    assert done["progress"]["fraction"] == 1.0 and done["progress"]["message"] == "done", done


# --- reading -------------------------------------------------------------------------------------

async def test_info(jp_fetch):
    r = _json(await jp_fetch("nbdeploy", "info"))
    assert r["name"] == "nbdeploy" and "version" in r and r["push"] is True


async def test_list_bundles(jp_fetch, bundle):
    body = _json(await jp_fetch("nbdeploy", "bundles"))
    mine = [b for b in body["bundles"] if b["tag"] == bundle]
    assert mine, body
    b = mine[0]
    assert b["name"] == NAME and b["size_bytes"] > 0 and b["variant"] and b["created"]
    one = _json(await jp_fetch("nbdeploy", "bundles", params={"name": NAME}))
    assert {x["name"] for x in one["bundles"]} == {NAME}
    versions = _json(await jp_fetch("nbdeploy", "bundles", NAME))
    assert versions["name"] == NAME and bundle in [v["tag"] for v in versions["versions"]]
    exact = _json(await jp_fetch("nbdeploy", "bundles", bundle))
    assert [v["tag"] for v in exact["versions"]] == [bundle]


async def test_report_and_plot(jp_fetch, bundle):
    r = _json(await jp_fetch("nbdeploy", "bundles", bundle, "report"))
    assert r["tag"] == bundle
    rep = r["report"]
    assert rep["verify"]["passed"] is True and rep["chosen_variant"]
    assert "test-plot.png" in rep["plots"]
    # the name alone means the latest version
    assert _json(await jp_fetch("nbdeploy", "bundles", NAME, "report"))["tag"] == bundle
    png = await jp_fetch("nbdeploy", "bundles", bundle, "plots", "test-plot.png")
    assert png.headers["Content-Type"] == "image/png" and png.body == PNG
    assert png.headers["X-Content-Type-Options"] == "nosniff"


async def test_plot_symlink_out_of_the_bundle_is_not_served(jp_fetch, bundle):
    code, body = await _status(jp_fetch, "nbdeploy", "bundles", bundle, "plots", "escape.png")
    assert code == 404 and b"SECRET" not in body


# --- errors: 400 / 404, escaped bodies -----------------------------------------------------------

@pytest.mark.parametrize("parts", [
    ("bundles", "Bad Name", "report"),
    ("bundles", "..", "report"),
    ("bundles", "../../etc/passwd", "report"),       # %2F-encoded: one path segment, decoded by tornado
    ("bundles", "x:../..", "report"),
    ("bundles", "/etc/passwd", "report"),
    ("bundles", "UPPER", "report"),
    ("bundles", "ok", "plots", "../../secret.png"),
    ("bundles", "ok", "plots", "..png"),
    ("bundles", "ok", "plots", "evil.txt"),
    ("servers", "..", "logs"),
    ("servers", "../../../etc/passwd", "logs"),
    ("servers", "a/../../x", "logs"),
    ("jobs", "not-a-job"),
])
async def test_bad_names_400(raw_fetch, parts):
    code, body = await raw_fetch(*parts)
    assert code == 400, (parts, code, body)
    err = json.loads(body)
    assert err["error"] == "InvalidNameError" and err["message"]


async def test_bad_query_and_body_400(jp_fetch, bundle):
    code, _ = await _status(jp_fetch, "nbdeploy", "bundles", params={"name": "../x"})
    assert code == 400
    code, _ = await _status(jp_fetch, "nbdeploy", "servers", "x-1", "logs", params={"tail": "lots"})
    assert code == 400
    code, body = await _status(jp_fetch, "nbdeploy", "bundles", bundle, "serve", method="POST", body="{not json")
    assert code == 400 and json.loads(body)["error"] == "InvalidInputError"
    code, _ = await _status(jp_fetch, "nbdeploy", "bundles", bundle, "serve", method="POST", body="[1]")
    assert code == 400
    code, _ = await _status(jp_fetch, "nbdeploy", "bundles", bundle, "serve", method="POST",
                            body=json.dumps({"port": 80}))
    assert code == 400
    # deleting needs a version
    code, _ = await _status(jp_fetch, "nbdeploy", "bundles", NAME, method="DELETE")
    assert code == 400


@pytest.mark.parametrize("parts,method", [
    (("bundles", "no-such-bundle", "report"), "GET"),
    (("bundles", "no-such-bundle"), "GET"),
    (("bundles", "no-such-bundle:v1"), "DELETE"),
    (("bundles", "no-such-bundle", "plots", "a.png"), "GET"),
    (("bundles", "no-such-bundle", "serve"), "POST"),
    (("servers", "no-such-server-1", "stop"), "POST"),
    (("servers", "no-such-server-1", "logs"), "GET"),
    (("jobs", "0" * 32), "GET"),
])
async def test_unknown_404(jp_fetch, bundle, parts, method):
    kw = {"body": "{}"} if method == "POST" else {}
    code, body = await _status(jp_fetch, "nbdeploy", *parts, method=method, **kw)
    assert code == 404, (parts, code, body)
    err = json.loads(body)
    assert err["error"] == "NotFoundError" and err["message"]


async def test_unknown_plot_of_real_bundle_404(jp_fetch, bundle):
    code, body = await _status(jp_fetch, "nbdeploy", "bundles", bundle, "plots", "nope.png")
    assert code == 404 and "test-plot.png" in json.loads(body)["hint"]


async def test_error_bodies_escape_their_input(raw_fetch):
    evil = "<script>alert(1)</script>"
    for parts in [("bundles", evil, "report"), ("servers", evil, "logs"), ("jobs", evil),
                  ("bundles", "ok", "plots", evil + ".png")]:
        code, body = await raw_fetch(*parts)
        assert code == 400
        assert b"<" not in body and b">" not in body, body
        err = json.loads(body)  # still valid JSON, and the message names what was received
        assert "<script>" in err["message"]


# --- auth ----------------------------------------------------------------------------------------

def _nbdeploy_routes(app) -> list[tuple[str, type]]:
    """Every (pattern, handler) registered under /nbdeploy/, walking tornado's nested routers."""
    from tornado.routing import Rule, RuleRouter

    out = []

    def walk(router):
        for rule in getattr(router, "rules", []):
            target = rule.target
            if isinstance(target, (RuleRouter,)) or hasattr(target, "rules"):
                walk(target)
            elif isinstance(rule, Rule) and isinstance(target, type):
                pattern = getattr(rule.matcher, "regex", None)
                if pattern is not None and "/nbdeploy" in pattern.pattern:
                    out.append((pattern.pattern, target))

    walk(app.default_router)
    walk(app.wildcard_router)
    return out


def _sample_path(pattern: str, base_url: str) -> str:
    """A concrete URL for a route pattern: each group becomes a harmless valid segment."""
    path = pattern.rstrip("$")
    path = re.sub(r"\(\[\^/\]\+\)", "x1", path)
    assert "(" not in path, path
    return path


async def test_every_nbdeploy_route_requires_auth(jp_serverapp, http_server_client, jp_base_url, bundle):
    routes = _nbdeploy_routes(jp_serverapp.web_app)
    from nbdeploy.server.handlers import ROUTES

    assert len(routes) >= len(ROUTES), routes
    checked = 0
    for pattern, handler in routes:
        url = _sample_path(pattern, jp_base_url)
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            impl = getattr(handler, method.lower(), None)
            from tornado.web import RequestHandler

            if impl is None or impl is getattr(RequestHandler, method.lower()):
                continue  # not implemented: tornado answers 405
            body = "{}" if method in ("POST", "PUT", "PATCH") else None
            try:
                r = await http_server_client.fetch(url, method=method, body=body, raise_error=False)
                code, text = r.code, r.body
            except HTTPClientError as e:  # pragma: no cover
                code, text = e.code, b""
            assert code == 403, f"{method} {url} answered {code} without a token: {text[:200]!r}"
            checked += 1
    assert checked >= len(ROUTES)


async def test_wrong_token_403(http_server_client, jp_base_url):
    url = jp_base_url + "nbdeploy/bundles"
    r = await http_server_client.fetch(url, headers={"Authorization": "token wrong"}, raise_error=False)
    assert r.code == 403


async def test_post_without_xsrf_403(jp_serverapp, http_server_client, jp_fetch, jp_base_url, bundle):
    """A browser session (cookie auth) must send the XSRF token on POST/DELETE."""
    r = await jp_fetch("nbdeploy", "info")
    cookies = [c.split(";", 1)[0] for c in r.headers.get_list("Set-Cookie")]
    login = [c for c in cookies if c.startswith("username-")]
    assert login, cookies
    cookie = login[0]
    # cookie alone authenticates a GET
    ok = await http_server_client.fetch(jp_base_url + "nbdeploy/info", headers={"Cookie": cookie},
                                        raise_error=False)
    assert ok.code == 200
    targets = [(f"{jp_base_url}nbdeploy/bundles/{bundle}/serve", "POST"),
               (f"{jp_base_url}nbdeploy/bundles/{bundle}", "DELETE")]
    # and every state-changing method of every registered nbdeploy route
    from tornado.web import RequestHandler

    for pattern, handler in _nbdeploy_routes(jp_serverapp.web_app):
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            impl = getattr(handler, method.lower(), None)
            if impl is not None and impl is not getattr(RequestHandler, method.lower()):
                targets.append((_sample_path(pattern, jp_base_url), method))
    assert len(targets) >= 6, targets
    for url, method in targets:
        r = await http_server_client.fetch(url, method=method, headers={"Cookie": cookie},
                                           body="{}" if method != "DELETE" else None, raise_error=False,
                                           allow_nonstandard_methods=True)
        assert r.code == 403, (url, method, r.code, r.body)
    # with the XSRF cookie + header it goes through (404: the server does not exist)
    xsrf = "2|abcdef01|0123456789abcdef0123456789abcdef|1700000000"
    r = await http_server_client.fetch(
        jp_base_url + "nbdeploy/servers/x-1/stop", method="POST", body="{}", raise_error=False,
        headers={"Cookie": f"{cookie}; _xsrf={xsrf}", "X-XSRFToken": xsrf})
    assert r.code == 404, r.body


# --- actions -------------------------------------------------------------------------------------

async def test_push_rejects_bad_input_before_starting_a_job(jp_fetch, bundle):
    for body in ({"ref": "Not A Ref!!"}, {}, {"ref": "127.0.0.1:5000/x:1", "insecure": "yes"},
                 {"ref": "127.0.0.1:5000/x:1", "base": 5}, {"ref": "127.0.0.1:5000/x:1", "base": "Not A Ref"}):
        code, answer = await _status(jp_fetch, "nbdeploy", "bundles", bundle, "push", method="POST",
                                     body=json.dumps(body))
        assert code == 400, (body, answer)
        assert json.loads(answer)["error"] == "InvalidInputError"


@pytest.mark.slow
async def test_push_job_pushes_to_a_real_registry(jp_fetch, bundle, registry, base_image_ref,
                                                  shared_image_cache, monkeypatch):
    """POST push {ref, base} -> 202 job -> the image is in the registry under the digest the job reports."""
    from containers.fixtures import assert_pushed

    # the body's base wins over the server's default
    monkeypatch.setenv("NBDEPLOY_BASE_IMAGE", f"{registry.host}/base/no-such-python:3.11")
    ref = f"{registry.host}/handlers/rf:1"
    r = await jp_fetch("nbdeploy", "bundles", bundle, "push", method="POST",
                       body=json.dumps({"ref": ref, "base": base_image_ref}))
    assert r.code == 202
    seen: list = []
    done = await _wait_job(jp_fetch, _json(r), timeout=300, seen=seen)
    assert done["status"] == "done" and done["kind"] == "push", done
    _assert_progress_ends(seen, done)
    # the steps were reported as they ran: the build, then the blob uploads (or the manifest)
    messages = [p["message"] for p in seen]
    assert any(m.startswith(("building the image", "uploading", "manifest")) for m in messages), messages
    pinned = done["result"]["pinned"]
    assert pinned == f"{ref}@{done['result']['digest']}"
    assert_pushed(registry, ref, done["result"]["digest"], base=base_image_ref)


@pytest.mark.slow
async def test_push_job_to_an_unreachable_registry_fails_with_502(jp_fetch, bundle, registry, base_image_ref,
                                                                  shared_image_cache):
    from containers.fixtures import free_port

    ref = f"127.0.0.1:{free_port()}/handlers/rf:1"          # nothing listens there
    r = await jp_fetch("nbdeploy", "bundles", bundle, "push", method="POST",
                       body=json.dumps({"ref": ref, "base": base_image_ref}))
    failed = await _wait_job(jp_fetch, _json(r), timeout=300)
    assert failed["status"] == "failed" and failed["http_status"] == 502, failed
    # a failed job's bar stops where it was: never full, never "done"
    assert failed["progress"]["fraction"] < 1.0 and failed["progress"]["message"] != "done", failed
    err = failed["error"]
    assert err["error"] == "RegistryUnreachableError" and err["message"].startswith("Cannot reach registry 127.0.0.1:")
    assert "Check the registry address" in err["hint"] and "Traceback" not in json.dumps(failed)


async def test_jobs_list(jp_fetch):
    assert isinstance(_json(await jp_fetch("nbdeploy", "jobs"))["jobs"], list)


@pytest.mark.slow
async def test_serve_logs_stop_delete_end_to_end(jp_fetch, bundle):
    r = await jp_fetch("nbdeploy", "bundles", bundle, "serve", method="POST", body="{}")
    assert r.code == 202 and r.headers["Location"].endswith(_json(r)["id"])
    job = _json(r)
    assert job["kind"] == "serve" and job["target"] == bundle
    # the event loop stays free while the server starts
    t = asyncio.get_running_loop().time()
    await jp_fetch("nbdeploy", "info")
    assert asyncio.get_running_loop().time() - t < 2
    seen: list = []
    done = await _wait_job(jp_fetch, job, seen=seen)
    assert done["status"] == "done", (done.get("error"), done.get("progress"))
    _assert_progress_ends(seen, done)
    # while it started, the job said what it was waiting for
    assert any(p["message"].startswith(("starting bentoml serve", "waiting for http://127.0.0.1:"))
               for p in seen), seen
    sid = done["result"]["id"]
    assert done["result"]["health"] == "ready" and done["result"]["url"].startswith("http://127.0.0.1:")
    try:
        servers = _json(await jp_fetch("nbdeploy", "servers"))["servers"]
        mine = [s for s in servers if s["id"] == sid]
        assert mine and mine[0]["health"] == "ready" and mine[0]["tag"] == bundle

        # the snippets aim at this server, and their request is one it answers
        snips = _json(await jp_fetch("nbdeploy", "bundles", bundle, "snippets"))
        assert snips["url"] == done["result"]["url"] and "bentoml serve" not in snips["curl"], snips
        assert snips["curl"].startswith(f"curl -X POST {snips['url']}/predict"), snips
        body = snips["curl"].split("-d '", 1)[1].rsplit("'", 1)[0]
        assert f"json={body}" in snips["python"], snips
        answer = http("POST", snips["url"] + "/predict", data=body.encode(),
                      headers={"Content-Type": "application/json"})
        assert answer[0] == 200 and len(answer[1]["predictions"]) == 1, answer

        logs = _json(await jp_fetch("nbdeploy", "servers", sid, "logs", params={"tail": "50"}))
        assert logs["running"] is True and logs["offset"] > 0 and logs["text"]
        more = _json(await jp_fetch("nbdeploy", "servers", sid, "logs", params={"offset": str(logs["offset"])}))
        assert more["offset"] >= logs["offset"]

        # streamed: text/plain chunks while it runs, for at most `seconds`
        chunks = []
        streamed = await jp_fetch("nbdeploy", "servers", sid, "logs", params={"follow": "1", "seconds": "2"},
                                  streaming_callback=chunks.append, request_timeout=30)
        assert streamed.headers["Content-Type"].startswith("text/plain") and chunks
        assert b"".join(chunks).decode().strip()

        # a served version cannot be deleted
        code, body = await _status(jp_fetch, "nbdeploy", "bundles", bundle, method="DELETE")
        assert code == 400 and b"stop it first" in body
    finally:
        r = await jp_fetch("nbdeploy", "servers", sid, "stop", method="POST", body="{}")
        assert r.code == 202
        stopped = await _wait_job(jp_fetch, _json(r), timeout=60)
    assert stopped["status"] == "done" and stopped["result"]["stopped"] == [sid]
    servers = _json(await jp_fetch("nbdeploy", "servers"))["servers"]
    assert sid not in [s["id"] for s in servers]
    # the log outlives the server (why did it stop?)
    assert _json(await jp_fetch("nbdeploy", "servers", sid, "logs"))["running"] is False
    # following a stopped server's log returns what there is and ends
    t = asyncio.get_running_loop().time()
    r = await jp_fetch("nbdeploy", "servers", sid, "logs", params={"follow": "true", "offset": "0"})
    assert r.body and asyncio.get_running_loop().time() - t < 5


@pytest.mark.slow
async def test_failed_job_reports_error(jp_fetch, bundle):
    """A job whose core call fails is 'failed' with the error's JSON and status, not a 500."""
    import socket

    from nbdeploy.serve import free_port

    port = free_port()
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen(1)
    try:
        # a busy port: start fails fast inside the job
        r = await jp_fetch("nbdeploy", "bundles", bundle, "serve", method="POST", body=json.dumps({"port": port}))
        done = await _wait_job(jp_fetch, _json(r), timeout=120)
    finally:
        s.close()
    from nbdeploy.errors import ServeError

    # a server that cannot start is nbdeploy's ServeError, which the one mapping makes a 500
    assert done["status"] == "failed" and done["http_status"] == ServeError.http_status == 500, done
    assert done["error"]["error"] == "ServeError", done
    assert "already in use" in done["error"]["message"].lower(), done["error"]["message"]
    assert done["error"]["hint"] and "Traceback" not in json.dumps(done)


async def test_delete_version(jp_fetch, ref_copy):
    from nbdeploy import store

    tag = ref_copy("handlers-delete-me")
    assert store.list_bundles("handlers-delete-me")[0].tag == tag
    r = _json(await jp_fetch("nbdeploy", "bundles", tag, method="DELETE"))
    assert r["deleted"] == tag
    code, _ = await _status(jp_fetch, "nbdeploy", "bundles", tag, "report")
    assert code == 404


def test_openapi_documents_every_route():
    import yaml

    from nbdeploy.server.handlers import ROUTES

    spec = yaml.safe_load((Path(__import__("nbdeploy.server").server.__file__).parent / "openapi.yaml").read_text())
    documented = set(spec["paths"])
    for path, handler in ROUTES:
        templ = "/nbdeploy/" + path
        for name in ("{tag}", "{plot}", "{id}"):
            templ = templ.replace("([^/]+)", name, 1) if "([^/]+)" in templ else templ
        # normalise both sides: any {param} matches
        norm = re.sub(r"\{[^}]+\}", "{}", templ)
        assert norm in {re.sub(r"\{[^}]+\}", "{}", p) for p in documented}, templ
        for m in ("get", "post", "delete"):
            if m in handler.__dict__:
                entry = next(v for p, v in spec["paths"].items() if re.sub(r"\{[^}]+\}", "{}", p) == norm)
                assert m in entry, (templ, m)


def test_openapi_is_valid():
    import openapi_spec_validator as validator  # a test dependency: missing is a failure
    import yaml

    spec = yaml.safe_load((Path(__import__("nbdeploy.server").server.__file__).parent / "openapi.yaml").read_text())
    validator.validate(spec)


async def test_responses_match_openapi_schemas(jp_fetch, raw_fetch, bundle):
    import openapi_schema_validator as oas  # comes with openapi-spec-validator
    import yaml

    spec = yaml.safe_load((Path(__import__("nbdeploy.server").server.__file__).parent / "openapi.yaml").read_text())

    def check(name: str, instance):
        schema = dict(spec["components"]["schemas"][name], components=spec["components"])
        oas.validate(instance, schema, cls=oas.OAS30Validator)

    for b in _json(await jp_fetch("nbdeploy", "bundles"))["bundles"]:
        check("Bundle", b)
    for j in _json(await jp_fetch("nbdeploy", "jobs"))["jobs"]:
        check("Job", j)
    code, body = await raw_fetch("bundles", "no-such", "report")
    assert code == 404
    check("Error", json.loads(body))


@pytest.mark.parametrize("spec, expected", [
    ({"input_mode": "tensor", "n_features": 3}, (False, [0.0, 0.0, 0.0])),
    ({"input_mode": "columns", "feature_names": ["a", "b"]}, (False, [0.0, 0.0])),
    ({"feature_names": ["a"]}, (False, [0.0])),                       # older specs: tensor
    ({"input_mode": "tensor", "n_features": 150528, "input_shape": [None, 3, 224, 224]}, None),
    ({"input_mode": "text"}, None),
    ({"input_mode": "table", "columns": [{"name": "age", "kind": "numeric"},
                                         {"name": "city", "kind": "categorical", "categories": ["Oslo"]}]},
     (True, [0.0, "Oslo"])),
])
def test_snippet_example_row_by_input_kind(tmp_path, spec, expected):
    """The snippets' example row: numeric rows for tensor and by-name column models, a record
    for tables, nothing for texts and images (never 150,528 zeros)."""
    import json

    from nbdeploy.server.handlers import _example_row

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "spec.json").write_text(json.dumps(spec))
    assert _example_row(tmp_path) == expected
