"""serve: start, find, probe and stop local servers of a bundle.

Two engines: ``bentoml`` (stock ``bentoml serve``, the default) and ``direct`` (the bundle's
own ASGI app on uvicorn, ``python -m nbdeploy_runtime.engine`` in the bento's folder: same
routes and validation, answers /livez, /readyz and /metrics itself).

Each server started here is recorded as a JSON file in ``$NBDEPLOY_HOME/servers`` so a
restarted kernel (or the CLI, or the Jupyter server extension) can list and stop it.
Servers run in their own process group so stopping one leaves no orphan workers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import InvalidInputError, NotFoundError, ServeError
from .paths import servers_dir
from .runtime.auth import TLS_CIPHERS
from .schema import validate_tag

ENGINES = ("bentoml", "direct")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


def _http_status(url: str, timeout: float = 1.0) -> int | None:
    ctx = None
    if url.startswith("https:"):  # probing our own loopback server (no credentials sent):
        import ssl  # a self-signed certificate must not hide its readiness

        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ctx) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return None


@dataclass
class ServerHandle:
    """A running (or stopped) local server of one bundle."""

    id: str
    tag: str
    host: str
    port: int
    pid: int
    log_path: str
    started: float
    backend_port: int | None = None   # --stable servers: the router's loopback admin socket
    proxy_pid: int | None = None      # --stable servers: the router (the same process as pid)
    workers: list = field(default_factory=list)  # BentoML workers run in sessions of their own
    engine: str = "bentoml"
    tls: bool = False                 # HTTPS (nbdeploy serve --tls-cert/--tls-key)
    auth: str = "off"                 # "key" / "oidc": clients send Authorization: Bearer ...

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def backend_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.backend_port or self.port}"

    @property
    def stable(self) -> bool:
        return self.proxy_pid is not None

    @property
    def name(self) -> str:
        return self.tag.split(":")[0]

    def is_alive(self) -> bool:
        return _pid_alive(self.pid) and (self.proxy_pid is None or _pid_alive(self.proxy_pid))

    def health(self) -> str:
        """'ready', 'starting' or 'stopped'."""
        if not self.is_alive():
            return "stopped"
        return "ready" if _http_status(self.url + "/readyz") == 200 else "starting"

    def logs(self, tail: int | None = 200) -> str:
        try:
            text = Path(self.log_path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        if tail:
            text = "\n".join(text.splitlines()[-tail:])
        return text

    def wait_ready(self, timeout: float = 90.0, proc: subprocess.Popen | None = None,
                   progress=None) -> ServerHandle:
        """Wait until ``/readyz`` answers 200; ``progress(None, message)`` about once a second."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        said = -1
        while time.monotonic() < deadline:
            waited = int(time.monotonic() - t0)
            if progress is not None and waited != said:
                said = waited
                progress(None, f"waiting for {self.url}/readyz ({waited} s)")
            if proc is not None and proc.poll() is not None or not self.is_alive():
                self._forget()
                raise ServeError(
                    f"The server for {self.tag} exited during start-up. Last log lines:\n{self.logs(25)}",
                    hint="Read the log above; `nbdeploy logs` shows the whole log.")
            if _http_status(self.backend_url + "/readyz", timeout=2.0) == 200:
                self.refresh_workers()
                return self
            log = self.logs(tail=400)
            if "Application startup failed" in log:
                # BentoML's arbiter would keep restarting the worker; fail fast with the cause.
                cause = [ln for ln in log.splitlines() if re.match(r"^\w*(Error|Exception):", ln)]
                self.stop()
                raise ServeError(
                    f"The bundle {self.tag} failed to start: "
                    f"{cause[-1] if cause else 'see the log below'}\nLast log lines:\n{self.logs(25)}",
                    hint="Fix the cause above (for GPU bundles: onnxruntime-gpu and a CUDA device, "
                         "or rebuild with allow_cpu_fallback=True / device='cpu').")
            time.sleep(0.1)
        self.stop()
        raise ServeError(f"The server for {self.tag} did not become ready within {timeout:.0f} s. "
                         f"Last log lines:\n{self.logs(25)}",
                         hint="Start it by hand with `bentoml serve TAG` to see what it is doing.")

    def refresh_workers(self) -> None:
        """Remember the worker processes: circus starts them in new sessions, so a SIGKILL of
        the server's process group would leave them serving the port as orphans."""
        found = _worker_pids(self.pid)
        if found and sorted(found) != sorted(self.workers):
            self.workers = sorted(set(self.workers) | set(found))
            if self._record().exists():
                self._save()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the whole process group (BentoML drains in-flight requests), then SIGKILL;
        then any worker that outlived its server."""
        if self.is_alive():
            self.refresh_workers()
        for pid in (self.proxy_pid, self.pid):
            if pid is not None:
                _stop_group(pid, timeout)
        _kill_orphans(self.workers, self.tag)
        self._forget()

    def _record(self) -> Path:
        return servers_dir() / f"{self.id}.json"

    def _save(self) -> None:
        tmp = self._record().with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)), encoding="utf-8")
        tmp.replace(self._record())

    def _forget(self) -> None:
        for suffix in (".json", ".token"):
            (servers_dir() / f"{self.id}{suffix}").unlink(missing_ok=True)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["url"] = self.url
        return d

    def _repr_html_(self) -> str:
        return (f"<b>{self.tag}</b> serving at <a href='{self.url}' target='_blank'>{self.url}</a> "
                f"(pid {self.pid})")

    def __repr__(self) -> str:
        return f"<ServerHandle {self.tag} at {self.url} pid={self.pid}>"


def _stop_group(pid: int, timeout: float) -> None:
    if _pid_alive(pid):
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _pid_alive(pid):
            time.sleep(0.05)
        if _pid_alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:  # reap if it is our child, so no zombie stays behind
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _worker_pids(pid: int) -> list[int]:
    try:
        import psutil

        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except Exception:
        return []


def _kill_orphans(pids: list, tag: str) -> None:
    """SIGKILL leftover BentoML workers of ``tag`` (checking the command line: pids get reused)."""
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if (("bentoml" in cmd or "nbdeploy.runtime.router" in cmd or "nbdeploy_runtime.engine" in cmd)
                and tag.split(":")[0] in cmd):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, os.WNOHANG)
            except (ProcessLookupError, ChildProcessError):
                pass


def bentoml_executable() -> list[str]:
    exe = Path(sys.executable).with_name("bentoml")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("bentoml")
    return [found] if found else [sys.executable, "-m", "bentoml"]


def _resolve(tag: str) -> str:
    validate_tag(tag)
    import bentoml

    try:
        return str(bentoml.get(tag).tag)
    except Exception as exc:
        raise NotFoundError(f"No bundle {tag!r} in the BentoML store.",
                            hint="`nbdeploy list` shows the bundles there are.") from exc


def _spawn(cmd: list[str], log_path: Path, env: dict | None, cwd: str | None = None) -> subprocess.Popen:
    full_env = dict(os.environ, BENTOML_DO_NOT_TRACK="true", PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=full_env, cwd=cwd or str(servers_dir()))


def _check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise InvalidInputError(f"Unknown engine {engine!r}.", hint=f"Use one of {list(ENGINES)}.",
                                expected=list(ENGINES), received=str(engine)[:40])
    return engine


def _env_tls(env: dict) -> tuple[str, str] | None:
    """The certificate pair named by ``NBDEPLOY_TLS_CERT``/``_KEY`` in ``env`` (checked), or None."""
    from .runtime.auth import TLSConfigError, tls_paths

    try:
        return tls_paths(env)
    except TLSConfigError as exc:
        raise InvalidInputError(str(exc), hint="Fix or unset NBDEPLOY_TLS_CERT and NBDEPLOY_TLS_KEY, "
                                                "or pass --tls-cert/--tls-key.") from None


def _check_tls(tls_cert, tls_key) -> tuple[str, str] | None:
    if not tls_cert and not tls_key:
        return None
    if not (tls_cert and tls_key):
        raise InvalidInputError("HTTPS needs both a certificate and its private key.",
                                hint="Pass --tls-cert CERT.pem --tls-key KEY.pem (PEM files).")
    for what, p in (("certificate", tls_cert), ("private key", tls_key)):
        if not Path(p).is_file():
            raise InvalidInputError(f"The TLS {what} file {str(p)[:200]!r} does not exist.",
                                    hint="Give the path of a PEM file readable by this user.")
    return str(Path(tls_cert).resolve()), str(Path(tls_key).resolve())


def auth_env(auth: str | None) -> dict:
    """The server environment of an access-control mode for local serving: ``key`` reads the
    local key file (``nbdeploy keys``), ``oidc`` the ``$NBDEPLOY_OIDC_*`` settings of this
    process's environment."""
    if auth in (None, "off"):
        return {}
    if auth == "key":
        from .keys import ENV_VAR, keys_file

        return {"NBDEPLOY_AUTH": "key", ENV_VAR: str(keys_file())}
    if auth == "oidc":
        missing = [v for v in ("NBDEPLOY_OIDC_ISSUER", "NBDEPLOY_OIDC_AUDIENCE") if not os.environ.get(v)]
        if missing:
            raise InvalidInputError(f"auth='oidc' needs {', '.join('$' + m for m in missing)}.",
                                    hint="Set them (and $NBDEPLOY_OIDC_JWKS_URL if the issuer has no "
                                         "discovery document) before serving.")
        return {"NBDEPLOY_AUTH": "oidc"}
    raise InvalidInputError("Unknown auth mode.", expected=["off", "key", "oidc"], received=str(auth)[:20])


