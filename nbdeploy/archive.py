"""Untrusted bundle archives: everything that reads an archive from elsewhere lives here.

A security reviewer can read this one module to know what ``nbdeploy import`` accepts
(SECURITY.md, "Imported bundles", points here).  Its entry points are :func:`import_bundle`
(``nbdeploy import``, ``nbdeploy.score`` given an archive), :func:`inspect_archive` (the same
checks, nothing kept) and :func:`unpack_bundle` (the checks themselves).  An archive is
unpacked once into a private folder (mode 0700) next to the BentoML store, checked there, and
only then renamed into the store: each byte is written once, the store never shows a
half-imported bundle, a refused archive adds nothing, and BentoML's own extraction code never
sees the archive (CVE-2026-27905 / GHSA-m6w7-qv66-g3mf).  The rules:

* **One stream, read once.**  The file's format is decided from its first bytes.  A tar is
  decompressed as one stream (every gzip member / xz stream / bz2 stream, so a second
  compressed stream cannot hide members) and read in a single pass; each member is checked
  and written by this module as it goes.  Anything after the tar's end-of-archive marker that
  is not zero padding is refused.  tarfile's own ``extract``/``extractall`` and its filters
  are never used, so the result does not depend on the Python version (CVE-2025-4517 and
  friends).  A zip is read from its central directory, each member streamed with a cap.
* **Limits on what is actually written:** members, bytes, unpacked/packed ratio, name length
  and depth, and the size of tar extension headers (pax / GNU long names) that tarfile would
  otherwise hold in memory whole.
* **Only regular files and folders.**  Links (symbolic or hard), devices, FIFOs and sparse
  files are refused; so are absolute names, ``..``, NUL bytes and names that appear twice
  (also when they differ only in case or in ``./`` and slashes).  Files are created with
  ``O_EXCL | O_NOFOLLOW`` inside a fresh private folder, so nothing can be written through a
  link or over another file.
* **Only the layout nbdeploy writes** (:data:`LAYOUT`): nothing under ``models/`` (BentoML
  would copy it into the global model store), no wheels, no scripts besides BentoML's own.
* **No pickle, judged by content:** a file that parses as a pickle (any protocol, protocol 0
  included, under any name), a ``.npy`` whose fully parsed header has an object dtype, and
  the same inside zip containers (``.npz``).
* **A manifest of content hashes** (:data:`MANIFEST`), written by ``nbdeploy export``, must
  list exactly the archive's files with their SHA-256.
* **The code that runs must be this release's:** ``src/service.py`` must be this nbdeploy
  release's template with only the bundle's own values filled in, ``src/nbdeploy_runtime/``
  must equal this release's runtime byte for byte, and ``env/docker/entrypoint.sh`` must be
  the installed BentoML's.  ``trust=True`` (CLI ``--trust``) lifts only this rule and the need
  for a manifest; it never lifts the others.
* **Optional signatures.**  ``nbdeploy export --sign KEY`` adds :data:`SIGNATURE`, an Ed25519
  signature of the manifest's exact bytes.  With trusted keys given (``--trusted-key``), import
  requires a valid signature by one of them, and then accepts differing code as ``trust``
  does: the author is known.  Without trusted keys a signature proves nothing and is ignored.
* **ONNX external data stays inside the model folder** (CVE-2024-27318): a tensor whose
  external-data location is absolute, has ``..`` or names a missing file is refused.
* **BentoML must accept the folder** (``Bento.validate``) and the tag must be new to the store.
"""

from __future__ import annotations

import ast
import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import pickletools
import re
import stat
import string
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .errors import BundleError, InvalidInputError, NotFoundError

__all__ = ["import_bundle", "inspect_archive", "unpack_bundle", "Unpacked",
           "MAX_TOTAL_BYTES", "MAX_MEMBERS", "MANIFEST", "SIGNATURE", "LAYOUT",
           "load_private_key", "load_public_key", "signature_bytes",
           "pickle_reason", "onnx_external_problems", "manifest_bytes"]

#: the most bytes an archive may unpack to (the one place this limit is defined)
MAX_TOTAL_BYTES = 16 * 1024 ** 3
#: the most members (files and folders) an archive may have
MAX_MEMBERS = 100_000
#: unpacked/packed ratio refused once more than RATIO_FLOOR bytes are unpacked
MAX_RATIO = 200
RATIO_FLOOR = 64 * 1024 ** 2
#: a pax / GNU long-name header larger than this is refused before tarfile reads it
MAX_TAR_HEADER = 1024 * 1024
MAX_NAME = 1024
MAX_DEPTH = 24
#: how much of a file is parsed as pickle opcodes before it is called "pickle-like" anyway
PICKLE_SCAN = 1024 * 1024
#: numpy itself refuses larger .npy headers without allow_pickle
MAX_NPY_HEADER = 64 * 1024
#: the largest service.py / runtime module / bento.yaml looked at (nbdeploy's are kilobytes)
_MAX_CODE = 1024 * 1024
MANIFEST = "nbdeploy-manifest.json"
#: optional Ed25519 signature of the manifest's exact bytes
SIGNATURE = "nbdeploy-manifest.sig"
MANIFEST_FORMAT = "nbdeploy-manifest/1"
_CHUNK = 1024 * 1024

