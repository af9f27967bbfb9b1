"""export / import: carry a bundle to another machine as one archive in BentoML's own format.

``export_bundle`` writes what ``bentoml export`` writes (``.bento`` = xz tar by default), so
the other side needs only ``pip install -r env/python/requirements.txt``, ``bentoml import``
and ``bentoml serve``.  ``import_bundle`` is the way back, and treats the archive as untrusted:
every member is inspected *before anything is written* (no absolute paths, no ``..``, no links
leaving the bundle, no device files, no pickle), then the archive is unpacked by us into a
private folder with tarfile's ``data`` filter and BentoML imports that folder, so BentoML's own
extraction code (see CVE-2026-27905 / GHSA-m6w7-qv66-g3mf) never sees the archive.

``check_bundle`` lists what would stop a bundle from being served elsewhere: unpinned or
missing requirements, notebook-only packages, imports no requirement provides, pickle files,
ONNX external data outside the model folder, and text that refers to the build machine's paths.
"""

from __future__ import annotations

import ast
import io
import os
import re
import secrets
import shutil
import stat
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator

from .errors import BundleError, InvalidInputError, NotFoundError

__all__ = ["export_bundle", "import_bundle", "check_bundle", "inspect_archive", "ARCHIVE_SUFFIXES"]

#: archive suffix -> BentoML export format (``bentoml import`` guesses the same way).
ARCHIVE_SUFFIXES = {".bento": "bento", ".tar.gz": "gz", ".tar.xz": "xz", ".tar": "tar", ".zip": "zip"}

PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
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
              "fastapi": ("fastapi",), "PIL": ("pillow",), "onnx": ("onnx",)}
MAX_MEMBERS = 100_000
MAX_TOTAL_BYTES = 16 * 1024 ** 3
_HEAD = 4096


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
                  check: bool = True) -> Path:
    """Write bundle ``tag`` to ``path`` as one archive that ``bentoml import`` reads.

    ``path`` is a file name ending in ``.bento`` (xz tar, BentoML's default), ``.tar.gz``,
    ``.tar.xz``, ``.tar`` or ``.zip``; a name without a suffix gets ``.bento``; an existing
    folder gets ``NAME-VERSION.bento`` inside it.  An existing file is only replaced with
    ``overwrite=True``.  The archive is written to a temporary file next to the target and
    renamed, so ``path`` never holds a half-written archive.  With ``check`` (default) the
    bundle must pass :func:`check_bundle` first.  Returns the archive's absolute path.
    """
    from .store import get

    bento = get(tag)
    full = str(bento.tag)
    if check:
        problems = check_bundle(Path(bento.path))
        if problems:
            raise BundleError(f"Bundle {full} is not self-contained: " + "; ".join(problems),
                              hint="Rebuild it with nbdeploy.deploy(...), or pass check=False "
                                   "to export it anyway.")
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
    import bentoml

    written = tmp
    try:
        written = Path(bentoml.bentos.export_bento(full, str(tmp), output_format=fmt))
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


# ---------------------------------------------------------------------------------------------
# archive inspection (untrusted input)
# ---------------------------------------------------------------------------------------------
def _refuse(member: str, why: str, archive: Path) -> InvalidInputError:
    return InvalidInputError(
        f"Refusing to import {archive.name}: member {member!r} {why}.",
        hint="Nothing was written. Only import archives made by `nbdeploy export` or "
             "`bentoml export` from a source you trust.",
        received=member)


def _split(name: str) -> list[str]:
    return [p for p in re.split(r"[\\/]+", name) if p not in ("", ".")]


def _is_absolute(name: str) -> bool:
    return name.startswith(("/", "\\")) or bool(re.match(r"^[A-Za-z]:", name))


def _check_name(name: str) -> str | None:
    if "\x00" in name:
        return "has a NUL byte in its name"
    if _is_absolute(name):
        return "has an absolute path"
    if ".." in _split(name):
        return "has a '..' path component (it would land outside the bundle folder)"
    return None


def _check_link_target(name: str, target: str, *, hard: bool) -> str | None:
    """Symlink targets are relative to the link's folder; hard link targets are member names."""
    if not target or "\x00" in target:
        return "is a link with an empty or invalid target"
    if _is_absolute(target):
        return f"is a {'hard link' if hard else 'symlink'} to {target!r}, outside the bundle folder"
    parts = _split(target)
    base = [] if hard else _split(name)[:-1]
    depth, escapes = len(base), False
    for p in parts:
        depth += -1 if p == ".." else 1
        escapes = escapes or depth < 0
    if escapes:
        return f"is a {'hard link' if hard else 'symlink'} to {target!r}, outside the bundle folder"
    if ".." in parts:
        # lexically inside, but '..' through another symlink can still escape: not needed in a bundle
        return f"is a link whose target {target!r} uses '..'"
    return None


