"""serve.py's pure parts, with real files and real processes, no server: the state files of
running servers, the entries front ends show, reading a server's log (tail, offset, limits,
names that try to leave the folder) and the checks of start()'s arguments that run before
anything is spawned."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from nbdeploy import serve
from nbdeploy.errors import InvalidInputError, NotFoundError
from nbdeploy.paths import servers_dir


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """A folder of its own for server records and logs."""
    monkeypatch.setenv("NBDEPLOY_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def sleeper():
    """A real process in a session of its own (as servers are started), killed afterwards."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    yield proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def _record(sid: str, pid: int, *, tag: str = "model:v1", port: int = 1, **extra) -> dict:
    """Write a server record the way ServerHandle saves it (all its fields, as JSON)."""
    d = dict(id=sid, tag=tag, host="127.0.0.1", port=port, pid=pid,
             log_path=str(servers_dir() / f"{sid}.log"), started=time.time(), **extra)
    (servers_dir() / f"{sid}.json").write_text(json.dumps(d), encoding="utf-8")
    return d


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# --- state files ---------------------------------------------------------------------------------

def test_a_record_of_a_live_process_is_listed_found_and_required(sleeper):
    _record("model-1", sleeper.pid)
    [h] = serve.list_servers()
    assert (h.id, h.tag, h.name, h.pid, h.stable) == ("model-1", "model:v1", "model", sleeper.pid, False)
    assert h.url == "http://127.0.0.1:1" and h.is_alive()
    # by id, by tag and by name
    assert [x.id for x in serve.find("model-1")] == [x.id for x in serve.find("model:v1")] == \
        [x.id for x in serve.find("model")] == ["model-1"]
    assert serve.find("other") == []
    assert [x.id for x in serve.require("model")] == ["model-1"]


def test_require_names_the_running_servers_when_none_matches(sleeper):
    _record("model-1", sleeper.pid)
    with pytest.raises(NotFoundError) as e:
        serve.require("nope")
    assert "nope" in e.value.message and "model-1" in e.value.hint


def test_a_dead_server_and_an_unreadable_record_are_cleaned_up():
    _record("gone-2", _dead_pid())
    (servers_dir() / "broken-3.json").write_text("{not json", encoding="utf-8")
    (servers_dir() / "wrong-4.json").write_text(json.dumps({"id": "wrong-4"}), encoding="utf-8")
    assert serve.list_servers() == []
    assert sorted(p.name for p in servers_dir().glob("*.json")) == []


def test_stop_ends_the_process_group_and_forgets_the_record(sleeper):
    _record("model-1", sleeper.pid)
    (servers_dir() / "model-1.log").write_text("started\n", encoding="utf-8")
    [h] = serve.stop("model-1")
    assert h.id == "model-1"
    assert sleeper.wait(timeout=20) is not None        # the process really ended
    assert not (servers_dir() / "model-1.json").exists()
    assert (servers_dir() / "model-1.log").exists()     # the log outlives the server
    with pytest.raises(NotFoundError):
        serve.stop("model-1")


# --- entries for front ends ----------------------------------------------------------------------

def test_server_entry_has_what_front_ends_show(sleeper):
    _record("model-1", sleeper.pid, port=serve.free_port())   # nothing listens: not ready
    [h] = serve.list_servers()
    e = serve.server_entry(h)
    assert e["id"] == "model-1" and e["name"] == "model" and e["tag"] == "model:v1"
    assert e["url"] == f"http://127.0.0.1:{h.port}" and e["stable"] is False
    assert e["health"] == "starting"                   # alive, but /readyz does not answer
    assert "auth_hint" not in e
    json.dumps(e)                                      # plain JSON


def test_server_entry_of_a_key_server_says_how_to_get_a_key_and_never_a_key(sleeper):
    _record("model-1", sleeper.pid, auth="key", tls=True)
    [h] = serve.list_servers()
    e = serve.server_entry(h, probe=False)
    assert e["url"].startswith("https://") and e["health"] == "starting"
    assert "nbdeploy keys create" in e["auth_hint"] and e["auth_hint"] == serve.KEY_HINT
    assert [x["id"] for x in serve.server_entries(probe=False)] == ["model-1"]


def test_server_entry_of_a_stopped_handle(sleeper):
    _record("model-1", sleeper.pid)
    [h] = serve.list_servers()
    os.killpg(sleeper.pid, signal.SIGKILL)
    sleeper.wait(timeout=10)
    assert serve.server_entry(h)["health"] == "stopped"
    assert serve.server_entry(h, probe=False)["health"] == "stopped"


# --- logs ----------------------------------------------------------------------------------------