#: every file an nbdeploy bundle (bento folder) may contain, relative to its top
LAYOUT = [re.compile(p) for p in (
    r"bento\.yaml", r"README\.md", re.escape(MANIFEST), re.escape(SIGNATURE),
    r"apis/openapi\.yaml", r"apis/schema\.json",
    r"env/docker/Dockerfile", r"env/docker/entrypoint\.sh",
    r"env/python/(requirements\.txt|requirements\.in|requirements\.lock\.txt|version\.txt)",
    r"src/bentofile\.yaml", r"src/requirements\.txt", r"src/service\.py",
    r"src/nbdeploy_runtime/[A-Za-z_][A-Za-z0-9_]*\.py",
    r"src/model/([A-Za-z0-9_][A-Za-z0-9_.-]*/){0,3}[A-Za-z0-9_][A-Za-z0-9_.-]*\.(onnx|json|npy|npz|data)",
    r"src/plots/[A-Za-z0-9_][A-Za-z0-9_.-]*\.png",
)]
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".jbl", ".dill", ".cloudpickle", ".pt", ".pth",
                   ".ckpt", ".sav")


class _Refused(Exception):
    def __init__(self, member: str, why: str):
        super().__init__(f"{member}: {why}")
        self.member, self.why = member, why


def _refusal(archive: Path, member: str, why: str, more: int = 0) -> InvalidInputError:
    msg = f"Refusing to import {archive.name}: member {member!r} {why}."
    if more:
        msg += f" ({more} more problem(s) found too)"
    return InvalidInputError(msg, hint="Nothing was imported. Only import archives made by "
                                       "`nbdeploy export` from a source you trust.",
                             received=member)


# ---------------------------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------------------------
def split_name(name: str) -> list[str]:
    return [p for p in re.split(r"[\\/]+", name) if p not in ("", ".")]


def _name_problem(name: str) -> str | None:
    if "\x00" in name:
        return "has a NUL byte in its name"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "has an absolute path"
    parts = split_name(name)
    if ".." in parts:
        return "has a '..' path component (it would land outside the bundle folder)"
    if len(name) > MAX_NAME or len(parts) > MAX_DEPTH or any(len(p.encode()) > 255 for p in parts):
        return f"has a name longer than {MAX_NAME} characters or deeper than {MAX_DEPTH} folders"
    return None


def _in_layout(rel: str) -> bool:
    return any(p.fullmatch(rel) for p in LAYOUT)


# ---------------------------------------------------------------------------------------------
# one pass over the archive: check and write each member
# ---------------------------------------------------------------------------------------------
class _Writer:
    """Creates folders and files under ``dest`` (a fresh private folder), enforcing limits."""

    def __init__(self, dest: Path, packed_size: int):
        self.dest = dest
        self.packed = max(packed_size, 1)
        self.total = 0
        self.count = 0
        self.seen: dict[str, str] = {}      # casefolded name -> "file" | "dir"
        self.files: list[str] = []
        self.digests: dict[str, tuple[str, int]] = {}   # hashed as written, for the manifest

    def _claim(self, name: str, kind: str) -> list[str]:
        self.count += 1
        if self.count > MAX_MEMBERS:
            raise _Refused(name, f"is past the limit of {MAX_MEMBERS} members")
        why = _name_problem(name)
        if why:
            raise _Refused(name, why)
        parts = split_name(name)
        if not parts:
            if kind == "dir":
                return []
            raise _Refused(name, "has an empty name")
        key = "/".join(parts).casefold()
        prev = self.seen.get(key)
        if prev is not None and (kind == "file" or prev == "file"):
            raise _Refused(name, "appears twice (a later copy would silently replace the first)")
        for i in range(1, len(parts)):       # a file may not also be a folder on the way
            if self.seen.get("/".join(parts[:i]).casefold()) == "file":
                raise _Refused(name, f"lies under {'/'.join(parts[:i])!r}, which is a file")
        self.seen[key] = kind
        return parts

    def _mkdirs(self, parts: list[str]) -> Path:
        path = self.dest
        for i, p in enumerate(parts):
            path = path / p
            try:
                os.mkdir(path, 0o755)     # dest's parent is private (0o700) until the import ends
            except FileExistsError:
                st = os.lstat(path)
                if not stat.S_ISDIR(st.st_mode):
                    raise _Refused("/".join(parts[:i + 1]), "is not a folder") from None
            self.seen.setdefault("/".join(parts[:i + 1]).casefold(), "dir")
        return path

    def folder(self, name: str) -> None:
        parts = self._claim(name, "dir")
        if parts:
            self._mkdirs(parts)

    def file(self, name: str, src: BinaryIO, executable: bool = False) -> None:
        parts = self._claim(name, "file")
        parent = self._mkdirs(parts[:-1])
        target = parent / parts[-1]
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                     0o755 if executable else 0o644)
        h, size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            while True:
                chunk = src.read(_CHUNK)
                if not chunk:
                    break
                h.update(chunk)
                size += len(chunk)
                self.total += len(chunk)
                if self.total > MAX_TOTAL_BYTES:
                    raise _Refused(name, f"takes the archive past {MAX_TOTAL_BYTES >> 30} GiB unpacked")
                if self.total > RATIO_FLOOR and self.total > MAX_RATIO * self.packed:
                    raise _Refused(name, f"unpacks to more than {MAX_RATIO} times the archive's "
                                         f"size (a compression bomb)")
                out.write(chunk)
        self.files.append("/".join(parts))
        self.digests["/".join(parts)] = (h.hexdigest(), size)


