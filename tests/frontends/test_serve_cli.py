"""Local serving management and the CLI: list, versions, logs, stop from another process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import nbdeploy
from nbdeploy import serve, store
from nbdeploy.cli import main
from nbdeploy.errors import InvalidInputError, NotFoundError

pytestmark = pytest.mark.slow


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nbdeploy.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=300)


def test_versions_serve_list_stop_from_another_process(rf_model, breast_cancer, get):
    X = breast_cancer[1]
    d1 = nbdeploy.deploy(rf_model, X, name="versions", explain="none", quantize="none")
    d2 = nbdeploy.deploy(rf_model, X, name="versions", explain="none", quantize="none")
    assert d1.tag != d2.tag
    versions = [b.tag for b in store.list_bundles("versions")]
    assert versions[:2] == [d2.tag, d1.tag]

    h = serve.start(d1.tag)                      # serve an older version explicitly
    assert get(h.url + "/metadata")[1]["tag"] == d1.tag
    # a "restarted kernel" (a new process) sees and stops it
    out = _cli("list")
    assert out.returncode == 0 and d1.tag in out.stdout and "ready" in out.stdout
    out = _cli("logs", "versions")
    assert "Service versions initialized" in out.stdout or "initialized" in out.stdout
    with pytest.raises(InvalidInputError):
        store.delete(d1.tag)                     # refuses while served
    out = _cli("stop", "versions")
    assert out.returncode == 0 and "stopped" in out.stdout
    assert not h.is_alive()
    assert serve.find("versions") == []     # other tests' servers (the shared one) may be running

    assert store.delete(d1.tag) == d1.tag
    assert [b.tag for b in store.list_bundles("versions")] == [d2.tag]
    with pytest.raises(NotFoundError):
        store.get(d1.tag)


def test_cli_errors_are_one_line_with_hint(capsys):
    assert main(["stop", "nothing-runs"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No running server matches 'nothing-runs'") and "hint:" in err
    assert main(["serve", "../etc/passwd"]) == 2
    assert "Invalid bundle name" in capsys.readouterr().err


def test_demo_command():
    out = _cli("demo")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "served predictions match the native model" in out.stdout
    assert "server stopped" in out.stdout
    assert serve.find("nbdeploy-demo") == []