def _log(sid: str, text: str | bytes):
    p = servers_dir() / f"{sid}.log"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def test_read_log_tail_and_follow_by_offset():
    lines = [f"line {i}" for i in range(500)]
    p = _log("model-1", "\n".join(lines) + "\n")
    size = p.stat().st_size
    r = serve.read_log("model-1", tail=3)
    assert r == {"id": "model-1", "text": "line 497\nline 498\nline 499", "offset": size, "running": False}
    assert serve.read_log("model-1")["text"].splitlines() == lines   # no tail: everything (under the limit)
    # follow: nothing new, then what was appended, from where the last read stopped
    assert serve.read_log("model-1", offset=size) == {"id": "model-1", "text": "", "offset": size,
                                                      "running": False}
    with open(p, "a", encoding="utf-8") as f:
        f.write("more\n")
    r2 = serve.read_log("model-1", offset=size)
    assert r2["text"] == "more\n" and r2["offset"] == size + 5
    # an offset past the end (a log rewritten by a restart) reads nothing and says where the end is
    assert serve.read_log("model-1", offset=10**9)["offset"] == size + 5


def test_read_log_is_bounded_and_decodes_bad_bytes():
    _log("model-1", b"a" * 5000 + b"\xff\xfe end")
    r = serve.read_log("model-1", max_bytes=100)
    assert len(r["text"]) <= 100 and r["text"].endswith(" end") and "\ufffd" in r["text"]
    r = serve.read_log("model-1", offset=0, max_bytes=1000)
    assert r["text"] == "a" * 1000 and r["offset"] == 1000      # the next poll reads the rest
    assert serve.MAX_LOG_BYTES == 1 << 20


def test_read_log_says_whether_the_server_runs(sleeper):
    _record("model-1", sleeper.pid)
    _log("model-1", "hello\n")
    assert serve.read_log("model-1")["running"] is True


@pytest.mark.parametrize("sid", ["no-such-1", "../servers/x", "..", "a/../../etc/passwd", "/etc/passwd",
                                 "Model-1", "", "x" * 200])
def test_read_log_only_reads_logs_in_the_servers_folder(sid, home):
    (home.parent / "secret.log").write_text("secret", encoding="utf-8")
    with pytest.raises(NotFoundError):
        serve.read_log(sid)


def test_a_log_that_links_out_of_the_folder_is_not_read(home):
    outside = home.parent / "outside.log"
    outside.write_text("secret", encoding="utf-8")
    (servers_dir() / "model-1.log").symlink_to(outside)
    with pytest.raises(NotFoundError):
        serve.read_log("model-1")


# --- argument checks of start() (they run before anything is spawned) ----------------------------

def test_tls_needs_both_files_and_they_must_exist(tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("x", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="both a certificate and its private key"):
        serve.start("model", tls_cert=str(cert))
    with pytest.raises(InvalidInputError, match="both a certificate and its private key"):
        serve.start("model", tls_key=str(cert))
    with pytest.raises(InvalidInputError, match="private key file .* does not exist") as e:
        serve.start("model", tls_cert=str(cert), tls_key=str(tmp_path / "missing.pem"))
    assert "PEM" in e.value.hint
    # both present, but a stable address does not do HTTPS
    with pytest.raises(InvalidInputError, match="stable address does not serve HTTPS"):
        serve.start("model", tls_cert=str(cert), tls_key=str(cert), stable=True)
    assert list(servers_dir().iterdir()) == []           # nothing was started or recorded


def test_engine_and_auth_are_checked():
    with pytest.raises(InvalidInputError) as e:
        serve.start("model", engine="nope")
    assert e.value.to_dict()["expected"] == list(serve.ENGINES)
    with pytest.raises(InvalidInputError):
        serve.auth_env("sometimes")
    assert serve.auth_env(None) == serve.auth_env("off") == {}
    assert serve.auth_env("key")["NBDEPLOY_AUTH"] == "key"


def test_oidc_needs_its_settings(monkeypatch):
    for v in ("NBDEPLOY_OIDC_ISSUER", "NBDEPLOY_OIDC_AUDIENCE"):
        monkeypatch.delenv(v, raising=False)
    with pytest.raises(InvalidInputError, match=r"\$NBDEPLOY_OIDC_ISSUER, \$NBDEPLOY_OIDC_AUDIENCE"):
        serve.auth_env("oidc")
    monkeypatch.setenv("NBDEPLOY_OIDC_ISSUER", "https://issuer.example")
    monkeypatch.setenv("NBDEPLOY_OIDC_AUDIENCE", "api")
    assert serve.auth_env("oidc") == {"NBDEPLOY_AUTH": "oidc"}


def test_free_port_is_free():
    import socket

    port = serve.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