class _Counted(io.RawIOBase):
    """The decompressed tar stream, refused past the byte limit (headers and padding too)."""

    def __init__(self, raw: BinaryIO, limit: int):
        self.raw, self.limit, self.n = raw, limit, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.raw.read(len(b))
        self.n += len(data)
        if self.n > self.limit:
            raise _Refused("(stream)", f"unpacks past {MAX_TOTAL_BYTES >> 30} GiB")
        b[:len(data)] = data
        return len(data)


class _TarInfo(tarfile.TarInfo):
    """Refuses oversized pax / GNU long-name headers and sparse files *before* tarfile reads
    them into memory (tarfile would hold a multi-GiB pax header whole)."""

    def _proc_member(self, tarfile_):   # tarfile's hook for extension headers (3.8 - 3.14)
        if self.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                         tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK) \
                and self.size > MAX_TAR_HEADER:
            raise _Refused(self.name or "(header)", f"has a {self.size}-byte extension header "
                                                   f"(limit {MAX_TAR_HEADER})")
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise _Refused(self.name, "is a sparse file")
        return super()._proc_member(tarfile_)


def _open_decompressed(f: BinaryIO, magic: bytes) -> BinaryIO:
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=f, mode="rb")        # reads every gzip member
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(f, "rb")                     # reads every xz stream
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(f, "rb")                       # reads every bz2 stream
    return f


def _unpack_tar(archive: Path, magic: bytes, w: _Writer) -> None:
    with open(archive, "rb") as raw:
        stream = _Counted(_open_decompressed(raw, magic), MAX_TOTAL_BYTES + 64 * 1024 ** 2)
        buffered = io.BufferedReader(stream, _CHUNK)
        tar = tarfile.open(fileobj=buffered, mode="r|", tarinfo=_TarInfo)
        try:
            for m in tar:
                if m.issparse():      # pax/GNU sparse maps expand a few bytes into many
                    raise _Refused(m.name, "is a sparse file")
                if m.isdir():
                    w.folder(m.name)
                elif m.isreg():
                    src = tar.extractfile(m)
                    w.file(m.name, src, executable=bool(m.mode & 0o100))
                elif m.issym() or m.islnk():
                    raise _Refused(m.name, f"is a {'symbolic' if m.issym() else 'hard'} link to "
                                           f"{m.linkname!r} (nbdeploy bundles never contain links)")
                elif m.ischr() or m.isblk():
                    raise _Refused(m.name, "is a device file")
                elif m.isfifo():
                    raise _Refused(m.name, "is a FIFO")
                else:
                    raise _Refused(m.name, "is not a regular file or folder")
            # the end-of-archive marker: only zero padding may follow (no hidden second tar)
            while True:
                rest = tar.fileobj.read(_CHUNK)
                if not rest:
                    break
                if rest.count(0) != len(rest):
                    raise _Refused("(after the end of the archive)",
                                   "is data after the tar's end-of-archive marker (a hidden "
                                   "second stream or appended members)")
        finally:
            tar.close()


def _unpack_zip(archive: Path, w: _Writer) -> None:
    with zipfile.ZipFile(archive) as z:
        infos = z.infolist()
        if len(infos) > MAX_MEMBERS:
            raise _Refused(infos[MAX_MEMBERS].filename, f"is past the limit of {MAX_MEMBERS} members")
        for info in infos:
            mode = info.external_attr >> 16
            if info.flag_bits & 0x1:
                raise _Refused(info.filename, "is encrypted")
            if stat.S_ISLNK(mode):
                raise _Refused(info.filename, "is a symbolic link (nbdeploy bundles never contain links)")
            if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise _Refused(info.filename, "is a device file or other special file")
            if info.is_dir():
                w.folder(info.filename)
                continue
            with z.open(info) as src:      # streamed: at most file_size bytes, CRC checked
                w.file(info.filename, src, executable=bool(mode & 0o100))


def _kind(archive: Path) -> tuple[str, bytes]:
    with open(archive, "rb") as f:
        magic = f.read(512)
    if magic.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip", magic
    if magic.startswith((b"\x1f\x8b", b"\xfd7zXZ\x00", b"BZh")) or magic[257:262] == b"ustar" \
            or (len(magic) == 512 and tarfile.is_tarfile(archive)):
        return "tar", magic
    raise InvalidInputError(f"{archive.name} is not a bundle archive (neither tar nor zip).",
                            hint="Give a file made by `nbdeploy export`.")


