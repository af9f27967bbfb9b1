"""export: carry a bundle to another machine as one archive in BentoML's own format.

``export_bundle`` writes the bento folder as ``bentoml export`` does (``.bento`` = xz tar by
default, members ``./...``), plus ``nbdeploy-manifest.json``: the SHA-256 of every file (and,
with a signing key, ``nbdeploy-manifest.sig``).  Stock ``bentoml import`` reads it, so the other
side needs only ``pip install -r env/python/requirements.txt``, ``bentoml import`` and
``bentoml serve``.  Only bundles from the local store are read here: trusted input.

The way back treats the archive as untrusted and lives in :mod:`nbdeploy.archive`
(``import_bundle``, ``inspect_archive``); whether a bundle would serve elsewhere is
:mod:`nbdeploy.portability` (``check_bundle``), which export runs first.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import tarfile
import zipfile
from pathlib import Path

from .archive import MANIFEST, SIGNATURE, load_private_key, manifest_bytes, signature_bytes
from .errors import BundleError, InvalidInputError, NotFoundError
from .portability import check_bundle

__all__ = ["export_bundle", "ARCHIVE_SUFFIXES"]

#: archive suffix -> BentoML export format (``bentoml import`` guesses the same way).
ARCHIVE_SUFFIXES = {".bento": "bento", ".tar.gz": "gz", ".tar.xz": "xz", ".tar": "tar", ".zip": "zip"}


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
    key = load_private_key(sign_key) if sign_key is not None else None
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
        data = manifest_bytes(tag, files)
        extra = [(MANIFEST, data)] + ([(SIGNATURE, signature_bytes(data, key))] if key else [])
        for name, blob in extra:
            info = tarfile.TarInfo("./" + name)
            info.size, info.mode = len(blob), 0o644
            tar.addfile(info, io.BytesIO(blob))
