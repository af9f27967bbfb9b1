"""Small helpers to render results as HTML in notebooks (no dependencies)."""

from __future__ import annotations

import html
from typing import Any, Iterable


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