# ---------------------------------------------------------------------------------------------
# content: pickle by structure, .npy headers, zip containers
# ---------------------------------------------------------------------------------------------
class _Limited(io.RawIOBase):
    def __init__(self, f: BinaryIO, limit: int):
        self.f, self.left, self.hit = f, limit, False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.left <= 0:
            self.hit = True
            return 0
        data = self.f.read(min(len(b), self.left))
        self.left -= len(data)
        b[:len(data)] = data
        return len(data)


class _NoTell:
    """read/readline only: pickletools.genops asks a stream with ``tell`` for positions."""

    def __init__(self, f):
        self.read, self.readline = f.read, f.readline


_GLOBAL_ARG = re.compile(r"[A-Za-z_][\w.]* [A-Za-z_][\w.]*")
_RUNS_CODE = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD",
              "EXT1", "EXT2", "EXT4"}


def _is_pickle(f: BinaryIO) -> bool:
    """Would ``pickle.load`` act on this stream?  Its opcodes are followed with a stack
    model: a stream that reaches STOP, or reaches an opcode that imports or calls something
    (the unpickler runs it at once, whatever garbage follows), with a consistent stack is a
    pickle.  A stream still consistent after PICKLE_SCAN bytes counts as one too."""
    limited = _Limited(f, PICKLE_SCAN)
    depth, marks = 0, []
    special = (pickletools.markobject, pickletools.stackslice)
    try:
        for op, arg, _pos in pickletools.genops(_NoTell(io.BufferedReader(limited))):
            if op.name in ("GLOBAL", "INST") and not _GLOBAL_ARG.fullmatch(str(arg)):
                return False      # the unpickler could not import such a name: it stops here
            before = list(op.stack_before)
            if pickletools.markobject in before:
                if not marks:
                    return False
                depth = marks.pop()
                before = [b for b in before if b not in special]
            if len(before) > depth:
                return False
            depth -= len(before)
            if op.name == "MARK":
                marks.append(depth)
            else:
                depth += len(op.stack_after)
            if op.name in _RUNS_CODE or op.name == "STOP":
                return True
    except Exception:
        return limited.hit
    return limited.hit


def _npy_reason(f: BinaryIO) -> str | None:
    """Parse a .npy header in full (f is positioned after the 6-byte magic)."""
    import numpy as np

    ver = f.read(2)
    if len(ver) != 2 or ver[0] not in (1, 2, 3):
        return "is a .npy file with an unknown format version"
    size_len = 2 if ver[0] == 1 else 4
    raw = f.read(size_len)
    if len(raw) != size_len:
        return "is a truncated .npy file"
    hlen = int.from_bytes(raw, "little")
    if hlen > MAX_NPY_HEADER:
        return f"has a {hlen}-byte .npy header (limit {MAX_NPY_HEADER})"
    header = f.read(hlen)
    try:
        d = ast.literal_eval(header.decode("utf-8" if ver[0] == 3 else "latin1"))
        dtype = np.lib.format.descr_to_dtype(d["descr"])
        if not (isinstance(d, dict) and isinstance(d.get("shape"), tuple)):
            raise ValueError("bad header")
    except Exception:
        return "has a .npy header that does not parse"
    if dtype.hasobject:
        return "is a .npy array of Python objects (stored as pickle)"
    return None


def _stream_reason(name: str, f: BinaryIO, *, inside_zip: bool) -> str | None:
    if name.lower().endswith(PICKLE_SUFFIXES):
        return "is a pickle file by its name (pickle runs code when loaded)"
    magic = f.read(6)
    if magic == b"\x93NUMPY":
        return _npy_reason(f)
    if magic.startswith(b"PK\x03\x04"):
        return "is a zip inside a zip" if inside_zip else None   # the caller opens it
    if _is_pickle(io.BufferedReader(_Prefixed(magic, f))):
        return "is a pickle (pickle runs code when loaded)"
    return None


class _Prefixed(io.RawIOBase):
    def __init__(self, head: bytes, f: BinaryIO):
        self.head, self.f = head, f

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.head:
            n = min(len(b), len(self.head))
            b[:n], self.head = self.head[:n], self.head[n:]
            return n
        data = self.f.read(len(b))
        b[:len(data)] = data
        return len(data)


def pickle_reason(path: Path, name: str | None = None) -> str | None:
    """Why a file on disk could be loaded as pickle (None when it cannot).  Reads at most
    about PICKLE_SCAN bytes per file or zip member; never unpickles anything."""
    name = name or path.name
    with open(path, "rb") as f:
        why = _stream_reason(name, f, inside_zip=False)
        if why:
            return why
        f.seek(0)
        if f.read(4) != b"PK\x03\x04":
            return None
    try:
        with zipfile.ZipFile(path) as z:            # .npz, torch .pt: pickles hide inside
            infos = z.infolist()
            if len(infos) > MAX_MEMBERS:
                return f"is a zip with more than {MAX_MEMBERS} members"
            for info in infos:
                if info.is_dir():
                    continue
                with z.open(info) as m:
                    inner = _stream_reason(info.filename, m, inside_zip=True)
                if inner:
                    return f"contains {info.filename!r}, which {inner}"
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError, EOFError) as exc:
        return f"is a damaged zip container ({type(exc).__name__})"
    return None


