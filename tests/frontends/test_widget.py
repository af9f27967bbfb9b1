"""The widget after real pipeline runs: steps, tabs, real Serve/Stop, errors as message + hint."""

from __future__ import annotations

import re
import urllib.error

import numpy as np
import pytest
from conftest import http


def copied(snippets_html: str) -> list[str]:
    """What each copy button of the snippets copies: its data-text, as the browser decodes it."""
    from html.parser import HTMLParser

    class Buttons(HTMLParser):
        texts: list[str] = []

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "button" and "nbd-copy" in (a.get("class") or ""):
                assert "navigator.clipboard.writeText(t)" in a["onclick"]   # copies data-text
                self.texts.append(a["data-text"])

    parser = Buttons()
    parser.texts = []
    parser.feed(snippets_html)
    return parser.texts


@pytest.fixture(scope="module")
def iris():
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    return LogisticRegression(max_iter=500).fit(X, y), X, y


@pytest.fixture(scope="module")
def built(iris):
    from nbdeploy.pipeline import Deployment
    from nbdeploy.widget import DeployWidget

    model, X, y = iris
    d = Deployment(model, X[:50], labels=y[:50], name="widget-test", quantize="none", explain="none",
                   benchmark_budget_s=1)
    w = DeployWidget(d)
    seen = []
    d.add_listener(lambda ev: seen.append((ev.step, ev.state, w.step_rows[ev.step].state)))
    d.run()
    w.refresh()
    yield d, w, seen
    d.stop()


def test_steps_update_live_and_end_done(built):
    d, w, seen = built
    # the widget's row already shows each event's state when later listeners run
    assert ("convert", "running", "running") in seen and ("convert", "done", "done") in seen
    for step in ("detect", "convert", "verify", "bundle"):
        row = w.step_rows[step]
        assert row.state == "done" and row.icon.value and "✔" in row.icon.value
    assert w.step_rows["explain"].state == "skipped"
    # the run is over and nobody asked to serve or push: not left looking unfinished
    for step in ("serve", "push"):
        assert w.step_rows[step].state == "not requested", step
        assert "not requested" in w.step_rows[step].result.value and "○" not in w.step_rows[step].icon.value
    assert "4 features" in w.step_rows["convert"].result.value
    assert d.tag in w.status.value and w.error_html.value == ""
    assert list(w.step_rows) == ["detect", "convert", "verify", "benchmark", "quantize", "explain",
                                 "bundle", "serve", "push"]


def test_tabs_are_populated(built):
    d, w, _ = built
    assert w.tabs.titles == ("Summary", "Benchmark", "Quantization", "Explanations", "Bundle")
    assert w.tabs.layout.display is None                 # shown once the run ended
    assert "sklearn" in w.summary_html.value and d.tag in w.summary_html.value
    assert "PASS" in w.summary_html.value
    if d.optimized is not None:                          # quantize="none" still measures fp32
        assert "p50" in w.benchmark_html.value
    else:
        assert "No benchmark" in w.benchmark_html.value
    assert "No explanation" in w.explanation_html.value and w.explain_button.disabled
    assert d.tag in w.bundle_html.value and d.path in w.bundle_html.value
    assert "curl -X POST" in w.curl_snippet and "/predict" in w.curl_snippet
    assert "requests.post(" in w.python_snippet
    assert "5.1" in w.curl_snippet                       # a real row of the sample
    # a copy button beside each snippet copies exactly that snippet, newlines and quotes kept
    assert copied(w.snippets_html.value) == [w.curl_snippet, w.python_snippet]
    assert "\n" in w.curl_snippet and "'" in w.curl_snippet and '"' in w.python_snippet
    assert w.link_html.value == ""                       # not serving: no address to click
    assert not w.serve_button.disabled and w.stop_button.disabled


