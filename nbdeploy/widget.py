"""The live notebook view of a :class:`~nbdeploy.pipeline.Deployment` (ipywidgets).

One line per pipeline step that updates as :class:`~nbdeploy.pipeline.StepEvent` s arrive, then
tabs with the results (Summary, Benchmark, Quantization, Explanations, Bundle).  The widget only
renders what the Deployment already holds and calls its public methods (``serve``, ``stop``,
``push``, ``export``, ``explanation.explain_row``); it computes nothing itself.

Every piece of state a test may want is a plain attribute: ``step_rows``, ``tabs``, ``status``,
``serve_button``, ``stop_button``, ``push_button``, ``export_button``, ``curl_snippet``, ...
"""

from __future__ import annotations

import html
import json
import time
import traceback
import weakref
from typing import Any

import ipywidgets as W

from .errors import NbdeployError
from .formatting import duration
from .plots import figure_title, figures_of, png_bytes, png_width
from .vocab import SHAP_MODES, STEPS

ICONS = {"pending": ("○", "#999"), "running": ("◐", "#1f6feb"), "done": ("✔", "#1a7f37"),
         "failed": ("✘", "#cf222e"), "skipped": ("–", "#999"),
         "not requested": ("–", "#999"), "not run": ("–", "#bbb")}
TAB_TITLES = ("Summary", "Benchmark", "Quantization", "Explanations", "Bundle")
DEFAULT_URL = "http://127.0.0.1:3000"   # where a plain `bentoml serve TAG` listens

_esc = html.escape


def _pre(text: str) -> str:
    # no wrapping inside numbers: long lines scroll
    return (f"<pre style='white-space:pre;overflow-x:auto;margin:0;padding:4px;background:#f6f8fa;"
            f"user-select:all'>{_esc(text)}</pre>")


def error_html(err: BaseException) -> str:
    """A readable message + hint for an error (HTML, escaped)."""
    message = getattr(err, "message", None) or str(err) or type(err).__name__
    hint = getattr(err, "hint", None)
    out = (f"<div style='color:#cf222e'><b>✘ {_esc(type(err).__name__)}:</b> "
           f"<span style='white-space:pre-wrap'>{_esc(message)}</span></div>")
    if hint:
        out += f"<div><b>Hint:</b> {_esc(hint)}</div>"
    return out


# Copies the button's data-text.  The Clipboard API needs a secure context (https, localhost);
# elsewhere a hidden textarea and execCommand("copy") do it.  Single quotes only: it lives in
# a double-quoted attribute.
_COPY_JS = ("var b=this,t=b.dataset.text;"
            "function ok(){b.textContent='Copied';setTimeout(function(){b.textContent='Copy'},1500)}"
            "function old(){var a=document.createElement('textarea');a.value=t;"
            "a.style.position='fixed';a.style.opacity='0';document.body.appendChild(a);a.select();"
            "try{document.execCommand('copy');ok()}catch(e){b.textContent='Select the text to copy'}"
            "document.body.removeChild(a)}"
            "if(navigator.clipboard&&window.isSecureContext){navigator.clipboard.writeText(t).then(ok,old)}"
            "else{old()}")


def copy_button(text: str, title: str = "Copy to the clipboard") -> str:
    """A small HTML button that copies ``text`` to the clipboard when clicked.

    ipywidgets has no clipboard API, but its HTML widget renders its value as is (ipywidgets 8's
    HTMLView sets ``innerHTML``, unsanitised), so an inline ``onclick`` runs in JupyterLab and
    Notebook 7.  The text travels in ``data-text`` (HTML-escaped; newlines kept)."""
    return (f"<button type='button' class='nbd-copy' title='{_esc(title)}' "
            f"data-text=\"{_esc(text, quote=True)}\" onclick=\"{_esc(_COPY_JS, quote=True)}\" "
            "style='margin-left:8px;font-size:0.85em;padding:0 8px;cursor:pointer'>Copy</button>")


def server_links(url: str) -> str:
    """The server's address, its API docs and its OpenAPI document as links (new tab).

    Under ``bentoml serve`` (BentoML 1.4) the API docs (Swagger UI) are the server's root page;
    ``/docs`` answers 404.  nbdeploy's own document of its routes (``POST /predict``,
    ``/explain``...) is ``/nbdeploy/openapi.json``."""
    base = url.rstrip("/")
    u = _esc(base, quote=True)
    a = "target='_blank' rel='noopener' style='color:var(--jp-content-link-color,#0969da);text-decoration:underline'"
    return (f"<a href='{u}' {a}>{_esc(base)}</a> · "
            f"<a href='{u}/' {a}>API docs</a> · "
            f"<a href='{u}/nbdeploy/openapi.json' {a}>OpenAPI</a>")