def _spawn_bentoml(tag: str, host: str, port: int, log_path: Path, env: dict | None,
                   engine: str = "bentoml", tls: tuple[str, str] | None = None) -> subprocess.Popen:
    ssl_args = ["--ssl-certfile", tls[0], "--ssl-keyfile", tls[1]] if tls else []
    if engine == "direct":
        import bentoml

        src = Path(bentoml.get(tag).path) / "src"
        if not (src / "nbdeploy_runtime" / "engine.py").is_file():
            raise ServeError(f"{tag} was built before the direct engine existed, so it cannot run on it.",
                             hint="Serve it with engine='bentoml' (the default), or deploy it again.")
        env = dict(env or {}, NBDEPLOY_ENGINE="direct")
        env.pop("PYTHONPATH", None)
        # the bundle's own runtime (nbdeploy_runtime in src/), not this nbdeploy's copy
        return _spawn([sys.executable, "-m", "nbdeploy_runtime.engine", "--host", host,
                       "--port", str(port), "--tag", tag, *ssl_args], log_path, env, cwd=str(src))
    # BentoML's default cipher string offers TLS 1.2 clients only CBC-SHA1 suites: pass ours
    ciphers = ["--ssl-ciphers", TLS_CIPHERS] if tls else []
    return _spawn([*bentoml_executable(), "serve", tag, "--host", host, "--port", str(port), *ssl_args,
                   *ciphers],
                  log_path, env)