def test_serve_and_stop_buttons_drive_a_real_server(built, iris):
    d, w, _ = built
    model, X, _ = iris
    w.serve_button.click()
    assert d.server is not None, w.action_html.value
    url = d.server.url
    try:
        assert w.step_rows["serve"].state == "done" and url in w.step_rows["serve"].summary
        assert w.serve_button.disabled and not w.stop_button.disabled
        assert url in w.server_html.value and url in w.curl_snippet and url in w.python_snippet
        # the address, its API docs and OpenAPI document are links under the status line (issue 23)
        links = {text: href for href, text in
                 re.findall(r"<a href='([^']+)'[^>]*>([^<]+)</a>", w.link_html.value)}
        assert links == {url: url, "API docs": url + "/", "OpenAPI": url + "/nbdeploy/openapi.json"}
        assert links == {text: href for href, text in
                         re.findall(r"<a href='([^']+)'[^>]*>([^<]+)</a>", w.server_html.value)}
        import urllib.request

        with urllib.request.urlopen(links["API docs"], timeout=10) as r:   # Swagger UI
            assert r.status == 200 and "text/html" in r.headers["content-type"]
        status, spec = http("GET", links["OpenAPI"])
        assert status == 200 and "/predict" in spec["paths"]
        assert copied(w.snippets_html.value) == [w.curl_snippet, w.python_snippet]
        status, answer = http("POST", url + "/predict", {"inputs": X[:5].tolist()})
        assert status == 200
        assert answer["predictions"] == model.predict(X[:5]).tolist()
    finally:
        w.stop_button.click()
    assert d.server.health() == "stopped"
    with pytest.raises(OSError):
        import urllib.request

        urllib.request.urlopen(url + "/livez", timeout=2)
    assert not w.serve_button.disabled and w.stop_button.disabled
    assert "stopped" in w.action_html.value
    assert "not serving" in w.server_html.value and w.link_html.value == ""
    assert "built" in w.status.value                     # not stuck at "serve…"


@pytest.mark.slow
def test_push_button_pushes_to_a_real_registry_on_the_env_base(built, registry, base_image_ref,
                                                               shared_image_cache, monkeypatch):
    from containers.fixtures import assert_pushed

    d, w, _ = built
    monkeypatch.setenv("NBDEPLOY_BASE_IMAGE", base_image_ref)   # the widget has no base field
    ref = f"{registry.host}/widget/iris:1"
    w.push_ref.value = f" {ref} "
    w.push_button.click()
    shown = re.search(r"@(sha256:[0-9a-f]{64})", w.action_html.value)
    assert "pushed" in w.action_html.value and shown, w.action_html.value
    assert shown.group(1) == d.pushed.digest
    assert w.step_rows["push"].state == "done" and not w.push_button.disabled
    assert_pushed(registry, ref, shown.group(1), base=base_image_ref)


@pytest.mark.slow
def test_push_button_with_an_unknown_base_shows_message_and_hint(built, registry, shared_image_cache,
                                                                monkeypatch):
    d, w, _ = built
    w.push_ref.value = "  "
    w.push_button.click()
    assert "Enter an image reference" in w.action_html.value and "Hint:" in w.action_html.value
    monkeypatch.setenv("NBDEPLOY_BASE_IMAGE", f"{registry.host}/base/no-such-python:3.11")
    w.push_ref.value = f"{registry.host}/widget/iris:2"
    w.push_button.click()
    shown = w.action_html.value
    assert "RegistryError" in shown and "no-such-python:3.11 not found" in shown, shown
    assert "Hint:" in shown and "Check the repository name" in shown and "Traceback" not in shown
    assert w.step_rows["push"].state == "failed" and not w.push_button.disabled
    with pytest.raises(urllib.error.HTTPError) as nothing:
        registry.manifest("widget/iris", "2")
    assert nothing.value.code == 404


def test_an_error_shows_message_hint_and_a_hidden_traceback(iris):
    from nbdeploy.errors import NbdeployError
    from nbdeploy.pipeline import Deployment
    from nbdeploy.widget import DeployWidget

    model, X, _ = iris
    d = Deployment(model, X[:, :3], name="widget-bad", quantize="none", explain="none")
    w = DeployWidget(d)
    with pytest.raises(NbdeployError):
        d.run()
    w.refresh()
    assert w.step_rows["convert"].state == "failed"
    # the steps after it read "not run", not a column of pending circles
    later = list(w.step_rows)[list(w.step_rows).index("convert") + 1:]
    assert all(w.step_rows[s].state == "not run" for s in later), [w.step_rows[s].state for s in later]
    assert "○" not in "".join(w.step_rows[s].icon.value for s in later)
    report = d._repr_html_()               # the static report agrees, and names the error once
    assert ">pending<" not in report and report.count("expects 4") >= 1
    assert "3 features per row" in w.error_html.value and "expects 4" in w.error_html.value
    assert "Hint:" in w.error_html.value and "same columns" in w.error_html.value
    assert w.traceback.layout.display is None and w.traceback.selected_index is None
    assert "Traceback (most recent call last)" in w.traceback_html.value
    assert w.serve_button.disabled                         # nothing to serve
    assert w.tabs.layout.display == "none"                 # no results to show in tabs

    w.show_error(NbdeployError("bad <script>alert(1)</script>", hint="use <b>care</b>"))
    assert "<script>" not in w.error_html.value and "&lt;script&gt;" in w.error_html.value
    assert "&lt;b&gt;care" in w.error_html.value


