"""%deploy through a real IPython shell: %load_ext, namespace resolution, subcommands, errors."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from IPython.utils.capture import capture_output


@pytest.fixture(scope="module")
def ip():
    from IPython.testing import globalipapp

    globalipapp.start_ipython()          # once per process; later calls return None
    shell = globalipapp.get_ipython()
    # the shell is shared by the whole test process: start from an empty namespace, so names
    # other modules defined (X_test, ...) cannot change which mistakes these tests see
    shell.reset(new_session=False)
    shell.run_line_magic("load_ext", "nbdeploy")
    shell.run_cell(
        "from sklearn.datasets import load_iris\n"
        "from sklearn.linear_model import LogisticRegression\n"
        "X, y = load_iris(return_X_y=True)\n"
        "model = LogisticRegression(max_iter=500).fit(X, y)\n")
    return shell


def magics(ip):
    return ip.magics_manager.registry["DeployMagics"]


def run(ip, line: str):
    """Run ``%deploy line``; returns (result, stdout + the text of what it displayed, stderr)."""
    result, out, err, _ = run_shown(ip, line)
    return result, out, err


def run_shown(ip, line: str):
    """Run ``%deploy line``; also returns the HTML it displayed (tables: list, status)."""
    with capture_output() as cap:
        result = ip.run_line_magic("deploy", line)
    text = "".join(o.data.get("text/plain", "") + "\n" for o in cap.outputs)
    shown_html = "".join(o.data.get("text/html", "") for o in cap.outputs)
    return result, cap.stdout + text, cap.stderr, shown_html


def test_deploy_returns_the_deployment_with_text_progress(ip):
    from nbdeploy.pipeline import Deployment

    d, out, err = run(ip, "model --sample X[:60] --labels y[:60] --name magic-iris "
                          "--quantize none --explain none --budget 1")
    assert isinstance(d, Deployment), err
    assert d.name == "magic-iris" and d.tag.startswith("magic-iris:")
    assert d.converted.X.shape == (60, 4)            # the expression X[:60] was evaluated
    assert d.labels is not None and len(d.labels) == 60
    for step in ("detect", "convert", "verify", "bundle"):
        assert d.steps[step].state == "done"
    # terminal IPython has no widget frontend: one plain line per finished step
    assert "✔ convert" in out and "✔ bundle" in out and d.tag in out
    assert err == ""


def test_assignment_form_in_a_cell(ip):
    with capture_output():
        res = ip.run_cell("d_cell = %deploy model --sample X --name cell-iris --quantize none "
                          "--explain none --budget 1 --text")
    assert res.success
    assert ip.user_ns["d_cell"].tag.startswith("cell-iris:")


def test_serve_then_list_status_logs_stop(ip):
    d, out, err = run(ip, "model --sample X[:30] --name served-iris --quantize none --explain none --budget 1 "
                          "--serve")
    assert d is not None, err
    url = d.server.url
    try:
        req = urllib.request.Request(url + "/predict", data=json.dumps({"inputs": X3(ip)}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            answer = json.loads(r.read())
        native = ip.user_ns["model"].predict(np.asarray(X3(ip))).tolist()
        assert answer["predictions"] == native

        _, out, _, shown = run_shown(ip, "list")
        assert d.tag in out and url in out
        # the notebook gets a table (it fits a narrow pane: the tag may break after "name:")
        assert "<table" in shown and f"href='{url}'" in shown
        assert d.tag.replace(":", ":<wbr>") in shown
        _, out, _, shown = run_shown(ip, "status served-iris")
        assert d.tag in out and "ready" in out and url in out
        assert "<table" in shown and "Versions of served-iris" in shown and ">ready<" in shown
        _, out, _ = run(ip, "list served-iris")       # one name's versions and servers
        assert d.tag in out and url in out
        _, out, _ = run(ip, "logs served-iris --tail 20")
        assert out.strip()
    finally:
        _, out, err = run(ip, "stop served-iris")
    assert "stopped" in out and err == ""
    assert d.server.health() == "stopped"
    assert d.steps["serve"].state == "skipped"        # stopped through the Deployment
    _, out, _ = run(ip, "status served-iris")
    assert "not serving" in out


def X3(ip):
    return ip.user_ns["X"][:3].tolist()


def assert_one_line_error(result, out, err, *must_contain):
    assert result is None
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Hint:" in lines[0]
    assert "Traceback" not in err + out
    for text in must_contain:
        assert text in lines[0], lines[0]


@pytest.mark.parametrize("line, must_contain", [
    ("model --sample X --colour red", ["Unknown argument", "--colour"]),
    ("model --sampel X", ["--sampel", "Did you mean --sample"]),
    ("modle --sample X", ["'modle'", "not defined", "Did you mean model"]),
    ("model --sample Xx", ["'Xx'", "not defined", "Did you mean X"]),
    ("model --sample X_test", ["'X_test'", "not defined", "Candidates in the notebook: X, y"]),
    ("model --sample X_tset[:10]", ["'X_tset'", "not defined"]),
    ("model --sample X --labels why", ["'why'", "not defined"]),
    ("model --sample X[:, :2] --quantize none --explain none --budget 1", ["2 features", "expects 4"]),
    ("model --sample X --quantize int4", ["--quantize", "int4"]),
    ("model --sample X --explain magic", ["magic"]),
    ("model --sample X --name 'Not A Name'", ["Not A Name"]),
    ("model", ["--sample is required"]),
    ("model --sample X[:3", ["unbalanced bracket"]),
    ("model --sample X[::0]", ["evaluating", "ValueError"]),
    ("", ["nothing to deploy"]),
    ("stop nobody-runs-this", ["No running server", "nobody-runs-this"]),
    ("logs nobody-runs-this", ["No running server", "nobody-runs-this"]),
    ("status no-such-bundle", ["no bundle or server"]),
    ("logs", ["missing NAME"]),
    ("model --sample X --base 127.0.0.1:5000/python:3.11", ["--base only applies to --push"]),
    ("model --sample X --push 127.0.0.1:5000/m:1 --base 'Not A Ref'", ["Invalid repository name",
                                                                       "Not A Ref"]),
])
def test_mistakes_are_one_line_with_a_hint(ip, line, must_contain):
    result, out, err = run(ip, line)
    assert_one_line_error(result, out, err, *must_contain)


CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def test_list_table_fits_a_narrow_pane(ip, tmp_path):
    """Issue 23: `%deploy list` was fixed-width text that wrapped in a narrow pane.  Laid out by
    a real Chromium in a 280 px wide output area, its HTML tables stay within the pane."""
    from conftest import IN_CI

    if not Path(CHROMIUM).exists():
        if IN_CI:
            pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is missing")
    d, _, err = run(ip, "model --sample X[:30] --name narrow-pane-iris --quantize none --explain none "
                        "--budget 1")
    assert d is not None, err
    _, text, _, shown = run_shown(ip, "list")
    assert d.tag in text and "<table" in shown
    assert max(len(ln) for ln in text.splitlines()) > 60     # as text it would wrap at 280 px
    page = tmp_path / "list.html"
    page.write_text(
        "<html><body style='margin:0;font-family:sans-serif'><div id=pane style='width:280px'>"
        f"{shown}</div><script>const p = document.getElementById('pane');"
        "const w = [...p.querySelectorAll('table')].map(t => t.getBoundingClientRect().right);"
        "document.body.setAttribute('data-layout', JSON.stringify({tables: w, scroll: p.scrollWidth}));"
        "</script></body></html>", encoding="utf-8")
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        "--window-size=800,600", "--dump-dom", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    m = re.search(r'data-layout="([^"]*)"', r.stdout)
    assert m, r.stderr[-2000:]
    layout = json.loads(html.unescape(m.group(1)))
    assert layout["tables"] and max(layout["tables"]) <= 280, layout
    assert layout["scroll"] <= 280, layout


def test_a_busy_port_fails_before_building(ip):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        before = magics(ip).last
        result, out, err = run(ip, f"model --sample X --port {port}")
        assert_one_line_error(result, out, err, f"port {port} is already in use")
        assert magics(ip).last is before
    result, out, err = run(ip, "model --sample X --port 70000")
    assert_one_line_error(result, out, err, "not a TCP port")


def test_wrong_sample_keeps_the_traceback_available(ip):
    run(ip, "model --sample X[:, :3] --quantize none --explain none --budget 1")
    _, out, _ = run(ip, "traceback")
    assert "Traceback (most recent call last)" in out and "InvalidInputError" in out
    last, _, _ = run(ip, "last")
    assert last.error is not None and last.steps["convert"].state == "failed"


@pytest.mark.slow
def test_push_flag_pushes_to_a_real_registry_on_the_base_given(ip, registry, base_image_ref,
                                                                 shared_image_cache):
    from containers.fixtures import assert_pushed

    ref = f"{registry.host}/magic/iris:1"
    d, out, err = run(ip, "model --sample X[:20] --name pushed-iris --quantize none --explain none "
                          f"--budget 1 --push '{ref}' --base {base_image_ref}")
    assert d is not None, err
    assert str(d.pushed) == f"{ref}@{d.pushed.digest}" and str(d.pushed) in out
    assert d.steps["push"].state == "done"
    assert_pushed(registry, ref, d.pushed.digest, base=base_image_ref)


@pytest.mark.slow
def test_push_to_an_unreachable_registry_is_one_line_with_a_hint(ip, registry, base_image_ref,
                                                                   shared_image_cache):
    from containers.fixtures import free_port

    ref = f"127.0.0.1:{free_port()}/magic/iris:1"          # nothing listens there
    result, out, err = run(ip, "model --sample X[:20] --name unpushed-iris --quantize none --explain none "
                               f"--budget 1 --push {ref} --base {base_image_ref}")
    assert_one_line_error(result, out, err, "Cannot reach registry", "Check the registry address")
    d, _, _ = run(ip, "last")
    assert d.steps["bundle"].state == "done" and d.steps["push"].state == "failed"


def test_help_explains_every_flag_with_examples(ip):
    result, out, err = run(ip, "--help")
    assert result is None and err == ""
    flags = ["--sample", "--labels", "--name", "--quantize", "--explain", "--device", "--serve",
             "--port", "--push", "--base", "NBDEPLOY_BASE_IMAGE", "list", "status", "stop", "logs"]
    for flag in flags:
        assert flag in out, flag
    assert "examples:" in out and "%deploy model --sample X_test" in out
    # %deploy? shows the same text (it is the magic's docstring)
    doc = ip.find_line_magic("deploy").__doc__
    for flag in flags:
        assert flag in doc
    with capture_output() as cap:
        ip.run_cell("%deploy?")
    assert "--quantize" in cap.stdout


def test_forced_widget_mode_fills_the_widget(ip):
    d, out, err = run(ip, "model --sample X[:20] --name widget-iris --quantize none --explain none --budget 1 "
                          "--widget")
    assert d is not None, err
    w = magics(ip).last_widget
    assert w is not None and w.deployment is d
    assert w.step_rows["bundle"].state == "done"
    assert d.tag in w.bundle_html.value


def test_split_line_keeps_expressions_whole():
    from nbdeploy.magics import split_line

    assert split_line("m --sample df[['a', 'b']] --name 'x y'") == \
        ["m", "--sample", "df[['a', 'b']]", "--name", "'x y'"]
    assert split_line("m --sample X[: 10, :]") == ["m", "--sample", "X[: 10, :]"]


def test_import_stays_light():
    import subprocess
    import sys

    code = ("import sys, nbdeploy.magics; "
            "print([m for m in ('torch', 'shap', 'bentoml', 'ipywidgets') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_in_a_real_kernel_widget_and_one_line_errors(tmp_path, monkeypatch):
    """nbclient + python3 kernel: the widget is displayed (once), errors are one stderr line."""
    import os
    from pathlib import Path

    import nbformat
    from nbclient import NotebookClient

    root = Path(__file__).resolve().parents[2]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(root), os.environ.get("PYTHONPATH")) if p))
    cells = [
        "%load_ext nbdeploy",
        "from sklearn.datasets import load_iris\n"
        "from sklearn.linear_model import LogisticRegression\n"
        "X, y = load_iris(return_X_y=True)\n"
        "model = LogisticRegression(max_iter=500).fit(X, y)",
        "d = %deploy model --sample X[:40] --name kernel-iris --quantize none --explain none --budget 1",
        "assert type(d).__name__ == 'Deployment' and d.tag.startswith('kernel-iris:')\n"
        "assert d.steps['bundle'].state == 'done'",
        "%deploy model --sample X[:40] --name kernel-iris --quantize none --explain none --budget 1",
        "%deploy model --sampel X",
        "%deploy model --sample X[:, :3] --quantize none --explain none --budget 1",
        "%deploy modle --sample X",
        "d",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, timeout=180, kernel_name="python3", cwd=str(tmp_path)).execute()
    out = [c.outputs for c in nb.cells]

    def widgets(outputs):
        return [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]

    def stderr(outputs):
        return "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stderr")

    assert all(o.output_type != "error" for outs in out for o in outs)
    assert len(widgets(out[2])) == 1 and stderr(out[2]) == ""
    # a bare %deploy shows its live widget once: no second copy as Out[]
    assert len(widgets(out[4])) == 1
    assert not [o for o in out[4] if o.output_type == "execute_result"]
    for i, text in ((5, "Did you mean --sample"), (6, "expects 4"), (7, "Did you mean model")):
        lines = stderr(out[i]).strip().splitlines()
        assert len(lines) == 1 and "Hint:" in lines[0] and text in lines[0], out[i]
    assert len(widgets(out[6])) == 1        # the failed run's widget shows the error too
    assert len(widgets(out[8])) == 1        # a Deployment displays as its widget later on