# ---------------------------------------------------------------------------------------------
# manifest
# ---------------------------------------------------------------------------------------------
def sha256_file(path: Path) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def manifest_bytes(tag: str, files: dict[str, dict]) -> bytes:
    from ._version import __version__

    return json.dumps({"format": MANIFEST_FORMAT, "nbdeploy_version": __version__, "tag": tag,
                       "files": dict(sorted(files.items()))}, indent=1).encode()


def _manifest_problems(root: Path, files: list[str], tag: str,
                       digests: dict[str, tuple[str, int]]) -> list[tuple[str, str]]:
    p = root / MANIFEST
    if p.stat().st_size > 32 * 1024 ** 2:
        return [(MANIFEST, "is too large")]
    try:
        man = json.loads(p.read_bytes())
        listed = man["files"]
        if man.get("format") != MANIFEST_FORMAT or not isinstance(listed, dict):
            raise ValueError
    except Exception:
        return [(MANIFEST, "is not an nbdeploy manifest")]
    out = []
    if man.get("tag") != tag:
        out.append((MANIFEST, f"is for {man.get('tag')!r}, not {tag!r}"))
    present = set(files) - {MANIFEST, SIGNATURE}
    for rel in sorted(present - set(listed)):
        out.append((rel, "is not listed in the archive's manifest (added after export)"))
    for rel in sorted(set(listed) - present):
        out.append((rel, "is listed in the archive's manifest but missing"))
    for rel in sorted(present & set(listed)):
        digest, size = digests[rel] if rel in digests else sha256_file(root / rel)
        entry = listed[rel] if isinstance(listed[rel], dict) else {}
        if entry.get("sha256") != digest or entry.get("size") != size:
            out.append((rel, "does not match the SHA-256 in the archive's manifest (changed "
                             "after export)"))
    return out


# ---------------------------------------------------------------------------------------------
# optional Ed25519 signatures (the `cryptography` package)
# ---------------------------------------------------------------------------------------------
def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:
        from .errors import MissingDependencyError

        raise MissingDependencyError("Signing and checking bundle signatures needs the "
                                     "'cryptography' package.", hint="pip install cryptography") from exc
    return serialization, ed25519


def _key_text(key: str | os.PathLike | bytes) -> bytes:
    if isinstance(key, bytes):
        return key
    p = Path(os.fspath(key)).expanduser()
    if not p.is_file():
        raise NotFoundError(f"No key file {str(p)!r}.", hint="Give the path of an Ed25519 key "
                                                              "(PEM or OpenSSH format).")
    if p.stat().st_size > 64 * 1024:
        raise InvalidInputError(f"{p.name} is too large to be a key file.")
    return p.read_bytes()


def load_private_key(key: str | os.PathLike | bytes):
    """An Ed25519 private key from a PEM (PKCS#8) or OpenSSH file, unencrypted."""
    serialization, ed25519 = _crypto()
    data = _key_text(key)
    for load in (serialization.load_pem_private_key, serialization.load_ssh_private_key):
        try:
            k = load(data, password=None)
        except (ValueError, TypeError, Exception):   # noqa: BLE001 (each loader its own errors)
            continue
        if isinstance(k, ed25519.Ed25519PrivateKey):
            return k
    raise InvalidInputError("The signing key is not an unencrypted Ed25519 private key.",
                            hint="Make one with `ssh-keygen -t ed25519 -N '' -f KEY` or "
                                 "`openssl genpkey -algorithm ed25519 -out key.pem`.")


def load_public_key(key: str | os.PathLike | bytes):
    """An Ed25519 public key from a PEM file or an OpenSSH ``ssh-ed25519 ...`` line."""
    serialization, ed25519 = _crypto()
    data = _key_text(key)
    for load in (serialization.load_pem_public_key, serialization.load_ssh_public_key):
        try:
            k = load(data.strip())
        except (ValueError, TypeError, Exception):   # noqa: BLE001
            continue
        if isinstance(k, ed25519.Ed25519PublicKey):
            return k
    raise InvalidInputError("A trusted key is not an Ed25519 public key.",
                            hint="Give a PEM public key or an OpenSSH 'ssh-ed25519 ...' line.")


def _raw_public(k) -> bytes:
    serialization, _ = _crypto()
    return k.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def signature_bytes(manifest: bytes, private_key) -> bytes:
    import base64

    return json.dumps({"algorithm": "ed25519",
                       "public_key": base64.b64encode(_raw_public(private_key.public_key())).decode(),
                       "signature": base64.b64encode(private_key.sign(manifest)).decode()},
                      indent=1).encode()


