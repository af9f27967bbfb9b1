"""What ``nbdeploy list`` and ``%deploy list`` / ``%deploy status`` show, built once.

The rows come from here; the CLI renders them as a text table (:meth:`Table.text`), the magic as
an HTML table that fits a narrow notebook pane, with the same text beside it for terminals and
saved notebooks (:func:`mimebundle`).  Numbers use :mod:`nbdeploy.formatting`.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .formatting import size

__all__ = ["Table", "bundle_table", "server_table", "list_tables", "status_tables",
           "render_text", "render_html", "mimebundle"]

_TAGS = ("BUNDLE", "TAG")    # cells that may break after "name:" in a narrow pane

#: how many versions `status NAME` shows before "... and N older versions"
STATUS_VERSIONS = 5


@dataclass
class Table:
    """A titled table of strings; ``empty`` is said instead when it has no rows, ``note`` after."""

    title: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]] = field(default_factory=list)
    empty: str = ""
    note: str = ""
    right: tuple[str, ...] = ()        # columns aligned right (numbers)
    links: tuple[str, ...] = ()        # columns whose cells are URLs

    def text(self) -> str:
        """Fixed-width text: a header, one line per row, columns two spaces apart."""
        if not self.rows:
            return "\n".join(x for x in (self.empty, self.note) if x)
        cells = [tuple(self.columns)] + [tuple(r) for r in self.rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.columns))]
        lines = []
        for r in cells:
            parts = [r[i].rjust(w) if self.columns[i] in self.right else r[i].ljust(w)
                     for i, w in enumerate(widths)]
            lines.append("  ".join(parts).rstrip())
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)

    def html(self) -> str:
        """An HTML table that wraps long tags and URLs inside their cells rather than the pane."""
        e = html.escape
        head = f"<div style='font-weight:600;margin:6px 0 2px'>{e(self.title)}</div>"
        if not self.rows:
            body = f"<div style='opacity:.75'>{e(self.empty)}</div>" if self.empty else ""
            return head + body + _note(self.note)
        cell = "padding:2px 10px 2px 0;vertical-align:top;overflow-wrap:anywhere;"
        th = "".join(f"<th style='{cell}text-align:{'right' if c in self.right else 'left'}'>"
                     f"{e(c.lower())}</th>" for c in self.columns)
        trs = []
        for r in self.rows:
            tds = []
            for c, v in zip(self.columns, r):
                text = e(v).replace(":", ":<wbr>") if c in _TAGS else e(v)  # NAME:<wbr>VERSION
                if c in self.links and v.startswith(("http://", "https://")):
                    text = f"<a href='{e(v)}' target='_blank' rel='noopener'>{e(v)}</a>"
                align = "right" if c in self.right else "left"
                tds.append(f"<td style='{cell}text-align:{align}'>{text}</td>")
            trs.append("<tr>" + "".join(tds) + "</tr>")
        table = ("<table style='border-collapse:collapse;font-size:12px;width:auto;"
                 "max-width:100%;table-layout:auto'>"
                 f"<thead><tr>{th}</tr></thead><tbody>{''.join(trs)}</tbody></table>")
        return head + f"<div style='max-width:100%;overflow-x:auto'>{table}</div>" + _note(self.note)


def _note(note: str) -> str:
    return f"<div style='opacity:.75'>{html.escape(note)}</div>" if note else ""


def _created(iso: str | None) -> str:
    """'2026-12-01T15:26:12.123+00:00' -> '2026-12-01 15:26:12'."""
    return (iso or "")[:19].replace("T", " ")


def bundle_table(bundles: Iterable[Any], *, title: str = "Bundles", empty: str = "",
                 note: str = "") -> Table:
    """One row per bundle version (store.BundleSummary): tag, framework, task, variant, size, created."""
    rows = [(b.tag, b.framework or "-", b.task or "-", b.variant or "-", size(b.size_bytes),
             _created(b.created)) for b in bundles]
    return Table(title, ("BUNDLE", "FRAMEWORK", "TASK", "VARIANT", "SIZE", "CREATED"), rows,
                 empty=empty, note=note, right=("SIZE",))


def server_table(servers: Iterable[Any], *, title: str = "Servers", empty: str = "",
                 health: bool = True) -> Table:
    """One row per running server (serve.ServerHandle): id, tag, URL, pid and (asked now) health."""
    rows = [(s.id, s.tag, s.url, str(s.pid)) + ((s.health(),) if health else ()) for s in servers]
    columns = ("SERVER", "TAG", "URL", "PID") + (("HEALTH",) if health else ())
    return Table(title, columns, rows, empty=empty, links=("URL",))


def list_tables(name: str | None = None, *, build_hint: str = "nbdeploy demo") -> list[Table]:
    """The bundles in the store (one name's versions if given) and the running servers."""
    from .serve import list_servers
    from .store import list_bundles

    servers = list_servers()
    if name:
        servers = [s for s in servers if s.name == name or s.tag == name]
    empty = f"No nbdeploy bundles{' named ' + repr(name) if name else ''} yet. Build one with {build_hint}"
    return [bundle_table(list_bundles(name), empty=empty),
            server_table(servers, empty="No servers running.")]


def status_tables(name: str) -> list[Table] | None:
    """The versions of bundle ``name`` (or tag) and its servers; None if neither exists."""
    from .serve import find
    from .store import list_bundles

    servers = find(name)
    try:
        bundles = [b for b in list_bundles(name.split(":")[0]) if ":" not in name or b.tag == name]
    except Exception:   # an invalid name has no bundles; the caller says what exists
        bundles = []
    if not bundles and not servers:
        return None
    older = len(bundles) - STATUS_VERSIONS
    note = f"… and {older} older version{'s' if older > 1 else ''}" if older > 0 else ""
    not_serving = (f"not serving (start with: d.serve() or `bentoml serve {bundles[0].tag}`)"
                   if bundles else "not serving")
    return [bundle_table(bundles[:STATUS_VERSIONS], title=f"Versions of {name}", note=note),
            server_table(servers, empty=not_serving)]


def render_text(tables: Iterable[Table]) -> str:
    return "\n\n".join(t.text() for t in tables)


def render_html(tables: Iterable[Table]) -> str:
    return "<div class='nbdeploy-list' style='max-width:100%'>" + "".join(t.html() for t in tables) + "</div>"


def mimebundle(tables: list[Table]) -> dict:
    """``{"text/html": ..., "text/plain": ...}`` for IPython's ``display(..., raw=True)``."""
    return {"text/html": render_html(tables), "text/plain": render_text(tables)}
