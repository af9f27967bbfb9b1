"""The JupyterLab sidebar in a real browser: JupyterLab started here, headless Chromium via
Playwright (tests/frontends/browser/drive.js): open the panel, see a bundle made by this test, open its
report, serve it, see it healthy, stop it.  Screenshots go to test-output/.

Needs: node, Debian's chromium, ``npm ci`` in labextension/ (playwright-core) and the built
extension (nbdeploy/labextension, made by ``pip install`` or ``python hatch_build.py``).
Under CI (CI=true) anything missing fails the test instead of skipping it.
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
import urllib.request
from pathlib import Path

import pytest
from conftest import IN_CI  # one reading of CI for the whole suite

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "test-output"
DRIVER = ROOT / "tests" / "frontends" / "browser" / "drive.js"
NODE_MODULES = ROOT / "labextension" / "node_modules"
BUILT = ROOT / "nbdeploy" / "labextension"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

pytestmark = pytest.mark.slow


def _require(ok: bool, why: str) -> None:
    if not ok:
        if IN_CI:
            pytest.fail(f"browser test cannot run under CI: {why}")
        pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"jupyter lab exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"jupyter lab did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def browser_bundle(ref_copy, rf_model, breast_cancer):
    from nbdeploy import store

    _, X_test, _, _ = breast_cancer
    tag = ref_copy("browser-rf")            # a bundle of its own: this test adds a plot to it
    plots = store.bundle_dir(tag) / "plots"
    if not any(plots.glob("*.png")):  # give the detail view a plot to show
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        plots.mkdir(exist_ok=True)
        fig, ax = plt.subplots(figsize=(4, 2.5), dpi=80)
        imp = rf_model.feature_importances_
        order = imp.argsort()[-8:]
        ax.barh([str(X_test.columns[i]) for i in order], imp[order])
        ax.set_title("feature importance")
        fig.tight_layout()
        fig.savefig(plots / "importance.png")
        plt.close(fig)
    yield tag
    from nbdeploy.serve import find

    for h in find("browser-rf"):
        h.stop()


@pytest.fixture
def browser_tools() -> str:
    """The node executable, once everything the browser test needs is known to be there."""
    node = shutil.which("node")
    _require(node is not None, "node is not installed")
    _require(Path(CHROMIUM).exists(), f"{CHROMIUM} is missing (apt-get install chromium)")
    _require((NODE_MODULES / "playwright-core").is_dir(), "run `npm ci` in labextension/ (playwright-core)")
    _require((BUILT / "package.json").is_file(),
             "the labextension is not built (pip install -e . or python hatch_build.py)")
    return node


@pytest.fixture
def lab_env() -> dict:
    """Extra environment for the JupyterLab server (and so for the jobs it runs)."""
    return {}


@pytest.fixture
def jupyter_lab(browser_tools, tmp_path, lab_env):
    """JupyterLab with the nbdeploy server extension and the freshly built labextension."""
    token = os.urandom(16).hex()
    port = _free_port()
    cfg = tmp_path / "config"
    cfg.mkdir()
    (cfg / "jupyter_server_config.json").write_text(json.dumps(
        {"ServerApp": {"jpserver_extensions": {"nbdeploy": True}}}))
    # no "get Jupyter news?" toast over the screenshot
    (cfg / "labconfig").mkdir()
    (cfg / "labconfig" / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    # the build output is named after the package: expose it as <dir>/nbdeploy
    ext_dir = tmp_path / "labextensions"
    ext_dir.mkdir()
    (ext_dir / "nbdeploy").symlink_to(BUILT, target_is_directory=True)
    root = tmp_path / "root"
    root.mkdir()
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(cfg), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"), **lab_env)
    log = tmp_path / "lab.log"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           f"--LabApp.extra_labextensions_path={ext_dir}", "--LabApp.news_url=",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI containers run as root
        cmd.append("--allow-root")
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}/"
    try:
        _wait_http(f"{base}api/status?token={token}", 90, proc, log)
        # the server extension is there
        _wait_http(f"{base}nbdeploy/info?token={token}", 10, proc, log)
        yield base, token, log
    finally:
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue


def _first_plot(tag: str) -> str:
    from nbdeploy import store

    return sorted(store.read_report(tag)["plots"])[0]


def _drive(node: str, lab, tag: str, timeout: float = 420, **extra) -> tuple[dict, str]:
    base, token, log = lab
    OUT.mkdir(exist_ok=True)
    env = dict(os.environ, LAB_URL=base, LAB_TOKEN=token, BUNDLE_TAG=tag, SHOT_DIR=str(OUT),
               CHROMIUM=CHROMIUM, NODE_PATH=str(NODE_MODULES), **extra)
    t0 = time.monotonic()
    proc = subprocess.run([node, str(DRIVER)], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    result = json.loads(lines[-1]) if lines else {"ok": False, "error": "no result"}
    detail = (f"driver exit {proc.returncode} after {time.monotonic() - t0:.0f} s\n{json.dumps(result, indent=1)}\n"
              f"driver stderr:\n{proc.stderr[-3000:]}\nlab log:\n{log.read_text()[-3000:]}")
    assert proc.returncode == 0 and result["ok"], detail
    return result, detail


def assert_progress_ended(seen: list, detail: str) -> None:
    """One job's progress bar as the page drew it (each place it was drawn): states only move
    forward, fractions never go back, and it ends full ('done', fraction 1)."""
    assert seen and len({p["job"] for p in seen}) == 1, (seen, detail)
    order = {"pending": 0, "running": 1, "done": 2, "failed": 2}
    for where in {p["where"] for p in seen}:
        bar = [p for p in seen if p["where"] == where]
        states = [p["state"] for p in bar]
        assert [order[s] for s in states] == sorted(order[s] for s in states), (bar, detail)
        fractions = [float(p["fraction"]) for p in bar if p["fraction"] not in ("", None)]
        assert fractions == sorted(fractions), (bar, detail)
        assert bar[-1]["state"] == "done" and bar[-1]["fraction"] == "1" and bar[-1]["step"] == "done", (bar, detail)


def assert_copied(copy: dict, detail: str) -> None:
    """A copy button put exactly the snippet's shown text on the clipboard, and said so."""
    assert copy["shown"] and copy["copied"] == copy["shown"] and copy["label"] == "Copied", detail