def _signer(root: Path, trusted: list) -> tuple[str | None, str | None]:
    """(fingerprint of the trusted key that signed the manifest, None) or (None, why not)."""
    import base64

    sig = root / SIGNATURE
    if not sig.is_file():
        return None, f"is not signed ({SIGNATURE} is missing) and trusted keys are configured"
    if sig.stat().st_size > 64 * 1024 or not (root / MANIFEST).is_file():
        return None, f"has an invalid {SIGNATURE}"
    try:
        doc = json.loads(sig.read_bytes())
        raw = base64.b64decode(doc["public_key"], validate=True)
        signature = base64.b64decode(doc["signature"], validate=True)
    except Exception:  # noqa: BLE001 (any malformed document is the same refusal)
        return None, f"has an invalid {SIGNATURE}"
    manifest = (root / MANIFEST).read_bytes()
    for k in trusted:
        if _raw_public(k) == raw:
            try:
                k.verify(signature, manifest)
            except Exception:  # noqa: BLE001 (cryptography's InvalidSignature)
                return None, "has a signature that does not match its manifest (changed after signing)"
            return hashlib.sha256(raw).hexdigest()[:16], None
    return None, f"is signed by key {hashlib.sha256(raw).hexdigest()[:16]}, which is not a trusted key"


# ---------------------------------------------------------------------------------------------
# code identity: what `bentoml serve` would run must be this release's
# ---------------------------------------------------------------------------------------------
def _blank_docstrings(tree: ast.Module) -> str:
    for node in [tree, *[n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]]:
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            body[0].value.value = ""
    return ast.dump(tree)


def _first_diff(expected: str, actual: str) -> str:
    exp, act = expected.splitlines(), actual.splitlines()
    for i in range(max(len(exp), len(act))):
        e = exp[i] if i < len(exp) else "(end of file)"
        a = act[i] if i < len(act) else "(end of file)"
        if e != a:
            return f"differs from this release's at line {i + 1}: expected {e[:100]!r}, found {a[:100]!r}"
    return "differs from this release's"


def service_difference(text: str, name: str) -> str | None:
    """None when ``text`` is this release's service template filled in for bundle ``name``
    (docstrings and comments aside), else what differs."""
    from ._version import __version__
    from .bundle import TEMPLATES, class_name

    try:
        tree = ast.parse(text)
        cls = next(n for n in tree.body if isinstance(n, ast.ClassDef))
        call = next(d for d in cls.decorator_list if isinstance(d, ast.Call)
                    and ast.unparse(d.func) == "bentoml.service")
        # values only; a ``**mapping`` argument is part of the template, compared with it below
        kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg is not None}
        values = dict(nbdeploy_version=__version__, name=name, class_name=class_name(name),
                      workers=int(kw["workers"]), description="",
                      **{k: repr(kw[k]) for k in ("resources", "traffic", "logging", "tracing")})
        if kw.get("name") != name:
            return f"serves {kw.get('name')!r}, not the bundle's name {name!r}"
    except (SyntaxError, StopIteration, KeyError, ValueError, TypeError) as exc:
        return f"is not nbdeploy's service template ({type(exc).__name__})"
    expected = string.Template((TEMPLATES / "service.py.tmpl").read_text(encoding="utf-8")) \
        .substitute(values)
    if _blank_docstrings(ast.parse(expected)) == _blank_docstrings(tree):
        return None
    return _first_diff(expected, text)


def _bentoml_entrypoint() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("bentoml")
    if not spec or not spec.origin:
        return None
    p = Path(spec.origin).parent / "_internal" / "container" / "frontend" / "dockerfile" / "entrypoint.sh"
    return p if p.is_file() else None


def code_differences(root: Path, files: list[str], name: str, service: str) -> list[tuple[str, str]]:
    """Files that would run and are not this release's (service.py, nbdeploy_runtime/,
    BentoML's entrypoint.sh, the service named in bento.yaml)."""
    from .bundle import RUNTIME, class_name

    out: list[tuple[str, str]] = []
    if service != f"service:{class_name(name)}":
        out.append(("bento.yaml", f"names the service {service!r}, not "
                                  f"'service:{class_name(name)}'"))
    svc = root / "src" / "service.py"
    if not svc.is_file():
        out.append(("src/service.py", "is missing"))
    elif svc.stat().st_size > _MAX_CODE:
        out.append(("src/service.py", f"is larger than {_MAX_CODE} bytes (this release's is a "
                                      "few kilobytes)"))
    else:
        why = service_difference(svc.read_text(encoding="utf-8", errors="replace"), name)
        if why:
            out.append(("src/service.py", why))
    ours = {p.name: p for p in RUNTIME.glob("*.py")}
    theirs = {f.split("/")[-1] for f in files if f.startswith("src/nbdeploy_runtime/")}
    for n in sorted(theirs - set(ours)):
        out.append((f"src/nbdeploy_runtime/{n}", "is not part of this release's runtime"))
    for n in sorted(set(ours) - theirs):
        out.append((f"src/nbdeploy_runtime/{n}", "is missing (this release's runtime has it)"))
    for n in sorted(theirs & set(ours)):
        mine, path = ours[n].read_bytes(), root / "src" / "nbdeploy_runtime" / n
        if path.stat().st_size > max(len(mine), _MAX_CODE):
            out.append((f"src/nbdeploy_runtime/{n}", "is much larger than this release's"))
            continue
        got = path.read_bytes()
        if mine != got:
            out.append((f"src/nbdeploy_runtime/{n}",
                        _first_diff(mine.decode("utf-8", "replace"), got.decode("utf-8", "replace"))))
    ep = root / "env" / "docker" / "entrypoint.sh"
    if ep.is_file():
        stock = _bentoml_entrypoint()
        if stock is None or stock.stat().st_size != ep.stat().st_size \
                or stock.read_bytes() != ep.read_bytes():
            out.append(("env/docker/entrypoint.sh", "is not the installed BentoML's entrypoint.sh"))
    return out