def test_results_tabs_render_figures_and_row_explanations():
    """Benchmark/Quantization/Explanations tabs with results shaped like the real ones."""
    from matplotlib.figure import Figure

    from nbdeploy.pipeline import Deployment
    from nbdeploy.widget import DeployWidget

    def fig(title):
        f = Figure(figsize=(2, 2))
        f.add_subplot(111).set_title(title)
        return f

    class Table:
        def __init__(self, text):
            self.text = text

        def _repr_html_(self):
            return f"<table><tr><td>{self.text}</td></tr></table>"

    class Optimized:
        benchmark = Table("latency p50")
        quantization = Table("int8-dynamic")
        chosen, reason = "int8-dynamic", "2.1x faster within 1 point"

        def figures(self):
            return [fig("Latency vs batch size"), fig("Size and accuracy per variant")]

    class Explanation:
        def _repr_html_(self):
            return "<div>mean |SHAP|</div>"

        def figures(self, row=0):
            return {"shap_importance": fig("importance"), "shap_summary": fig("summary"),
                    f"shap_row_{row}": fig(f"row {row}")}

        def explain_row(self, i, method="shap"):
            return {"method": method, "row": i, "feature_names": ["a", "b"], "values": [1.0, 2.0],
                    "contributions": [0.5, -1.5], "base_value": 0.1, "output": -0.9,
                    "explained_output": "1"}

    d = Deployment(object(), np.zeros((4, 2)), name="fake", explain="shap,lime")
    d.optimized, d.explanation = Optimized(), Explanation()
    w = DeployWidget(d)
    w.refresh()
    assert "latency p50" in w.benchmark_html.value
    assert "int8-dynamic" in w.quantization_html.value and "2.1x" in w.quantization_html.value
    assert len(w.benchmark_plots.children) == 1 and len(w.quantization_plots.children) == 1
    png = w.benchmark_plots.children[0].value
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # the importance plot would repeat the importance table; row plots come from the picker
    assert "mean |SHAP|" in w.explanation_html.value and len(w.explanation_plots.children) == 1
    assert w.row_picker.max == 0                          # no converted sample in this fake
    assert list(w.method_picker.options) == ["shap", "lime"] and not w.explain_button.disabled
    w.method_picker.value = "shap"
    w.explain_button.click()
    html = w.row_output.children[0].value
    assert "SHAP, row 0" in html and "-1.5" in html and html.index(">b<") < html.index(">a<")
    assert w.row_output.children[1].value[:4] == b"\x89PNG"
    assert w.row_result["row"] == 0


def test_real_results_fill_benchmark_quantization_and_explanation_tabs(iris):
    from nbdeploy.pipeline import Deployment
    from nbdeploy.widget import DeployWidget

    model, X, y = iris
    d = Deployment(model, X[::3], labels=y[::3], name="widget-full", quantize="auto",
                   explain="shap,lime", benchmark_budget_s=2)
    w = DeployWidget(d)
    d.run()
    w.refresh()
    assert d.optimized is not None and d.explanation is not None
    for step in ("benchmark", "quantize", "explain", "bundle"):
        assert w.step_rows[step].state == "done", (step, w.step_rows[step].summary)
    assert "p50" in w.benchmark_html.value
    assert "chosen" in w.quantization_html.value
    images = [*w.benchmark_plots.children, *w.quantization_plots.children]
    assert images and all(i.value[:4] == b"\x89PNG" for i in images)
    assert len(w.explanation_plots.children) == 1        # the SHAP summary; no importance twin
    assert "mean |SHAP|" in w.explanation_html.value
    ok = [v for v in d.optimized.quantization.variants if v.status == "ok"]
    assert len(w.quantization_plots.children) == (1 if len(ok) > 1 else 0)
    # one number format: rates in k/M rows/s, latencies with their unit, no raw byte counts
    assert "rows/s" in w.benchmark_html.value and re.search(r"\d (µs|ms)<", w.benchmark_html.value)
    assert re.search(r"\d (B|KiB|MiB)<", w.quantization_html.value)
    # the picker sits at the top of its tab, its answer right below it
    tab = w.tabs.children[3].children
    assert w.row_picker in tab[0].children and tab[1] is w.row_output
    assert w.row_picker.max == len(d.converted.X) - 1
    w.row_picker.value = 3
    for method in ("shap", "lime"):
        w.method_picker.value = method
        w.explain_button.click()
        assert w.row_result["row"] == 3 and w.row_result["method"] == method, w.row_output.children
        assert f"{method.upper()}, row 3" in w.row_output.children[0].value
        assert w.row_output.children[1].value[:4] == b"\x89PNG"   # its bars, drawn by plots.py
    w.row_picker.max = 10_000                     # an out-of-range row is a message, not a crash
    w.row_picker.value = 9_999
    w.explain_button.click()
    assert "out of range" in w.row_output.children[0].value and not w.explain_button.disabled


