"""Build an OCI image of a bento without a container daemon.

The image is the base image's layers, plus

1. a layer with the bento's Python dependencies, installed by ``pip install --target``
   for the image's platform (manylinux wheels, the base's Python version), under
   ``/opt/nbdeploy/deps``; dependencies published only as source (lime) are built here
   into ``py3-none-any`` wheels when they are pure Python (native code needs a platform
   wheel); cached by a hash of the requirements, so rebuilding after a model change reuses it;
2. a layer with the bento itself under ``/home/bentoml/bento``;

and a config whose entrypoint runs ``python3 -m bentoml serve`` on port 3000.

Layers are reproducible: entries sorted, owners and modes normalised, mtimes fixed,
gzip header without name or time. Same input, same digest.

Blobs live in a content-addressed store under ``$NBDEPLOY_HOME/cache/blobs`` (default
``~/.nbdeploy``); :mod:`nbdeploy.registry` pushes them.  This module does no network I/O:
the base image comes in as an :class:`OCIImage` (:mod:`nbdeploy.publish` pulls it, and
:func:`image_from_store` makes it from what the pull left in the store).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

from . import paths
from .errors import BundleError, InvalidInputError, NotFoundError
from .oci import (
    GZIP_LAYER_TYPES,
    MT_OCI_CONFIG,
    MT_OCI_INDEX,
    MT_OCI_LAYER_GZIP,
    MT_OCI_LAYER_TAR,
    MT_OCI_MANIFEST,
    blob_path,
)

log = logging.getLogger(__name__)

DEFAULT_PLATFORM = "linux/amd64"
BENTO_PATH = "/home/bentoml/bento"
BENTOML_HOME = "/home/bentoml"
DEPS_PATH = "/opt/nbdeploy/deps"
PORT = 3000
BENTO_UID = 1034
LAYER_FORMAT = 1  # bump when the layer layout changes, to invalidate caches


def blob_store(home: Path | None = None) -> Path:
    """The content-addressed blob store: ``HOME/cache/blobs`` (``$NBDEPLOY_HOME`` by default)."""
    return Path(home or paths.home()) / "cache" / "blobs"


# --- layers --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layer:
    """A gzip-compressed layer blob in the local store."""

    digest: str          # sha256 of the compressed blob
    diff_id: str         # sha256 of the uncompressed tar
    size: int            # compressed bytes
    path: Path
    media_type: str = MT_OCI_LAYER_GZIP
    created_by: str = ""

    def descriptor(self) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


class _HashWriter:
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, out):
        self.out = out
        self.sha = hashlib.sha256()
        self.n = 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.n += len(data)
        if self.out is not None:
            self.out.write(data)
        return len(data)

    def tell(self) -> int:
        return self.n

    def flush(self) -> None:
        if self.out is not None:
            self.out.flush()


class LayerWriter:
    """Write a reproducible tar+gzip layer straight into the blob store.

    Entries must be added in sorted order (the helpers below do that); every entry gets
    ``mtime``, and owner 0:0 unless ``keep_owner``.
    """

    def __init__(self, store: Path, *, mtime: int = 0, compresslevel: int = 6, created_by: str = ""):
        self.store = Path(store)
        (self.store / "sha256").mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(dir=self.store / "sha256", prefix=".layer-")
        self._fh = os.fdopen(fd, "wb")
        self._outer = _HashWriter(self._fh)
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._outer, mtime=0,
                                 compresslevel=compresslevel)
        self._inner = _HashWriter(self._gz)
        self.tar = tarfile.open(fileobj=self._inner, mode="w|", format=tarfile.PAX_FORMAT)
        self.mtime = mtime
        self.created_by = created_by
        self._seen: set[str] = set()
        self._inodes: dict[tuple[int, int], str] = {}

    def add_dir(self, arcname: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        arcname = arcname.strip("/")
        if not arcname or arcname in self._seen:
            return
        ti = tarfile.TarInfo(arcname)
        ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = tarfile.DIRTYPE, mode, uid, gid, self.mtime
        self._seen.add(arcname)
        self.tar.addfile(ti)

    def add_parents(self, arcname: str, **kw) -> None:
        parts = arcname.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.add_dir("/".join(parts[:i]), **kw)

    def add_path(self, src: Path, arcname: str, *, keep_owner: bool = False, mode: int | None = None) -> None:
        """Add one file system entry (not recursive)."""
        arcname = arcname.strip("/")
        st = os.lstat(src)
        ti = tarfile.TarInfo(arcname)
        ti.mtime = self.mtime
        ti.uid, ti.gid = (st.st_uid, st.st_gid) if keep_owner else (0, 0)
        if keep_owner:
            ti.mode = stat.S_IMODE(st.st_mode)
        m = st.st_mode
        if stat.S_ISDIR(m):
            ti.type = tarfile.DIRTYPE
            ti.mode = mode if mode is not None else (ti.mode if keep_owner else 0o755)
            self._seen.add(arcname)
            self.tar.addfile(ti)
        elif stat.S_ISLNK(m):
            ti.type, ti.linkname = tarfile.SYMTYPE, os.readlink(src)
            ti.mode = 0o777
            self.tar.addfile(ti)
        elif stat.S_ISREG(m):
            key = (st.st_dev, st.st_ino)
            if keep_owner and st.st_nlink > 1 and key in self._inodes:
                ti.type, ti.linkname = tarfile.LNKTYPE, self._inodes[key]
                self.tar.addfile(ti)
                return
            if st.st_nlink > 1:
                self._inodes[key] = arcname
            if not keep_owner:
                ti.mode = mode if mode is not None else (0o755 if m & 0o111 else 0o644)
            ti.size = st.st_size
            with open(src, "rb") as fh:
                self.tar.addfile(ti, fh)
        elif keep_owner and (stat.S_ISCHR(m) or stat.S_ISBLK(m)):
            ti.type = tarfile.CHRTYPE if stat.S_ISCHR(m) else tarfile.BLKTYPE
            ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            self.tar.addfile(ti)
        elif keep_owner and stat.S_ISFIFO(m):
            ti.type = tarfile.FIFOTYPE
            self.tar.addfile(ti)
        # sockets and (without keep_owner) device nodes are skipped on purpose

    def add_tree(self, src: Path, arcroot: str, *, keep_owner: bool = False,
                 skip_names: Iterable[str] = ("__pycache__",), skip_contents: Iterable[str] = (),
                 dir_mode: int | None = None) -> None:
        """Add ``src`` recursively under ``arcroot``, in sorted order."""
        src = Path(src)
        skip_names = set(skip_names)
        skip_contents = {s.strip("/") for s in skip_contents}
        arcroot = arcroot.strip("/")
        if arcroot:
            self.add_path(src, arcroot, keep_owner=keep_owner, mode=dir_mode)

        def walk(d: Path, arc: str) -> None:
            rel = arc[len(arcroot):].strip("/") if arcroot else arc
            if rel in skip_contents:
                return
            for name in sorted(os.listdir(d)):
                if name in skip_names:
                    continue
                p = d / name
                a = f"{arc}/{name}" if arc else name
                self.add_path(p, a, keep_owner=keep_owner)
                if p.is_dir() and not p.is_symlink():
                    walk(p, a)

        walk(src, arcroot)

    def add_bytes(self, arcname: str, data: bytes, *, mode: int = 0o644) -> None:
        import io

        ti = tarfile.TarInfo(arcname.strip("/"))
        ti.size, ti.mode, ti.mtime = len(data), mode, self.mtime
        self.tar.addfile(ti, io.BytesIO(data))

    def close(self) -> Layer:
        self.tar.close()
        self._gz.close()
        self._fh.close()
        digest = "sha256:" + self._outer.sha.hexdigest()
        dest = blob_path(self.store, digest)
        os.replace(self._tmp, dest)
        return Layer(digest, "sha256:" + self._inner.sha.hexdigest(), self._outer.n, dest,
                     created_by=self.created_by)

    def abort(self) -> None:
        try:
            self.tar.close()
            self._gz.close()
            self._fh.close()
        finally:
            Path(self._tmp).unlink(missing_ok=True)


# --- the image -----------------------------------------------------------------------------------

@dataclass
class OCIImage:
    """An image whose blobs are all in the local store, ready to push
    (:func:`nbdeploy.registry.push_image`) or write as an OCI layout.

    ``ref``: where the image came from, pinned (``registry/repo:tag@sha256:...``), when it
    was pulled; an image built on it records it as its base.
    """

    config: dict
    layers: list[Layer]
    store: Path
    base_ref: str | None = None
    base_layer_digests: tuple[str, ...] = ()
    annotations: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # timings, cache hits
    ref: str | None = None

    @cached_property
    def config_bytes(self) -> bytes:
        return json.dumps(self.config, sort_keys=True, separators=(",", ":")).encode()

    @property
    def config_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.config_bytes).hexdigest()

    manifest_media_type = MT_OCI_MANIFEST

    @cached_property
    def manifest(self) -> dict:
        m = {
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": {"mediaType": MT_OCI_CONFIG, "digest": self.config_digest, "size": len(self.config_bytes)},
            "layers": [layer.descriptor() for layer in self.layers],
        }
        if self.annotations:
            m["annotations"] = dict(sorted(self.annotations.items()))
        return m

    @cached_property
    def manifest_bytes(self) -> bytes:
        return json.dumps(self.manifest, sort_keys=True, separators=(",", ":")).encode()

    @property
    def digest(self) -> str:
        """The manifest digest: what ``ref@sha256:...`` pins."""
        return "sha256:" + hashlib.sha256(self.manifest_bytes).hexdigest()

    @property
    def size(self) -> int:
        """Compressed bytes of all layers (what a pull downloads)."""
        return sum(layer.size for layer in self.layers)

    def blobs(self):
        """(digest, path) of every blob: layers, then the config."""
        cfg = blob_path(self.store, self.config_digest)
        if not cfg.exists():
            cfg.parent.mkdir(parents=True, exist_ok=True)
            tmp = cfg.with_name(".cfg-" + cfg.name)
            tmp.write_bytes(self.config_bytes)
            os.replace(tmp, cfg)
        for layer in self.layers:
            yield layer.digest, layer.path
        yield self.config_digest, cfg

    def write_oci_layout(self, directory: str | Path, tag: str = "latest") -> Path:
        """Write an OCI image layout (readable by skopeo ``oci:DIR:tag`` and umoci)."""
        d = Path(directory)
        (d / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (d / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        for digest, path in list(self.blobs()) + [(self.digest, None)]:
            dest = blob_path(d / "blobs", digest)
            if dest.exists():
                continue
            if path is None:
                dest.write_bytes(self.manifest_bytes)
                continue
            try:
                os.link(path, dest)
            except OSError:
                shutil.copyfile(path, dest)
        index = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": [{
            "mediaType": MT_OCI_MANIFEST, "digest": self.digest, "size": len(self.manifest_bytes),
            "annotations": {"org.opencontainers.image.ref.name": tag}}]}
        (d / "index.json").write_text(json.dumps(index))
        return d

    def to_dict(self) -> dict:
        return {"digest": self.digest, "config_digest": self.config_digest, "size": self.size,
                "base": self.base_ref, "layers": [{"digest": l.digest, "size": l.size, "created_by": l.created_by}
                                                   for l in self.layers],
                "entrypoint": self.config.get("config", {}).get("Entrypoint"),
                "labels": self.config.get("config", {}).get("Labels", {}), "info": self.info}

    def _repr_html_(self) -> str:
        import html

        rows = "".join(f"<tr><td><code>{l.digest[7:19]}</code></td><td>{l.size / 1e6:.1f} MB</td>"
                       f"<td>{html.escape(l.created_by[:80])}</td></tr>" for l in self.layers)
        return (f"<div><b>OCI image</b> <code>{self.digest}</code> ({self.size / 1e6:.1f} MB compressed)"
                f"<table>{rows}</table></div>")


# --- building ------------------------------------------------------------------------------------

def _iso(ts: float | datetime) -> str:
    if isinstance(ts, datetime):
        ts = ts.timestamp()
    return datetime.fromtimestamp(int(ts), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _source_date_epoch(default: float) -> int:
    v = os.environ.get("SOURCE_DATE_EPOCH")
    return int(v) if v and v.isdigit() else int(default)


def image_from_rootfs(rootfs: str | Path, *, home: Path | None = None, platform: str = DEFAULT_PLATFORM,
                      env: dict | None = None, cmd: list[str] | None = None, created: float = 0,
                      compresslevel: int = 6) -> OCIImage:
    """A one-layer image from a root file system directory (e.g. made by debootstrap).

    Owners, modes, device nodes and hard links are kept; /proc, /sys and /dev contents are not.
    """
    root = Path(rootfs)
    if not root.is_dir():
        raise InvalidInputError(f"Root file system {root} is not a directory.")
    store = blob_store(home)
    w = LayerWriter(store, mtime=int(created), compresslevel=compresslevel, created_by=f"rootfs {root.name}")
    try:
        w.add_tree(root, "", keep_owner=True, skip_names=(), skip_contents=("proc", "sys", "dev"))
        layer = w.close()
    except BaseException:
        w.abort()
        raise
    os_, arch = platform.split("/")[:2]
    config = {
        "created": _iso(created), "architecture": arch, "os": os_,
        "config": {"Env": [f"{k}={v}" for k, v in (env or {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}).items()],
                   "Cmd": cmd or ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        "history": [{"created": _iso(created), "created_by": layer.created_by}],
    }
    return OCIImage(config, [layer], store)


def image_from_store(config: dict, layers: list[dict], store: str | Path, *, ref: str | None = None) -> OCIImage:
    """An image whose config and layer blobs are already in ``store`` (as a pull leaves them).

    ``layers``: the manifest's layer descriptors (``mediaType``, ``digest``, ``size``), in order;
    ``config``: the parsed image config, whose ``rootfs.diff_ids`` pair with them.
    ``ref``: where it came from, pinned (``registry/repo:tag@sha256:...``).
    """
    store = Path(store)
    diff_ids = config.get("rootfs", {}).get("diff_ids", [])
    name = ref or "the image"
    if len(diff_ids) != len(layers):
        raise BundleError(f"Base image {name} has {len(layers)} layers but {len(diff_ids)} diff_ids.",
                          hint="Its config and manifest disagree; pick another base image.")
    out = []
    for desc, diff_id in zip(layers, diff_ids):
        mt = desc.get("mediaType", MT_OCI_LAYER_GZIP)
        if mt not in GZIP_LAYER_TYPES and mt != MT_OCI_LAYER_TAR:
            raise BundleError(f"Base image layer type {mt} is not supported.",
                              hint="Use a base image whose layers are tar or tar+gzip.")
        path = blob_path(store, desc["digest"])
        if not path.exists():
            raise NotFoundError(f"Layer {desc['digest'][:19]} of {name} is not in the blob store {store}.",
                                hint="Pull the image into this store first (nbdeploy.registry.pull).")
        out.append(Layer(desc["digest"], diff_id, desc["size"], path,
                         media_type=MT_OCI_LAYER_GZIP if mt in GZIP_LAYER_TYPES else mt))
    return OCIImage(config, out, store, ref=ref)


def bento_dir(bento) -> Path:
    """A bento tag (looked up in the BentoML store), a bento object, or a built bento directory."""
    if hasattr(bento, "path") and not isinstance(bento, (str, os.PathLike)):
        return Path(bento.path)
    p = Path(str(bento))
    if p.is_dir():
        if not (p / "bento.yaml").exists():
            raise InvalidInputError(f"{p} is not a built bento (no bento.yaml).",
                                    hint="Pass a bento tag like 'name:version' or a directory from the BentoML store.")
        return p
    try:
        import bentoml
        from bentoml.exceptions import NotFound
    except ImportError:  # pragma: no cover
        from .errors import missing

        raise missing("bentoml", why="to find the bento") from None
    try:
        return Path(bentoml.get(str(bento)).path)
    except NotFound:
        raise NotFoundError(f"Bento {bento!r} is not in the BentoML store.",
                            hint="List bundles with `bentoml list` or nbdeploy.list_bundles().") from None
    except Exception as exc:  # bad tag syntax etc.
        raise InvalidInputError(f"Cannot read bento {bento!r}: {exc}") from None


def _read_bento_yaml(d: Path) -> dict:
    import yaml

    try:
        return yaml.safe_load((d / "bento.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise BundleError(f"Cannot read {d / 'bento.yaml'}: {exc}") from None


def _pip_platform_args(platform: str, python_version: str) -> list[str]:
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.split("/")[1], platform.split("/")[1])
    plats = [f"manylinux_2_{i}_{arch}" for i in range(36, 16, -1)] + [f"manylinux2014_{arch}"]
    if arch == "x86_64":
        plats += ["manylinux2010_x86_64", "manylinux1_x86_64"]
    plats.append(f"linux_{arch}")
    nodot = python_version.replace(".", "")
    args = []
    for p in plats:
        args += ["--platform", p]
    return args + ["--python-version", python_version, "--implementation", "cp", "--abi", f"cp{nodot}",
                   "--abi", "abi3", "--abi", "none", "--only-binary=:all:"]


def _pip_errors(proc: subprocess.CompletedProcess) -> str:
    """pip's ERROR lines (or the end of its stderr), bounded."""
    tail = "\n".join(l for l in proc.stderr.splitlines() if l.startswith("ERROR"))[-1500:]
    return tail or proc.stderr[-1500:]