# ---------------------------------------------------------------------------------------------
# the whole import check
# ---------------------------------------------------------------------------------------------
@dataclass
class Unpacked:
    """A bundle archive unpacked and checked in a private folder."""

    root: Path
    tag: str
    files: list[str] = field(default_factory=list)
    manifest: bool = False
    signed_by: str | None = None       # fingerprint of the trusted key that signed it
    trusted_differences: list[str] = field(default_factory=list)


def _requirement_problems(root: Path) -> list[tuple[str, str]]:
    out = []
    for rel in ("env/python/requirements.txt", "src/requirements.txt"):
        p = root / rel
        if not p.is_file():
            continue
        if p.stat().st_size > _MAX_CODE:
            out.append((rel, "is too large for a requirements file"))
            continue
        for raw in p.read_text(encoding="utf-8", errors="replace").splitlines():
            line = raw.split(" #", 1)[0].strip()
            if not line or line.startswith("#"):
                continue
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]*\])?\s*==\s*"
                                r"[A-Za-z0-9][A-Za-z0-9.+!_-]*(\s*;[^\n]*)?", line) or "://" in line:
                out.append((rel, f"has the line {line[:120]!r}; only 'package==version' lines are "
                                 "accepted (options and URLs would make pip fetch other code)"))
                break
    return out


def unpack_bundle(path: str | os.PathLike, dest: Path, *, trust: bool = False,
                  trusted_keys: list | None = None) -> Unpacked:
    """Unpack the archive at ``path`` into the empty private folder ``dest`` and check it as
    described in the module docstring.  Raises InvalidInputError naming the first problem
    (and how many more there are); ``dest`` is then left for the caller to delete.

    ``trusted_keys`` (Ed25519 public keys, or key files): when given, the manifest must be
    signed by one of them, and a bundle so signed may carry code that differs from this
    release's (its author is known, as with ``trust``)."""
    keys = [k if hasattr(k, "verify") else load_public_key(k) for k in (trusted_keys or [])]
    import yaml

    archive = Path(os.fspath(path))
    if not archive.is_file():
        raise NotFoundError(f"No archive {str(archive)!r}.", hint="Check the path.")
    kind, magic = _kind(archive)
    w = _Writer(dest, archive.stat().st_size)
    try:
        if kind == "zip":
            _unpack_zip(archive, w)
        else:
            _unpack_tar(archive, magic, w)
    except _Refused as r:
        raise _refusal(archive, r.member, r.why) from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, lzma.LZMAError, OSError, ValueError,
            RuntimeError, NotImplementedError) as exc:
        raise InvalidInputError(f"{archive.name} is damaged or not a bundle archive: "
                                f"{type(exc).__name__}: {str(exc)[:200]}",
                                hint="Nothing was imported. Export the bundle again.") from exc
    files = sorted(w.files)
    if "bento.yaml" not in files:
        raise InvalidInputError(f"{archive.name} is not a BentoML bundle (no bento.yaml at its top).",
                                hint="Give a file made by `nbdeploy export`.")
    problems: list[tuple[str, str]] = []
    for rel in files:
        if rel == "models" or rel.startswith("models/"):
            problems.append((rel, "is under models/ (BentoML would copy it into the global model "
                                  "store; nbdeploy bundles have no models there)"))
        elif not _in_layout(rel):
            problems.append((rel, "is not part of the layout nbdeploy writes"))
    for rel in files:
        why = pickle_reason(dest / rel, rel)
        if why:
            problems.append((rel, why))
    problems += _requirement_problems(dest)
    if problems:
        raise _refusal(archive, *problems[0], more=len(problems) - 1)

    if (dest / "bento.yaml").stat().st_size > _MAX_CODE:
        raise _refusal(archive, "bento.yaml", f"is larger than {_MAX_CODE} bytes")
    text = (dest / "bento.yaml").read_text(encoding="utf-8", errors="replace")
    try:
        aliases = any(isinstance(ev, yaml.AliasEvent) for ev in yaml.parse(text, Loader=yaml.SafeLoader))
        info = {} if aliases else (yaml.safe_load(text) or {})
        if not isinstance(info, dict):
            raise ValueError("not a mapping")
    except Exception as exc:
        raise InvalidInputError(f"{archive.name}: bento.yaml is not valid YAML: {str(exc)[:200]}",
                                hint="Nothing was imported. Export the bundle again.") from exc
    if aliases:
        raise _refusal(archive, "bento.yaml", "uses YAML aliases (BentoML never writes them; "
                                              "they can expand without bound)")
    labels = info.get("labels") if isinstance(info.get("labels"), dict) else {}
    if labels.get("created-by") != "nbdeploy":
        raise InvalidInputError(f"{archive.name} is a BentoML bundle not made by nbdeploy.",
                                hint="Import it with `bentoml import` instead; nbdeploy only "
                                     "manages bundles it built.")
    from .schema import validate_tag

    name, version = str(info.get("name")), str(info.get("version"))
    tag = validate_tag(f"{name}:{version}")
    if info.get("models") or any((s or {}).get("models") for s in info.get("services") or []
                                 if isinstance(s, dict)):
        raise _refusal(archive, "bento.yaml", "lists BentoML models (nbdeploy bundles have none)")
    if info.get("envs"):
        raise _refusal(archive, "bento.yaml", "sets environment variables (nbdeploy bundles set none)")

    result = Unpacked(root=dest, tag=tag, files=files, manifest=MANIFEST in files)
    if result.manifest:
        bad = _manifest_problems(dest, files, tag, w.digests)
        if bad:
            raise _refusal(archive, *bad[0], more=len(bad) - 1)
    elif not trust:
        raise InvalidInputError(
            f"Refusing to import {archive.name}: it has no {MANIFEST} (it was not written by "
            "`nbdeploy export`), so its files cannot be checked against what was exported.",
            hint="Export it again with `nbdeploy export`, or pass --trust (trust=True) if you "
                 "know where it comes from.")
    signed_by = None
    if keys:
        if not result.manifest:
            raise _refusal(archive, MANIFEST, "is missing, so nothing can be signed")
        signed_by, why = _signer(dest, keys)
        if why:
            raise InvalidInputError(f"Refusing to import {archive.name}: it {why}.",
                                    hint="Ask its author for an archive signed with a key you "
                                         "trust (nbdeploy export --sign KEY).")
        result.signed_by = signed_by
    diffs = code_differences(dest, files, name, str(info.get("service")))
    if diffs and not trust and not signed_by:
        listed = "; ".join(f"{f}: {why}" for f, why in diffs[:8])
        raise InvalidInputError(
            f"Refusing to import {archive.name}: its code is not this nbdeploy release's, and "
            f"`bentoml serve` would run it: {listed}"
            + (f" (and {len(diffs) - 8} more)" if len(diffs) > 8 else ""),
            hint="Import only bundles built by this nbdeploy version, or pass --trust "
                 "(trust=True) to run this code anyway if you trust its author.",
            received=[f for f, _ in diffs])
    result.trusted_differences = [f"{f}: {why}" for f, why in diffs]
    return result