def start(tag: str, *, port: int | None = None, host: str = "127.0.0.1", timeout: float = 90.0,
          wait: bool = True, stable: bool = False, env: dict | None = None,
          engine: str = "bentoml", tls_cert: str | None = None,
          tls_key: str | None = None, auth: str | None = None, progress=None) -> ServerHandle:
    """Run stock ``bentoml serve TAG`` in the background and wait until ``/readyz`` is 200.

    ``engine="direct"`` runs the bundle's own ASGI app on uvicorn instead (one process; the
    same routes and validation; faster, and lighter in memory: see the README).

    ``stable=True`` serves ``port`` from one process that holds the loaded versions
    (``nbdeploy.runtime.router``, the direct engine's app per version), so that :func:`rollout`
    can later switch it to another version, or a canary, without failing a request.

    ``tls_cert``/``tls_key`` (PEM files) serve HTTPS only, through ``bentoml serve
    --ssl-certfile/--ssl-keyfile`` or uvicorn's own options under the direct engine.  Access
    control: ``auth="key"`` (the keys of ``nbdeploy keys``) or ``"oidc"`` (``$NBDEPLOY_OIDC_*``),
    or any setting of ``nbdeploy_runtime.auth`` through ``env``.

    ``progress(fraction | None, message)`` hears of the start-up as it goes (``None``: no
    fraction known, e.g. while waiting for the server to answer).
    """
    _check_engine(engine)
    tls = _check_tls(tls_cert, tls_key)
    env = {**auth_env(auth), **(env or {})}
    if tls is None:    # NBDEPLOY_TLS_CERT/_KEY in this environment: the server would speak HTTPS
        tls = _env_tls({**os.environ, **env})
    if tls and stable:
        raise InvalidInputError("A stable address does not serve HTTPS yet.",
                                hint="Leave out --stable, or terminate TLS in front of it.")
    tag = _resolve(tag)
    port = port or free_port(host)
    if _http_status(f"http://{host}:{port}/livez", timeout=0.3) is not None:
        raise ServeError(f"Port {port} is already in use.", hint="Pick another port or leave it out.")
    name = tag.split(":")[0]
    sid = f"{name}-{port}"
    log_path = servers_dir() / f"{sid}.log"
    log_path.write_bytes(b"")
    auth_mode = auth or ("key" if env.get("NBDEPLOY_API_KEYS_FILE") or env.get("NBDEPLOY_API_KEYS")
                         else "oidc" if env.get("NBDEPLOY_OIDC_ISSUER") else "off")
    if stable:
        return _start_router(tag, sid, host, port, log_path, env, timeout, auth_mode)
    if progress is not None:
        progress(None, f"starting {engine} serve {tag} on port {port}")
    proc = _spawn_bentoml(tag, host, port, log_path, env, engine, tls)
    handle = ServerHandle(id=sid, tag=tag, host=host, port=port, pid=proc.pid,
                          log_path=str(log_path), started=time.time(), engine=engine, tls=bool(tls),
                          auth=auth_mode)
    handle._save()
    if wait:
        handle.wait_ready(timeout, proc=proc, progress=progress)
    return handle


