"""REST handlers of the nbdeploy Jupyter server extension: HTTP in, core calls, JSON out.

All logic lives in the core (``nbdeploy.store``, ``nbdeploy.serve``, ``nbdeploy.registry``);
these handlers only validate input, run the core in a thread pool (never on the event loop)
and translate results and errors.  The route table is :func:`routes`; the API is documented
in ``openapi.yaml`` next to this file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.ioloop import IOLoop

from .. import __version__
from ..errors import InvalidInputError, InvalidNameError, NbdeployError, NotFoundError, http_status
from ..runtime.jsonlimits import JsonTooDeep, loads_bounded
from .jobs import JobManager

#: short reads (listing the store, reading a report, probing health) run here,
#: so they are not queued behind long jobs
_READ_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="nbdeploy-read")

_SERVER_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
_PLOT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.png$")
_JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")


def _escape_json(obj: Any) -> str:
    # JSON that is also inert as HTML: no raw '<', '>' or '&' ever reaches the client, so an
    # error body echoing a hostile name cannot become markup if someone renders it.
    return (json.dumps(obj, default=str).replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("&", "\\u0026"))


def validate_server_id(sid: str) -> str:
    if not isinstance(sid, str) or not _SERVER_ID_RE.match(sid) or ".." in sid:
        raise InvalidNameError(f"Invalid server id {sid!r}.",
                               hint="Server ids look like 'bundle-name-3000' (see GET /nbdeploy/servers).",
                               expected=_SERVER_ID_RE.pattern, received=repr(sid))
    return sid


def validate_plot(plot: str) -> str:
    if not _PLOT_RE.match(plot) or ".." in plot:
        raise InvalidNameError(f"Invalid plot name {plot!r}.",
                               hint="Plot names are the PNG file names listed in the bundle's report.",
                               expected=_PLOT_RE.pattern, received=repr(plot))
    return plot


def _api(method: Callable) -> Callable:
    """Run a handler coroutine; any exception becomes a JSON error via ``_fail``."""

    async def wrapper(self: NbdeployHandler, *args, **kwargs):
        try:
            return await method(self, *args, **kwargs)
        except Exception as exc:
            self._fail(exc)

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


class NbdeployHandler(APIHandler):
    """Base: JSON replies, error mapping, the thread pools."""

    auth_resource = "nbdeploy"

    @property
    def jobs(self) -> JobManager:
        return self.settings["nbdeploy_jobs"]

    async def run(self, fn: Callable, *args) -> Any:
        """Run blocking core work off the event loop."""
        return await IOLoop.current().run_in_executor(_READ_POOL, fn, *args)

    def reply(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(_escape_json(obj))

    def _fail(self, exc: BaseException) -> None:
        """The one place a failure becomes an HTTP answer (status from ``errors.http_status``)."""
        if isinstance(exc, web.HTTPError):  # raised by tornado/jupyter itself: keep its status
            status = exc.status_code
            body = {"error": "HTTPError", "message": exc.log_message or exc.reason or str(status)}
        else:
            status = http_status(exc)
            if isinstance(exc, NbdeployError):
                body = exc.to_dict()
            else:
                self.log.error("nbdeploy: unexpected error in %s %s", self.request.method,
                               self.request.path, exc_info=exc)
                body = {"error": "InternalError",
                        "message": "Unexpected server error; details are in the Jupyter server log."}
        if self._finished:
            return
        self.clear()
        self.reply(body, status)

    def json_body(self) -> dict:
        raw = self.request.body or b"{}"
        try:
            body = loads_bounded(raw)
        except JsonTooDeep as exc:
            raise InvalidInputError(f"The request body nests arrays/objects more than {exc.limit} "
                                    "levels deep.", hint="Send a flat JSON object, e.g. {}.",
                                    expected=f"<= {exc.limit} levels",
                                    received=f"> {exc.limit} levels") from exc
        except ValueError as exc:
            raise InvalidInputError("The request body is not valid JSON.",
                                    hint="Send a JSON object, e.g. {}.") from exc
        if not isinstance(body, dict):
            raise InvalidInputError("The request body must be a JSON object.",
                                    expected="object", received=type(body).__name__)
        return body

    def job_reply(self, job) -> None:
        self.set_header("Location", url_path_join(self.base_url, "nbdeploy", "jobs", job.id))
        self.reply(job.to_dict(), 202)


# --- helpers running in the pool (core calls only) ----------------------------------------------

def _list(name: str | None) -> list:
    from ..store import list_bundles

    try:
        return list_bundles(name)
    except Exception as exc:
        # bentoml raises its own NotFound for a name with no versions: that is just "none"
        if name and type(exc).__name__ == "NotFound":
            return []
        raise


def _bundles(name: str | None) -> list[dict]:
    return [s.to_dict() for s in _list(name)]


def _bundle(tag: str) -> dict:
    from ..schema import validate_tag

    validate_tag(tag)
    name, _, version = tag.partition(":")
    versions = [s.to_dict() for s in _list(name)]
    if version:
        versions = [v for v in versions if v["version"] == version]
    if not versions:
        raise NotFoundError(f"No bundle {tag!r} in the store.", hint="GET /nbdeploy/bundles lists them.")
    return {"name": name, "versions": versions}


def _report(tag: str) -> dict:
    from ..store import get, read_report

    bento = get(tag)
    report = read_report(str(bento.tag))
    return {"tag": str(bento.tag), "report": report}


def _report_html(tag: str) -> dict:
    """The report tab's page: the model card as HTML (inline plots) and the versions of its name."""
    from ..report import card_html
    from ..store import get, read_report

    tag = str(get(tag).tag)
    card = read_report(tag)
    plots = {p: _plot_bytes(tag, p) for p in card.get("plots", [])}
    name = tag.split(":")[0]
    versions = []
    for s in _list(name)[:4]:
        t = s.to_dict()["tag"]
        try:
            versions.append((t, card if t == tag else read_report(t)))
        except Exception:  # a version without a readable card is left out of the comparison
            continue
    return {"tag": tag, "html": card_html(tag, card, plots, versions)}


