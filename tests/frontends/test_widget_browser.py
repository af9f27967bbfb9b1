"""The %deploy widget in a JupyterLab notebook, in a real browser (JupyterLab started here, headless
Chromium via Playwright: tests/frontends/browser/widget_lab.js): run the notebook, see the step rows and the
tabs, explain a row with the picker, Serve from the Bundle tab (the API docs and OpenAPI links
answer; a snippet's copy button fills the clipboard) and Stop; then the notebook saved by
JupyterLab keeps the report (numbers and plots) and nbconvert's HTML shows it.
Screenshots: test-output/nbdeploy-widget-*.png.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import nbformat
import pytest
from test_browser import CHROMIUM, NODE_MODULES, OUT, ROOT, browser_tools, jupyter_lab, lab_env  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow
DRIVER = ROOT / "tests" / "frontends" / "browser" / "widget_lab.js"
NAME = "lab-widget"
WIDGET = "application/vnd.jupyter.widget-view+json"

CELLS = [
    "%load_ext nbdeploy\n"
    "from sklearn.datasets import load_breast_cancer\n"
    "from sklearn.ensemble import RandomForestClassifier\n"
    "X, y = load_breast_cancer(return_X_y=True)\n"
    "model = RandomForestClassifier(n_estimators=15, max_depth=4, random_state=0).fit(X[:400], y[:400])",
    f"d = %deploy model --sample X[400:520] --labels y[400:520] --name {NAME} --explain shap --budget 2",
]


@pytest.fixture
def lab_env(tmp_path):  # noqa: F811
    # the lab's kernels import this checkout and share the test session's stores
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}


def test_widget_in_jupyterlab(browser_tools, jupyter_lab, tmp_path):  # noqa: F811
    from nbconvert import HTMLExporter

    from nbdeploy import store
    from nbdeploy.serve import find

    base, token, log = jupyter_lab
    root = tmp_path / "root"
    nb_path = root / "widget.ipynb"
    nbformat.write(nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(c) for c in CELLS],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}}), nb_path)
    OUT.mkdir(exist_ok=True)
    for old in OUT.glob("nbdeploy-widget-*.png"):
        old.unlink()
    env = dict(os.environ, LAB_URL=base, LAB_TOKEN=token, NOTEBOOK="widget.ipynb", SHOT_DIR=str(OUT),
               CHROMIUM=CHROMIUM, NODE_PATH=str(NODE_MODULES))
    try:
        proc = subprocess.run([browser_tools, str(DRIVER)], env=env, capture_output=True, text=True,
                              timeout=540, cwd=ROOT)
    finally:
        leftover = find(NAME)
        for h in leftover:
            h.stop()
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    r = json.loads(lines[-1]) if lines else {"ok": False, "error": "no result"}
    detail = (f"{json.dumps(r, indent=1)[:6000]}\ndriver stderr:\n{proc.stderr[-3000:]}\n"
              f"lab log:\n{log.read_text()[-3000:]}")
    assert proc.returncode == 0 and r["ok"], detail
    assert not leftover, "Stop left the server running"

    assert r["tabs"] == ["Summary", "Benchmark", "Quantization", "Explanations", "Bundle"], detail
    states = r["rowStates"]
    assert states.count("done") == 7 and states.count("not requested") == 2, detail
    assert "pending" not in states and "running" not in states, detail
    assert "rows/s" in r["benchmarkText"] and re.search(r"\d (µs|ms)", r["benchmarkText"]), detail
    assert "only one variant" in r["quantizationText"], detail
    assert "mean |SHAP|" in r["explanationsText"], detail
    assert r["explanationsText"].index("Explain row") < r["explanationsText"].index("mean |SHAP|")
    assert "SHAP, row 3" in r["explainRow"], detail
    assert r["serving"].startswith("http://127.0.0.1:"), detail
    served = r["serving"].rstrip("/")
    # the copy button put the served curl call on the clipboard (Clipboard API, permission granted)
    assert r["copyLabelBefore"] == "Copy" and r["copyLabels"][0] == "Copied", detail
    assert r["copyButtons"] == 2, detail                     # curl and Python
    assert r["copied"].startswith(f"curl -X POST {served}/predict \\\n"), detail
    assert "-d '{\"inputs\": [[" in r["copied"], detail      # the sample's first row, ready to send
    # API docs and OpenAPI links while serving; the docs are BentoML's Swagger UI at the root
    assert r["apiDocsHrefs"] and set(r["apiDocsHrefs"]) == {served + "/"}, detail
    assert r["apiDocsGet"]["status"] == 200 and r["apiDocsGet"]["swagger"], detail
    assert "text/html" in r["apiDocsGet"]["type"], detail
    assert r["openapiHrefs"] and set(r["openapiHrefs"]) == {served + "/nbdeploy/openapi.json"}, detail
    assert r["openapiGet"]["status"] == 200 and "/predict" in r["openapiGet"]["paths"], detail
    for tab in ("benchmark", "quantization", "explanations", "bundle"):
        w = r[f"{tab}Width"]
        assert w["scroll"] <= w["client"] + 1, (tab, w)       # nothing pushed out sideways
    assert not [e for e in r["console_errors"] if "nbdeploy" in e.lower()], detail

    # what JupyterLab saved: the widget view and, beside it, the finished report
    saved = nbformat.read(nb_path, as_version=4)
    outs = [o for o in saved.cells[1].outputs if WIDGET in o.get("data", {})]
    assert len(outs) == 1, saved.cells[1].outputs
    report = outs[0]["data"].get("text/html", "")
    tags = [b.tag for b in store.list_bundles(NAME)]
    assert tags and tags[0] in report and "✔ built" in report
    card = store.read_report(tags[0])
    from nbdeploy import formatting as F

    assert F.percent(card["verify"]["label_agreement"]) in report
    body, _ = HTMLExporter().from_notebook_node(saved)
    assert tags[0] in body and len(re.findall(r"data:image/png;base64,", body)) >= 3