def _pickle_reason(name: str, head: bytes, read_all=None) -> str | None:
    """Why a file's name or first bytes mark it as pickle-bearing (None when clean)."""
    low = name.lower()
    if low.endswith(PICKLE_SUFFIXES):
        return "is a pickle file (pickle runs code when loaded)"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return f"starts with a pickle protocol {head[1]} header (pickle runs code when loaded)"
    if head.startswith(b"\x93NUMPY"):
        try:
            import numpy as np

            f = io.BytesIO(head)
            version = np.lib.format.read_magic(f)
            dtype = np.lib.format._read_array_header(f, version, max_header_size=_HEAD)[2]
            if dtype.hasobject:
                return "is a .npy array of Python objects (stored as pickle)"
        except Exception:
            if b"'O'" in head[:_HEAD] or b"|O" in head[:_HEAD]:
                return "is a .npy array of Python objects (stored as pickle)"
    if head.startswith(b"PK\x03\x04") and read_all is not None:   # .npz, torch .pt, nested zips
        try:
            with zipfile.ZipFile(io.BytesIO(read_all())) as z:
                for info in z.infolist():
                    with z.open(info) as f:
                        inner = _pickle_reason(info.filename, f.read(_HEAD))
                    if inner:
                        return f"contains {info.filename!r}, which {inner}"
        except zipfile.BadZipFile:
            pass
    return None


def _tar_problems(archive: Path) -> tuple[list[tuple[str, str]], set[str]]:
    problems: list[tuple[str, str]] = []
    names: set[str] = set()
    total = count = 0
    with tarfile.open(archive, "r|*") as tar:   # one streaming pass; nothing is written
        for m in tar:
            count += 1
            if count > MAX_MEMBERS:
                problems.append((m.name, f"is past the limit of {MAX_MEMBERS} members"))
                break
            why = _check_name(m.name)
            if why is None:
                if m.issym():
                    why = _check_link_target(m.name, m.linkname, hard=False)
                elif m.islnk():
                    why = _check_link_target(m.name, m.linkname, hard=True)
                elif m.ischr() or m.isblk():
                    why = "is a device file"
                elif m.isfifo():
                    why = "is a FIFO"
                elif not (m.isfile() or m.isdir()):
                    why = "is not a regular file, folder or link"
            if why is None and m.isfile():
                total += m.size
                if total > MAX_TOTAL_BYTES:
                    why = f"takes the archive past {MAX_TOTAL_BYTES >> 30} GiB unpacked"
                else:
                    f = tar.extractfile(m)
                    head = f.read(_HEAD) if f else b""
                    rest = (lambda: head + f.read()) if f and m.size < 2 * 1024 ** 3 else None
                    why = _pickle_reason(m.name, head, rest)
            if why is None and m.isfile() and m.mode & (stat.S_ISUID | stat.S_ISGID):
                why = "has the setuid/setgid bit"
            if why:
                problems.append((m.name, why))
            names.add("/".join(_split(m.name)))
    return problems, names


def _zip_problems(archive: Path) -> tuple[list[tuple[str, str]], set[str]]:
    problems: list[tuple[str, str]] = []
    names: set[str] = set()
    total = 0
    with zipfile.ZipFile(archive) as z:
        infos = z.infolist()
        if len(infos) > MAX_MEMBERS:
            return [(infos[MAX_MEMBERS].filename, f"is past the limit of {MAX_MEMBERS} members")], names
        for info in infos:
            name = info.filename
            why = _check_name(name)
            norm = "/".join(_split(name))
            if why is None and norm in names and norm:
                why = "appears twice (a later copy would silently replace the first)"
            mode = info.external_attr >> 16
            if why is None and stat.S_ISLNK(mode):
                target = z.read(info).decode("utf-8", "replace")
                why = _check_link_target(name, target, hard=False) or \
                    "is a symlink (zip archives may not carry links)"
            elif why is None and stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                # zip writers often store only permission bits (no file type): those are files
                why = "is a device file or other special file"
            if why is None and not info.is_dir():
                total += info.file_size
                if total > MAX_TOTAL_BYTES:
                    why = f"takes the archive past {MAX_TOTAL_BYTES >> 30} GiB unpacked"
                else:
                    with z.open(info) as f:
                        head = f.read(_HEAD)
                    why = _pickle_reason(name, head, lambda i=info: z.read(i))
            if why:
                problems.append((name, why))
            names.add("/".join(_split(name)))
    return problems, names


def _archive_kind(archive: Path) -> str:
    # tar first: is_zipfile() also says yes to a plain tar whose last member is a zip (.npz)
    try:
        if tarfile.is_tarfile(archive):
            return "tar"
    except (OSError, EOFError, tarfile.TarError):
        pass
    if zipfile.is_zipfile(archive):
        return "zip"
    raise InvalidInputError(f"{archive.name} is not a bundle archive (neither tar nor zip).",
                            hint="Give a file made by `nbdeploy export` or `bentoml export`.")