def _plot_bytes(tag: str, plot: str) -> bytes:
    from ..store import bundle_dir, plot_path

    src = bundle_dir(tag).resolve()
    p = plot_path(tag, plot)
    # never follow a link out of the bundle
    if p.is_symlink() or not p.resolve().is_relative_to(src):
        raise NotFoundError(f"Bundle {tag!r} has no plot {plot!r}.")
    return p.read_bytes()


def _example_row(src) -> tuple[bool, list] | None:
    """(is_table, one example row) for a bundle's snippets: each numeric feature's median from
    the drift baseline (0 without one), a categorical column's first category.  ``None`` for
    inputs that are not rows of features (text, images)."""
    import json as _json

    spec = _json.loads((src / "model" / "spec.json").read_text(encoding="utf-8"))
    mode = spec.get("input_mode") or "tensor"
    if mode not in ("tensor", "columns", "table") or len(spec.get("input_shape") or ()) > 2:
        return None     # texts, images and N-D tensors: no row of features to show
    medians: dict = {}
    try:
        base = _json.loads((src / "model" / "baseline.json").read_text(encoding="utf-8"))
        for name, edges in zip(base.get("feature_names", []), base.get("edges", [])):
            if edges:
                medians[name] = float(f"{edges[len(edges) // 2]:.4g}")
    except (OSError, ValueError, TypeError):
        pass
    if mode != "table":        # numeric rows, in feature order (by position or by column name)
        names = spec.get("feature_names") or [f"f{i}" for i in range(int(spec.get("n_features") or 0))]
        return False, [medians.get(n, 0.0) for n in names]
    row = []
    for col in spec.get("columns") or []:
        if col.get("kind") == "numeric":
            row.append(medians.get(col["name"], 0.0))
        else:
            row.append((col.get("categories") or [""])[0])
    return True, row


def _snippets(tag: str) -> dict:
    """curl and Python calls of the bundle's ``/predict`` (the widget's snippets, report.snippets),
    aimed at its running server if there is one, with an example row built from its schema."""
    from types import SimpleNamespace

    from ..report import snippets
    from ..serve import find
    from ..store import bundle_dir, get

    tag = str(get(tag).tag)
    example = _example_row(bundle_dir(tag))
    running = [h for h in find(tag) if h.tag == tag]
    server = running[0] if running else None
    if example is None:
        return {"tag": tag, "url": server.url if server else None, "curl": None, "python": None}
    is_table, row = example
    spec_cols = []
    if is_table:
        import json as _json

        spec_cols = _json.loads((bundle_dir(tag) / "model" / "spec.json").read_text(encoding="utf-8"))["columns"]
    d = SimpleNamespace(tag=tag, server=server,
                        converted=SimpleNamespace(is_table=is_table, columns=spec_cols, X=[row]))
    snips = snippets(d, server.url if server else None)
    return {"tag": tag, "url": server.url if server else None,
            "curl": snips.get("curl"), "python": snips.get("python")}


