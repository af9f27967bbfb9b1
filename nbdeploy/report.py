"""Small helpers to render results as HTML in notebooks (no dependencies)."""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any


def fmt(v: Any) -> str:
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) < 1e-3 or abs(v) >= 1e6:
            return f"{v:.3g}"
        return f"{v:.4g}"
    if v is None:
        return "—"
    return str(v)


def table(rows: Iterable[Iterable[Any]], header: Iterable[str] | None = None) -> str:
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(fmt(c))}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "".join(out)


def kv_table(d: dict) -> str:
    return table([(k, v) for k, v in d.items()])


def section(title: str, body: str) -> str:
    return f"<h4>{html.escape(title)}</h4>{body}"


def columns_table(columns: list[dict]) -> str:
    """The column schema of a DataFrame model (``spec["columns"]``) as an HTML table."""
    return table(column_rows(columns), ["column", "kind", "dtype", "missing (null)", "categories"])


def column_rows(columns: list[dict], max_values: int = 8) -> list[list]:
    """One row per column: name, kind, dtype, whether null is accepted, the categories."""
    rows = []
    for c in columns:
        cats = c.get("categories")
        shown = "—"
        if cats is not None:
            shown = ", ".join(map(str, cats[:max_values])) + (f" … ({len(cats)})" if len(cats) > max_values
                                                              else "")
            if c.get("accepts_unseen") is False:
                shown += "; others refused"
        rows.append([c.get("name"), c.get("kind"), c.get("dtype"),
                     "accepted" if c.get("nullable") else "refused", shown])
    return rows


# --- the self-contained deployment report ---------------------------------------------------------
# One HTML page fragment with every result of a Deployment: steps, summary, verification,
# benchmark, quantization, explanations, serving choices and bundle.  It is what a saved notebook,
# nbconvert, nbviewer and GitHub show in place of the live widget, and what
# ``Deployment._repr_html_`` returns, so there is one report.  Plots are inline PNG (data: URIs),
# no script, no external file.

_STATE = {"done": ("✔", "#1a7f37", "done"), "failed": ("✘", "#cf222e", "failed"),
          "running": ("◐", "#1f6feb", "running"), "pending": ("○", "#888", "pending"),
          "skipped": ("–", "#888", "skipped"), "not requested": ("–", "#888", "not requested"),
          "not run": ("–", "#aaa", "not run")}

CSS = ("<style>.nbd-report{font:13px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;"
        "max-width:980px;color:#1f2328}"
        ".nbd-report h3{font-size:15px;margin:4px 0 6px}"
        ".nbd-report h4{font-size:13.5px;margin:14px 0 4px;border-bottom:1px solid #d0d7de;"
        "padding-bottom:2px}"
        ".nbd-report table{border-collapse:collapse;margin:2px 0 6px;font-size:12.5px}"
        ".nbd-report th,.nbd-report td{padding:2px 10px 2px 0;text-align:left;vertical-align:top}"
        ".nbd-report td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}"
        ".nbd-report .nbd-scroll{overflow-x:auto;max-width:100%}"
        ".nbd-report pre{white-space:pre;overflow-x:auto;margin:2px 0 8px;padding:6px;"
        "background:#f6f8fa;border-radius:4px;font-size:12px}"
        ".nbd-report img{max-width:100%;height:auto;border:1px solid #eee;margin:2px 8px 6px 0;"
        "vertical-align:top}"
        ".nbd-report .nbd-note{color:#57606a;margin:2px 0}"
        # ipywidgets sizes an HTML widget to its content: a long snippet or a wide table would
        # widen the whole widget (and be cut at the cell's edge); these fill the width instead
        ".nbd-fill{min-width:0;align-self:stretch}"   # no width:100%: widgets have margins
        ".nbd-fill>.widget-html-content{flex:1 1 auto;min-width:0}"
        ".nbd-fill pre{max-width:100%;box-sizing:border-box}</style>")


