"""The report in a JupyterLab main-area tab, in a real browser (JupyterLab started here, headless
Chromium via Playwright: tests/frontends/browser/report_tab.js).  A real deployment with benchmark and SHAP
plots; the tab shows every section with tables that fit or scroll (nothing hidden sideways),
plots that load and open at full size on a click, the versions side by side; Serve and Stop work
from the tab and its status follows; Delete removes a version and closes its tab.
Screenshots: test-output/nbdeploy-report-*.png.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from test_browser import (  # noqa: F401 (fixtures)
    CHROMIUM,
    NODE_MODULES,
    OUT,
    ROOT,
    assert_copied,
    assert_progress_ended,
    browser_tools,
    jupyter_lab,
    lab_env,
)

pytestmark = pytest.mark.slow
DRIVER = ROOT / "tests" / "frontends" / "browser" / "report_tab.js"
NAME = "report-tab"


@pytest.fixture
def two_versions():
    """A small forest deployed with benchmark and SHAP (its plots in the bundle), and a second
    version of the same name built from the same results."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier

    import nbdeploy

    X, y = load_breast_cancer(return_X_y=True)
    model = RandomForestClassifier(n_estimators=15, max_depth=4, random_state=0).fit(X[:400], y[:400])
    d = nbdeploy.deploy(model, X[400:520], labels=y[400:520], name=NAME, explain="shap",
                        benchmark_budget_s=2)
    first = d.tag
    time.sleep(1.1)                    # versions are time-stamped
    d._run_step("bundle", d._bundle)   # the same pipeline's bundle step again: a newer version
    second = d.tag
    assert first != second
    yield first, second
    import bentoml

    from nbdeploy.serve import find

    for h in find(NAME):
        h.stop()
    for tag in (first, second):
        try:
            bentoml.bentos.delete(tag)
        except bentoml.exceptions.NotFound:
            pass


def test_report_tab_in_chromium(browser_tools, two_versions, jupyter_lab):  # noqa: F811
    import bentoml

    from nbdeploy import formatting as F
    from nbdeploy import store
    from nbdeploy.serve import find

    first, second = two_versions
    base, token, log = jupyter_lab
    (Path(str(log)).parent / "root" / "exported").mkdir()   # the export's folder, under the root
    OUT.mkdir(exist_ok=True)
    for old in OUT.glob("nbdeploy-report-*.png"):
        old.unlink()
    env = dict(os.environ, LAB_URL=base, LAB_TOKEN=token, BUNDLE_TAG=first, SECOND_TAG=second,
               SHOT_DIR=str(OUT), CHROMIUM=CHROMIUM, NODE_PATH=str(NODE_MODULES))
    proc = subprocess.run([browser_tools, str(DRIVER)], env=env, capture_output=True, text=True,
                          timeout=480, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    r = json.loads(lines[-1]) if lines else {"ok": False, "error": "no result"}
    detail = (f"{json.dumps(r, indent=1)[:6000]}\ndriver stderr:\n{proc.stderr[-3000:]}\n"
              f"lab log:\n{log.read_text()[-3000:]}")
    assert proc.returncode == 0 and r["ok"], detail

    first_view = r["first"]
    for title in ("Summary", "Benchmark", "Quantization", "Explanations", "Serving", "Versions"):
        assert title in first_view["sections"], detail
    assert first_view["hidden"] == [] and first_view["unscrollable"] == [], detail
    assert first_view["docWidth"] <= first_view["viewWidth"] + 1, detail     # no sideways page
    # the card's plots, loaded; the importance plot is left out (the table says it)
    card = store.read_report(first)
    shown = {i["alt"] for i in first_view["images"]}
    assert "benchmark_latency.png" in shown and any(a.startswith("shap_summary") for a in shown), detail
    assert not any(a.startswith("shap_importance") for a in shown)
    # at their own pixel size (fonts as drawn; +2 for the border), never upscaled
    assert all(i["natural"] > 200 and 0 < i["shown"] <= i["natural"] + 2 for i in first_view["images"]), detail
    assert r["zoom"]["cls"] == "nbd-full" and abs(r["zoom"]["shown"] - r["zoom"]["natural"]) <= 2, detail
    assert r["tabsForTag"] == 1
    # the numbers come from the card, in the shared format
    v = card["verify"]
    assert v["passed"] and card["chosen_variant"] == "fp32"
    _ = F.percent(v["label_agreement"])
    # serve / stop from the tab
    assert "ready" in r["serving"] and r["servingUrl"].startswith("http://127.0.0.1:"), detail
    assert r["stopped"].strip() == "not serving" and not find(NAME)
    # the serve job's bar in the tab ended full
    assert_progress_ended(r["serveProgress"], detail)
    # snippets: before serving aimed at the default address after a `bentoml serve` line; while
    # serving at the server; each copy button puts exactly the shown text on the clipboard
    assert r["snippetsBefore"].startswith(f"# first: bentoml serve {first}\ncurl -X POST "), detail
    for copy in (r["copyCurl"], r["copyPythonFallback"]):
        assert_copied(copy, detail)
    assert r["copyCurl"]["shown"].startswith(f"curl -X POST {r['servingUrl']}/predict"), detail
    assert "import requests" in r["copyPythonFallback"]["shown"], detail
    # serve with an API key: the tab and the sidebar say how to get a key; no key in the page
    assert "ready" in r["keyServing"] and "API key required" in r["keyServing"], detail
    assert "nbdeploy keys create NAME" in r["keyServing"] and "nbdeploy keys create" in r["sidebarKeyHint"], detail
    assert not find(NAME)
    # export from the tab: a real archive under the Jupyter root
    archive = Path(str(log)).parent / "root" / "exported" / "report-tab.bento"
    assert r["exported"].startswith("Exported to exported/report-tab.bento ("), detail
    assert archive.is_file() and archive.stat().st_size > 1000, detail
    assert_progress_ended(r["exportProgress"], detail)
    # delete from the tab
    with pytest.raises(bentoml.exceptions.NotFound):
        bentoml.bentos.get(second)
    bentoml.bentos.get(first)
    assert (OUT / "nbdeploy-report-tab.png").stat().st_size > 20_000
    assert not [e for e in r["console_errors"] if "nbdeploy" in e.lower()], detail