def _check_bundle(tag: str) -> str:
    from ..store import get

    return str(get(tag).tag)


def _servers() -> list[dict]:
    from ..serve import server_entries

    return server_entries()


def _check_server(sid: str) -> list[str]:
    from ..serve import require

    return [h.id for h in require(sid)]


def _logs(sid: str, tail: int | None, offset: int | None) -> dict:
    from ..serve import read_log

    return read_log(sid, tail=tail, offset=offset)


def _serve(tag: str, port: int | None, stable: bool = False, auth: str | None = None,
           report: Callable | None = None) -> dict:
    from ..serve import server_entry, start

    h = start(tag, port=port, wait=True, stable=stable, auth=auth, progress=report)
    return server_entry(h)


def _push(tag: str, ref: str, report: Callable, **kwargs) -> Any:
    """Build and push the image, reporting the build, then each blob's upload, as progress."""
    from ..publish import push

    sizes: dict[str, int] = {}   # every blob's size, as the uploads reveal them
    sent: dict[str, int] = {}

    def uploaded(digest: str, done: int, total: int) -> None:
        sizes[digest], sent[digest] = total, done
        whole, part = sum(sizes.values()), sum(sent.values())
        # 0.1 for the build; the uploads take the rest (their total grows as blobs appear)
        report(0.1 + 0.85 * (part / whole if whole else 0.0),
               f"uploading {digest[7:19]} ({done / 1e6:.1f} of {total / 1e6:.1f} MB), blob {len(sizes)}")

    report(0.02, f"building the image of {tag}")
    result = push(tag, ref, progress=uploaded, **kwargs)
    report(0.97, "manifest written")
    return result


def _stop(sid: str) -> dict:
    from ..serve import stop

    return {"stopped": [h.id for h in stop(sid)]}


def _rollout_state(sid: str) -> dict:
    """What a stable server serves: primary, canary in progress with its comparison, events.
    A server without a stable address answers ``{"stable": false}`` (nothing to roll)."""
    from ..serve import require, rollout_status

    h = require(sid)[0]
    if not h.stable:
        return {"id": h.id, "name": h.name, "stable": False, "primary": {"tag": h.tag}, "canary": None}
    state = rollout_status(h.id)
    for role in ("primary", "canary", "previous"):
        if isinstance(state.get(role), dict):
            state[role] = {k: v for k, v in state[role].items() if k != "src"}  # no local paths
    return dict(state, id=h.id, name=h.name, stable=True)


def _promote(sid: str) -> dict:
    from ..serve import promote

    h = promote(sid)
    return {"id": h.id, "tag": h.tag}


def _rollback(sid: str) -> dict:
    from ..serve import rollback

    h = rollback(sid)
    return {"id": h.id, "tag": h.tag}


def _check_ref(ref: Any, field: str = "ref") -> str:
    if not isinstance(ref, str) or not ref.strip():
        raise InvalidInputError(f"Give an image reference as {field!r}, e.g. \"127.0.0.1:5000/model:1\".",
                                expected="string", received=type(ref).__name__)
    from ..oci import Reference

    Reference.parse(ref)  # raises InvalidInputError on a malformed reference
    return ref


def _delete(tag: str) -> dict:
    from ..store import delete

    return {"deleted": delete(tag)}


def _int_arg(value: str | None, what: str, lo: int, hi: int) -> int | None:
    if value is None or value == "":
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{what} must be an integer.", expected="integer", received=repr(value)) from None
    if not lo <= n <= hi:
        raise InvalidInputError(f"{what} must be between {lo} and {hi}.", expected=f"{lo}..{hi}", received=n)
    return n


# --- handlers -----------------------------------------------------------------------------------