# -- the stable address: one process (nbdeploy.runtime.router) that hot-swaps versions --------

def _bundle_src(tag: str) -> Path:
    import bentoml

    src = Path(bentoml.get(tag).path) / "src"
    if not (src / "nbdeploy_runtime" / "engine.py").is_file():
        raise ServeError(f"{tag} was built before the direct engine existed, so it cannot be served "
                         "at a stable address.", hint="Deploy it again, or serve it without --stable.")
    return src


def _start_router(tag: str, sid: str, host: str, port: int, log_path: Path, env: dict,
                  timeout: float, auth_mode: str) -> ServerHandle:
    import secrets

    src = _bundle_src(tag)
    admin_port = free_port("127.0.0.1")
    token_file = servers_dir() / f"{sid}.token"
    token_file.touch(mode=0o600)
    os.chmod(token_file, 0o600)
    token_file.write_text(secrets.token_urlsafe(32), encoding="utf-8")
    env = dict(env, NBDEPLOY_ENGINE="direct")
    env.pop("PYTHONPATH", None)
    proc = _spawn([sys.executable, "-m", "nbdeploy.runtime.router", "--host", host, "--port", str(port),
                   "--admin-port", str(admin_port), "--token-file", str(token_file),
                   "--root", str(src), "--tag", tag], log_path, env)
    # proxy_pid = the router itself: the record stays readable as "stable" by older code
    handle = ServerHandle(id=sid, tag=tag, host=host, port=port, pid=proc.pid, log_path=str(log_path),
                          started=time.time(), backend_port=admin_port, proxy_pid=proc.pid,
                          engine="direct", auth=auth_mode)
    handle._save()
    handle.wait_ready(timeout, proc=proc)
    return handle


def _stable(name_or_id: str) -> ServerHandle:
    found = find(name_or_id)
    if not found:
        raise NotFoundError(f"No running server matches {name_or_id!r}.",
                            hint="Start one with `nbdeploy serve NAME --stable` first.")
    h = found[0]
    if not h.stable:
        raise InvalidInputError(f"{h.id} was not started with a stable address, so it cannot be "
                                f"rolled without clients seeing a new URL.",
                                hint=f"Stop it and start it with `nbdeploy serve {h.name} --stable`.")
    return h