def wrap(body: str) -> str:
    """A fragment of the report, styled as in the report (for one widget tab)."""
    return f"{CSS}<div class='nbd-report'>{body}</div>"


def _e(v: Any) -> str:
    return html.escape(str(v))


def _tbl(rows: list[list], header: list[str], numeric: Iterable[int] = ()) -> str:
    """A table whose cells are already-formatted strings (escaped here); numeric columns align right."""
    num = set(numeric)
    head = "".join(f"<th{' class=n' if i in num else ''}>{_e(h)}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td{' class=n' if i in num else ''}>{_e(c)}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<div class='nbd-scroll'><table><tr>{head}</tr>{body}</table></div>"


def _kv(info: dict) -> str:
    rows = "".join(f"<tr><th style='white-space:nowrap'>{_e(k)}</th><td>{_e(v)}</td></tr>"
                   for k, v in info.items() if v not in (None, ""))
    return f"<div class='nbd-scroll'><table>{rows}</table></div>"


def png_bytes(fig: Any) -> bytes:
    """PNG of a matplotlib Figure at the notebook's size (:func:`nbdeploy.plots.png_bytes`)."""
    from .plots import png_bytes as _png

    return _png(fig)


def img_tag(png: bytes, alt: str) -> str:
    """An inline PNG shown at its own pixel size (fonts as drawn), never wider than the cell."""
    import base64

    from .plots import png_width

    width = png_width(png) or 480
    return (f"<img alt='{_e(alt)}' title='{_e(alt)}' style='width:{width}px' "
            f"src='data:image/png;base64,{base64.b64encode(png).decode()}'>")


def image_explanation_html(model_dir: Any) -> str:
    """The heat map an image bundle stores at build time (``model/image_explanation.*``, see
    :func:`nbdeploy.images.write_image_explanation`): the overlay over the sample image and its
    top classes; "" when the bundle has none."""
    from . import formatting as F

    try:
        from .images import read_image_explanation

        stored = read_image_explanation(model_dir) if model_dir is not None else None
    except (OSError, ValueError):
        return ""
    if stored is None:
        return ""
    info, png = stored
    space = info.get("output_space", "probability")
    rows = [[c["label"], F.number(c["score"])] for c in info.get("top_classes") or []]
    h, w = (info.get("spatial") or [0, 0])[:2]
    return ("<div class='nbd-image-explanation'><div><b>Heat map</b> (occlusion on the bundle's model, "
            f"sample image {_e(info.get('sample_index', 0))}, {_e(h)}x{_e(w)} pixels, patch "
            f"{_e(info.get('patch'))}): red pixels raise the score of <b>{_e(info.get('explained_output'))}</b> "
            f"({_e(F.number(info.get('output')))}), blue ones lower it</div>"
            + img_tag(png, f"heat map: occlusion attributions for {info.get('explained_output')}")
            + _tbl(rows, ["top classes", space], numeric=(1,)) + "</div>")


def _bundle_model_dir(tag: str | None) -> Any:
    if not tag:
        return None
    try:
        from .store import bundle_dir

        return bundle_dir(tag) / "model"
    except Exception:   # not a bundle of this store (a report rendered elsewhere)
        return None


def step_state(d: Any, ev: Any) -> str:
    """A step's state as a reader should see it: serve/push never asked for are 'not requested'."""
    if ev.state == "pending" and ev.step in ("serve", "push") and d.tag is not None:
        return "not requested"
    if ev.state == "skipped" and ev.summary in ("not requested",):
        return "not requested"
    if ev.state == "pending" and getattr(d, "error", None) is not None:
        return "not run"   # an earlier step failed
    return ev.state


def _plots(d: Any) -> dict:
    """PNG bytes of the report's plots, computed once per result object (they never change)."""
    cache = d.__dict__.setdefault("_nbdeploy_report_plots", {})
    opt, ex = d.optimized, d.explanation
    key = (id(opt), id(ex))
    if key in cache:
        return cache[key]
    cache.clear()
    out: dict[str, bytes] = {}
    try:
        if opt is not None:
            figs = opt.figures()
            out["latency"] = png_bytes(figs[0])
            ok = [v for v in opt.quantization.variants if v.status == "ok"]
            if len(ok) > 1:   # one bar compares nothing
                out["quantization"] = png_bytes(figs[1])
        if ex is not None:
            for name, fig in ex.figures(row=0).items():
                if name != "shap_importance":   # the importance table says the same
                    out[name] = png_bytes(fig)
    except Exception:  # plots are a bonus: the tables carry the numbers
        pass
    cache[key] = out
    return out


def summary_section(d: Any) -> str:
    from . import formatting as F

    c = d.converted
    info: dict[str, Any] = {}
    if c is not None:
        info.update({"framework": c.framework, "model type": c.adapter.model_type,
                     "task": c.spec.get("task"), "features": c.schema.n_features,
                     "sample rows": len(c.X), "converter": c.converter,
                     "ONNX size": F.size(len(c.onnx_bytes))})
        if c.spec.get("classes") is not None:
            info["classes"] = ", ".join(map(str, c.spec["classes"]))[:200]
        if c.spec.get("input_shape"):      # image / N-D models (issue 22)
            pre = c.spec.get("preprocess")
            info["input"] = (f"{['N', *c.spec['input_shape'][1:]]} {c.spec.get('layout')} "
                             f"{c.spec.get('dtype', 'float32')}" + (
                                 f"; images: {pre['mode']} {pre['size'][0]}x{pre['size'][1]}, "
                                 f"mean {pre['mean']}, std {[round(v, 4) for v in pre['std']]}"
                                 if pre else ""))
    info["device"] = d.device
    if d.optimized is not None:
        info["chosen variant"] = d.chosen_variant
    info["bento tag"] = d.tag
    out = _kv(info)
    if c is not None and getattr(c, "is_table", False) and c.columns:
        out += "<div><b>Columns</b></div>" + columns_table(c.columns).replace(
            "<table>", "<div class='nbd-scroll'><table>", 1).replace("</table>", "</table></div>", 1)
    v = d.verify_report
    if v is not None:
        task = getattr(c, "spec", {}).get("task") if c is not None else None
        vi: dict[str, Any] = {"verdict": ("PASS" if v.passed else "FAIL") + f" on {v.rows} rows",
                              "largest difference": f"{F.number(v.max_abs_diff)} absolute, "
                                                    f"{F.number(v.max_rel_diff)} relative"}
        if v.label_agreement is not None:
            vi["labels agree"] = F.percent(v.label_agreement) + (
                f" ({v.near_ties} flip(s) on tied probabilities)" if v.near_ties else "")
        name = F.metric_name(v.metric, task)
        for label, value in (("native", v.native_metric), ("ONNX", v.onnx_metric)):
            if value is not None:
                vi[f"{label} {name}"] = F.metric_value(v.metric, value, task)
        out += "<div><b>Verification</b> (native model vs ONNX on the sample)</div>" + _kv(vi)
    return section("Summary", out)


def benchmark_section(d: Any, plots: dict) -> str:
    from . import formatting as F

    opt = d.optimized
    if opt is None:
        ev = d.steps.get("benchmark")
        return section("Benchmark", f"<p class='nbd-note'>Not measured: {_e(ev.summary or 'not run')}</p>")
    b = opt.benchmark
    rows = []
    for e in b.entries:
        prov = F.provider(e.provider if e.provider == "native" else
                          (e.providers_assigned[0] if e.providers_assigned else e.provider))
        if e.fallback:
            prov += f" (asked {F.provider(e.provider)}: fell back)"
        for p in e.points:
            rows.append([e.variant, prov, p.batch_size, F.ms(p.p50_ms), F.ms(p.p95_ms), F.ms(p.p99_ms),
                         F.rate(p.rows_per_s)])
        if e.error:
            rows.append([e.variant, prov, "—", "—", "—", "—", e.error[:200]])
    head = f"<p class='nbd-note'>{_e(opt.benchmark_summary())}; measured in {F.duration(b.elapsed_s)}"
    if b.truncated and "truncated" not in head:   # the summary may already say so: once
        head += " (truncated at the time budget)"
    out = head + "</p>" + _tbl(rows, ["variant", "provider", "batch", "p50", "p95", "p99", "throughput"],
                               numeric=(2, 3, 4, 5, 6))
    out += "".join(f"<p class='nbd-note'>{_e(n)}</p>" for n in dict.fromkeys(b.notes))
    if "latency" in plots:
        out += img_tag(plots["latency"], "latency vs batch size")
    return section("Benchmark", out)


def quantization_section(d: Any, plots: dict, *, plot: bool = True) -> str:
    from . import formatting as F

    opt = d.optimized
    if opt is None:
        return ""
    q = opt.quantization
    rows, reasons = [], {}
    for v in q.variants:
        rows.append([v.name + (" (chosen)" if v.name == opt.chosen else ""), v.status.replace("_", " "),
                     F.size(v.size_bytes), F.percent(v.size_ratio, 0) if v.size_ratio is not None else "—",
                     v.delta_text(), F.ms(v.latency.get("p50_ms_batch1")),
                     F.rate(v.latency.get("rows_per_s_max"))])
        if v.reason and v.status != "ok":
            reasons.setdefault(v.reason, []).append(v.name)   # each reason once
    out = f"<p><b>chosen: {_e(opt.chosen)}</b> — {_e(opt.reason)}</p>"
    out += _tbl(rows, ["variant", "status", "size", "size vs fp32", "accuracy lost", "p50 at batch 1",
                       "best throughput"], numeric=(2, 3, 4, 5, 6))
    out += "".join(f"<p class='nbd-note'><b>{_e(', '.join(names))}</b>: {_e(r)}</p>"
                   for r, names in reasons.items())
    if "quantization" in plots:
        out += img_tag(plots["quantization"], "size and accuracy per variant")
    elif plot is False or sum(v.status == "ok" for v in q.variants) < 2:
        out += "<p class='nbd-note'>No size/accuracy plot: only one variant could be built.</p>"
    return section("Quantization", out)


def explanation_section(d: Any, plots: dict) -> str:
    from . import formatting as F

    ex = d.explanation
    heat = image_explanation_html(_bundle_model_dir(d.tag)) if (d.converted is not None and (
        d.converted.spec.get("input_shape") or [])[2:]) else ""   # image bundles (issue 22)
    if ex is None:
        ev = d.steps.get("explain")
        why = "not requested" if ev is not None and ev.state == "skipped" else (ev.summary if ev else "")
        return section("Explanations", heat or f"<p class='nbd-note'>No explanation: {_e(why or 'not run')}</p>")
    imp = ex.global_importance()[:10]
    top = imp[0]["mean_abs_shap"] if imp and imp[0]["mean_abs_shap"] > 0 else 1.0
    bars = "".join(
        f"<tr><td>{_e(i['feature'])}</td><td class=n>{_e(F.number(i['mean_abs_shap']))}</td>"
        f"<td><div style='background:#1f77b4;height:9px;width:{int(180 * i['mean_abs_shap'] / top)}px'>"
        f"</div></td></tr>" for i in imp)
    out = (f"<p class='nbd-note'>{_e(ex.explainer)} SHAP on {len(ex.X)} rows, output space "
           f"<code>{_e(ex.output_space)}</code>, methods {_e(', '.join(ex.methods))}; "
           f"additivity error {_e(F.number(ex.additivity_error))}"
           + (f"; served explanations differ by at most {_e(F.number(ex.serve_agreement))}"
              if ex.serve_agreement is not None else "") + "</p>")
    out += ("<div class='nbd-scroll'><table><tr><th>feature (top 10)</th><th class=n>mean |SHAP|</th>"
            f"<th></th></tr>{bars}</table></div>")
    out += "".join(f"<p class='nbd-note'>{_e(n)}</p>" for n in dict.fromkeys(ex.notes))
    for name, alt in (("shap_summary", "SHAP summary"), ("shap_row_0", "SHAP, row 0"),
                      ("lime_row_0", "LIME, row 0")):
        if name in plots:
            out += img_tag(plots[name], alt)
    return section("Explanations", heat + out)


def serving_section(d: Any) -> str:
    if d.tag is None or d.converted is None:
        return ""
    try:
        config = d.serve_config()
        reasons = d.serving_reasons(config)
    except Exception:
        return ""
    batching = (f"max batch {config.batching['max_batch_size']}, wait at most "
                f"{config.batching['max_latency_ms']} ms" if config.batching else "off")
    rows = [["threads", config.threads, reasons.get("threads", "")],
            ["adaptive batching", batching, reasons.get("batching", "")],
            ["workers", 1, reasons.get("workers", "")],
            ["access log", "on" if config.access_log else "off", reasons.get("access_log", "")]]
    return section("Serving", _tbl(rows, ["choice", "value", "why"]))


def snippets(d: Any, url: str | None, default_url: str = "http://127.0.0.1:3000") -> dict:
    """curl and Python calls of ``/predict`` with the sample's first row."""
    import json as _json

    c = d.converted
    if c is None:
        return {}
    if getattr(c, "is_table", False):
        row = {col["name"]: (None if isinstance(v, float) and v != v else
                             float(f"{v:.7g}") if isinstance(v, float) else v)
               for col, v in zip(c.columns, c.X[0])}
    else:
        # 7 significant digits: what a float32 holds, without 122.800003-style noise
        row = [float(f"{float(v):.7g}") if isinstance(v, float) or getattr(getattr(v, "dtype", None),
                                                                          "kind", "") == "f"
               else (v.item() if hasattr(v, "item") else v) for v in c.X[0]]
    base = url or default_url
    body = _json.dumps({"inputs": [row]})
    note = "" if url else f"# first: bentoml serve {d.tag}\n"
    from .keys import snippet_auth

    hdr, imp, kw = snippet_auth(getattr(d, "server", None) if url else None)  # --auth: the header
    return {"curl": (f"{note}curl -X POST {base}/predict \\\n{hdr}  -H 'Content-Type: application/json' "
                     f"\\\n  -d '{body}'"),
            "python": (f"{note}{imp}import requests\n\nr = requests.post(\"{base}/predict\", json={body}{kw}, "
                       f"timeout=30)\nr.raise_for_status()\nprint(r.json())")}


def _bundle_section(d: Any, snips: dict | None) -> str:
    if d.tag is None:
        return section("Bundle", "<p class='nbd-note'>No bundle was built.</p>")
    server = d.server if d.server is not None and d.server.is_alive() else None
    info = {"tag": d.tag, "path": d.path, "serve it yourself": f"bentoml serve {d.tag}"}
    out = _kv(info)
    if server is not None:
        out += (f"<p>serving at <a href='{_e(server.url)}' target='_blank'>{_e(server.url)}</a> · "
                f"<a href='{_e(server.url)}/' target='_blank'>API docs</a></p>")
    if d.pushed is not None:
        out += f"<p>pushed: <code>{_e(d.pushed)}</code></p>"
    snips = snips or snippets(d, server.url if server is not None else None)
    for label, key in (("curl", "curl"), ("Python", "python")):
        if snips.get(key):
            out += f"<div><b>{label}</b></div><pre>{_e(snips[key])}</pre>"
    return section("Bundle", out)


def deployment_html(d: Any, *, snippets: dict | None = None) -> str:
    """The whole report of Deployment ``d`` as self-contained HTML (see the comment above)."""
    from . import formatting as F

    parts = [CSS, "<div class='nbd-report'>", f"<h3>nbdeploy · {_e(d.name)}</h3>"]
    err = getattr(d, "error", None)
    if err is not None:
        hint = getattr(err, "hint", None)
        parts.append(f"<p style='color:#cf222e'><b>✘ {_e(type(err).__name__)}:</b> "
                     f"{_e(getattr(err, 'message', None) or err)}</p>"
                     + (f"<p><b>Hint:</b> {_e(hint)}</p>" if hint else ""))
    elif d.tag:
        total = sum(e.elapsed_s for e in d.steps.values() if e.step not in ("serve", "push"))
        parts.append(f"<p style='color:#1a7f37'>✔ built <code>{_e(d.tag)}</code> in "
                     f"{_e(F.duration(total))}</p>")
    rows = []
    for ev in d.steps.values():
        state = step_state(d, ev)
        icon, color, word = _STATE.get(state, ("?", "#888", state))
        summary = (ev.summary or "").splitlines()[0] if ev.summary else ""
        if state == "not requested":
            summary = ""
        rows.append(f"<tr><td style='color:{color}'>{icon}</td><td><b>{_e(ev.step)}</b></td>"
                    f"<td style='color:{color};white-space:nowrap'>{_e(word)}</td>"
                    f"<td class=n>{_e(F.duration(ev.elapsed_s)) if ev.elapsed_s else ''}</td>"
                    f"<td>{_e(summary[:300])}</td></tr>")
    parts.append("<div class='nbd-scroll'><table>" + "".join(rows) + "</table></div>")
    if d.converted is not None:
        plots = _plots(d)
        for title, render in (("Summary", lambda: summary_section(d)),
                              ("Benchmark", lambda: benchmark_section(d, plots)),
                              ("Quantization", lambda: quantization_section(d, plots)),
                              ("Explanations", lambda: explanation_section(d, plots)),
                              ("Serving", lambda: serving_section(d)),
                              ("Bundle", lambda: _bundle_section(d, snippets))):
            try:   # a result of a shape this report does not know must not hide the others
                parts.append(render())
            except Exception as exc:
                parts.append(section(title, f"<p class='nbd-note'>Could not show this part: "
                                            f"{_e(type(exc).__name__)}: {_e(str(exc)[:200])}</p>"))
    parts.append("</div>")
    return "".join(parts)


# --- the report of a stored bundle (its model card), for JupyterLab's report tab ------------------

def card_html(tag: str, card: dict, plots: dict | None = None,
              versions: list[tuple[str, dict]] | None = None) -> str:
    """The model card of bundle ``tag`` (``model/metadata.json``) as the same report the notebook
    shows: summary, verification, benchmark, quantization, explanations, serving, and the
    versions of this name side by side.  ``plots``: name -> PNG bytes, shown inline."""
    from . import formatting as F

    plots = plots or {}
    task = card.get("task")
    parts = [CSS, f"<div class='nbd-report' data-tag='{_e(tag)}'>"]
    if card.get("description"):
        parts.append(f"<p class='nbd-note'>{_e(card['description'])}</p>")

    # summary + verification
    schema = card.get("input_schema") or {}
    info = {"framework": card.get("framework"), "model type": card.get("model_type"), "task": task,
            "features": schema.get("n_features"), "variant": card.get("chosen_variant"),
            "device": card.get("device"), "created": card.get("created"),
            "classes": ", ".join(map(str, card["classes"]))[:200] if card.get("classes") else None}
    body = _kv(info)
    v = card.get("verify") or {}
    if v:
        vi = {"verdict": ("PASS" if v.get("passed") else "FAIL") + f" on {v.get('rows')} rows",
              "largest difference": f"{F.number(v.get('max_abs_diff'))} absolute, "
                                    f"{F.number(v.get('max_rel_diff'))} relative"}
        if v.get("label_agreement") is not None:
            vi["labels agree"] = F.percent(v["label_agreement"])
        name = F.metric_name(v.get("metric"), task)
        for label, key in (("native", "native_metric"), ("ONNX", "onnx_metric")):
            if v.get(key) is not None:
                vi[f"{label} {name}"] = F.metric_value(v.get("metric"), v[key], task)
        body += "<div><b>Verification</b> (native model vs ONNX on the sample)</div>" + _kv(vi)
    if schema.get("columns"):       # DataFrame models: the column schema, as in the notebook
        body += "<div><b>Columns</b></div>" + columns_table(schema["columns"])
    parts.append(section("Summary", body))

    opt = card.get("optimize") or {}
    bench = opt.get("benchmark") or {}
    if bench.get("entries"):
        rows = []
        for e in bench["entries"]:
            prov = F.provider(e["provider"] if e["provider"] == "native" else
                              ((e.get("providers_assigned") or [e["provider"]])[0]))
            for p in e.get("points") or []:
                rows.append([e["variant"], prov, p["batch_size"], F.ms(p["p50_ms"]), F.ms(p["p95_ms"]),
                             F.ms(p["p99_ms"]), F.rate(p["rows_per_s"])])
        body = _tbl(rows, ["variant", "provider", "batch", "p50", "p95", "p99", "throughput"],
                    numeric=(2, 3, 4, 5, 6))
        body += "".join(f"<p class='nbd-note'>{_e(n)}</p>" for n in dict.fromkeys(bench.get("notes") or []))
        if "benchmark_latency.png" in plots:
            body += img_tag(plots["benchmark_latency.png"], "benchmark_latency.png")
        parts.append(section("Benchmark", body))

    quant = opt.get("quantization") or {}
    if quant.get("variants"):
        rows, reasons = [], {}
        for q in quant["variants"]:
            lat = q.get("latency") or {}
            delta = q.get("delta")
            delta_text = "—" if delta is None else (f"{delta:.2f} pt" if q.get("delta_unit") == "pt"
                                                    else F.percent(delta, 2))
            rows.append([q["name"] + (" (chosen)" if q["name"] == opt.get("chosen") else ""),
                         q["status"].replace("_", " "), F.size(q.get("size_bytes")),
                         F.percent(q.get("size_ratio"), 0), delta_text, F.ms(lat.get("p50_ms_batch1")),
                         F.rate(lat.get("rows_per_s_max"))])
            if q.get("reason") and q["status"] != "ok":
                reasons.setdefault(q["reason"], []).append(q["name"])
        body = f"<p><b>chosen: {_e(opt.get('chosen'))}</b> — {_e(opt.get('reason', ''))}</p>"
        body += _tbl(rows, ["variant", "status", "size", "size vs fp32", "accuracy lost", "p50 at batch 1",
                            "best throughput"], numeric=(2, 3, 4, 5, 6))
        body += "".join(f"<p class='nbd-note'><b>{_e(', '.join(n))}</b>: {_e(r)}</p>"
                        for r, n in reasons.items())
        if sum(q["status"] == "ok" for q in quant["variants"]) > 1 and "quantize_size_accuracy.png" in plots:
            body += img_tag(plots["quantize_size_accuracy.png"], "quantize_size_accuracy.png")
        else:
            body += "<p class='nbd-note'>No size/accuracy plot: only one variant could be built.</p>"
        parts.append(section("Quantization", body))

    ex = card.get("explain") or {}
    heat = image_explanation_html(_bundle_model_dir(tag))    # image bundles (issue 22)
    if ex:
        imp = (ex.get("global_importance") or [])[:10]
        top = imp[0]["mean_abs_shap"] if imp and imp[0]["mean_abs_shap"] > 0 else 1.0
        bars = "".join(
            f"<tr><td>{_e(i['feature'])}</td><td class=n>{_e(F.number(i['mean_abs_shap']))}</td>"
            f"<td><div style='background:#1f77b4;height:9px;width:{int(180 * i['mean_abs_shap'] / top)}px'>"
            f"</div></td></tr>" for i in imp)
        body = (f"<p class='nbd-note'>{_e(ex.get('explainer'))} SHAP on {_e(ex.get('rows_explained'))} rows, "
                f"output space <code>{_e(ex.get('output_space'))}</code>, methods "
                f"{_e(', '.join(ex.get('methods') or []))}</p>"
                "<div class='nbd-scroll'><table><tr><th>feature (top 10)</th><th class=n>mean |SHAP|</th>"
                f"<th></th></tr>{bars}</table></div>")
        body += "".join(f"<p class='nbd-note'>{_e(n)}</p>" for n in dict.fromkeys(ex.get("notes") or []))
        for prefix in ("shap_summary", "shap_row_", "lime_row_"):   # the overview, then one row
            for name in sorted(n for n in plots if n.startswith(prefix)):
                body += img_tag(plots[name], name)
        parts.append(section("Explanations", heat + body))
    else:
        parts.append(section("Explanations", heat or "<p class='nbd-note'>Not requested for this bundle.</p>"))

    serving = card.get("serving") or {}
    if serving:
        reasons = serving.get("reasons") or {}
        b = serving.get("batching")
        rows = [["threads", serving.get("threads"), reasons.get("threads", "")],
                ["adaptive batching", (f"max batch {b.get('max_batch_size')}, wait at most "
                                       f"{b.get('max_latency_ms')} ms") if b else "off",
                 reasons.get("batching", "")],
                ["workers", 1, reasons.get("workers", "")],
                ["access log", "on" if serving.get("access_log") else "off", reasons.get("access_log", "")]]
        parts.append(section("Serving", _tbl(rows, ["choice", "value", "why"])))

    known = {"benchmark_latency.png", "quantize_size_accuracy.png"}
    other = [n for n in sorted(plots) if n not in known and not n.startswith(
        ("shap_summary", "shap_row_", "lime_row_", "shap_importance"))]
    if other:
        parts.append(section("Plots", "".join(img_tag(plots[n], n) for n in other)))

    if versions and len(versions) > 1:
        parts.append(section("Versions", versions_table(versions, current=tag)))
    parts.append("</div>")
    return "".join(parts)


def _chosen_point(card: dict) -> tuple[float | None, float | None]:
    opt = card.get("optimize") or {}
    for q in (opt.get("quantization") or {}).get("variants") or []:
        if q["name"] == opt.get("chosen"):
            lat = q.get("latency") or {}
            return lat.get("p50_ms_batch1"), lat.get("rows_per_s_max")
    return None, None


def versions_table(versions: list[tuple[str, dict]], current: str | None = None) -> str:
    """Versions of one name side by side (one column each, newest first)."""
    from . import formatting as F

    cols = versions[:4]
    head = ["", *[(t.split(":", 1)[-1] + (" (this)" if t == current else "")) for t, _ in cols]]
    rows = []

    def add(label, fn):
        rows.append([label, *[fn(c) for _, c in cols]])

    add("created", lambda c: c.get("created") or "—")
    add("variant", lambda c: c.get("chosen_variant") or "—")
    add("verification", lambda c: ("PASS" if (c.get("verify") or {}).get("passed") else "FAIL")
        if c.get("verify") else "—")
    add("labels agree", lambda c: F.percent((c.get("verify") or {}).get("label_agreement")))
    add("p50 at batch 1", lambda c: F.ms(_chosen_point(c)[0]))
    add("best throughput", lambda c: F.rate(_chosen_point(c)[1]))
    add("top feature", lambda c: ((c.get("explain") or {}).get("global_importance") or [{}])[0]
        .get("feature", "—"))
    return _tbl(rows, head)