def _pip_install_target(requirements: Path, target: Path, platform: str, python_version: str,
                        pip_args: Iterable[str], find_links: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "install", "--target", str(target), "--no-compile",
           "--no-warn-script-location", "--disable-pip-version-check", "--no-input",
           *_pip_platform_args(platform, python_version), "-r", str(requirements), *pip_args]
    for d in find_links:
        cmd += ["--find-links", d]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def _is_pure_wheel(filename: str) -> bool:
    # name-version[-build]-python-abi-platform.whl; compressed tag sets use dots
    py, abi, plat = filename[:-len(".whl")].split("-")[-3:]
    return abi == "none" and plat == "any" and all(t.startswith("py") for t in py.split("."))


def _build_pure_wheels(requirements: Path, dest: Path, *, platform: str, python_version: str,
                       pip_args: Iterable[str], find_links: list[str]) -> bool:
    """Build ``py3-none-any`` wheels of the requirements that pip can only get as source.

    Finds them by resolving the requirements here (``pip install --dry-run --report``: the
    distributions whose download is not a wheel), builds them with ``pip wheel --no-deps`` and
    checks each result is pure Python.  Returns False when there is nothing to build (the
    first error then stands); raises :class:`BundleError` for a source distribution with
    native code, which cannot be built for the image's platform here.
    """
    pip = [sys.executable, "-m", "pip"]
    common = ["--disable-pip-version-check", "--no-input", *pip_args]
    for d in find_links:
        common += ["--find-links", d]
    with tempfile.TemporaryDirectory(prefix="nbdeploy-resolve-") as tmp:
        report = Path(tmp) / "report.json"
        proc = subprocess.run([*pip, "install", "--dry-run", "--ignore-installed", "--quiet", "--report",
                               str(report), "-r", str(requirements), *common],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not report.exists():
            log.info("resolving the requirements here failed too: %s", _pip_errors(proc))
            return False
        try:
            installs = json.loads(report.read_text()).get("install", [])
        except ValueError:
            return False
    sdists = sorted({(i["metadata"]["name"], i["metadata"]["version"]) for i in installs
                     if not str((i.get("download_info") or {}).get("url", "")).endswith(".whl")})
    if not sdists:
        return False
    dest.mkdir(parents=True, exist_ok=True)
    specs = [f"{n}=={v}" for n, v in sdists]
    log.info("building wheels of source-only packages for the image: %s", ", ".join(specs))
    proc = subprocess.run([*pip, "wheel", "--no-deps", "--wheel-dir", str(dest), *specs, *common],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BundleError(
            f"{', '.join(specs)} {'is' if len(specs) == 1 else 'are'} published only as source, and building "
            f"{'a wheel' if len(specs) == 1 else 'wheels'} from it here failed (pip exit {proc.returncode}).",
            hint=_pip_errors(proc) + "\nProvide a wheel for the image's platform: put it in a folder and "
                 "pass pip_args=['--find-links', FOLDER], or pin a version that publishes wheels.")

    def canon(name: str) -> str:
        return name.lower().replace("-", "_").replace(".", "_")

    native = sorted(f.name for f in dest.glob("*.whl") if not _is_pure_wheel(f.name))
    if native:
        by_name = {canon(n): f"{n} {v}" for n, v in sdists}
        names = ", ".join(by_name.get(canon(w.split("-")[0]), w.split("-")[0]) for w in native)
        raise BundleError(
            f"{names}: no wheel for {platform}, Python {python_version}, and the source distribution "
            f"contains native code (here it builds as {', '.join(native)}), so it cannot be installed "
            f"into the image.",
            hint=f"Build a wheel of it for {platform} (manylinux, cp{python_version.replace('.', '')}), e.g. "
                 "with cibuildwheel or `pip wheel` inside the base image, put it in a folder and pass "
                 "pip_args=['--find-links', FOLDER]; or pin a version that publishes such wheels, or "
                 "leave the package out of the bundle.")
    return True


def dependency_layer(requirements: Path, *, store: Path, home: Path, platform: str = DEFAULT_PLATFORM,
                     python_version: str = "3.11", find_links: Path | None = None,
                     pip_args: Iterable[str] = ()) -> tuple[Layer, bool]:
    """The dependency layer for a requirements file, from cache if possible. Returns (layer, cached)."""
    req = Path(requirements).read_bytes()
    key_src = {"format": LAYER_FORMAT, "requirements": hashlib.sha256(req).hexdigest(),
               "platform": platform, "python": python_version, "pip_args": list(pip_args)}
    if find_links and find_links.is_dir():
        key_src["wheels"] = sorted(f"{p.name}:{hashlib.sha256(p.read_bytes()).hexdigest()}"
                                   for p in find_links.iterdir() if p.is_file())
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()
    index_file = Path(home) / "cache" / "deps" / f"{key}.json"
    if index_file.exists():
        try:
            d = json.loads(index_file.read_text())
            path = blob_path(store, d["digest"])
            if path.exists() and path.stat().st_size == d["size"]:
                return Layer(d["digest"], d["diff_id"], d["size"], path, created_by=d["created_by"]), True
        except (ValueError, KeyError, OSError):
            pass
    with tempfile.TemporaryDirectory(prefix="nbdeploy-deps-") as tmp:
        target = Path(tmp) / "deps"
        links = [str(find_links)] if find_links and find_links.is_dir() else []
        t0 = time.perf_counter()
        proc = _pip_install_target(requirements, target, platform, python_version, pip_args, links)
        if proc.returncode != 0:
            # Pure-Python packages published only as source (lime) are built into
            # py3-none-any wheels here; anything with native code still needs a platform wheel.
            built = Path(tmp) / "built-wheels"
            if _build_pure_wheels(requirements, built, platform=platform, python_version=python_version,
                                  pip_args=pip_args, find_links=links):
                shutil.rmtree(target, ignore_errors=True)
                proc = _pip_install_target(requirements, target, platform, python_version, pip_args,
                                           links + [str(built)])
        if proc.returncode != 0:
            raise BundleError(
                f"Installing the bento's dependencies for {platform}, Python {python_version} failed "
                f"(pip exit {proc.returncode}).",
                hint=_pip_errors(proc) + "\nPackages with native code need a binary wheel for the image's "
                     "platform (manylinux, cp" + python_version.replace(".", "") + "); pure-Python source "
                     "distributions are built into wheels here.")
        log.info("pip install for the image took %.1f s", time.perf_counter() - t0)
        _fix_scripts(target / "bin")
        created_by = f"nbdeploy: pip install --target {DEPS_PATH} -r requirements.txt (sha256:{key_src['requirements'][:12]})"
        w = LayerWriter(store, created_by=created_by)
        try:
            w.add_parents(DEPS_PATH + "/x")
            w.add_tree(target, DEPS_PATH)
            layer = w.close()
        except BaseException:
            w.abort()
            raise
    index_file.parent.mkdir(parents=True, exist_ok=True)
    tmpf = index_file.with_suffix(".tmp")
    tmpf.write_text(json.dumps({"digest": layer.digest, "diff_id": layer.diff_id, "size": layer.size,
                                "created_by": created_by}))
    os.replace(tmpf, index_file)
    return layer, False


def _fix_scripts(bindir: Path) -> None:
    """pip --target writes the host's interpreter into console scripts; point them at the image's."""
    if not bindir.is_dir():
        return
    for p in bindir.iterdir():
        if not p.is_file():
            continue
        data = p.read_bytes()
        if data.startswith(b"#!") and b"python" in data.split(b"\n", 1)[0]:
            p.write_bytes(b"#!/usr/bin/env python3" + data[data.index(b"\n"):] if b"\n" in data else data)


def _bento_layer(bento_dir: Path, store: Path, tag: str) -> Layer:
    w = LayerWriter(store, created_by=f"nbdeploy: COPY bento {tag} {BENTO_PATH}")
    try:
        w.add_dir("home")
        # BENTOML_HOME must be writable by the (non-root) user the image runs as.
        w.add_dir(BENTOML_HOME, uid=BENTO_UID, gid=BENTO_UID)
        w.add_tree(bento_dir, BENTO_PATH)
        layer = w.close()
    except BaseException:
        w.abort()
        raise
    return layer


def _merge_env(base_env: list[str], extra: dict[str, str]) -> list[str]:
    env = dict(e.split("=", 1) if "=" in e else (e, "") for e in base_env)
    for k, v in extra.items():
        env[k] = v
    return [f"{k}={v}" for k, v in env.items()]


def build_image(bento, *, base: OCIImage | None, platform: str = DEFAULT_PLATFORM,
                python_version: str | None = None, home: str | Path | None = None, source: str | None = None,
                port: int = PORT, env: dict[str, str] | None = None, labels: dict[str, str] | None = None,
                pip_args: Iterable[str] = ()) -> OCIImage:
    """Build the OCI image of a bento without a daemon.

    ``bento``: a tag (``name:version``), a ``bentoml.Bento`` or a built bento directory.
    ``base``: an :class:`OCIImage` whose blobs are in the store (a pulled one:
    :func:`nbdeploy.publish.build` pulls a reference, then calls this), or None for an empty
    base (the image then needs its own Python).
    ``python_version``: the base image's Python, for which wheels are chosen; by default read
    from the base's ``PYTHON_VERSION`` env (official python images set it), else 3.11.
    """
    from ._version import __version__

    t_start = time.perf_counter()
    home = Path(home) if home else paths.home()
    store = blob_store(home)
    store.mkdir(parents=True, exist_ok=True)
    bdir = bento_dir(bento)
    meta = _read_bento_yaml(bdir)
    tag = f"{meta.get('name', bdir.parent.name)}:{meta.get('version', bdir.name)}"
    req = bdir / "env" / "python" / "requirements.txt"
    if not req.exists():
        raise BundleError(f"Bento {tag} has no env/python/requirements.txt.",
                          hint="Rebuild the bundle with a recent BentoML (it writes a requirements lock).")
    info: dict = {}

    # base
    t0 = time.perf_counter()
    base_ref = None
    if base is None:
        base_config: dict = {"architecture": platform.split("/")[1], "os": platform.split("/")[0],
                             "config": {}, "rootfs": {"type": "layers", "diff_ids": []}, "history": []}
        base_layers: list[Layer] = []
    elif isinstance(base, OCIImage):
        base_config, base_layers, base_ref = json.loads(base.config_bytes), list(base.layers), base.ref
    else:
        raise InvalidInputError("build_image takes the base as an OCIImage (or None for an empty base).",
                                expected="OCIImage or None", received=type(base).__name__,
                                hint="To build on an image reference, use nbdeploy.publish.build(bento, base=REF), "
                                     "which pulls it first.")
    info["base_seconds"] = round(time.perf_counter() - t0, 3)
    base_py = next((e.split("=", 1)[1] for e in (base_config.get("config") or {}).get("Env", [])
                    if e.startswith("PYTHON_VERSION=")), None)
    base_py = ".".join(base_py.split(".")[:2]) if base_py else None
    if python_version is None:
        python_version = base_py or "3.11"
    elif base_py and base_py != python_version:
        raise InvalidInputError(
            f"The base image has Python {base_py} but python_version={python_version!r} was asked for.",
            hint="Leave python_version unset to follow the base image, or pick a matching base.")
    info["python_version"] = python_version

    # dependencies
    t0 = time.perf_counter()
    wheels = bdir / "env" / "python" / "wheels"
    deps, cached = dependency_layer(req, store=store, home=home, platform=platform, python_version=python_version,
                                    find_links=wheels if wheels.is_dir() else None, pip_args=pip_args)
    info["deps_cached"] = cached
    info["deps_seconds"] = round(time.perf_counter() - t0, 3)

    # the bento
    t0 = time.perf_counter()
    bento_layer = _bento_layer(bdir, store, tag)
    info["bento_seconds"] = round(time.perf_counter() - t0, 3)

    created_ts = _source_date_epoch(_bento_created(meta))
    created = _iso(created_ts)
    bcfg = dict(base_config.get("config") or {})
    base_path = next((e.split("=", 1)[1] for e in bcfg.get("Env", []) if e.startswith("PATH=")),
                     "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    image_env = {
        "PATH": f"{DEPS_PATH}/bin:{base_path}",
        "PYTHONPATH": DEPS_PATH,
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": BENTOML_HOME,
        "BENTOML_HOME": BENTOML_HOME,
        "BENTO_PATH": BENTO_PATH,
        "BENTOML_CONTAINERIZED": "true",
        "BENTOML_HOST": "0.0.0.0",
        "BENTOML_PORT": str(port),
        **(env or {}),
    }
    all_labels = dict(bcfg.get("Labels") or {})
    all_labels.update({
        "org.opencontainers.image.title": str(meta.get("name", "")),
        "org.opencontainers.image.version": str(meta.get("version", "")),
        "org.opencontainers.image.created": created,
        "ai.nbdeploy.version": __version__,
        "ai.nbdeploy.bento": tag,
        "ai.nbdeploy.bentoml-version": str(meta.get("bentoml_version", "")),
    })
    if source:
        all_labels["org.opencontainers.image.source"] = source
    if base_ref:
        all_labels["org.opencontainers.image.base.name"] = base_ref.split("@")[0]
        all_labels["org.opencontainers.image.base.digest"] = base_ref.split("@")[1]
    all_labels.update(labels or {})
    bcfg.update({
        "Env": _merge_env(bcfg.get("Env", []), image_env),
        "Entrypoint": ["python3", "-m", "bentoml", "serve", BENTO_PATH],
        "Cmd": [],
        "ExposedPorts": {f"{port}/tcp": {}},
        "WorkingDir": BENTO_PATH,
        "User": f"{BENTO_UID}:{BENTO_UID}",
        "Labels": dict(sorted(all_labels.items())),
    })
    layers = base_layers + [deps, bento_layer]
    history = list(base_config.get("history") or [])
    history += [{"created": created, "created_by": deps.created_by},
                {"created": created, "created_by": bento_layer.created_by}]
    config = {
        "created": created,
        "architecture": platform.split("/")[1],
        "os": platform.split("/")[0],
        "config": bcfg,
        "rootfs": {"type": "layers", "diff_ids": [l.diff_id for l in layers]},
        "history": history,
    }
    if len(platform.split("/")) > 2:
        config["variant"] = platform.split("/")[2]
    annotations = {k: v for k, v in all_labels.items() if k.startswith("org.opencontainers.image.")}
    info["build_seconds"] = round(time.perf_counter() - t_start, 3)
    return OCIImage(config, layers, store, base_ref=base_ref,
                    base_layer_digests=tuple(l.digest for l in base_layers),
                    annotations=annotations, info=info)


def _bento_created(meta: dict) -> float:
    ct = meta.get("creation_time")
    if isinstance(ct, datetime):
        return ct.timestamp()
    if isinstance(ct, str):
        try:
            return datetime.fromisoformat(ct.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return 0.0