class InfoHandler(NbdeployHandler):
    @web.authenticated
    @authorized
    @_api
    async def get(self):
        """Extension version and what it can do (the UI uses it to detect the extension)."""
        # "push" stays for sidebars that still read it; every install can push.
        self.reply({"name": "nbdeploy", "version": __version__, "push": True})


class BundlesHandler(NbdeployHandler):
    @web.authenticated
    @authorized
    @_api
    async def get(self):
        """nbdeploy bundles in the BentoML store, newest first (``?name=`` for one name)."""
        name = self.get_query_argument("name", None) or None
        if name is not None:
            from ..schema import validate_name

            validate_name(name)
        self.reply({"bundles": await self.run(_bundles, name)})


class BundleHandler(NbdeployHandler):
    @web.authenticated
    @authorized
    @_api
    async def get(self, tag: str):
        """The versions of one bundle (``name``) or one version (``name:version``)."""
        self.reply(await self.run(_bundle, tag))

    @web.authenticated
    @authorized
    @_api
    async def delete(self, tag: str):
        """Delete one version (``name:version``); refused while it is served."""
        from ..schema import validate_tag

        validate_tag(tag)
        self.reply(await self.run(_delete, tag))


class ReportHandler(NbdeployHandler):
    @web.authenticated
    @authorized
    @_api
    async def get(self, tag: str):
        """The model card: verification, benchmark, quantization, explanation, plot names."""
        from ..schema import validate_tag

        validate_tag(tag)
        self.reply(await self.run(_report, tag))


class ReportHtmlHandler(NbdeployHandler):
    @web.authenticated
    @authorized
    @_api
    async def get(self, tag: str):
        """The model card rendered as the notebook's report (HTML with inline plots)."""
        from ..schema import validate_tag

        validate_tag(tag)
        self.reply(await self.run(_report_html, tag))


class SnippetsHandler(NbdeployHandler):
    @web.authenticated
    @authorized
    @_api
    async def get(self, tag: str):
        """Ready-to-run curl and Python calls of the bundle's /predict (its running server's URL,
        or the default with a `bentoml serve` line first)."""
        from ..schema import validate_tag

        validate_tag(tag)
        self.reply(await self.run(_snippets, tag))


class PlotHandler(NbdeployHandler):
    @web.authenticated
    @authorized
    @_api
    async def get(self, tag: str, plot: str):
        """One PNG plot of a bundle (only names listed in its report)."""
        from ..schema import validate_tag

        validate_tag(tag)
        validate_plot(plot)
        data = await self.run(_plot_bytes, tag, plot)
        self.set_header("Content-Type", "image/png")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "private, max-age=60")
        self.finish(data, set_content_type="image/png")


class ServeHandler(NbdeployHandler):
    @web.authenticated
    @authorized
    @_api
    async def post(self, tag: str):
        """Start ``bentoml serve`` for a bundle on loopback, as a job (202)."""
        from ..schema import validate_tag

        validate_tag(tag)
        body = self.json_body()
        port = body.get("port")
        if port is not None:
            port = _int_arg(str(port), "port", 1024, 65535)
        stable = body.get("stable", False)
        if not isinstance(stable, bool):
            raise InvalidInputError("stable must be true or false.", expected="boolean", received=repr(stable))
        auth = body.get("auth", "off")
        if auth not in ("off", "key"):
            raise InvalidInputError("auth must be 'off' or 'key' (API keys of `nbdeploy keys`).",
                                    expected=["off", "key"], received=repr(auth)[:40])
        full = await self.run(_check_bundle, tag)  # 404 now rather than a failed job later
        job = self.jobs.active("serve", full) or self.jobs.submit(
            "serve", full, lambda report: _serve(full, port, stable, None if auth == "off" else auth, report),
            progress=True)
        self.job_reply(job)


class PushHandler(NbdeployHandler):
    @web.authenticated
    @authorized
    @_api
    async def post(self, tag: str):
        """Build the bundle's OCI image and push it to ``ref``, as a job (202)."""
        from ..schema import validate_tag

        validate_tag(tag)
        body = self.json_body()
        ref = _check_ref(body.get("ref"))
        insecure = body.get("insecure")
        if insecure is not None and not isinstance(insecure, bool):
            raise InvalidInputError("insecure must be true or false.", expected="boolean", received=repr(insecure))
        kwargs = {"insecure": insecure}
        if body.get("base") is not None:  # e.g. a mirror reachable from here; else $NBDEPLOY_BASE_IMAGE
            kwargs["base"] = _check_ref(body["base"], "base")
        full = await self.run(_check_bundle, tag)
        job = self.jobs.submit("push", full, lambda report: _push(full, ref, report, **kwargs), progress=True)
        self.job_reply(job)