def test_explain_row_offers_the_reports_methods_when_a_shap_algorithm_was_named(iris):
    """explain="permutation" names a SHAP algorithm: the row picker offers "shap" (what the
    report explains with), and explaining a row works."""
    from nbdeploy.pipeline import Deployment
    from nbdeploy.widget import DeployWidget

    model, X, y = iris
    d = Deployment(model, X[::3], name="widget-permutation", quantize="none", explain="permutation",
                   benchmark_budget_s=1)
    w = DeployWidget(d)
    d.run(build=False)
    w.refresh()
    assert list(w.method_picker.options) == ["shap"]
    w.row_picker.value = 2
    w.explain_button.click()
    assert w.row_result["row"] == 2 and w.row_result["method"] == "shap", w.row_output.children


def test_export_button_writes_a_real_archive(built, tmp_path):
    from nbdeploy.archive import inspect_archive

    d, w, _ = built
    target = tmp_path / "widget-test.bento"
    w.export_path.value = str(target)
    w.export_button.click()
    assert target.is_file() and target.stat().st_size > 0, w.action_html.value
    assert "exported" in w.action_html.value and str(target) in w.action_html.value
    names = inspect_archive(target)      # a bundle archive that `nbdeploy import` accepts
    assert {"bento.yaml", "src/model/model.onnx", "src/service.py"} <= set(names), names
    w.export_button.click()                              # exists already: a message, not a crash
    assert "already exists" in w.action_html.value and "Hint:" in w.action_html.value
    w.export_overwrite.value = True
    w.export_button.click()
    assert "exported" in w.action_html.value


def test_bundle_tab_shows_a_canary_and_its_promote_and_rollback_buttons_work(iris):
    """A stable server with a canary in progress: the Bundle tab shows the version serving, the
    canary's share and comparison; Promote and Rollback drive the real server."""
    from sklearn.linear_model import LogisticRegression

    import nbdeploy
    from nbdeploy import serve
    from nbdeploy.pipeline import Deployment
    from nbdeploy.widget import DeployWidget

    model, X, y = iris
    d = Deployment(model, X[:50], labels=y[:50], name="widget-canary", quantize="none", explain="none",
                   benchmark_budget_s=1)
    w = DeployWidget(d)
    d.run()
    w.refresh()
    v1 = d.tag
    other = LogisticRegression(C=0.001, max_iter=500).fit(X, y)   # barely trained: answers differ
    v2 = nbdeploy.deploy(other, X[:50], name="widget-canary", explain="none", quantize="none",
                         benchmark_budget_s=1).tag
    assert w.rollout_box.layout.display == "none"          # nothing to roll without a stable server
    try:
        d.serve(stable=True)
        w.refresh()
        assert v1 in w.rollout_html.value and "no canary in progress" in w.rollout_html.value
        assert w.rollout_box.layout.display is None
        assert w.promote_button.disabled and w.rollback_button.disabled
        serve.rollout("widget-canary", v2, canary=50)
        for _ in range(40):
            status, _ = http("POST", d.server.url + "/predict", {"inputs": X[[0, 60, 120]].tolist()})
            assert status == 200
        w.rollout_refresh.click()
        html = w.rollout_html.value
        assert f"serving <b>{v1}</b>" in html and f"canary <b>{v2}</b> on 50.0% of requests" in html, html
        st = serve.rollout_status("widget-canary")
        assert f"<td>canary</td><td>{st['canary']['requests']}</td>" in html
        assert re.search(r"differing predictions: [\d.]+% of [1-9]\d* compared rows", html), html
        assert not w.promote_button.disabled and not w.rollback_button.disabled

        w.promote_button.click()
        assert f"now serves <code>{v2}</code>" in w.action_html.value, w.action_html.value
        assert serve.rollout_status("widget-canary")["primary"]["tag"] == v2
        assert f"serving <b>{v2}</b>" in w.rollout_html.value and "no canary" in w.rollout_html.value
        assert w.promote_button.disabled and not w.rollback_button.disabled   # rollback to v1 remains

        w.rollback_button.click()
        assert f"now serves <code>{v1}</code>" in w.action_html.value, w.action_html.value
        assert http("GET", d.server.url + "/metadata")[1]["tag"] == v1
        assert f"serving <b>{v1}</b>" in w.rollout_html.value
    finally:
        for h in serve.find("widget-canary"):
            h.stop()
    w.refresh()
    assert w.rollout_box.layout.display == "none" and w.rollout_html.value == ""