def _image(png: bytes) -> W.Image:
    """A PNG at its own pixel size (fonts as drawn, never stretched), at most the cell's width."""
    width = png_width(png)
    return W.Image(value=png, format="png",
                   layout=W.Layout(width=f"{width}px" if width else None, max_width="100%",
                                   height="auto", align_self="flex-start"))


#: lets HTML widgets fill the cell's width instead of growing to their content (see report.CSS)
FILL_CSS = ("<style>.nbd-fill{min-width:0;align-self:stretch}"
            ".nbd-fill>.widget-html-content{flex:1 1 auto;min-width:0}</style>")


def render(obj: Any) -> list[W.Widget]:
    """Widgets showing ``obj``: figures become PNG images, results use their ``_repr_html_``."""
    if obj is None:
        return []
    if isinstance(obj, (list, tuple)):
        return [w for o in obj for w in render(o)]
    if isinstance(obj, W.Widget):
        return [obj]
    if hasattr(obj, "savefig"):
        return [_image(png_bytes(obj))]
    if isinstance(obj, (bytes, bytearray)) and bytes(obj[:8]) == b"\x89PNG\r\n\x1a\n":
        return [_image(bytes(obj))]
    out: list[W.Widget] = []
    rh = getattr(obj, "_repr_html_", None)
    if callable(rh) and not isinstance(obj, type):
        out.append(W.HTML(rh() or ""))
    elif isinstance(obj, str):
        out.append(W.HTML(_pre(obj)))
    else:
        data = obj.to_dict() if callable(getattr(obj, "to_dict", None)) else obj
        try:
            text = json.dumps(data, indent=2, default=str)
        except (TypeError, ValueError):
            text = repr(data)
        out.append(W.HTML(_pre(text)))
    for fig in figures_of(obj):
        out.extend(render(fig))
    return out


class StepRow:
    """One line of the step list: icon, name, time, progress bar, short result."""

    def __init__(self, step: str):
        self.step = step
        self.state = "pending"
        self.elapsed_s = 0.0
        self.summary = ""
        self.fraction: float | None = None
        self.icon = W.HTML(layout=W.Layout(width="1.6em", flex="0 0 auto"))
        self.label = W.HTML(f"<b>{_esc(step)}</b>", layout=W.Layout(width="6.5em", flex="0 0 auto"))
        self.time = W.HTML("", layout=W.Layout(width="5em", flex="0 0 auto"))
        self.bar = W.FloatProgress(min=0.0, max=1.0, value=0.0,
                                   layout=W.Layout(width="9em", flex="0 0 auto", display="none"))
        self.result = W.HTML("", layout=W.Layout(flex="1 1 auto", min_width="0", overflow="hidden"))
        self.result.add_class("nbd-fill")   # the ellipsis, not the cell's edge, ends a long summary
        self.box = W.HBox([self.icon, self.label, self.time, self.bar, self.result],
                          layout=W.Layout(align_items="center", height="1.9em"))
        self.update("pending")

    def update(self, state: str, elapsed_s: float = 0.0, summary: str = "",
               fraction: float | None = None) -> None:
        self.state, self.elapsed_s, self.summary, self.fraction = state, elapsed_s, summary, fraction
        char, color = ICONS.get(state, ("?", "#999"))
        self.icon.value = f"<span style='color:{color};font-size:1.1em' title='{state}'>{char}</span>"
        self.time.value = duration(elapsed_s) if elapsed_s and state != "pending" else ""
        if state == "running" and fraction is not None:
            self.bar.value = fraction
            self.bar.layout.display = None
        elif state != "running":
            self.bar.layout.display = "none"
        short = summary.splitlines()[0] if summary else ""
        color = "#cf222e" if state == "failed" else ("#777" if state in ("skipped", "pending", "not requested", "not run")
                                                    else "inherit")
        if state == "not requested" and not short:
            short = "not requested"
        # one line per step; the whole text is in the tooltip
        self.result.value = (f"<div style='color:{color};white-space:nowrap;overflow:hidden;"
                             f"text-overflow:ellipsis' title='{_esc(summary)}'>{_esc(short[:300])}</div>")