def inspect_archive(path: str | os.PathLike) -> list[str]:
    """Member names of a bundle archive after checking every one; raises InvalidInputError
    naming the first offending member.  Reads the archive only; writes nothing."""
    archive = Path(os.fspath(path))
    if not archive.is_file():
        raise NotFoundError(f"No archive {str(archive)!r}.", hint="Check the path.")
    kind = _archive_kind(archive)
    try:
        problems, names = (_zip_problems if kind == "zip" else _tar_problems)(archive)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise InvalidInputError(f"{archive.name} is damaged or not a bundle archive: {exc}",
                                hint="Export the bundle again.") from exc
    if problems:
        member, why = problems[0]
        err = _refuse(member, why, archive)
        if len(problems) > 1:
            err.message += f" ({len(problems) - 1} more member(s) refused too)"
            err.args = (err.message,)
        raise err
    if "bento.yaml" not in names:
        raise InvalidInputError(f"{archive.name} is not a BentoML bundle (no bento.yaml at its top).",
                                hint="Give a file made by `nbdeploy export` or `bentoml export`.")
    return sorted(n for n in names if n)


def _extract(archive: Path, dest: Path) -> None:
    """Unpack an archive already passed by :func:`inspect_archive` into ``dest``."""
    dest_real = dest.resolve()
    if _archive_kind(archive) == "zip":
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                out = (dest / "/".join(_split(info.filename))).resolve()
                if out != dest_real and dest_real not in out.parents:
                    raise _refuse(info.filename, "would be written outside the bundle folder", archive)
                if info.is_dir():
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(out, "xb") as dst:
                    shutil.copyfileobj(src, dst)
        return
    with tarfile.open(archive, "r:*") as tar:
        # second line of defence: the stdlib's own 'data' filter (absolute paths, links
        # outside, device files, setuid bits)
        try:
            tar.extractall(dest, filter="data")
        except tarfile.FilterError as exc:
            raise _refuse(getattr(getattr(exc, "tarinfo", None), "name", "?"), str(exc), archive) from exc


def _bento_root(folder: Path) -> Path:
    if (folder / "bento.yaml").is_file():
        return folder
    raise InvalidInputError("The archive has no bento.yaml at its top.", hint="Export it again.")


def import_bundle(path: str | os.PathLike) -> str:
    """Import a bundle archive (from :func:`export_bundle` or ``bentoml export``) into the
    local BentoML store and return its tag.

    The archive is untrusted: see the module docstring.  Refuses archives that are not
    nbdeploy bundles and tags already in the store.
    """
    archive = Path(os.fspath(path)).expanduser().absolute()
    inspect_archive(archive)
    import yaml

    with tempfile.TemporaryDirectory(prefix="nbdeploy-import-") as tmp:
        dest = Path(tmp) / "bento"
        dest.mkdir()
        _extract(archive, dest)
        root = _bento_root(dest)
        try:
            info = yaml.safe_load((root / "bento.yaml").read_text(encoding="utf-8")) or {}
        except Exception as exc:
            raise InvalidInputError(f"{archive.name}: bento.yaml is not valid YAML: {exc}",
                                    hint="Export the bundle again.") from exc
        labels = info.get("labels") or {}
        if labels.get("created-by") != "nbdeploy":
            raise InvalidInputError(f"{archive.name} is a BentoML bundle not made by nbdeploy.",
                                    hint="Import it with `bentoml import` instead; nbdeploy "
                                         "only manages bundles it built.")
        from .schema import validate_tag

        tag = f"{info.get('name')}:{info.get('version')}"
        validate_tag(tag)
        security = _problems(root, portability=False)
        if security:
            raise InvalidInputError(f"Refusing to import {archive.name}: " + "; ".join(security),
                                    hint="Nothing was imported.")
        import bentoml

        try:
            bentoml.get(tag)
        except Exception:
            pass
        else:
            raise InvalidInputError(f"{tag} is already in the BentoML store.",
                                    hint=f"Delete it first (`nbdeploy delete {tag}`) to import "
                                         "this archive again.")
        try:
            bento = bentoml.bentos.import_bento(str(root), input_format="folder")
        except Exception as exc:
            raise BundleError(f"BentoML could not import {archive.name}: {type(exc).__name__}: {exc}",
                              hint="Nothing was added to the store.") from exc
        return str(bento.tag)


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
        with open(p, "rb") as f:
            head = f.read(_HEAD)
        why = _pickle_reason(rel, head, p.read_bytes)
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
    has_explain = (src / "model" / "explain").is_dir()
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
        needed = eager | (lazy if has_explain else lazy - {"shap", "lime", "sklearn", "scipy"})
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
        if not loc or _is_absolute(loc) or ".." in _split(loc):
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
