"""No pickle anywhere: a built bundle holds no pickled bytes, and a served bundle never
unpickles what a client sends (BentoML CVE-2024-2912 / CVE-2025-27520 class of bugs).

BentoML 1.4 unpickles request bodies in ``_bentoml_impl.serde.PickleSerde`` when a
``@bentoml.api`` endpoint gets ``Content-Type: application/vnd.bentoml+pickle`` (with an
optional ``buffer-lengths`` header for out-of-band buffers); the multipart serde can carry
such parts too.  nbdeploy's service has no ``@bentoml.api`` endpoint at all (its routes are a
mounted Starlette app that takes JSON only), and these tests prove no route unpickles.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

import nbdeploy

pytestmark = pytest.mark.slow

PICKLE_EXTENSIONS = {".pkl", ".pickle", ".joblib", ".jbl", ".cloudpickle", ".dill", ".sav",
                     ".pt", ".pth", ".ckpt", ".bin", ".p"}
PICKLE_IMPORT = re.compile(r"^\s*(import|from)\s+(pickle|_pickle|cPickle|joblib|cloudpickle|dill|"
                           r"torch)\b", re.M)
UNSAFE_CALL = re.compile(r"\b(pickle\.loads?|joblib\.load|cloudpickle\.loads?|torch\.load|"
                         r"pd\.read_pickle|pandas\.read_pickle)\s*\(")


# -- a bundle with every artifact kind (ONNX, JSON, npy/npz explain arrays, PNG plots) --------
@pytest.fixture(scope="module")
def full_bundle(rf_model, breast_cancer):
    _, X_test, _, y_test = breast_cancer
    return nbdeploy.deploy(rf_model, X_test.iloc[:120], labels=y_test.iloc[:120], name="sec-pickle",
                           explain="shap,lime", quantize="none", benchmark_budget_s=2)


@pytest.fixture(scope="module")
def served(full_bundle):
    server = full_bundle.serve()
    yield full_bundle, server
    server.stop()


def _stdlib_loads_as_pickle(data: bytes) -> bool:
    """Protocol 0/1 pickles have no magic bytes: ask the stdlib's own disassembler whether
    the bytes form a complete pickle (it checks opcodes, arguments and the stack)."""
    import pickletools

    try:
        pickletools.dis(data, out=io.StringIO())
        return True
    except Exception as exc:
        return "after STOP" in str(exc)     # a complete pickle with extra stack items


def _pickle_findings(name: str, data: bytes) -> list[str]:
    """Why ``data`` (the content of a file called ``name``) looks like pickle; [] if clean."""
    found = []
    suffix = Path(name).suffix.lower()
    if suffix in PICKLE_EXTENSIONS:
        found.append(f"{name}: pickle-style extension {suffix}")
    # Protocol 2..5 pickles start with PROTO (\x80) + version; protocol 4/5 add a FRAME (\x95).
    if re.match(rb"\x80[\x02-\x05]", data[:2]):
        found.append(f"{name}: starts with pickle protocol magic {data[:2]!r}")
    if re.search(rb"\x80[\x04\x05]\x95", data):
        found.append(f"{name}: contains a protocol-4/5 pickle frame")
    if _stdlib_loads_as_pickle(data):
        found.append(f"{name}: the stdlib's pickletools reads it as a complete pickle")
    if suffix == ".npy" or data[:6] == b"\x93NUMPY":
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
            if arr.dtype.hasobject:
                found.append(f"{name}: object-dtype npy (pickled)")
        except ValueError as exc:
            found.append(f"{name}: npy needs pickle ({exc})")
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            for member in z.namelist():
                found += _pickle_findings(f"{name}!{member}", z.read(member))
    if suffix == ".py":
        text = data.decode("utf-8", errors="replace")
        for m in PICKLE_IMPORT.finditer(text):
            found.append(f"{name}: imports {m.group(2)}")
        for m in UNSAFE_CALL.finditer(text):
            found.append(f"{name}: calls {m.group(1)}")
        for line in text.splitlines():
            if "np.load(" in line and "allow_pickle=False" not in line:
                found.append(f"{name}: np.load without allow_pickle=False: {line.strip()}")
    return found


def test_scanner_catches_pickle(tmp_path):
    """The scanner itself: pickles of every protocol, joblib-style files, object npy, zips."""
    for proto in (0, 1, 2, 3, 4, 5):
        assert _pickle_findings("x.dat", pickle.dumps({"a": 1}, protocol=proto)), proto
    assert _pickle_findings("model.joblib", b"anything")
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert _pickle_findings("arr.npy", buf.getvalue())
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps([1, 2], protocol=2))
    assert _pickle_findings("model.pt", zbuf.getvalue())
    assert _pickle_findings("service.py", b"import joblib\nm = joblib.load('m')\n")
    assert _pickle_findings("service.py", b"x = np.load(p)\n")
    clean = io.BytesIO()
    np.save(clean, np.zeros(3), allow_pickle=False)
    assert _pickle_findings("bg.npy", clean.getvalue()) == []


def test_bundle_contains_no_pickle(full_bundle):
    root = Path(full_bundle.path)
    files = [p for p in root.rglob("*") if p.is_file()]
    names = {p.relative_to(root).as_posix() for p in files}
    # the scan covers real artifacts, not an empty folder
    assert "src/model/model.onnx" in names and "src/service.py" in names
    assert any(n.startswith("src/model/explain/") for n in names), sorted(names)
    findings = []
    for p in files:
        findings += _pickle_findings(p.relative_to(root).as_posix(), p.read_bytes())
    assert findings == []
    # nothing the bundle installs pulls a pickle-based model loader in either
    reqs = (root / "src" / "requirements.txt").read_text().lower()
    for dist in ("joblib", "cloudpickle", "dill", "torch"):
        assert not re.search(rf"^{dist}\b", reqs, re.M), reqs


def test_import_check_finds_pickles_by_content(full_bundle, tmp_path):
    """nbdeploy's import check (nbdeploy.archive.pickle_reason) against the scanner above:
    every pickle the scanner finds, under any name and protocol, in .npy headers of any
    length and inside zips, is found; no file of a real bundle is."""
    from nbdeploy.archive import pickle_reason

    root = Path(full_bundle.path)
    for p in root.rglob("*"):
        if p.is_file():
            assert pickle_reason(p) is None, p
    cases = {}
    for proto in range(6):
        cases[f"p{proto}.json"] = pickle.dumps(_OpenMarker(tmp_path / "M"), protocol=proto)
        cases[f"plain{proto}.bin"] = pickle.dumps({"w": [1.0, 2.0]}, protocol=proto)
    cases["extra-stack.dat"] = b"N" + pickle.dumps(_OpenMarker(tmp_path / "M"), protocol=0)
    header = "{" + " " * 6000 + "'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    header += " " * (-(10 + len(header) + 1) % 64) + "\n"
    cases["long.npy"] = (b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little")
                         + header.encode("latin1") + pickle.dumps([None], protocol=2))
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("arr_0.npy", cases["long.npy"])
        z.writestr("data.txt", cases["p0.json"])
    cases["trees.npz"] = zbuf.getvalue()
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        assert _pickle_findings(name, data), name          # the scanner above agrees
        assert pickle_reason(tmp_path / name), name
    assert not (tmp_path / "M").exists()


# -- the served bundle never unpickles ----------------------------------------------------------
class _WriteMarker:
    """Unpickling this runs ``os.system('touch MARKER')``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _OpenMarker:
    """Unpickling this runs ``open(MARKER, 'w')`` (no shell needed)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _raw(method: str, url: str, data: bytes, headers: dict, timeout: float = 20.0,
         redirects: int = 2) -> int:
    """Status of one request; a 307/308 redirect (e.g. '/predict/' -> '/predict') is followed
    with the same method and body, the way a client would replay it."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        e.read()
        location = e.headers.get("Location")
        if e.code in (307, 308) and location and redirects:
            target = urllib.parse.urljoin(url, location)
            assert target.startswith(url.split("/", 3)[0] + "//" + url.split("/", 3)[2] + "/"), target
            return _raw(method, target, data, headers, timeout, redirects - 1)
        return e.code