# ---------------------------------------------------------------------------------------------
# ONNX external data (also used by nbdeploy.portability on bundles in the local store)
# ---------------------------------------------------------------------------------------------
def onnx_external_problems(onnx_file: Path, root: Path) -> list[str]:
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


def _onnx_problems(root: Path) -> list[str]:
    model = root / "src" / "model"
    return [p for f in sorted(model.glob("*.onnx")) for p in onnx_external_problems(f, root)] \
        if model.is_dir() else []


# ---------------------------------------------------------------------------------------------
# entry points: inspect, import into the store
# ---------------------------------------------------------------------------------------------
def inspect_archive(path: str | os.PathLike, *, trust: bool = False,
                    trusted_keys: list | None = None) -> list[str]:
    """File names of a bundle archive after every import check passed; raises
    InvalidInputError naming the first problem.  The archive is unpacked into a private
    temporary folder, which is deleted again."""
    import tempfile

    archive = Path(os.fspath(path)).expanduser().absolute()
    with tempfile.TemporaryDirectory(prefix="nbdeploy-import-") as tmp:
        u = unpack_bundle(archive, Path(tmp), trust=trust, trusted_keys=trusted_keys)
        onnx = _onnx_problems(u.root)
        if onnx:
            raise InvalidInputError(f"Refusing to import {archive.name}: " + "; ".join(onnx[:5]),
                                    hint="Nothing was imported.")
        return u.files


def import_bundle(path: str | os.PathLike, *, trust: bool = False,
                  trusted_keys: list | None = None) -> str:
    """Import a bundle archive written by ``nbdeploy export`` into the local BentoML store
    and return its tag.

    The archive is untrusted: it is unpacked once into a private folder and checked there
    (layout, links, limits, pickles, manifest, code identity, ONNX external data; see this
    module's docstring), and only that checked folder is handed to BentoML.  ``trust=True``
    accepts an archive without a manifest and code (``service.py``, ``nbdeploy_runtime/``) that
    differs from this nbdeploy release's: only for bundles whose author you trust, since serving
    runs that code.  ``trusted_keys`` (Ed25519 public key files, PEM or ``ssh-ed25519``): the
    archive must be signed (``export_bundle(..., sign_key=...)``) by one of them; so signed, its
    code may differ.  Refuses tags already in the store.  A refused archive adds nothing to the
    store.
    """
    import shutil

    import bentoml
    from bentoml._internal.bento import Bento
    from bentoml._internal.configuration.containers import BentoMLContainer

    from .bundle import private_store, store_root

    archive = Path(os.fspath(path)).expanduser().absolute()
    # unpacked next to the store (same file system), checked there, then renamed into it:
    # each byte is written once, and the store never shows a half-imported bundle
    root = store_root()
    staging = private_store(root)
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
        final = root / name / version
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
        latest = root / name / "latest"
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
