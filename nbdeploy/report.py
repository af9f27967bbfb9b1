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
