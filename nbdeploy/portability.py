"""portability: would a bundle serve on another machine, with only its own requirements?

``check_bundle`` lists what would stop it: unpinned or missing requirements, notebook-only
packages, imports that no requirement provides, pickle files, ONNX external data outside the
model folder, and text that refers to the build machine's paths.

What the served code may import, which distribution provides each module and when a lazily
imported module is needed is not decided here: it is :data:`nbdeploy.bundle.DEPENDENCIES`, the
same list :func:`nbdeploy.bundle.requirements` pins from, and :func:`nbdeploy.bundle.bundle_features`
reads what a bundle serves (explanation methods, kind of input) from its own files.  This module
only compares a finished bundle with that list.  It runs on bundles in the local store (before
``nbdeploy export``); archives from elsewhere are checked by :mod:`nbdeploy.archive`.
"""

from __future__ import annotations

import ast
import os
import re
import sys
import tempfile
from pathlib import Path

from .archive import onnx_external_problems, pickle_reason
from .bundle import ALWAYS, DEPENDENCIES, bundle_features, dists_of
from .errors import NotFoundError

__all__ = ["check_bundle", "parse_requirements", "module_imports", "NOTEBOOK_ONLY"]

#: Packages a served ONNX bundle must never need (notebook-only or the build tool itself).
NOTEBOOK_ONLY = re.compile(r"^(ipywidgets|ipykernel|ipython|notebook|widgetsnbextension|anywidget|"
                           r"jupyter.*|torch.*|tensorflow.*|keras|nbdeploy)$")