class DeployWidget(W.VBox):
    """Live view of one Deployment.  ``DeployWidget(d)`` listens to ``d``'s events; call
    :meth:`refresh` after the run (the magic does) to fill the tabs."""

    def __init__(self, deployment: Any = None, *, throttle_s: float = 0.1):
        self.deployment = None
        self._throttle_s = throttle_s
        self._last_fraction_update = 0.0
        self.title = W.HTML("<b>nbdeploy</b>")
        self.step_rows: dict[str, StepRow] = {s: StepRow(s) for s in STEPS}
        self.status = W.HTML("")
        self.link_html = W.HTML("")   # while serving: the address and the API docs, as links
        self._final_status: str | None = None   # what `status` shows once the run has ended
        self.error_html = W.HTML("")
        self.traceback_html = W.HTML("")
        self.traceback = W.Accordion(children=[self.traceback_html], titles=("Traceback",),
                                     selected_index=None, layout=W.Layout(display="none"))

        # Summary
        self.summary_html = W.HTML("<i>Results appear here when the pipeline has run.</i>")
        # Benchmark / Quantization
        self.benchmark_html = W.HTML("<i>No benchmark yet.</i>")
        self.benchmark_plots = W.VBox([])
        self.quantization_html = W.HTML("<i>No quantization yet.</i>")
        self.quantization_plots = W.VBox([])
        # Explanations
        self.explanation_html = W.HTML("<i>No explanation yet.</i>")
        self.explanation_plots = W.VBox([])
        self.row_picker = W.BoundedIntText(value=0, min=0, max=0, description="row",
                                           layout=W.Layout(width="12em"))
        self.method_picker = W.Dropdown(options=["shap"], description="method",
                                        layout=W.Layout(width="14em"))
        self.explain_button = W.Button(description="Explain row", icon="search", disabled=True)
        self.explain_button.on_click(self._on_explain)
        self.row_output = W.VBox([])
        self.row_result: Any = None
        # Bundle
        self.bundle_html = W.HTML("<i>No bundle yet.</i>")
        self.curl_snippet = ""
        self.python_snippet = ""
        self.snippets_html = W.HTML("")
        self.serve_button = W.Button(description="Serve", icon="play", button_style="success",
                                     disabled=True)
        self.stop_button = W.Button(description="Stop", icon="stop", button_style="danger",
                                    disabled=True)
        self.server_html = W.HTML("")
        # a stable server (serve(stable=True)): the version it serves, a canary and its comparison
        self.rollout_html = W.HTML("")
        self.rollout_refresh = W.Button(description="Refresh", icon="refresh")
        self.promote_button = W.Button(description="Promote", icon="check", disabled=True,
                                       tooltip="send all requests to the canary")
        self.rollback_button = W.Button(description="Rollback", icon="undo", disabled=True,
                                        tooltip="stop the canary, or return to the version served before")
        self.rollout_box = W.HBox([self.rollout_refresh, self.promote_button, self.rollback_button],
                                  layout=W.Layout(display="none"))
        self.rollout_refresh.on_click(lambda _b: self._update_server())
        self.promote_button.on_click(self._on_promote)
        self.rollback_button.on_click(self._on_rollback)
        self.push_ref = W.Text(placeholder="registry.example.com/team/model:1.0",
                               description="image ref", layout=W.Layout(width="30em"))
        self.push_button = W.Button(description="Push", icon="upload", disabled=True)
        self.export_path = W.Text(placeholder="./exported-bundle", description="path",
                                  layout=W.Layout(width="30em"))
        self.export_overwrite = W.Checkbox(value=False, description="overwrite", indent=False,
                                           layout=W.Layout(width="7em"))
        self.export_button = W.Button(description="Export", icon="download", disabled=True)
        self.action_html = W.HTML("")
        self.serve_button.on_click(self._on_serve)
        self.stop_button.on_click(self._on_stop)
        self.push_button.on_click(self._on_push)
        self.export_button.on_click(self._on_export)

        for h in (self.summary_html, self.benchmark_html, self.quantization_html, self.explanation_html,
                  self.bundle_html, self.snippets_html, self.row_output, self.action_html, self.rollout_html):
            h.add_class("nbd-fill")   # fill the cell's width, never widen it (report.CSS)
        self.tabs = W.Tab(children=[
            W.VBox([self.summary_html]),
            W.VBox([self.benchmark_html, self.benchmark_plots]),
            W.VBox([self.quantization_html, self.quantization_plots]),
            W.VBox([W.HBox([self.row_picker, self.method_picker, self.explain_button]),
                    self.row_output, self.explanation_html, self.explanation_plots]),
            W.VBox([self.bundle_html, self.snippets_html,
                    W.HBox([self.serve_button, self.stop_button, self.server_html]),
                    self.rollout_html, self.rollout_box,
                    W.HBox([self.push_ref, self.push_button]),
                    W.HBox([self.export_path, self.export_overwrite, self.export_button]),
                    self.action_html]),
        ], titles=TAB_TITLES, layout=W.Layout(display="none"))
        super().__init__([self.title, W.VBox([r.box for r in self.step_rows.values()]),
                          self.status, self.link_html, self.error_html, self.traceback, self.tabs])
        if deployment is not None:
            self.attach(deployment)

    # -- wiring ----------------------------------------------------------------------------------
    def attach(self, deployment: Any) -> DeployWidget:
        """Listen to ``deployment``'s step events (and show the state it already has)."""
        self.deployment = deployment
        _VIEWS[deployment] = self
        self.title.value = f"{FILL_CSS}<b>nbdeploy</b> · {_esc(str(deployment.name))}"
        for ev in getattr(deployment, "steps", {}).values():
            self._apply(ev)
        deployment.add_listener(self)
        return self

    def __call__(self, event: Any) -> None:
        """A progress listener: ``Deployment(..., progress=widget)`` works too."""
        self.on_event(event)

    def on_event(self, ev: Any) -> None:
        if ev.state == "running" and ev.fraction is not None:
            now = time.monotonic()   # don't flood the frontend with tiny progress updates
            if now - self._last_fraction_update < self._throttle_s:
                return
            self._last_fraction_update = now
        self._apply(ev)

    def _apply(self, ev: Any) -> None:
        row = self.step_rows.get(ev.step)
        if row is None:
            return
        row.update(ev.state, ev.elapsed_s, ev.summary, ev.fraction)
        if ev.state == "running":
            self.status.value = f"<i>{_esc(ev.step)}…</i>"
        elif ev.step in ("serve", "push") and self._final_status is not None:
            self.status.value = self._final_status
        if ev.step == "serve":
            self._update_server()

    # -- after the run -------------------------------------------------------------------------
    def refresh(self) -> DeployWidget:
        """Fill the tabs from the deployment's results (and show its error, if any)."""
        d = self.deployment
        if d is None:
            return self
        # a run that failed before converting has no results worth tabs: the error says it all
        has_results = d.converted is not None or d.tag is not None
        self.tabs.layout.display = None if has_results else "none"
        for name, fill in (("summary", self._fill_summary), ("optimize", self._fill_optimize),
                           ("explanation", self._fill_explanation), ("bundle", self._fill_bundle)):
            try:
                fill(d)
            except Exception as exc:  # one broken result view must not hide the others
                self.action_html.value += error_html(
                    NbdeployError(f"Could not render the {name} results: {type(exc).__name__}: {exc}",
                                  hint="The results are still on the Deployment object."))
        if getattr(d, "error", None) is not None:
            self.show_error(d.error, getattr(d, "error_traceback", None))
        elif d.tag:
            total = sum(e.elapsed_s for e in d.steps.values() if e.step not in ("serve", "push"))
            self.status.value = (f"<span style='color:#1a7f37'>✔ built <code>{_esc(d.tag)}</code> "
                                 f"in {_esc(duration(total))}</span>")
        self._final_status = self.status.value
        if d.tag is not None:   # the run is over: serve/push nobody asked for are not "pending"
            for step in ("serve", "push"):
                row = self.step_rows[step]
                if row.state == "pending":
                    row.update("not requested")
        elif getattr(d, "error", None) is not None:   # a step failed: the rest will not run
            for row in self.step_rows.values():
                if row.state == "pending":
                    row.update("not run")
        return self

    def show_error(self, err: BaseException, tb: str | None = None) -> None:
        """Show ``err`` as message + hint; the traceback stays behind a collapsed accordion."""
        self.status.value = ""
        self.error_html.value = error_html(err)
        if tb is None and err.__traceback__ is not None:
            tb = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        if tb:
            self.traceback_html.value = _pre(tb)
            self.traceback.layout.display = None
            self.traceback.selected_index = None

    def _fill_summary(self, d: Any) -> None:
        from .report import summary_section, wrap

        self.summary_html.value = wrap(summary_section(d))

    def _fill_optimize(self, d: Any) -> None:
        opt = d.optimized
        if opt is None:
            why = d.steps["benchmark"].summary or "not run"
            self.benchmark_html.value = f"<i>No benchmark: {_esc(why)}</i>"
            self.quantization_html.value = f"<i>No quantization: {_esc(d.steps['quantize'].summary or why)}</i>"
            return
        from .report import benchmark_section, quantization_section, wrap

        figs = figures_of(opt)
        variants = getattr(getattr(opt, "quantization", None), "variants", None)
        one_variant = variants is not None and sum(v.status == "ok" for v in variants) < 2
        try:   # the report's tables: one number format everywhere
            self.benchmark_html.value = wrap(benchmark_section(d, {}))
            self.quantization_html.value = wrap(quantization_section(d, {}, plot=not one_variant))
        except AttributeError:   # a result object of another shape: its own view
            bench, quant = getattr(opt, "benchmark", None), getattr(opt, "quantization", None)
            self.benchmark_html.value = (bench._repr_html_() if hasattr(bench, "_repr_html_")
                                         else opt._repr_html_())
            head = (f"<p><b>chosen:</b> {_esc(str(getattr(opt, 'chosen', '')))} — "
                    f"{_esc(str(getattr(opt, 'reason', '')))}</p>")
            self.quantization_html.value = head + (quant._repr_html_() if hasattr(quant, "_repr_html_")
                                                   else "")
        bench_imgs, quant_imgs = [], []
        for fig in figs:
            title = figure_title(fig).lower()
            is_bench = "latency" in title or "throughput" in title or not title
            if not is_bench and one_variant:   # one bar compares nothing; the table says why
                continue
            (bench_imgs if is_bench else quant_imgs).extend(render(fig))
        self.benchmark_plots.children = bench_imgs
        self.quantization_plots.children = quant_imgs

    def _fill_explanation(self, d: Any) -> None:
        ex = d.explanation
        # the report's own methods ("shap", "lime"), not the words asked for ("tree", "permutation")
        asked = dict.fromkeys("shap" if m in SHAP_MODES else m for m in getattr(d, "explain_methods", ()) or ())
        methods = list(getattr(ex, "methods", None) or asked or ["shap"])
        if ex is None:
            why = d.steps["explain"].summary or "not run"
            self.explanation_html.value = f"<i>No explanation: {_esc(why)}</i>"
            self.explain_button.disabled = True
            return
        from .report import explanation_section, wrap

        try:
            self.explanation_html.value = wrap(explanation_section(d, {}))
        except AttributeError:   # a result object of another shape: its own view
            self.explanation_html.value = ex._repr_html_() if hasattr(ex, "_repr_html_") else ""
        figs = ex.figures() if callable(getattr(ex, "figures", None)) else {}
        # the importance table above already is that bar chart; row plots come from the picker
        figs = figs if isinstance(figs, dict) else dict(enumerate(figs))
        self.explanation_plots.children = [w for k, f in figs.items()
                                           if k != "shap_importance" and "_row_" not in str(k)
                                           for w in render(f)]
        n = len(d.converted.X) if d.converted is not None else 1
        self.row_picker.max = max(0, n - 1)
        self.method_picker.options = methods or ["shap"]
        self.explain_button.disabled = not hasattr(ex, "explain_row")

    def _fill_bundle(self, d: Any) -> None:
        if d.tag is None:
            self.bundle_html.value = "<i>No bundle was built.</i>"
            return
        from .report import serving_section, wrap

        self.bundle_html.value = kv_html({"tag": d.tag, "path": d.path,
                                          "serve it yourself": f"bentoml serve {d.tag}"})
        try:
            self.bundle_html.value += wrap(serving_section(d))
        except AttributeError:
            pass
        self.serve_button.disabled = False
        self.push_button.disabled = False
        self.export_button.disabled = False
        self._update_server()

    # -- the Bundle tab's actions ----------------------------------------------------------------
    def _server(self):
        d = self.deployment
        s = getattr(d, "server", None) if d is not None else None
        return s if s is not None and s.is_alive() else None

    def _update_server(self) -> None:
        d = self.deployment
        if d is None or d.tag is None:
            return
        s = self._server()
        self.serve_button.disabled = s is not None
        self.stop_button.disabled = s is None
        if s is not None:
            self.server_html.value = f"serving at {server_links(s.url)} (pid {s.pid})"
            self.link_html.value = f"▶ serving at {server_links(s.url)}"
        else:
            self.server_html.value = "<i>not serving</i>"
            self.link_html.value = ""
        self._update_rollout(s)
        self._update_snippets(s.url if s is not None else None)

    def _update_rollout(self, s: Any) -> None:
        """A stable server's versions (``serve.rollout_status``), with Promote/Rollback."""
        state = None
        if s is not None and getattr(s, "stable", False):
            from .serve import rollout_status

            try:
                state = rollout_status(s.id)
            except Exception as exc:  # stopped meanwhile, or an older server: say so, keep the tab
                self.rollout_html.value = error_html(exc)
        self.rollout_box.layout.display = None if state is not None else "none"
        if state is None:
            if s is None or not getattr(s, "stable", False):
                self.rollout_html.value = ""
            self.promote_button.disabled = self.rollback_button.disabled = True
            return
        self.rollout_html.value = rollout_html(state)
        self.promote_button.disabled = state.get("canary") is None
        self.rollback_button.disabled = state.get("canary") is None and not state.get("previous")

    def _on_promote(self, _button=None) -> None:
        from .serve import promote

        s = self._server()
        h = self._run_action(self.promote_button, "promoting the canary…", lambda: promote(s.id))
        if h is not None:
            self.action_html.value = f"✔ {_esc(h.id)} now serves <code>{_esc(h.tag)}</code>"

    def _on_rollback(self, _button=None) -> None:
        from .serve import rollback

        s = self._server()
        h = self._run_action(self.rollback_button, "rolling back…", lambda: rollback(s.id))
        if h is not None:
            self.action_html.value = f"✔ {_esc(h.id)} now serves <code>{_esc(h.tag)}</code>"

    def _update_snippets(self, url: str | None) -> None:
        d = self.deployment
        # 7 significant digits: what a float32 holds, without 122.800003-style noise
        if getattr(d.converted, "is_table", False):  # a record: strings stay strings
            row = {c["name"]: (None if isinstance(v, float) and v != v else
                               float(f"{v:.7g}") if isinstance(v, float) else v)
                   for c, v in zip(d.converted.columns, d.converted.X[0])}
        elif d.converted is not None and d.converted.spec.get("input_mode") == "text":
            row = str(d.converted.X[0, 0])   # a text model takes strings (issue 21)
        else:
            row = [float(f"{float(v):.7g}") for v in d.converted.X[0]] if d.converted is not None else []
        base = url or DEFAULT_URL
        body = json.dumps({"inputs": [row]})
        note = "" if url else f"# first: bentoml serve {d.tag}   (or press Serve)\n"
        from .keys import snippet_auth

        hdr, imp, kw = snippet_auth(d.server if url else None)  # a server with --auth: the header
        self.curl_snippet = (f"{note}curl -X POST {base}/predict \\\n{hdr}"
                             f"  -H 'Content-Type: application/json' \\\n  -d '{body}'")
        self.python_snippet = (f"{note}{imp}import requests\n\n"
                               f"r = requests.post(\"{base}/predict\", json={body}{kw}, timeout=30)\n"
                               f"r.raise_for_status()\nprint(r.json())")
        self.snippets_html.value = ("<b>curl</b>" + copy_button(self.curl_snippet) + _pre(self.curl_snippet)
                                    + "<b>Python</b>" + copy_button(self.python_snippet)
                                    + _pre(self.python_snippet))

    def _run_action(self, button: W.Button, busy: str, fn) -> Any:
        """Run a button's action: disable it meanwhile, show errors as message + hint."""
        button.disabled = True
        self.action_html.value = f"<i>{_esc(busy)}</i>"
        try:
            result = fn()
        except Exception as exc:
            self.action_html.value = error_html(exc)
            return None
        finally:
            button.disabled = False
            self._update_server()
        return result

    def _on_serve(self, _button=None) -> None:
        d = self.deployment
        s = self._run_action(self.serve_button, "starting the server…", lambda: d.serve())
        if s is not None:
            self.action_html.value = f"✔ serving at <code>{_esc(s.url)}</code>"

    def _on_stop(self, _button=None) -> None:
        d = self.deployment
        url = self._server().url if self._server() else ""
        done = self._run_action(self.stop_button, "stopping…", lambda: d.stop() or True)
        if done:
            self.action_html.value = f"✔ stopped {_esc(url)}"

    def _on_push(self, _button=None) -> None:
        d = self.deployment
        ref = self.push_ref.value.strip()

        def push():   # the base image: $NBDEPLOY_BASE_IMAGE, else nbdeploy's default
            if not ref:
                raise NbdeployError("Enter an image reference to push to.",
                                    hint="For example registry.example.com/team/model:1.0")
            return d.push(ref)

        result = self._run_action(self.push_button, f"pushing to {ref}…", push)
        if result is not None:
            self.action_html.value = f"✔ pushed to <code>{_esc(ref)}</code>" + "".join(
                w.value for w in render(result) if isinstance(w, W.HTML))

    def _on_export(self, _button=None) -> None:
        d = self.deployment
        path = self.export_path.value.strip()

        def export():
            if not path:
                raise NbdeployError("Enter a path to export the bundle to.",
                                    hint="For example ./my-model.bento")
            return d.export(path, overwrite=True) if self.export_overwrite.value else d.export(path)

        result = self._run_action(self.export_button, f"exporting to {path}…", export)
        if result is not None:
            self.action_html.value = f"✔ exported to <code>{_esc(str(result))}</code>"

    def _on_explain(self, _button=None) -> None:
        d = self.deployment
        i, method = int(self.row_picker.value), self.method_picker.value
        result = self._run_action(self.explain_button, f"explaining row {i} with {method}…",
                                  lambda: d.explanation.explain_row(i, method))
        if result is not None:
            self.action_html.value = ""
            self.row_result = result
            parts = [W.HTML(row_html(result) if isinstance(result, dict) else
                            f"<b>row {i}, {_esc(str(method))}</b>")]
            if not isinstance(result, dict):
                parts.extend(render(result))
            parts.extend(self._row_figure(i, method, result))
            self.row_output.children = parts
        else:  # the error went to the Bundle tab's message line; show it here too
            self.row_output.children = [W.HTML(self.action_html.value)]
            self.action_html.value = ""


    def _row_figure(self, i: int, method: str, result: Any = None) -> list[W.Widget]:
        """The plot of row ``i`` for ``method``: drawn straight from its answer when it is a
        tabular SHAP/LIME row (plots.explanation_row_figure), else the explanation's own."""
        if isinstance(result, dict) and "contributions" in result and "tokens" not in result:
            from .plots import explanation_row_figure

            try:
                return render(explanation_row_figure(result))
            except (KeyError, TypeError, IndexError, ValueError):
                pass   # an answer of another shape: ask the explanation for its figure
        fn = getattr(self.deployment.explanation, "figures", None)
        if not callable(fn):
            return []
        try:
            figs = fn(row=i)
        except Exception:
            return []
        if not isinstance(figs, dict):
            return []
        picked = [f for k, f in figs.items() if k == f"{method}_row_{i}"]
        return [w for f in picked for w in render(f)]

    def _repr_mimebundle_(self, **kwargs):
        data = super()._repr_mimebundle_(**kwargs)
        if isinstance(data, dict):   # what renderers without widget support show
            name = getattr(self.deployment, "name", "")
            data["text/plain"] = (f"nbdeploy deployment {name!r} (live widget; print(d) shows the "
                                  "steps as text)")
            html_report = self.static_html()
            if html_report:   # saved notebooks, nbconvert, nbviewer, GitHub: the whole report
                data["text/html"] = html_report
        return data

    def static_html(self) -> str:
        """The self-contained report (tables, inline PNG plots, snippets) of the deployment."""
        d = self.deployment
        if d is None:
            return ""
        from .report import deployment_html

        snips = {"curl": self.curl_snippet, "python": self.python_snippet} if self.curl_snippet else None
        try:
            return deployment_html(d, snippets=snips)
        except Exception as exc:  # the live view must display even if the report cannot
            return error_html(NbdeployError(f"Could not render the report: {type(exc).__name__}: {exc}"))