def _control(h: ServerHandle, op: str, body: dict | None = None, timeout: float = 120.0) -> dict:
    """POST a control operation to the router's loopback admin socket."""
    try:
        token = (servers_dir() / f"{h.id}.token").read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ServeError(f"{h.id} has no control token: it was started by an older nbdeploy.",
                         hint=f"Stop it and start it again with `nbdeploy serve {h.name} --stable`.") from exc
    req = urllib.request.Request(f"http://127.0.0.1:{h.backend_port}/__nbdeploy__/{op}",
                                 data=json.dumps(body or {}).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "X-Nbdeploy-Token": token})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            msg = json.loads(e.read()).get("message", "")
        except ValueError:
            msg = ""
        raise ServeError(f"{op} on {h.id} failed: {str(msg)[:800]}",
                         hint="The version served before keeps serving; `nbdeploy logs` has details.") from e
    except (urllib.error.URLError, OSError) as e:
        raise ServeError(f"{h.id} did not answer the {op} request ({e}).", hint="Is it still running?") from e


def _adopt(h: ServerHandle, state: dict) -> ServerHandle:
    """Record the primary version the router now serves."""
    h.tag = state["primary"]["tag"]
    h._save()
    return h


def _check_weight(canary: float) -> float:
    try:
        pct = float(canary)
    except (TypeError, ValueError):
        pct = -1.0
    if not 0 < pct < 100:
        raise InvalidInputError("The canary share is a percentage between 0 and 100 (exclusive).",
                                expected="0 < canary < 100", received=str(canary)[:20])
    return pct / 100.0


def rollout(name_or_id: str, tag: str, *, timeout: float = 120.0, canary: float | None = None,
            guard: dict | None = None) -> ServerHandle:
    """Switch a ``stable`` server to another bundle version with no failed request.

    The server loads the new version beside the one it serves (which answers meanwhile), then
    switches between requests and frees the old one.  With ``canary=N`` (percent) the new
    version gets N% of the requests and the old one stays primary until :func:`promote` or
    :func:`rollback`.  ``guard`` (canary only): ``{"max_error_rate": 0.05,
    "max_latency_ratio": 3.0, "min_requests": 20}`` rolls the canary back by itself when its
    error rate passes the primary's by that margin, or its mean latency that ratio.
    """
    h = _stable(name_or_id)
    new_tag = _resolve(tag)
    if new_tag.split(":")[0] != h.name:
        raise InvalidInputError(f"Cannot roll {h.name} to a different bundle ({new_tag}).",
                                hint="Roll to another version of the same name.")
    body = {"tag": new_tag, "src": str(_bundle_src(new_tag)), "weight": 1.0}
    if canary is not None:
        body["weight"] = _check_weight(canary)
        if guard:
            allowed = {"max_error_rate", "max_latency_ratio", "min_requests", "min_latency_ms"}
            bad = set(guard) - allowed
            if bad:
                raise InvalidInputError(f"Unknown guard settings {sorted(bad)}.", expected=sorted(allowed))
            body["guard"] = {k: float(v) for k, v in guard.items()}
    elif guard:
        raise InvalidInputError("A guard watches a canary.", hint="Pass canary=N (percent) with it.")
    return _adopt(h, _control(h, "rollout", body, timeout=timeout))


def promote(name_or_id: str) -> ServerHandle:
    """Make the canary in progress the primary version (all requests), freeing the old one."""
    h = _stable(name_or_id)
    return _adopt(h, _control(h, "promote"))


def rollback(name_or_id: str, *, timeout: float = 120.0) -> ServerHandle:
    """Stop a canary in progress, or (with none) return to the version served before."""
    h = _stable(name_or_id)
    return _adopt(h, _control(h, "rollback", {}, timeout=timeout))


def rollout_status(name_or_id: str) -> dict:
    """The stable server's versions: primary, canary and its share, per-version request count,
    error rate and mean latency (model routes), the guard, recent events."""
    h = _stable(name_or_id)
    return _control(h, "state")


def list_servers() -> list[ServerHandle]:
    """Servers started by nbdeploy on this machine that are still running."""
    out = []
    for rec in sorted(servers_dir().glob("*.json")):
        try:
            h = ServerHandle(**json.loads(rec.read_text(encoding="utf-8")))
        except (ValueError, TypeError, OSError):
            rec.unlink(missing_ok=True)
            continue
        if h.is_alive():
            out.append(h)
        else:  # died without nbdeploy (crash, OOM killer, kill -9): clean up after it
            for pid in (h.pid, h.proxy_pid):
                if pid is not None and _pid_alive(pid):
                    _stop_group(pid, 5)
            _kill_orphans(h.workers, h.tag)
            h._forget()
    return out