def _multipart(boundary: str, payload: bytes) -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"inputs\"; filename=\"x.pkl\"\r\n"
            f"Content-Type: application/vnd.bentoml+pickle\r\n\r\n").encode() + payload + \
           f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"method\"\r\n\r\nshap\r\n" \
           f"--{boundary}--\r\n".encode()


def _routes(base: str) -> list[str]:
    """Every route the served bundle answers: nbdeploy's OpenAPI paths, BentoML's schema
    paths and BentoML's own endpoints."""
    routes = {"/", "/predict", "/explain", "/metadata", "/drift", "/plots", "/plots/x.png",
              "/nbdeploy/openapi.json", "/livez", "/readyz", "/healthz", "/metrics",
              "/schema.json", "/docs.json", "/static_content/index.css", "/predict/", "//predict"}
    for doc in ("/nbdeploy/openapi.json", "/schema.json", "/docs.json"):
        with urllib.request.urlopen(base + doc, timeout=20) as r:
            paths = json.loads(r.read()).get("paths") or {}
        routes |= {p.replace("{name}", "benchmark_latency.png") for p in paths}
    return sorted(routes)


def test_served_bundle_never_unpickles(served, tmp_path):
    d, server = served
    base = server.url
    routes = _routes(base)
    assert {"/predict", "/explain", "/metrics", "/schema.json"} <= set(routes)
    markers = []
    attempts = []
    for i, cls in enumerate((_WriteMarker, _OpenMarker)):
        marker = tmp_path / f"PWNED-{i}"
        markers.append(marker)
        payload = pickle.dumps({"inputs": cls(marker)}, protocol=5)
        bare = pickle.dumps(cls(marker), protocol=2)
        variants = [
            (payload, {"Content-Type": "application/vnd.bentoml+pickle"}),
            (payload, {"Content-Type": "application/vnd.bentoml+pickle",
                       "buffer-lengths": str(len(payload))}),
            (bare, {"Content-Type": "APPLICATION/VND.BENTOML+PICKLE; charset=utf-8"}),
            (payload, {"Content-Type": " application/vnd.bentoml+pickle ",
                       "X-BentoML-Request-ID": "1", "Payload-Metadata": "{}"}),
            (payload, {"Content-Type": "application/octet-stream", "buffer-lengths": str(len(payload))}),
            (payload, {"Content-Type": "application/json", "buffer-lengths": str(len(payload))}),
            (payload, {"Content-Type": "application/x-www-form-urlencoded"}),
            (_multipart("nbdXYZ", payload), {"Content-Type": "multipart/form-data; boundary=nbdXYZ"}),
            (payload, {}),  # no content type at all
        ]
        for route in routes:
            for method in ("POST", "PUT"):
                for data, headers in variants:
                    status = _raw(method, base + route, data, headers)
                    attempts.append((method, route, headers.get("Content-Type"), status))
    time.sleep(1.0)  # give any (wrongly) spawned shell time to run
    assert [m for m in markers if m.exists()] == []
    # every pickle-bearing request got a 4xx: never a 2xx (accepted) nor a 5xx (tried and crashed)
    bad = [a for a in attempts if not 400 <= a[3] < 500]
    assert bad == [], bad[:10]
    # the model routes say why: JSON only
    preds = {a[3] for a in attempts if a[1] == "/predict" and a[0] == "POST"
             and a[2] and "pickle" in a[2].lower()}
    assert preds == {415}, preds
    # and the server is still fine
    with urllib.request.urlopen(base + "/readyz", timeout=10) as r:
        assert r.status == 200


def test_pickle_rejection_body_names_json(served, tmp_path):
    _, server = served
    marker = tmp_path / "PWNED"
    req = urllib.request.Request(server.url + "/explain", data=pickle.dumps(_OpenMarker(marker)),
                                 method="POST",
                                 headers={"Content-Type": "application/vnd.bentoml+pickle"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=20)
    assert info.value.code == 415
    body = json.loads(info.value.read())
    assert body["expected"] == "application/json"
    assert "JSON" in body["message"]
    assert not marker.exists()
