"""Hostile bundle archives (issue 15): each one is built here from a genuine export of a bundle
deployed with default options, and `nbdeploy import` must refuse it with nothing written
outside a private temporary folder and the BentoML store unchanged.

The attacker is assumed to know the format: wherever it helps the attack, the archive's
manifest is recomputed to match the tampered files (it is not signed), so the refusal must
come from the real check, not from a stale hash."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import lzma
import os
import pickle
import pickletools
import secrets
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

import nbdeploy
from nbdeploy.archive import import_bundle, inspect_archive
from nbdeploy.errors import InvalidInputError
from nbdeploy.portability import check_bundle

MANIFEST = "nbdeploy-manifest.json"


# ---------------------------------------------------------------------------------------------
# the genuine bundle: a LogisticRegression deployed and exported with default options
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base(breast_cancer, tmp_path_factory):
    from sklearn.linear_model import LogisticRegression

    X_train, X_test, y_train, y_test = breast_cancer
    model = LogisticRegression(max_iter=5000).fit(X_train, y_train)
    d = nbdeploy.deploy(model, X_test, labels=y_test, name="hostile-base")
    archive = d.export(str(tmp_path_factory.mktemp("base") / "base.bento"))
    d.native_model = model
    return d, Path(archive)


def _norm(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def _members(archive: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """Our own genuine export, read with the stdlib (trusted here: we just wrote it)."""
    out = []
    with tarfile.open(archive, "r:*") as tar:
        for m in tar:
            out.append((m, tar.extractfile(m).read() if m.isfile() else None))
    return out


def _get(members, name: str) -> bytes:
    return next(d for m, d in members if _norm(m.name) == name)


def _replace(members, name: str, data: bytes) -> list:
    out, found = [], False
    for m, d in members:
        if _norm(m.name) == name:
            m = _file(m.name, data)[0]
            d, found = data, True
        out.append((m, d))
    assert found, name
    return out


def _file(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def _retag(members, suffix: str) -> list:
    """A new version, so that an accepted import does not clash with the genuine bundle."""
    text = _get(members, "bento.yaml").decode()
    version = next(ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("version:"))
    return _replace(members, "bento.yaml", text.replace(f"version: {version}",
                                                        f"version: {version}-{suffix}").encode())


def _with_manifest(members) -> list:
    """Recompute the manifest the way an attacker would: from the files as they are now."""
    man = json.loads(_get(members, MANIFEST))
    yaml_text = _get(members, "bento.yaml").decode()
    fields = dict(ln.split(":", 1) for ln in yaml_text.splitlines() if ln.startswith(("name:", "version:")))
    man["tag"] = f"{fields['name'].strip()}:{fields['version'].strip()}"
    man["files"] = {_norm(m.name): {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
                    for m, d in members
                    if m.isfile() and _norm(m.name) not in (MANIFEST, "nbdeploy-manifest.sig")}
    return _replace(members, MANIFEST, json.dumps(man).encode())


def _tar_bytes(members, *, end_marker: bool = True) -> bytes:
    buf = io.BytesIO()
    tar = tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT)
    for info, data in members:
        tar.addfile(info, io.BytesIO(data) if data is not None else None)
    if not end_marker:
        return buf.getvalue()[:tar.offset]      # members only: a tar that runs on into the next
    tar.close()
    return buf.getvalue()


def _write(path: Path, members, mode: str = "xz") -> Path:
    raw = _tar_bytes(members)
    path.write_bytes({"xz": lzma.compress, "gz": gzip.compress, "tar": bytes}[mode](raw))
    return path


def _tree(folder: Path) -> set[str]:
    return {str(p) for p in folder.rglob("*")} if folder.is_dir() else set()


@contextlib.contextmanager
def _nothing_written(tmp_path: Path):
    """Nothing new in tmp_path (where the attacks aim), in the BentoML store (bentos and
    models) or in the import's staging folder next to it, and no temporary folder left (a
    private temp dir, since other test runs share the system's).  Yields that temp dir."""
    import bentoml
    from bentoml._internal.configuration.containers import BentoMLContainer

    home = Path(BentoMLContainer.bentoml_home.get())
    tags = {str(b.tag) for b in bentoml.bentos.list()}
    staging = home / ".nbdeploy-staging"            # where import unpacks, next to the store
    before = _tree(tmp_path), _tree(home / "bentos"), _tree(home / "models"), _tree(staging)
    private = Path(tempfile.mkdtemp(prefix="hostile-tmp-"))
    saved, tempfile.tempdir = tempfile.tempdir, str(private)
    try:
        yield private
    finally:
        tempfile.tempdir = saved
    assert (_tree(tmp_path), _tree(home / "bentos"), _tree(home / "models"), _tree(staging)) == before
    assert {str(b.tag) for b in bentoml.bentos.list()} == tags
    assert list(private.iterdir()) == []
    private.rmdir()


