"""serve: start, find, probe and stop local ``bentoml serve`` processes.

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
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import NotFoundError, ServeError
from .paths import servers_dir
from .schema import validate_tag


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
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
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

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def name(self) -> str:
        return self.tag.split(":")[0]

    def is_alive(self) -> bool:
        return _pid_alive(self.pid)

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

    def wait_ready(self, timeout: float = 90.0, proc: subprocess.Popen | None = None) -> "ServerHandle":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None or not self.is_alive():
                self._forget()
                raise ServeError(
                    f"The server for {self.tag} exited during start-up. Last log lines:\n{self.logs(25)}",
                    hint="Read the log above; `nbdeploy logs` shows the whole log.")
            if _http_status(self.url + "/readyz", timeout=2.0) == 200:
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

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the whole process group (BentoML drains in-flight requests), then SIGKILL."""
        if self.is_alive():
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.is_alive():
                time.sleep(0.05)
            if self.is_alive():
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        # reap if it is our child, so no zombie stays behind
        try:
            os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pass
        self._forget()

    def _record(self) -> Path:
        return servers_dir() / f"{self.id}.json"

    def _forget(self) -> None:
        try:
            self._record().unlink()
        except FileNotFoundError:
            pass

    def to_dict(self) -> dict:
        d = asdict(self)
        d["url"] = self.url
        return d

    def _repr_html_(self) -> str:
        return (f"<b>{self.tag}</b> serving at <a href='{self.url}' target='_blank'>{self.url}</a> "
                f"(pid {self.pid})")

    def __repr__(self) -> str:
        return f"<ServerHandle {self.tag} at {self.url} pid={self.pid}>"


def bentoml_executable() -> list[str]:
    exe = Path(sys.executable).with_name("bentoml")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("bentoml")
    return [found] if found else [sys.executable, "-m", "bentoml"]


def start(tag: str, *, port: int | None = None, host: str = "127.0.0.1", timeout: float = 90.0,
          wait: bool = True, env: dict | None = None) -> ServerHandle:
    """Run stock ``bentoml serve TAG`` in the background and wait until ``/readyz`` is 200."""
    validate_tag(tag)
    import bentoml

    try:
        bento = bentoml.get(tag)
    except Exception as exc:
        raise NotFoundError(f"No bundle {tag!r} in the BentoML store.",
                            hint="`nbdeploy list` shows the bundles there are.") from exc
    tag = str(bento.tag)
    port = port or free_port(host)
    if _http_status(f"http://{host}:{port}/livez", timeout=0.3) is not None:
        raise ServeError(f"Port {port} is already in use.", hint="Pick another port or leave it out.")
    sid = f"{bento.tag.name}-{port}"
    log_path = servers_dir() / f"{sid}.log"
    full_env = dict(os.environ, BENTOML_DO_NOT_TRACK="true", PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*bentoml_executable(), "serve", tag, "--host", host, "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=full_env, cwd=str(servers_dir()))
    handle = ServerHandle(id=sid, tag=tag, host=host, port=port, pid=proc.pid,
                          log_path=str(log_path), started=time.time())
    handle._record().write_text(json.dumps(asdict(handle)), encoding="utf-8")
    if wait:
        handle.wait_ready(timeout, proc=proc)
    return handle


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
        else:
            rec.unlink(missing_ok=True)
    return out


def find(name_or_id: str) -> list[ServerHandle]:
    """Running servers whose id, tag or bundle name is ``name_or_id``."""
    return [h for h in list_servers() if name_or_id in (h.id, h.tag, h.name)]


def stop(name_or_id: str) -> list[ServerHandle]:
    """Stop every running server matching ``name_or_id``; error if there is none."""
    found = find(name_or_id)
    if not found:
        running = [h.id for h in list_servers()]
        raise NotFoundError(f"No running server matches {name_or_id!r}.",
                            hint=f"Running servers: {running or 'none'}.")
    for h in found:
        h.stop()
    return found