def _norm(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


_REQ_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(.*)$")


def parse_requirements(text: str) -> tuple[dict[str, str | None], list[str]]:
    """``{normalised name: pinned version or None}`` and a list of problems."""
    pins: dict[str, str | None] = {}
    problems: list[str] = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            problems.append(f"requirements.txt has an option line {line!r} (pip options make "
                            "installs depend on the build machine)")
            continue
        m = _REQ_LINE.match(line)
        if not m or "://" in line or line.startswith((".", "/")):
            problems.append(f"requirements.txt line {line!r} is not a pinned package")
            continue
        name, rest = _norm(m.group(1)), m.group(3).split(";", 1)[0].strip()
        pin = re.fullmatch(r"==\s*([A-Za-z0-9][A-Za-z0-9.+!_-]*)", rest)
        if not pin or pin.group(1).lower() == "none":
            problems.append(f"requirement {line!r} is not pinned with '=='")
            pins.setdefault(name, None)
            continue
        prev = pins.get(name)
        if prev and prev != pin.group(1):
            problems.append(f"{name} is pinned twice ({prev} and {pin.group(1)})")
        pins[name] = pin.group(1)
    return pins, problems


def module_imports(py: Path) -> tuple[set[str], set[str]]:
    """Top-level module names imported by a file: (at module level, inside functions)."""
    tree = ast.parse(py.read_text(encoding="utf-8"), filename=str(py))
    eager: set[str] = set()
    lazy: set[str] = set()

    def visit(node, in_func: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            mods = []
            if isinstance(child, ast.Import):
                mods = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and not child.level and child.module:
                mods = [child.module]
            (lazy if in_func else eager).update(m.split(".")[0] for m in mods)
            visit(child, inner)

    visit(tree, False)
    return eager, lazy


def _leak_patterns() -> list[tuple[str, re.Pattern]]:
    """The build machine's own paths (home, temp, cwd, environment, stores)."""
    cands = {Path.home(), Path(tempfile.gettempdir()), Path.cwd(), Path(sys.prefix),
             Path(__file__).resolve().parent.parent}
    for var in ("BENTOML_HOME", "NBDEPLOY_HOME", "VIRTUAL_ENV", "CONDA_PREFIX"):
        if os.environ.get(var):
            cands.add(Path(os.environ[var]))
    system = {"/", "/usr", "/usr/local", "/opt", "/var", "/srv", "/home", "/bin", "/etc", "/lib"}
    out = []
    for c in cands:
        for p in {str(c), str(c.resolve()) if c.exists() else str(c)}:
            if p in system or len(p) < 4:
                continue
            out.append((p, re.compile(re.escape(p) + r"(?![A-Za-z0-9_.-])")))
    return out


def _requirement_problems(pins: dict[str, str | None]) -> list[str]:
    problems = []
    always = dict.fromkeys(d.dists for d in DEPENDENCIES if d.when == ALWAYS)
    for dists in always:
        if not any(_norm(d) in pins for d in dists):
            problems.append(f"requirements do not include {' or '.join(dists)}")
    for dist in pins:
        if NOTEBOOK_ONLY.match(dist):
            problems.append(f"requirements include {dist}, which the served bundle does not need "
                            "(notebook-only or the build tool)")
    return problems


def _import_problems(root: Path, src: Path, pins: dict[str, str | None]) -> list[str]:
    """Modules the served code imports that no requirement provides.  A module imported inside a
    function is needed only if :data:`~nbdeploy.bundle.DEPENDENCIES` says so for what this bundle
    serves (always, or for one of its features); those marked if-installed are optional."""
    serves = bundle_features(src)
    conditional = {d.module for d in DEPENDENCIES if d.when != ALWAYS}
    needed_lazily = {d.module for d in DEPENDENCIES if d.needed(serves)}
    local = {p.stem for p in src.glob("*.py")} | {p.name for p in src.iterdir() if p.is_dir()} \
        if src.is_dir() else set()
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    problems = []
    for py in sorted(src.rglob("*.py")) if src.is_dir() else []:
        rel = py.relative_to(root).as_posix()
        try:
            eager, lazy = module_imports(py)
        except SyntaxError as exc:
            problems.append(f"{rel} does not parse: {exc.msg} (line {exc.lineno})")
            continue
        needed = eager | (lazy - conditional) | (lazy & needed_lazily)
        for mod in sorted(needed - stdlib - local):
            if mod == "nbdeploy" or NOTEBOOK_ONLY.match(_norm(mod)):
                problems.append(f"{rel} imports {mod}, a notebook-only package")
                continue
            dists = dists_of(mod)
            if not any(_norm(d) in pins for d in dists):
                problems.append(f"{rel} imports {mod} but no requirement provides it "
                                f"(add {dists[0]}==VERSION)")
    return problems


def _leak_problems(root: Path, files: list[Path]) -> list[str]:
    patterns = _leak_patterns()
    problems = []
    for p in files:
        if p.is_symlink() or p.stat().st_size > 8 * 1024 * 1024:
            continue
        if p.relative_to(root).parts[:2] == ("env", "docker"):
            continue    # BentoML's generated image recipe: its paths are inside the image
        data = p.read_bytes()
        if b"\x00" in data[:8192]:
            continue            # binary (ONNX, npy, png)
        text = data.decode("utf-8", "replace")
        for shown, pat in patterns:
            m = pat.search(text)
            if m:
                line = text.count("\n", 0, m.start()) + 1
                found = re.match(r"[^\s\"'`,;)\]}]*", text[m.start():m.start() + 300]).group(0)
                problems.append(f"{p.relative_to(root).as_posix()}:{line} refers to the build "
                                f"machine's path {found!r} (under {shown!r})")
                break
    return problems


def bundle_problems(root: Path) -> list[str]:
    """Problems of a bundle folder: a bento (``bento.yaml``) or a staged ``src`` folder."""
    is_bento = (root / "bento.yaml").is_file()
    src = root / "src" if is_bento else root
    problems: list[str] = []
    files = [p for p in sorted(root.rglob("*")) if not p.is_dir()]
    for p in files:
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            target = os.readlink(p)
            try:
                p.resolve().relative_to(root.resolve())
            except ValueError:
                problems.append(f"{rel} is a symlink to {target!r}, outside the bundle")
            continue
        why = pickle_reason(p, rel)
        if why:
            problems.append(f"{rel} {why}")
    for onnx_file in (src / "model").glob("*.onnx") if (src / "model").is_dir() else []:
        problems += onnx_external_problems(onnx_file, root)

    req = root / "env" / "python" / "requirements.txt" if is_bento else root / "requirements.txt"
    if not req.is_file():
        problems.append(f"no {req.relative_to(root).as_posix()} in the bundle")
        pins: dict[str, str | None] = {}
    else:
        pins, req_problems = parse_requirements(req.read_text(encoding="utf-8"))
        problems += req_problems
    problems += _requirement_problems(pins)
    problems += _import_problems(root, src, pins)
    problems += _leak_problems(root, files)
    return problems


def check_bundle(tag_or_dir: str | os.PathLike) -> list[str]:
    """What would stop this bundle from being served on another machine (empty list: nothing).

    ``tag_or_dir`` is a bundle tag in the store, a bento folder (with ``bento.yaml``) or a
    staged bundle folder (with ``service.py`` and ``requirements.txt``).  Checks: requirements
    pinned with ``==`` and including bentoml, onnxruntime (or -gpu) and numpy; no notebook-only
    packages (ipywidgets, jupyter*, torch*, nbdeploy, ...); every module the served code imports
    is provided; no pickle-bearing files; ONNX external data inside the model folder; no text
    file mentioning the build machine's home, temp, working or environment folders.
    """
    p = Path(os.fspath(tag_or_dir))
    if isinstance(tag_or_dir, os.PathLike) or p.is_dir() or os.sep in str(tag_or_dir):
        if not p.is_dir():
            raise NotFoundError(f"No bundle folder {str(p)!r}.", hint="Give a tag or a folder.")
        return bundle_problems(p)
    from .store import get

    return bundle_problems(Path(get(str(tag_or_dir)).path))