def _refused(archive: Path, tmp_path: Path, *words: str, trust: bool = False) -> InvalidInputError:
    with _nothing_written(tmp_path), pytest.raises(InvalidInputError) as e:
        import_bundle(archive, trust=trust)
    for w in words:
        assert w in e.value.message, (w, e.value.message)
    assert e.value.hint
    return e.value


class _Marker:
    """Unpickling this creates a marker file (no shell needed)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


# ---------------------------------------------------------------------------------------------
# issue 14: a default bundle exports and imports
# ---------------------------------------------------------------------------------------------
def test_default_logistic_regression_bundle_exports_imports_and_serves_natively(base, breast_cancer):
    import bentoml
    from conftest import http

    d, archive = base
    root = Path(d.path)
    # the two things the old check refused on: BentoML's own Dockerfile names a path inside
    # the image, and a model-agnostic explainer needs no shap
    assert "/tmp/" in (root / "env" / "docker" / "Dockerfile").read_text()
    cfg = json.loads((root / "src" / "model" / "explain" / "explain_config.json").read_text())
    reqs = (root / "env" / "python" / "requirements.txt").read_text().lower().split()
    assert cfg["kind"] != "tree" and not [r for r in reqs if r.startswith("shap==")]
    assert check_bundle(d.tag) == []
    assert archive.is_file()
    bentoml.bentos.delete(d.tag)
    assert import_bundle(archive) == d.tag
    # the imported bundle serves what the native scikit-learn model predicts
    _, X_test, _, _ = breast_cancer
    server = d.serve()
    try:
        rows = X_test.iloc[:20]
        status, body = http("POST", server.url + "/predict", {"inputs": rows.to_numpy().tolist()})
        assert status == 200, body
        np.testing.assert_allclose(body["probabilities"], d.native_model.predict_proba(rows), atol=1e-5)
        assert body["predictions"] == d.native_model.predict(rows).tolist()
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------
# hidden second compressed stream
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["gz", "xz"])
@pytest.mark.parametrize("end_marker", [True, False], ids=["after-end-marker", "seamless"])
def test_multi_stream_archive_cannot_hide_members(base, tmp_path, fmt, end_marker):
    _, archive = base
    members = _members(archive)
    evil_service = b"open(" + repr(str(tmp_path / "PWNED")).encode() + b", 'w')\n" + \
        _get(members, "src/service.py")
    first = _tar_bytes(members, end_marker=end_marker)
    second = _tar_bytes([_file("./src/service.py", evil_service)])
    comp = {"gz": gzip.compress, "xz": lzma.compress}[fmt]
    evil = tmp_path / f"evil.{'tar.gz' if fmt == 'gz' else 'bento'}"
    evil.write_bytes(comp(first) + comp(second))
    # the attack is real: a one-stream reader sees one service.py, the stdlib's random-access
    # reader (what used to unpack) sees the hidden one when the first tar runs on
    with tarfile.open(evil, "r|*") as t:
        assert [n for n in t.getnames() if _norm(n) == "src/service.py"] == ["./src/service.py"]
    with tarfile.open(evil, "r:*") as t:
        copies = [n for n in t.getnames() if _norm(n) == "src/service.py"]
    assert len(copies) == (1 if end_marker else 2)
    words = ("after the tar's end-of-archive marker",) if end_marker else ("src/service.py", "appears twice")
    _refused(evil, tmp_path, *words)
    assert not (tmp_path / "PWNED").exists()


# ---------------------------------------------------------------------------------------------
# CVE-2025-4517: a symlink chain past PATH_MAX that fools tarfile's 'data' filter
# ---------------------------------------------------------------------------------------------
def _link_chain(victim: Path, dest: Path) -> list:
    """The published proof of concept: lexically every link stays inside ``dest``; really,
    'l' (past PATH_MAX, so realpath gives up) points back at ``dest`` and 'escape' walks
    from there to the victim, which 'flaglink' then overwrites."""
    comp, steps, path, out = "d" * 247, "abcdefghijklmnop", "", []
    for s in steps:
        a = tarfile.TarInfo(os.path.join(path, comp))
        a.type, a.mode = tarfile.DIRTYPE, 0o755
        b = tarfile.TarInfo(os.path.join(path, s))
        b.type, b.linkname = tarfile.SYMTYPE, comp
        out += [(a, None), (b, None)]
        path = os.path.join(path, comp)
    linkpath = os.path.join(*steps, "l" * 254)
    link = tarfile.TarInfo(linkpath)
    link.type, link.linkname = tarfile.SYMTYPE, "../" * len(steps)
    esc = tarfile.TarInfo("escape")
    esc.type, esc.linkname = tarfile.SYMTYPE, linkpath + "/" + os.path.relpath(victim, dest)
    hard = tarfile.TarInfo("flaglink")
    hard.type, hard.linkname = tarfile.LNKTYPE, "escape"
    return out + [(link, None), (esc, None), (hard, None), _file("flaglink", b"PWNED")]


def test_cve_2025_4517_link_chain_is_refused(base, tmp_path):
    _, archive = base
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("original")
    if sys.version_info < (3, 11, 13):
        # the attack is real on this Python: tarfile's own 'data' filter writes through it
        scratch = tmp_path / "scratch" / "x"
        scratch.mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(_tar_bytes(_link_chain(victim, scratch)))) as t:
            with contextlib.suppress(tarfile.TarError, OSError):
                t.extractall(scratch, filter="data")
        assert victim.read_text() == "PWNED"
        victim.write_text("original")
        import shutil

        shutil.rmtree(tmp_path / "scratch")
    # aimed at where nbdeploy unpacks: <temp dir>/nbdeploy-import-*/bento
    chain = _link_chain(victim, Path(tempfile.gettempdir()) / "nbdeploy-import-x" / "bento")
    evil = _write(tmp_path / "chain.bento", _members(archive) + chain)
    err = _refused(evil, tmp_path, "is a symbolic link", "never contain links")
    assert "d" * 247 in err.message or "'a'" in err.message
    assert victim.read_text() == "original"


# ---------------------------------------------------------------------------------------------
# BentoML's global model store
# ---------------------------------------------------------------------------------------------
def test_models_folder_is_refused(base, tmp_path):
    _, archive = base
    members = _members(archive) + [
        _file("./models/victim/99990101-evil/model.yaml", b"name: victim\nversion: 99990101-evil\n"),
        _file("./models/victim/99990101-evil/saved_model.pkl", b"weights"),
        _file("./models/victim/latest", b"99990101-evil")]
    evil = _write(tmp_path / "models.bento", _with_manifest(members))
    err = _refused(evil, tmp_path, "models/victim/99990101-evil/model.yaml", "global model store")
    assert "more problem" in err.message


def test_files_outside_the_layout_and_tampered_files_are_refused(base, tmp_path):
    _, archive = base
    members = _members(archive)
    extra = _with_manifest(members + [_file("./src/sitecustomize.py", b"print('hi')\n")])
    _refused(_write(tmp_path / "extra.bento", extra), tmp_path, "src/sitecustomize.py",
             "not part of the layout")
    wheel = _with_manifest(members + [_file("./env/python/wheels/evil-1.0-py3-none-any.whl", b"PK")])
    _refused(_write(tmp_path / "wheel.bento", wheel), tmp_path, "env/python/wheels/", "layout")
    # changed after export, manifest left as it was
    onnx = _get(members, "src/model/model.onnx")
    stale = _replace(members, "src/model/model.onnx", onnx[:-1] + bytes([onnx[-1] ^ 1]))
    _refused(_write(tmp_path / "stale.bento", stale), tmp_path, "src/model/model.onnx", "SHA-256")
    # no manifest at all: not written by `nbdeploy export`
    bare = [(m, d) for m, d in members if _norm(m.name) != MANIFEST]
    _refused(_write(tmp_path / "bare.bento", bare), tmp_path, MANIFEST)
    # requirement lines that send pip elsewhere
    req = _get(members, "env/python/requirements.txt")
    idx = _with_manifest(_replace(members, "env/python/requirements.txt",
                                  b"--extra-index-url http://127.0.0.1:1/simple\n" + req))
    _refused(_write(tmp_path / "req.bento", idx), tmp_path, "env/python/requirements.txt",
             "extra-index-url")


# ---------------------------------------------------------------------------------------------
# code that `bentoml serve` would run
# ---------------------------------------------------------------------------------------------
def test_modified_service_is_refused_unless_trusted(base, tmp_path, capsys):
    import bentoml

    from nbdeploy.cli import main

    d, archive = base
    marker = tmp_path / "RAN"
    members = _members(archive)
    service = _get(members, "src/service.py")
    evil = _with_manifest(_retag(_replace(
        members, "src/service.py", f"open({str(marker)!r}, 'w').close()\n".encode() + service),
        "trusted"))
    path = _write(tmp_path / "service.bento", evil)
    err = _refused(path, tmp_path, "src/service.py", "line 1", "found \"open(")
    assert "src/service.py" in err.received and "--trust" in err.hint
    # the CLI says the same and exits 2
    with _nothing_written(tmp_path):
        assert main(["import", str(path)]) == 2
    assert "src/service.py" in capsys.readouterr().err
    # a changed runtime module is named too
    rt = _with_manifest(_replace(members, "src/nbdeploy_runtime/model.py",
                                 _get(members, "src/nbdeploy_runtime/model.py") + b"\nimport os\n"))
    _refused(_write(tmp_path / "runtime.bento", rt), tmp_path, "src/nbdeploy_runtime/model.py")
    # trusted: imported as it is (and the warning says what differs)
    tag = f"{d.tag}-trusted"
    try:
        with pytest.warns(UserWarning, match="src/service.py"):
            assert main(["import", "--trust", str(path)]) == 0
        assert f"imported {tag}" in capsys.readouterr().out
        got = Path(bentoml.get(tag).path) / "src" / "service.py"
        assert got.read_bytes().startswith(b"open(")
        assert not (Path(bentoml.get(tag).path) / MANIFEST).exists()
        assert not marker.exists()               # importing never runs it
    finally:
        with contextlib.suppress(Exception):
            bentoml.bentos.delete(tag)


# ---------------------------------------------------------------------------------------------
# zip bomb: memory stays bounded
# ---------------------------------------------------------------------------------------------
def test_zip_bomb_is_refused_with_bounded_memory(base, tmp_path):
    _, archive = base
    bomb = tmp_path / "bomb.zip"
    size = 1024 ** 3
    name = "src/model/explain/trees.npz"     # a zip inside: the old check read it whole (+2 GiB)
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        for m, data in _members(archive):
            if m.isfile():
                z.writestr(_norm(m.name), data)
        with z.open(name, "w", force_zip64=True) as outer, \
                zipfile.ZipFile(outer, "w", zipfile.ZIP_STORED) as npz, \
                npz.open("arr_0.npy", "w", force_zip64=True) as f:
            block = bytes(1 << 20)
            for _ in range(size >> 20):
                f.write(block)
    assert bomb.stat().st_size < 8 * 1024 ** 2
    script = (
        "import json, resource, sys\n"
        "from nbdeploy.archive import import_bundle\n"
        "from nbdeploy.errors import InvalidInputError\n"
        "import yaml, numpy, bentoml\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    import_bundle(sys.argv[1]); msg = 'imported'\n"
        "except InvalidInputError as e:\n"
        "    msg = e.message\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps({'before_kib': before, 'after_kib': after, 'message': msg}))\n")
    with _nothing_written(tmp_path) as private:
        r = subprocess.run([sys.executable, "-c", script, str(bomb)], capture_output=True,
                           text=True, timeout=300, env=dict(os.environ, TMPDIR=str(private)))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    print("zip bomb: peak RSS before/after import (MiB):", out["before_kib"] >> 10, out["after_kib"] >> 10)
    assert name in out["message"] and "compression bomb" in out["message"]
    assert (out["after_kib"] - out["before_kib"]) < 64 * 1024, out


def test_tar_bomb_and_member_flood_are_refused_on_what_is_unpacked(base, tmp_path, monkeypatch):
    """Limits count the decompressed stream as it is written, not what headers declare."""
    import nbdeploy.archive as archive_mod

    _, archive = base
    members = _members(archive)
    bomb = tmp_path / "bomb.tar.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as gz, \
            tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if _norm(info.name) != "src/model/explain/background.npy":
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
        big = tarfile.TarInfo("./src/model/explain/background.npy")
        big.size = 512 * 1024 ** 2

        class Zeros(io.RawIOBase):
            left = big.size

            def readable(self):
                return True

            def readinto(self, b):
                n = min(len(b), self.left)
                b[:n] = bytes(n)
                self.left -= n
                return n

        tar.addfile(big, io.BufferedReader(Zeros()))
    assert bomb.stat().st_size < 4 * 1024 ** 2
    _refused(bomb, tmp_path, "src/model/explain/background.npy", "compression bomb")
    # a flood of members: the limit is checked as members arrive (lowered here to keep it quick)
    monkeypatch.setattr(archive_mod, "MAX_MEMBERS", len(members) + 5)
    flood = _write(tmp_path / "flood.bento",
                   members + [_file(f"./src/plots/p{i}.png", b"\x89PNG") for i in range(10)], "gz")
    _refused(flood, tmp_path, "past the limit of")


# ---------------------------------------------------------------------------------------------
# pickles judged by content
# ---------------------------------------------------------------------------------------------
def test_protocol_0_pickle_under_a_json_name_is_refused(base, tmp_path):
    _, archive = base
    marker = tmp_path / "UNPICKLED"
    payload = pickle.dumps(_Marker(str(marker)), protocol=0)
    assert not payload.startswith(b"\x80")                 # no protocol header to spot
    pickletools.dis(payload, out=io.StringIO())            # the stdlib: a complete pickle
    members = _with_manifest(_replace(_members(archive), "src/model/spec.json", payload))
    _refused(_write(tmp_path / "p0.bento", members), tmp_path, "src/model/spec.json", "is a pickle")
    assert not marker.exists()


def test_object_npy_with_a_header_past_4_kib_is_refused(base, tmp_path):
    _, archive = base
    header = "{" + " " * 5000 + "'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    header += " " * (-(10 + len(header) + 1) % 64) + "\n"
    body = pickle.dumps([{"a": 1}], protocol=2)
    npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode("latin1") + body
    # numpy reads this as an array of Python objects once it may read the long header
    f = io.BytesIO(npy)
    assert np.lib.format.read_magic(f) == (1, 0)
    shape, _, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=100_000)
    assert dtype.hasobject and shape == (1,) and len(header) > 4096
    name = "src/model/explain/background.npy"
    members = _with_manifest(_replace(_members(archive), name, npy))
    _refused(_write(tmp_path / "npy.bento", members), tmp_path, name, "Python objects")


def test_duplicate_member_names_are_refused(base, tmp_path):
    _, archive = base
    members = _members(archive)
    onnx = _get(members, "src/model/model.onnx")
    # the second copy would silently replace the first (and the manifest's hash) on extraction
    evil = _write(tmp_path / "dup.bento", members + [_file("src//model/./model.onnx", onnx[::-1])])
    _refused(evil, tmp_path, "src//model/./model.onnx", "appears twice")
    dup_zip = tmp_path / "dup.zip"
    with zipfile.ZipFile(dup_zip, "w") as z:
        for m, data in members:
            if m.isfile():
                z.writestr(_norm(m.name), data)
        z.writestr("./SRC/service.py", b"print('second')\n")   # a case-insensitive disk
    _refused(dup_zip, tmp_path, "SRC/service.py")


def test_genuine_archive_still_imports_in_every_format(base, tmp_path):
    """The control: what the tests above refuse is the attack, not the format."""
    import bentoml

    from nbdeploy.export import export_bundle

    d, archive = base
    for suffix in (".tar.gz", ".zip", ".tar"):
        out = export_bundle(d.tag, tmp_path / f"again{suffix}")
        names = inspect_archive(out)
        assert {"bento.yaml", "src/service.py", MANIFEST} <= set(names)
    members = _with_manifest(_retag(_members(archive), "control"))   # rebuilt, still genuine
    tag = f"{d.tag}-control"
    try:
        assert import_bundle(_write(tmp_path / "control.tar.gz", members, "gz")) == tag
    finally:
        with contextlib.suppress(Exception):
            bentoml.bentos.delete(tag)


# ---------------------------------------------------------------------------------------------
# optional Ed25519 signatures
# ---------------------------------------------------------------------------------------------
def _keypair(folder: Path, name: str) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    priv, pub = folder / f"{name}.pem", folder / f"{name}.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                  serialization.PublicFormat.OpenSSH))
    return priv, pub


def test_signed_export_and_trusted_keys(base, tmp_path, capsys):
    import bentoml
    from cryptography.hazmat.primitives import serialization

    from nbdeploy.cli import main

    d, _ = base
    keys = tmp_path.parent / f"{tmp_path.name}-keys"       # outside the watched folder
    keys.mkdir()
    ours, ours_pub = _keypair(keys, "ours")
    theirs, theirs_pub = _keypair(keys, "theirs")
    assert main(["export", d.tag, str(tmp_path / "signed.bento"), "--sign", str(ours)]) == 0
    capsys.readouterr()
    signed = tmp_path / "signed.bento"
    members = _members(signed)
    sig = json.loads(_get(members, "nbdeploy-manifest.sig"))
    # the signature verifies with the stdlib-independent library, over the manifest's bytes
    pub = serialization.load_ssh_public_key(ours_pub.read_bytes())
    import base64

    pub.verify(base64.b64decode(sig["signature"]), _get(members, MANIFEST))
    # trusted key configured: an unsigned archive, or one signed by another key, is refused
    unsigned = _write(tmp_path / "unsigned.bento", [(m, b) for m, b in members
                                                    if _norm(m.name) != "nbdeploy-manifest.sig"])
    with _nothing_written(tmp_path), pytest.raises(InvalidInputError, match="not signed"):
        import_bundle(unsigned, trusted_keys=[ours_pub])
    with _nothing_written(tmp_path), pytest.raises(InvalidInputError, match="not a trusted key"):
        import_bundle(signed, trusted_keys=[theirs_pub])
    # an attacker who changes service.py and recomputes the manifest cannot re-sign it
    evil = _with_manifest(_replace(members, "src/service.py",
                                   b"import os\n" + _get(members, "src/service.py")))
    resigned_path = _write(tmp_path / "resigned.bento", evil)
    with _nothing_written(tmp_path), pytest.raises(InvalidInputError, match="changed after signing"):
        import_bundle(resigned_path, trusted_keys=[ours_pub])
    # the genuine signed archive imports; a bundle with other code, signed by a trusted key,
    # is accepted without --trust (its author is known), and says what differs
    changed = _with_manifest(_retag(_replace(members, "src/service.py",
                                             b"# patched by the team\n" + b"import os\n"
                                             + _get(members, "src/service.py")), "signed"))
    man = _get(changed, MANIFEST)
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(ours.read_bytes(), password=None)
    resigned = json.dumps({"algorithm": "ed25519", "public_key": sig["public_key"],
                           "signature": base64.b64encode(key.sign(man)).decode()}).encode()
    changed = _replace(changed, "nbdeploy-manifest.sig", resigned)
    tag = f"{d.tag}-signed"
    try:
        with pytest.warns(UserWarning, match="signed by trusted key"):
            assert main(["import", str(_write(tmp_path / "team.bento", changed)),
                         "--trusted-key", str(ours_pub)]) == 0
        assert f"imported {tag}" in capsys.readouterr().out
    finally:
        with contextlib.suppress(Exception):
            bentoml.bentos.delete(tag)
    # without trusted keys the same archive is judged like any other: its code differs
    with _nothing_written(tmp_path), pytest.raises(InvalidInputError, match="src/service.py"):
        import_bundle(tmp_path / "team.bento")


def test_sparse_member_is_refused(tmp_path):
    """A pax sparse member: 10 KB of archive that tarfile would expand to 64 MiB of zeros."""
    src = tmp_path.parent / f"{tmp_path.name}-sparse"
    src.mkdir()
    (src / "bento.yaml").write_bytes(b"name: x\n")
    with open(src / "model.onnx", "wb") as f:
        f.seek(64 * 1024 ** 2)
        f.write(b"x")
    archive = tmp_path / "sparse.tar"
    subprocess.run(["tar", "--sparse", "--format=pax", "-cf", str(archive), "-C", str(src),
                    "bento.yaml", "model.onnx"], check=True)
    with tarfile.open(archive) as t:
        assert t.getmember("model.onnx").issparse()
    _refused(archive, tmp_path, "model.onnx", "sparse")


# ---------------------------------------------------------------------------------------------
# hostile archives (CVE-2026-27905 and friends), built member by member: refused,
# nothing written anywhere (moved from tests/unit/test_export.py)
# ---------------------------------------------------------------------------------------------
BENTO_YAML = (b"service: service:X\nname: evil\nversion: v1\nbentoml_version: 1.4.0\n"
              b"labels:\n  created-by: nbdeploy\n")


def _evil_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:xz") -> Path:
    with tarfile.open(path, mode) as tar:
        for info, data in [(tarfile.TarInfo("./bento.yaml"), BENTO_YAML)] + members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def _ti(name: str, kind=tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    t = tarfile.TarInfo(name)
    t.type, t.linkname, t.mode = kind, linkname, 0o644
    return t


def _hostile(case: str, token: str, outside: Path) -> tuple[list, str]:
    """Members for one attack and the member name the error must name."""
    esc = f"escape-{token}.txt"
    if case == "dotdot":
        return [(_ti(f"../{esc}"), b"x"), (_ti(f"src/../../../{esc}"), b"x")], f"../{esc}"
    if case == "absolute":
        return [(_ti(str(outside / esc)), b"x")], str(outside / esc)
    if case == "symlink-etc-passwd":
        return [(_ti("src/passwd", tarfile.SYMTYPE, "/etc/passwd"), None)], "src/passwd"
    if case == "symlink-outside-then-write-through":
        return [(_ti("src/out", tarfile.SYMTYPE, str(outside)), None),
                (_ti(f"src/out/{esc}"), b"x")], "src/out"
    if case == "symlink-relative-escape":
        return [(_ti("src/up", tarfile.SYMTYPE, "../../.."), None), (_ti(f"src/up/{esc}"), b"x")], "src/up"
    if case == "symlink-chain":
        return [(_ti("y", tarfile.SYMTYPE, "."), None), (_ti("x", tarfile.SYMTYPE, "y/.."), None),
                (_ti(f"x/{esc}"), b"x")], "'y'"
    if case == "hardlink-outside":
        return [(_ti("src/hl", tarfile.LNKTYPE, "/etc/passwd"), None)], "src/hl"
    if case == "device-file":
        return [(_ti("src/null", tarfile.CHRTYPE), None)], "src/null"
    if case == "pkl-file":
        return [(_ti("src/model/model.pkl"), pickle.dumps({"w": [1, 2]}))], "src/model/model.pkl"
    if case == "pickle-header-under-another-name":
        payload = pickle.dumps(_Marker(str(outside / f"pwned-{token}")), protocol=4)
        return [(_ti("src/model/weights.bin"), payload)], "src/model/weights.bin"
    if case == "joblib-file":
        return [(_ti("src/model/m.joblib"), b"\x80\x03}q\x00.")], "src/model/m.joblib"
    raise AssertionError(case)


HOSTILE = ["dotdot", "absolute", "symlink-etc-passwd", "symlink-outside-then-write-through",
           "symlink-relative-escape", "symlink-chain", "hardlink-outside", "device-file", "pkl-file",
           "pickle-header-under-another-name", "joblib-file"]


def _snapshot(*folders: Path) -> set[str]:
    out = set()
    for f in folders:
        out |= {str(p) for p in f.rglob("*")} if f.is_dir() else set()
    return out


def _store_tags() -> set[str]:
    import bentoml

    return {str(b.tag) for b in bentoml.bentos.list()}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_tar_is_refused_and_writes_nothing(case, tmp_path, monkeypatch):
    token = secrets.token_hex(4)
    outside, work = tmp_path / "outside", tmp_path / "work" / "a" / "b"
    outside.mkdir()
    work.mkdir(parents=True)
    monkeypatch.chdir(work)                   # relative escapes would land in tmp_path
    members, offender = _hostile(case, token, outside)
    evil = _evil_tar(tmp_path / "evil.bento", members)
    tags, before = _store_tags(), _snapshot(tmp_path)
    system_tmp = Path(tempfile.gettempdir())
    private = tmp_path.parent / f"private-tmp-{token}"      # other runs share the system's
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    with pytest.raises(InvalidInputError) as e:
        import_bundle(evil)
    assert offender in e.value.message, e.value.message
    assert "Refusing to import" in e.value.message and e.value.hint
    assert _snapshot(tmp_path) == before
    assert not any(token in p for p in _snapshot(tmp_path))
    assert not [p for p in system_tmp.glob(f"*{token}*") if p != private]
    assert list(private.iterdir()) == []                     # the import's folder is gone
    assert _store_tags() == tags


def test_hostile_zip_and_npy_are_refused(tmp_path):
    def z(name: str, data: bytes, *, symlink: bool = False) -> Path:
        p = tmp_path / f"{secrets.token_hex(3)}.zip"
        with zipfile.ZipFile(p, "w") as zf:
            zf.writestr("bento.yaml", BENTO_YAML)
            info = zipfile.ZipInfo(name)
            if symlink:
                info.external_attr = (0o120777 << 16)
            zf.writestr(info, data)
        return p

    dup = tmp_path / "dup.zip"
    with zipfile.ZipFile(dup, "w") as zf:
        zf.writestr("bento.yaml", BENTO_YAML)
        zf.writestr("src/service.py", b"print(1)")
        zf.writestr("./src/service.py", b"print(2)")
    with pytest.raises(InvalidInputError, match="appears twice"):
        import_bundle(dup)
    for archive, offender in [(z("../escape.txt", b"x"), "../escape.txt"),
                              (z("/abs/escape.txt", b"x"), "/abs/escape.txt"),
                              (z("src/link", b"/etc/passwd", symlink=True), "src/link"),
                              (z("src/model/m.pickle", b"x"), "src/model/m.pickle")]:
        with pytest.raises(InvalidInputError, match="Refusing") as e:
            import_bundle(archive)
        assert offender in e.value.message
    buf = io.BytesIO()
    np.save(buf, np.array([object()], dtype=object), allow_pickle=True)
    npz = io.BytesIO()
    with zipfile.ZipFile(npz, "w") as zf:
        zf.writestr("arr_0.npy", buf.getvalue())
    for name, data in [("src/model/a.npy", buf.getvalue()), ("src/model/trees.npz", npz.getvalue())]:
        evil = _evil_tar(tmp_path / f"{secrets.token_hex(3)}.bento", [(_ti(name), data)])
        with pytest.raises(InvalidInputError, match="objects") as e:
            inspect_archive(evil)
        assert name in e.value.message
    assert not (tmp_path.parent / "escape.txt").exists()


def test_not_an_archive_or_not_ours(tmp_path):
    junk = tmp_path / "junk.bento"
    junk.write_bytes(b"not an archive at all")
    with pytest.raises(InvalidInputError, match="not a bundle archive"):
        import_bundle(junk)
    no_yaml = tmp_path / "noyaml.tar"
    with tarfile.open(no_yaml, "w") as tar:
        tar.addfile(_ti("hello.txt", tarfile.REGTYPE), io.BytesIO(b""))
    with pytest.raises(InvalidInputError, match="no bento.yaml"):
        import_bundle(no_yaml)
    theirs = tmp_path / "theirs.bento"
    with tarfile.open(theirs, "w:xz") as tar:
        data = BENTO_YAML.replace(b"created-by: nbdeploy", b"owner: someone")
        info = _ti("bento.yaml")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(InvalidInputError, match="not made by nbdeploy"):
        import_bundle(theirs)
