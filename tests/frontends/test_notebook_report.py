"""The saved notebook keeps the results: %deploy's output carries a self-contained HTML report
beside the live widget, so nbconvert (and nbviewer, GitHub) show the numbers and plots.

A real python3 kernel runs the notebook (nbclient), the notebook is written to disk and read back
like a saved file, and nbconvert's HTML exporter renders it.  Widget state is not stored, as
JupyterLab saves notebooks by default, so the exporter must fall back to the static report.
"""

from __future__ import annotations

import base64
import json
import os
import re
import struct
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WIDGET = "application/vnd.jupyter.widget-view+json"


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def saved_notebook(tmp_path_factory):
    import nbformat
    from nbclient import NotebookClient

    tmp = tmp_path_factory.mktemp("nbreport")
    env_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = env_path
    cells = [
        "%load_ext nbdeploy",
        "from sklearn.datasets import load_breast_cancer\n"
        "from sklearn.ensemble import RandomForestClassifier\n"
        "X, y = load_breast_cancer(return_X_y=True)\n"
        "model = RandomForestClassifier(n_estimators=15, max_depth=4, random_state=0).fit(X[:400], y[:400])",
        "d = %deploy model --sample X[400:520] --labels y[400:520] --name nbreport --explain shap --budget 2",
        # what the kernel knows, printed for the test to compare with the saved HTML
        "import json, nbdeploy\n"
        "from nbdeploy import formatting as F\n"
        "from nbdeploy.widget import widget_for\n"
        "v = d.verify_report\n"
        "p = d.optimized.benchmark.entry('fp32').point(1)\n"
        "card = nbdeploy.load(d.tag)\n"
        "print(json.dumps({'tag': d.tag, 'agree': F.percent(v.label_agreement),\n"
        "                  'p50': F.ms(p.p50_ms), 'rate': F.rate(p.rows_per_s),\n"
        "                  'top': d.explanation.global_importance()[0]['feature'],\n"
        "                  'same': d._repr_html_() == widget_for(d).static_html(),\n"
        "                  'card_steps': {s['step']: s['state'] for s in card['steps']}}))",
        "d",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3", cwd=str(tmp),
                       store_widget_state=False).execute()
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
    path = tmp / "saved.ipynb"
    nbformat.write(nb, path)
    return nbformat.read(path, as_version=4)


def _facts(nb) -> dict:
    text = "".join(o.get("text", "") for o in nb.cells[3].outputs if o.output_type == "stream")
    return json.loads(text.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_saved_output_carries_the_report_beside_the_widget(saved_notebook):
    nb = saved_notebook
    assert all(o.output_type != "error" for c in nb.cells for o in c.outputs)
    facts = _facts(nb)
    deploy_out = [o for o in nb.cells[2].outputs if WIDGET in o.get("data", {})]
    assert len(deploy_out) == 1
    report = deploy_out[0]["data"]["text/html"]
    # the display was updated after the run: the finished report, not the state at display time
    assert facts["tag"] in report and "✔ built" in report
    assert facts["agree"] in report and facts["p50"] in report and facts["rate"] in report
    assert facts["top"] in report
    for title in ("Summary", "Benchmark", "Quantization", "Explanations", "Serving", "Bundle"):
        assert f"<h4>{title}</h4>" in report, title
    assert "curl -X POST" in report and "requests.post(" in report
    # push was not asked for: it reads "not requested", nothing is left pending
    assert re.search(r"<b>push</b></td><td[^>]*>not requested<", report)
    assert ">pending<" not in report and ">running<" not in report
    # `d` later shows the same report, and Deployment._repr_html_ is that report
    later = [o for o in nb.cells[4].outputs if WIDGET in o.get("data", {})]
    assert len(later) == 1 and facts["tag"] in later[0]["data"]["text/html"]
    assert facts["same"] is True


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_nbconvert_html_shows_numbers_and_plots(saved_notebook):
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(saved_notebook)
    facts = _facts(saved_notebook)
    for value in (facts["tag"], facts["agree"], facts["p50"], facts["rate"], facts["top"]):
        assert value in body, value
    assert "Error displaying widget" not in body and "live widget (needs" not in body
    images = re.findall(r"src=[\"']data:image/png;base64,([A-Za-z0-9+/=]+)", body)
    # latency plot + SHAP summary + SHAP row plot, twice (the %deploy cell and `d`); the
    # importance plot would repeat the table and the one-variant quantization plot compares nothing
    assert len(images) == 6, len(images)
    for b64 in images:
        w, h = _png_size(base64.b64decode(b64))
        assert 200 < w <= 900 and 100 < h <= 900, (w, h)
    assert "No size/accuracy plot: only one variant could be built." in body


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_bundle_card_is_the_finished_build(saved_notebook):
    steps = _facts(saved_notebook)["card_steps"]
    assert steps["bundle"] == "done"
    assert "serve" not in steps and "push" not in steps
    assert set(steps.values()) <= {"done", "skipped"}, steps