def _export_target(root: str, path: Any) -> str:
    """``path`` (relative to the Jupyter server's root folder) as an absolute path inside it."""
    from pathlib import Path

    if not isinstance(path, str) or not path.strip() or "\x00" in path:
        raise InvalidInputError("Give the archive's path as 'path', relative to the Jupyter root folder, "
                                "e.g. \"exports/model.bento\".", expected="string", received=type(path).__name__)
    base = Path(root).expanduser().resolve()
    target = (base / path.strip()).resolve()
    if not target.is_relative_to(base):
        raise InvalidInputError("The export path must stay inside the Jupyter root folder.",
                                hint="Give a path relative to it, without '..'.", received=path[:200])
    return str(target)


def _export(tag: str, target: str, overwrite: bool, root: str, report: Callable | None = None) -> dict:
    from pathlib import Path

    from ..export import export_bundle

    if report is not None:
        report(None, f"writing {Path(target).name}")
    out = export_bundle(tag, target, overwrite=overwrite)
    base = Path(root).expanduser().resolve()
    return {"tag": tag, "path": str(Path(out).resolve().relative_to(base)),
            "size_bytes": Path(out).stat().st_size}


class ExportHandler(NbdeployHandler):
    @web.authenticated
    @authorized
    @_api
    async def post(self, tag: str):
        """Write the bundle as one archive (``nbdeploy export``) under the Jupyter root, as a job (202)."""
        from ..schema import validate_tag

        validate_tag(tag)
        body = self.json_body()
        root = self.settings.get("server_root_dir") or "."
        target = _export_target(root, body.get("path"))
        overwrite = body.get("overwrite", False)
        if not isinstance(overwrite, bool):
            raise InvalidInputError("overwrite must be true or false.", expected="boolean", received=repr(overwrite))
        full = await self.run(_check_bundle, tag)
        job = self.jobs.submit("export", full, lambda report: _export(full, target, overwrite, root, report),
                               progress=True)
        self.job_reply(job)


class ServersHandler(NbdeployHandler):
    @web.authenticated
    @authorized
    @_api
    async def get(self):
        """Running servers with URL and health ('ready' | 'starting' | 'stopped')."""
        self.reply({"servers": await self.run(_servers)})


class StopHandler(NbdeployHandler):
    @web.authenticated
    @authorized
    @_api
    async def post(self, sid: str):
        """Stop a server (by id, tag or bundle name), as a job (202)."""
        if ":" in sid:  # a full tag stops that version's servers
            from ..schema import validate_tag

            validate_tag(sid)
        else:
            validate_server_id(sid)
        await self.run(_check_server, sid)
        job = self.jobs.active("stop", sid) or self.jobs.submit("stop", sid, lambda: _stop(sid))
        self.job_reply(job)


class RolloutHandler(NbdeployHandler):
    @web.authenticated
    @authorized
    @_api
    async def get(self, sid: str):
        """A stable server's versions: primary, canary and its share, per-version error rate,
        latency and differing predictions, the guard, recent events."""
        validate_server_id(sid)
        self.reply(await self.run(_rollout_state, sid))


class _RolloutJobHandler(NbdeployHandler):
    """POST: one rollout action on a running server, as a job (202)."""

    kind = ""
    action: Callable[[str], Any]

    @web.authenticated
    @authorized
    @_api
    async def post(self, sid: str):
        validate_server_id(sid)
        await self.run(_check_server, sid)
        act = type(self).action
        job = self.jobs.active(self.kind, sid) or self.jobs.submit(self.kind, sid, lambda: act(sid))
        self.job_reply(job)


class PromoteHandler(_RolloutJobHandler):
    """Make the canary in progress the primary version."""

    kind, action = "promote", staticmethod(_promote)


class RollbackHandler(_RolloutJobHandler):
    """Stop a canary, or return to the version served before."""

    kind, action = "rollback", staticmethod(_rollback)