def kv_html(info: dict) -> str:
    """A compact two-column table (keys never wrap; long values do)."""
    from .report import fmt

    rows = "".join(
        f"<tr><th style='text-align:left;white-space:nowrap;padding:1px 14px 1px 0;"
        f"vertical-align:top'>{_esc(str(k))}</th><td style='text-align:left;padding:1px 0;"
        f"line-height:1.35'>{_esc(fmt(v))}</td></tr>" for k, v in info.items())
    return f"<table style='border-collapse:collapse'>{rows}</table>"


def rollout_html(state: dict) -> str:
    """What a stable server serves: its version, and a canary in progress with its share and
    the comparison (requests, error rate, mean latency, differing predictions)."""
    def pct(v):
        return "–" if v is None else f"{v * 100:.1f}%"

    p, c = state.get("primary") or {}, state.get("canary")
    out = f"<div class='nbd-rollout'>serving <b>{_esc(str(p.get('tag', '?')))}</b>"
    if not c:
        prev = (state.get("previous") or {}).get("tag")
        out += f" · rollback returns to <code>{_esc(prev)}</code>" if prev else ""
        return out + " · no canary in progress</div>"
    out += (f" · canary <b>{_esc(str(c.get('tag')))}</b> on {pct(state.get('weight'))} of requests"
            "<table><tr><th></th><th>requests</th><th>error rate</th><th>mean ms</th></tr>")
    for role, v in (("serving", p), ("canary", c)):
        out += (f"<tr><td>{role}</td><td>{v.get('requests', 0)}</td><td>{pct(v.get('error_rate'))}</td>"
                f"<td>{v.get('mean_ms', 0):.2f}</td></tr>")
    out += (f"</table>differing predictions: {pct(c.get('differ_share'))} of "
            f"{c.get('compared_rows', 0)} compared rows")
    if state.get("guard"):
        out += f" · guard: <code>{_esc(json.dumps(state['guard']))}</code>"
    return out + "</div>"