def test_sidebar_serve_and_stop_in_chromium(browser_tools, browser_bundle, jupyter_lab):
    for old in OUT.glob("nbdeploy-sidebar-*.png"):
        old.unlink()
    result, detail = _drive(browser_tools, jupyter_lab, browser_bundle, EXPECT_PLOT=_first_plot(browser_bundle))
    assert [s["name"] for s in result["steps"]][-1] == "done", detail
    assert result["server_url"].startswith("http://127.0.0.1:"), detail
    assert (OUT / "nbdeploy-sidebar-serving.png").stat().st_size > 10_000
    # the serve job's progress bar in the sidebar, to its end
    assert_progress_ended(result["serve_progress"], detail)
    # the running server's snippets aim at it; copy works through the Clipboard API and through
    # the fallback (a page whose Clipboard API refuses)
    assert result["snippets_url"] == result["server_url"], detail
    assert_copied(result["copy_curl"], detail)
    assert result["copy_curl"]["shown"].startswith(f"curl -X POST {result['server_url']}/predict"), detail
    assert_copied(result["copy_python_fallback"], detail)
    assert f'requests.post("{result["server_url"]}/predict"' in result["copy_python_fallback"]["shown"], detail
    # nothing nbdeploy-related broke in the page
    errors = [e for e in result["console_errors"] if "nbdeploy" in e.lower()]
    assert not errors, detail
    from nbdeploy.serve import find

    assert not find(browser_bundle), "the server is still running after Stop"


# --- Push and Delete ---------------------------------------------------------------------------------
PUSH_NAME = "browser-push"


@pytest.fixture
def push_bundle(ref_copy):
    """A bundle of its own (the test deletes it), built from the reference model."""
    tag = ref_copy(PUSH_NAME)
    yield tag
    import bentoml

    try:
        bentoml.bentos.delete(tag)
    except bentoml.exceptions.NotFound:
        pass


@pytest.fixture
def push_env(registry, base_image_ref, nbdeploy_home, lab_env):
    """The server extension's pushes use the test registry's base image and the session's
    image cache (its push body carries only the reference, as the sidebar sends it)."""
    from containers.fixtures import need_root

    need_root()
    lab_env.update(NBDEPLOY_BASE_IMAGE=base_image_ref, NBDEPLOY_HOME=str(nbdeploy_home))
    return registry


# push_env comes before jupyter_lab: it sets the lab's environment before the lab starts
def test_sidebar_push_and_delete_in_chromium(browser_tools, push_bundle, push_env, jupyter_lab):
    """Click Push, type a reference, see it pushed; the registry itself holds that digest under
    that tag.  Click Delete: Cancel keeps the bundle, confirming removes it from BentoML's store."""
    import bentoml

    registry = push_env
    ref = f"{registry.host}/browser/push:1"
    result, detail = _drive(browser_tools, jupyter_lab, push_bundle, timeout=600, MODE="push-delete",
                            PUSH_REF=ref)
    names = [s["name"] for s in result["steps"]]
    assert names[-1] == "done" and "delete: click Delete, then Cancel" in names, detail
    m = re.fullmatch(r"Pushed (\S+)@(sha256:[0-9a-f]{64})", result["pushed_message"].strip())
    assert m and m.group(1) == ref, detail
    digest, manifest = registry.manifest("browser/push", "1")      # the registry's own answer
    assert digest == m.group(2), (digest, detail)
    assert manifest["layers"], manifest
    assert push_bundle in result["delete_question"], detail
    assert result["deleted_message"].strip() == f"Deleted {push_bundle}.", detail
    with pytest.raises(bentoml.exceptions.NotFound):
        bentoml.bentos.get(push_bundle)
    assert (OUT / "nbdeploy-sidebar-pushed.png").stat().st_size > 10_000
    # the push job's bar: it ran (with a step) before it ended full
    progress = result["push_progress"]
    assert_progress_ended(progress, detail)
    assert any(p["state"] == "running" for p in progress), detail
    errors = [e for e in result["console_errors"] if "nbdeploy" in e.lower()]
    assert not errors, detail