def find(name_or_id: str) -> list[ServerHandle]:
    """Running servers whose id, tag or bundle name is ``name_or_id``."""
    return [h for h in list_servers() if name_or_id in (h.id, h.tag, h.name)]


def require(name_or_id: str) -> list[ServerHandle]:
    """Like :func:`find`, but a :class:`NotFoundError` naming the running servers if none matches."""
    found = find(name_or_id)
    if not found:
        running = [h.id for h in list_servers()]
        raise NotFoundError(f"No running server matches {name_or_id!r}.",
                            hint=f"Running servers: {', '.join(running) or 'none'}.")
    return found


#: the most bytes one :func:`read_log` call returns (a poll reads the rest next time)
MAX_LOG_BYTES = 1 << 20

#: how a client of a server started with auth="key" gets a key (the key itself never goes in a page)
KEY_HINT = ("Clients send 'Authorization: Bearer KEY'. Create a key in a terminal with "
            "`nbdeploy keys create NAME` (it is printed once, keep it in $NBDEPLOY_API_KEY); "
            "`nbdeploy keys list` shows the names, `nbdeploy keys revoke NAME` removes one.")

_SID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")


def log_file(sid: str) -> Path:
    """The log file of server ``sid`` (running or not), inside the servers folder only."""
    base = servers_dir().resolve()
    if not isinstance(sid, str) or not _SID_RE.match(sid) or ".." in sid:
        raise NotFoundError(f"No log for server {str(sid)[:80]!r}.",
                            hint="Server ids look like 'bundle-name-3000' (`nbdeploy list` shows them).")
    path = (base / f"{sid}.log").resolve()
    if path.parent != base or not path.is_file():
        raise NotFoundError(f"No log for server {sid!r}.", hint="GET /nbdeploy/servers lists running servers.")
    return path


def read_log(sid: str, *, tail: int | None = None, offset: int | None = None,
             max_bytes: int = MAX_LOG_BYTES) -> dict:
    """A server's log as ``{"id", "text", "offset", "running"}``.

    With ``offset``: the bytes after it (at most ``max_bytes``), and the offset to ask for next,
    so that a client follows the log by polling.  Without: the last ``max_bytes`` bytes, cut to
    the last ``tail`` lines when given; ``offset`` is then the file's size.
    """
    path = log_file(sid)
    running = bool(find(sid))
    size = path.stat().st_size
    with open(path, "rb") as f:
        if offset is not None:
            start = min(max(offset, 0), size)
            f.seek(start)
            data = f.read(max_bytes)
            return {"id": sid, "text": data.decode("utf-8", "replace"), "offset": start + len(data),
                    "running": running}
        f.seek(max(0, size - max_bytes))
        text = f.read(max_bytes).decode("utf-8", "replace")
    lines = text.splitlines()
    if tail:
        lines = lines[-tail:]
    return {"id": sid, "text": "\n".join(lines), "offset": size, "running": running}


def server_entry(h: ServerHandle, *, probe: bool = True) -> dict:
    """What a front end shows of one server: its record, URL, name, stable flag, health
    ('ready' | 'starting' | 'stopped'; probed over HTTP unless ``probe=False``), and for a
    server that wants API keys, how a client gets one (``auth_hint``)."""
    d = h.to_dict()
    d["name"] = h.name
    d["stable"] = h.stable
    d["health"] = h.health() if probe else ("starting" if h.is_alive() else "stopped")
    if h.auth == "key":
        d["auth_hint"] = KEY_HINT
    return d


def server_entries(*, probe: bool = True) -> list[dict]:
    """:func:`server_entry` of every running server."""
    return [server_entry(h, probe=probe) for h in list_servers()]


def stop(name_or_id: str) -> list[ServerHandle]:
    """Stop every running server matching ``name_or_id``; error if there is none."""
    found = require(name_or_id)
    for h in found:
        h.stop()
    return found