class LogsHandler(NbdeployHandler):
    @web.authenticated
    @authorized
    @_api
    async def get(self, sid: str):
        """A server's log: the last ``tail`` lines, or the bytes after ``offset`` (poll to follow)."""
        validate_server_id(sid)
        tail = _int_arg(self.get_query_argument("tail", None), "tail", 1, 100_000)
        offset = _int_arg(self.get_query_argument("offset", None), "offset", 0, 1 << 50)
        if self.get_query_argument("follow", "") in ("1", "true", "yes"):
            seconds = _int_arg(self.get_query_argument("seconds", None), "seconds", 1, 3600) or 600
            await self._follow(sid, offset, seconds)
            return
        self.reply(await self.run(_logs, sid, tail or (None if offset is not None else 200), offset))

    async def _follow(self, sid: str, offset: int | None, seconds: int) -> None:
        """Stream the log as text/plain while the server runs (at most ``seconds``)."""
        import asyncio

        from tornado.iostream import StreamClosedError

        first = await self.run(_logs, sid, None if offset is not None else 200, offset)
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        chunk, offset, running = first["text"], first["offset"], first["running"]
        try:
            while True:
                if chunk:
                    self.write(chunk)
                    await self.flush()
                if not running or loop.time() >= deadline:
                    break
                await asyncio.sleep(0.5)
                nxt = await self.run(_logs, sid, None, offset)
                chunk, offset, running = nxt["text"], nxt["offset"], nxt["running"]
        except StreamClosedError:  # the client went away
            return
        self.finish(set_content_type="text/plain; charset=UTF-8")


class JobsHandler(NbdeployHandler):
    @web.authenticated
    @authorized
    @_api
    async def get(self):
        """All jobs this server remembers, oldest first."""
        self.reply({"jobs": [j.to_dict() for j in self.jobs.list()]})


class JobHandler(NbdeployHandler):
    @web.authenticated
    @authorized
    @_api
    async def get(self, job_id: str):
        """One job; poll until ``status`` is 'done' or 'failed'."""
        if not _JOB_ID_RE.match(job_id):
            raise InvalidNameError(f"Invalid job id {job_id!r}.", expected=_JOB_ID_RE.pattern,
                                   received=repr(job_id))
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"No job {job_id!r}.", hint="Jobs are kept in memory until the server restarts.")
        self.reply(job.to_dict())


_SEG = r"([^/]+)"

#: (path under /nbdeploy, handler); every handler method is authenticated (a test enforces it)
ROUTES: list[tuple[str, type[NbdeployHandler]]] = [
    ("info", InfoHandler),
    ("bundles", BundlesHandler),
    (f"bundles/{_SEG}", BundleHandler),
    (f"bundles/{_SEG}/report", ReportHandler),
    (f"bundles/{_SEG}/report.html", ReportHtmlHandler),
    (f"bundles/{_SEG}/plots/{_SEG}", PlotHandler),
    (f"bundles/{_SEG}/snippets", SnippetsHandler),
    (f"bundles/{_SEG}/serve", ServeHandler),
    (f"bundles/{_SEG}/push", PushHandler),
    (f"bundles/{_SEG}/export", ExportHandler),
    ("servers", ServersHandler),
    (f"servers/{_SEG}/stop", StopHandler),
    (f"servers/{_SEG}/logs", LogsHandler),
    (f"servers/{_SEG}/rollout", RolloutHandler),
    (f"servers/{_SEG}/promote", PromoteHandler),
    (f"servers/{_SEG}/rollback", RollbackHandler),
    ("jobs", JobsHandler),
    (f"jobs/{_SEG}", JobHandler),
]


def routes(base_url: str) -> list[tuple[str, type[NbdeployHandler]]]:
    return [(url_path_join(base_url, "nbdeploy", path), handler) for path, handler in ROUTES]


def setup_handlers(web_app, log=None) -> JobManager:
    jobs = web_app.settings.get("nbdeploy_jobs")
    if jobs is None:
        jobs = JobManager(log=log)
        web_app.settings["nbdeploy_jobs"] = jobs
    web_app.add_handlers(".*$", routes(web_app.settings["base_url"]))
    return jobs


__all__ = ["ROUTES", "routes", "setup_handlers", "NbdeployHandler"]
