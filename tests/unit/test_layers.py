"""The shape of the package, checked from its source (issue 24): no import cycles (lazy imports
inside functions included), no module importing another module's private names, and the layers
pointing down: ``runtime/`` is a leaf shared by notebook and bundle; the OCI code goes
``oci`` <- ``registry`` / ``image`` <- ``publish``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "nbdeploy"


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> tuple[set[str], list[tuple[str, str]]]:
    """(nbdeploy modules imported anywhere in the file, [(module, private name) used from them])."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    deps: set[str] = set()
    private: list[tuple[str, str]] = []
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("nbdeploy"):
                continue
            for a in node.names:
                full = f"{target}.{a.name}"
                if full in MODULES:
                    deps.add(full)
                    aliases[a.asname or a.name] = full
                else:
                    deps.add(target)
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        private.append((target, a.name))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("nbdeploy"):
                    deps.add(a.name)
                    if a.asname:
                        aliases[a.asname] = a.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            private.append((aliases[node.value.id], node.attr))
    deps.discard(name)
    return {d for d in deps if d in MODULES}, private


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v][0]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    return out


def test_the_checker_sees_the_package():
    assert "nbdeploy.pipeline" in MODULES and "nbdeploy.runtime.model" in MODULES
    assert "nbdeploy.convert" in GRAPH["nbdeploy.pipeline"][0]


def test_no_import_cycles():
    assert _cycles() == []


def test_no_module_imports_a_private_name_of_another():
    found = sorted({(m, dep, attr) for m, (_, priv) in GRAPH.items() for dep, attr in priv
                    if dep != m})
    assert found == []


def test_runtime_is_a_leaf():
    """The bundle carries runtime/ alone: it may import nothing else from nbdeploy."""
    bad = {m: sorted(d for d in deps if not d.startswith("nbdeploy.runtime"))
           for m, (deps, _) in GRAPH.items() if m.startswith("nbdeploy.runtime")}
    assert {m: d for m, d in bad.items() if d} == {}


@pytest.mark.parametrize("module, forbidden", [
    ("nbdeploy.oci", {"nbdeploy.registry", "nbdeploy.image", "nbdeploy.publish"}),
    ("nbdeploy.registry", {"nbdeploy.image", "nbdeploy.publish"}),
    ("nbdeploy.image", {"nbdeploy.registry", "nbdeploy.publish"}),
])
def test_oci_layers_point_down(module, forbidden):
    assert module in MODULES, f"{module} is missing"
    assert GRAPH[module][0] & forbidden == set()
