"""export / import: carry a bundle to another machine as one archive in BentoML's own format.

``export_bundle`` writes the bento folder as ``bentoml export`` does (``.bento`` = xz tar by
default, members ``./...``), plus ``nbdeploy-manifest.json``: the SHA-256 of every file.
Stock ``bentoml import`` reads it, so the other side needs only ``pip install -r
env/python/requirements.txt``, ``bentoml import`` and ``bentoml serve``.

``import_bundle`` is the way back and treats the archive as untrusted.  All reading of the
archive happens in :mod:`nbdeploy.archive` (one decompressed stream, checked and written
member by member into a private folder next to the BentoML store, then layout, pickle,
manifest and code-identity checks); the checked folder is then renamed into the store, so
each byte is written once and BentoML's own extraction code never sees the archive
(CVE-2026-27905 / GHSA-m6w7-qv66-g3mf).

``check_bundle`` lists what would stop a bundle from being served elsewhere: unpinned or
missing requirements, notebook-only packages, imports no requirement provides, pickle files,
ONNX external data outside the model folder, and text that refers to the build machine's paths.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import secrets
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator

from .archive import MANIFEST, manifest_bytes, pickle_reason, split_name
from .errors import BundleError, InvalidInputError, NotFoundError

__all__ = ["export_bundle", "import_bundle", "check_bundle", "inspect_archive", "ARCHIVE_SUFFIXES"]

#: archive suffix -> BentoML export format (``bentoml import`` guesses the same way).
ARCHIVE_SUFFIXES = {".bento": "bento", ".tar.gz": "gz", ".tar.xz": "xz", ".tar": "tar", ".zip": "zip"}

#: Packages a served ONNX bundle must never need (notebook-only or the build tool itself).
NOTEBOOK_ONLY = re.compile(r"^(ipywidgets|ipykernel|ipython|notebook|widgetsnbextension|anywidget|"
                           r"jupyter.*|torch.*|tensorflow.*|keras|nbdeploy)$")
REQUIRED = {"bentoml": ("bentoml",), "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
            "numpy": ("numpy",)}
#: import name -> distributions that provide it (starlette & co. come with bentoml).
_PROVIDERS = {"bentoml": ("bentoml",), "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
              "numpy": ("numpy",), "shap": ("shap",), "lime": ("lime",),
              "sklearn": ("scikit-learn",), "scipy": ("scipy",), "pandas": ("pandas",),
              "starlette": ("bentoml",), "anyio": ("bentoml",), "pydantic": ("bentoml",),
              "uvicorn": ("bentoml",), "yaml": ("bentoml",), "attr": ("bentoml",),
              "h11": ("bentoml",), "httpx": ("bentoml",), "uvloop": ("uvloop",),
              "httptools": ("httptools",),
              "fastapi": ("fastapi",), "PIL": ("pillow",), "onnx": ("onnx",)}
#: import names that the runtime imports lazily, only for the explanation methods it serves
_EXPLAIN_ONLY = {"shap", "lime", "sklearn", "scipy"}
# imported lazily by the runtime only for one kind of input (see _input_modules)
_INPUT_ONLY = {"PIL", "tokenizers"}


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------
def _suffix_of(p: Path) -> str | None:
    name = p.name.lower()
    for sfx in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):
        if name.endswith(sfx) and len(name) > len(sfx):
            return sfx
    return None


def export_bundle(tag: str, path: str | os.PathLike, *, overwrite: bool = False,
                  check: bool = True, sign_key: str | os.PathLike | None = None) -> Path:
    """Write bundle ``tag`` to ``path`` as one archive that ``bentoml import`` reads.

    ``path`` is a file name ending in ``.bento`` (xz tar, BentoML's default), ``.tar.gz``,
    ``.tar.xz``, ``.tar`` or ``.zip``; a name without a suffix gets ``.bento``; an existing
    folder gets ``NAME-VERSION.bento`` inside it.  An existing file is only replaced with
    ``overwrite=True``.  The archive is written to a temporary file next to the target and
    renamed, so ``path`` never holds a half-written archive.  With ``check`` (default) the
    bundle must pass :func:`check_bundle` first.  ``sign_key`` (an unencrypted Ed25519
    private key file, PEM or OpenSSH) adds a signature of the archive's manifest, which
    ``import_bundle(..., trusted_keys=[PUBLIC KEY])`` checks.  Returns the archive's absolute path.
    """
    from .store import get

    bento = get(tag)
    full = str(bento.tag)
    key = None
    if sign_key is not None:
        from .archive import load_private_key

        key = load_private_key(sign_key)
    if check:
        problems = check_bundle(Path(bento.path))
        if problems:
            raise BundleError(f"Bundle {full} is not self-contained: " + "; ".join(problems),
                              hint="Fix what is listed and rebuild it with nbdeploy.deploy(...). "
                                   "To write the archive anyway, call "
                                   "nbdeploy.export.export_bundle(tag, path, check=False).")
    target = Path(os.fspath(path)).expanduser()
    if target.is_dir():
        target = target / f"{bento.tag.name}-{bento.tag.version}.bento"
    elif _suffix_of(target) is None:
        if target.suffix:
            raise InvalidInputError(
                f"Unknown archive type {target.name!r}.",
                hint="End the file name in .bento (BentoML's format), .tar.gz, .tar.xz, .tar or .zip.",
                expected=list(ARCHIVE_SUFFIXES), received=target.name)
        target = target.with_name(target.name + ".bento")
    target = target.absolute()
    if not target.parent.is_dir():
        raise NotFoundError(f"Folder {str(target.parent)!r} does not exist.",
                            hint="Create it first, or give another path.")
    if target.exists() and not overwrite:
        raise InvalidInputError(f"{str(target)!r} already exists.",
                                hint="Pass overwrite=True (CLI: --overwrite) to replace it, or "
                                     "choose another name.")
    sfx = _suffix_of(target)
    fmt = ARCHIVE_SUFFIXES[sfx]
    tmp = target.with_name(f".{target.name[:-len(sfx)]}.{secrets.token_hex(4)}.partial{sfx}")
    written = tmp
    try:
        _write_archive(Path(bento.path), tmp, fmt, full, key)
        if overwrite:
            os.replace(written, target)
        else:
            try:   # link() refuses an existing target atomically, unlike rename()
                os.link(written, target)
            except FileExistsError:
                raise InvalidInputError(f"{str(target)!r} already exists.",
                                        hint="Pass overwrite=True to replace it.") from None
            except OSError:  # file systems without hard links
                if target.exists():
                    raise InvalidInputError(f"{str(target)!r} already exists.",
                                            hint="Pass overwrite=True to replace it.") from None
                os.replace(written, target)
    except BaseException as exc:
        for p in {written, tmp}:
            if p != target:
                Path(p).unlink(missing_ok=True)
        if isinstance(exc, (InvalidInputError, KeyboardInterrupt, SystemExit)):
            raise
        raise BundleError(f"Could not export {full} to {str(target)!r}: {type(exc).__name__}: {exc}",
                          hint="Nothing was written. Check the folder is writable and has space.") from exc
    Path(written).unlink(missing_ok=True)
    return target


class _Hashing:
    """A file read once: into the archive and into the manifest's SHA-256."""

    def __init__(self, f):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        self.n += len(data)
        return data


def _write_archive(src: Path, out: Path, fmt: str, tag: str, key=None) -> None:
    """The bento folder as ``shutil.make_archive`` (BentoML's export) lays it out, plus the
    manifest (and its signature) as the last members; owners are not recorded."""
    from .archive import SIGNATURE, signature_bytes

    entries = sorted(src.rglob("*"))
    links = [p for p in entries if p.is_symlink()]
    if links:
        raise BundleError(f"{links[0]} is a link; nbdeploy bundles never contain links.",
                          hint="Rebuild the bundle with nbdeploy.deploy(...).")
    files: dict[str, dict] = {}
    if fmt == "zip":
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            for p in entries:
                rel = p.relative_to(src).as_posix()
                info = zipfile.ZipInfo.from_file(p, rel)
                if p.is_dir():
                    z.writestr(info, b"")
                    continue
                info.compress_type = zipfile.ZIP_DEFLATED
                with open(p, "rb") as f, z.open(info, "w", force_zip64=True) as dst:
                    r = _Hashing(f)
                    while chunk := r.read(1 << 20):
                        dst.write(chunk)
                files[rel] = {"sha256": r.h.hexdigest(), "size": r.n}
            data = manifest_bytes(tag, files)
            z.writestr(MANIFEST, data)
            if key is not None:
                z.writestr(SIGNATURE, signature_bytes(data, key))
        return
    mode = {"bento": "w:xz", "xz": "w:xz", "gz": "w:gz", "tar": "w"}[fmt]
    with tarfile.open(out, mode, format=tarfile.PAX_FORMAT) as tar:
        def info_of(p: Path, arc: str) -> tarfile.TarInfo:
            info = tar.gettarinfo(str(p), arc)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            return info

        tar.addfile(info_of(src, "."))
        for p in entries:
            rel = p.relative_to(src).as_posix()
            info = info_of(p, "./" + rel)
            if p.is_dir():
                tar.addfile(info)
                continue
            with open(p, "rb") as f:
                r = _Hashing(f)
                tar.addfile(info, r)
            if r.n != info.size:
                raise BundleError(f"{rel} changed while it was being exported.",
                                  hint="Export again when nothing is writing to the bundle.")
            files[rel] = {"sha256": r.h.hexdigest(), "size": r.n}
        import io

        data = manifest_bytes(tag, files)
        extra = [(MANIFEST, data)] + ([(SIGNATURE, signature_bytes(data, key))] if key else [])
        for name, blob in extra:
            info = tarfile.TarInfo("./" + name)
            info.size, info.mode = len(blob), 0o644
            tar.addfile(info, io.BytesIO(blob))


# ---------------------------------------------------------------------------------------------
# import (the archive itself is read only by nbdeploy.archive: untrusted input in one module)
# ---------------------------------------------------------------------------------------------
def inspect_archive(path: str | os.PathLike, *, trust: bool = False,
                    trusted_keys: list | None = None) -> list[str]:
    """File names of a bundle archive after every import check passed (see
    :mod:`nbdeploy.archive`); raises InvalidInputError naming the first problem.  The archive
    is unpacked into a private temporary folder, which is deleted again."""
    from .archive import unpack_bundle

    archive = Path(os.fspath(path)).expanduser().absolute()
    with tempfile.TemporaryDirectory(prefix="nbdeploy-import-") as tmp:
        u = unpack_bundle(archive, Path(tmp), trust=trust, trusted_keys=trusted_keys)
        onnx = _onnx_problems(u.root)
        if onnx:
            raise InvalidInputError(f"Refusing to import {archive.name}: " + "; ".join(onnx[:5]),
                                    hint="Nothing was imported.")
        return u.files


def _onnx_problems(root: Path) -> list[str]:
    model = root / "src" / "model"
    return [p for f in sorted(model.glob("*.onnx")) for p in _onnx_external_problems(f, root)] \
        if model.is_dir() else []


def import_bundle(path: str | os.PathLike, *, trust: bool = False,
                  trusted_keys: list | None = None) -> str:
    """Import a bundle archive written by :func:`export_bundle` into the local BentoML store
    and return its tag.

    The archive is untrusted: it is unpacked once into a private folder and checked there
    (layout, links, limits, pickles, manifest, code identity; see :mod:`nbdeploy.archive`),
    and only that checked folder is handed to BentoML.  ``trust=True`` accepts an archive
    without a manifest and code (``service.py``, ``nbdeploy_runtime/``) that differs from this
    nbdeploy release's: only for bundles whose author you trust, since serving runs that code.
    ``trusted_keys`` (Ed25519 public key files, PEM or ``ssh-ed25519``): the archive must be
    signed (``export_bundle(..., sign_key=...)``) by one of them; so signed, its code may differ.
    Refuses tags already in the store.  A refused archive adds nothing to the store.
    """
    from .archive import MANIFEST, SIGNATURE, unpack_bundle

    archive = Path(os.fspath(path)).expanduser().absolute()
    import shutil

    import bentoml
    from bentoml._internal.bento import Bento
    from bentoml._internal.configuration.containers import BentoMLContainer

    from .bundle import _private_store, _store_root

    # unpacked next to the store (same file system), checked there, then renamed into it:
    # each byte is written once, and the store never shows a half-imported bundle
    store_root = _store_root()
    staging = _private_store(store_root)
    try:
        dest = staging / "bento"
        dest.mkdir()
        u = unpack_bundle(archive, dest, trust=trust, trusted_keys=trusted_keys)
        onnx = _onnx_problems(dest)
        if onnx:
            raise InvalidInputError(f"Refusing to import {archive.name}: " + "; ".join(onnx[:5]),
                                    hint="Nothing was imported.")
        for extra in (MANIFEST, SIGNATURE):          # the store keeps the bundle as exported
            (dest / extra).unlink(missing_ok=True)
        name, version = u.tag.split(":")
        final = store_root / name / version
        if final.exists():
            raise InvalidInputError(f"{u.tag} is already in the BentoML store.",
                                    hint=f"Delete it first (`nbdeploy delete {u.tag}`) to import "
                                         "this archive again.")
        try:
            Bento.from_path(str(dest)).validate()
        except Exception as exc:
            raise InvalidInputError(f"BentoML does not accept {archive.name}: {type(exc).__name__}: "
                                    f"{str(exc)[:300]}", hint="Nothing was imported.") from exc
        if u.trusted_differences:
            import warnings

            who = f"signed by trusted key {u.signed_by}" if u.signed_by else "trusted"
            warnings.warn(f"Importing {u.tag} with code that differs from this nbdeploy "
                          f"release's ({who}): " + "; ".join(u.trusted_differences[:8]),
                          stacklevel=2)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(dest, 0o755)
        try:
            os.rename(dest, final)       # fails if the version appeared meanwhile
        except OSError as exc:
            raise BundleError(f"Could not add {u.tag} to the BentoML store: {exc}",
                              hint="Nothing was added; check that the store is writable.") from exc
        store = BentoMLContainer.bento_store.get()
        latest = store_root / name / "latest"
        try:
            newest = not latest.exists() or \
                store.get(u.tag).creation_time >= store.get(name).creation_time
        except Exception:   # noqa: BLE001 (a dangling 'latest' is replaced)
            newest = True
        if newest:
            tmp_latest = latest.with_name(f".latest-{version}")
            tmp_latest.write_text(version, encoding="utf-8")
            os.replace(tmp_latest, latest)
        return str(bentoml.get(u.tag).tag)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# self-containment check
# ---------------------------------------------------------------------------------------------
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


def _imports(py: Path) -> tuple[set[str], set[str]]:
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


def _explain_modules(src: Path) -> set[str]:
    """Modules the served explanations import, from the bundle's own explain config: shap
    for TreeSHAP only (model-agnostic SHAP is numpy), lime (with sklearn and scipy) for LIME."""
    cfg = src / "model" / "explain" / "explain_config.json"
    if not cfg.is_file():
        return set()
    try:
        ecfg = json.loads(cfg.read_text(encoding="utf-8"))
    except ValueError:
        return set(_EXPLAIN_ONLY)     # unreadable: ask for everything
    out = {"shap"} if ecfg.get("kind") == "tree" else set()
    if "lime" in (ecfg.get("methods") or ()):
        out |= {"lime", "sklearn", "scipy"}
    return out


def _input_modules(src: Path) -> set[str]:
    """Modules the runtime imports for the bundle's kind of input, from its own spec: Pillow
    for images (``preprocess``), tokenizers for text models (``input_mode == "text"``)."""
    path = src / "model" / "spec.json"
    if not path.is_file():
        return set()
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return set(_INPUT_ONLY)       # unreadable: ask for everything
    out = set()
    if spec.get("preprocess"):
        out.add("PIL")
    if spec.get("input_mode") == "text":
        out.add("tokenizers")
    return out


def _problems(root: Path, *, portability: bool = True) -> list[str]:
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
        problems += _onnx_external_problems(onnx_file, root)
    if not portability:
        return problems

    req = root / "env" / "python" / "requirements.txt" if is_bento else root / "requirements.txt"
    if not req.is_file():
        problems.append(f"no {req.relative_to(root).as_posix()} in the bundle")
        pins: dict[str, str | None] = {}
    else:
        pins, req_problems = parse_requirements(req.read_text(encoding="utf-8"))
        problems += req_problems
    for what, dists in REQUIRED.items():
        if not any(_norm(d) in pins for d in dists):
            problems.append(f"requirements do not include {' or '.join(dists)}")
    for dist in pins:
        if NOTEBOOK_ONLY.match(dist):
            problems.append(f"requirements include {dist}, which the served bundle does not need "
                            "(notebook-only or the build tool)")
    explain_needs = _explain_modules(src)
    input_needs = _input_modules(src)
    local = {p.stem for p in src.glob("*.py")} | {p.name for p in src.iterdir() if p.is_dir()} \
        if src.is_dir() else set()
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for py in sorted(src.rglob("*.py")) if src.is_dir() else []:
        rel = py.relative_to(root).as_posix()
        try:
            eager, lazy = _imports(py)
        except SyntaxError as exc:
            problems.append(f"{rel} does not parse: {exc.msg} (line {exc.lineno})")
            continue
        # explanation and input libraries are imported lazily, and only for the methods and the
        # kind of input the bundle serves
        needed = eager | (lazy - _EXPLAIN_ONLY - _INPUT_ONLY) | (lazy & (explain_needs | input_needs))
        for mod in sorted(needed - stdlib - local):
            if mod == "nbdeploy" or NOTEBOOK_ONLY.match(_norm(mod)):
                problems.append(f"{rel} imports {mod}, a notebook-only package")
                continue
            dists = _PROVIDERS.get(mod, (mod,))
            if not any(_norm(d) in pins for d in dists):
                problems.append(f"{rel} imports {mod} but no requirement provides it "
                                f"(add {dists[0]}==VERSION)")
    patterns = _leak_patterns()
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


def _onnx_external_problems(onnx_file: Path, root: Path) -> list[str]:
    """ONNX tensors stored in external files must stay inside the model folder (CVE-2024-27318)."""
    try:
        import onnx
    except ImportError:
        return []
    rel = onnx_file.relative_to(root).as_posix()
    try:
        model = onnx.load(str(onnx_file), load_external_data=False)
    except Exception as exc:
        return [f"{rel} is not a valid ONNX model ({type(exc).__name__})"]
    out = []
    for t in _onnx_tensors(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        loc = next((e.value for e in t.external_data if e.key == "location"), "")
        if not loc or loc.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", loc) \
                or ".." in split_name(loc):
            out.append(f"{rel} keeps tensor {t.name!r} in {loc!r}, outside the model folder")
        elif not (onnx_file.parent / loc).is_file():
            out.append(f"{rel} needs external data {loc!r}, which the bundle lacks")
    return out


def _onnx_tensors(model) -> Iterator:
    def graph_tensors(g):
        yield from g.initializer
        for n in g.node:
            for a in n.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors
                if a.HasField("g"):
                    yield from graph_tensors(a.g)
                for sub in a.graphs:
                    yield from graph_tensors(sub)

    yield from graph_tensors(model.graph)


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
        return _problems(p)
    from .store import get

    return _problems(Path(get(str(tag_or_dir)).path))