def row_html(r: dict, max_features: int = 15) -> str:
    """One row's explanation (an ``explain_row`` answer) as a table, largest contributions first."""
    if "tokens" in r:   # a text model: the text with tokens coloured by contribution (issue 21)
        from .plots import token_html

        return token_html(r)
    names = r.get("feature_names") or []
    values = r.get("values") or []
    contrib = list(r.get("contributions") or [])
    order = sorted(range(len(contrib)), key=lambda j: -abs(contrib[j]))[:max_features]
    base = r.get("base_value", r.get("intercept"))
    head = (f"<b>{_esc(str(r.get('method', '')).upper())}, row {_esc(str(r.get('row')))}</b>"
            f" — explained output <code>{_esc(str(r.get('explained_output', '')))}</code>")
    if base is not None and r.get("output") is not None:
        head += f": base {float(base):.4g} → output {float(r['output']):.4g}"
    rows = []
    for j in order:
        label = (r.get("rules") or [None] * len(contrib))[j] or (names[j] if j < len(names) else f"x{j}")
        val = f"{values[j]:.4g}" if j < len(values) and isinstance(values[j], (int, float)) else ""
        color = "#d62728" if contrib[j] > 0 else "#1f77b4"
        rows.append(f"<tr><td>{_esc(str(label))}</td><td style='text-align:right'>{val}</td>"
                    f"<td style='text-align:right;color:{color}'>{contrib[j]:+.4g}</td></tr>")
    return (f"<div>{head}<table><tr><th>feature</th><th>value</th><th>contribution</th></tr>"
            f"{''.join(rows)}</table></div>")


_VIEWS: weakref.WeakKeyDictionary[Any, DeployWidget] = weakref.WeakKeyDictionary()


def view_of(deployment: Any) -> DeployWidget | None:
    """The widget already showing ``deployment``, or None (none is made)."""
    return _VIEWS.get(deployment)


def widget_for(deployment: Any) -> DeployWidget:
    """The widget of ``deployment`` (made, attached and filled on first use)."""
    w = _VIEWS.get(deployment)
    if w is None:
        w = DeployWidget(deployment)
        w.refresh()
    return w


def show(deployment: Any) -> DeployWidget:
    """Display the live widget of ``deployment`` in the notebook and return it."""
    from IPython.display import display

    w = widget_for(deployment)
    display(w)
    return w
