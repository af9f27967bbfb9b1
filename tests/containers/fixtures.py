"""Fixtures for the container tests: a real registry on loopback, a real base image, real bentos.

Registered for the whole suite by ``tests/conftest.py`` (``pytest_plugins``); test modules
import its helpers from ``containers.fixtures``. System tools (docker-registry, debootstrap, skopeo, umoci, htpasswd)
must be installed (``scripts/test.sh`` installs them); without them the tests skip locally and
fail under CI (``CI`` set to anything but ``false``/``0``/empty).

The debootstrap root file system is cached under ``$NBDEPLOY_TEST_CACHE`` (default
``/tmp/nbdeploy-test-cache``) so reruns skip the ≈40 s bootstrap.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("NBDEPLOY_TEST_CACHE", "/tmp/nbdeploy-test-cache"))
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")  # as conftest.ci_truthy


def need(condition: bool, reason: str) -> None:
    """Skip locally, fail under CI: CI installs every tool these tests need."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI must provide it; scripts/test.sh installs it)")
    pytest.skip(reason)


def need_cryptography(purpose: str) -> None:
    """The ``cryptography`` package, needed to ``purpose`` (a test dependency)."""
    try:
        import cryptography  # noqa: F401
    except ImportError:
        need(False, f"the 'cryptography' package is needed to {purpose} (pip install cryptography)")


def stop_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a process started with ``start_new_session=True`` and its children: SIGTERM to the
    group, SIGKILL if it is still there after ``timeout`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def need_tools(*names: str) -> None:
    missing = [n for n in names if not shutil.which(n)]
    need(not missing, f"missing system tools: {', '.join(missing)}")


def need_root() -> None:
    need(os.geteuid() == 0, "needs root (debootstrap, chroot, mount)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 20.0, ok=(200, 401), context=None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as r:
                if r.status in ok:
                    return
        except urllib.error.HTTPError as e:
            if e.code in ok:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout} s")
        time.sleep(0.1)


def make_tls_cert(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate (and key) for the IP address ``host``; it is its own CA."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "tls-cert.pem", directory / "tls-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class Registry:
    """Debian's docker-registry (Distribution) on 127.0.0.1:<free port>; can be killed and restarted.

    ``tls``: (certificate, key) to serve HTTPS; ``self.cert`` is then the CA clients trust and
    ``self.ssl_context`` an ``ssl.SSLContext`` that trusts it.
    """

    def __init__(self, root: Path, *, htpasswd: Path | None = None, tls: tuple[Path, Path] | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.log_path = self.root / "registry.log"
        self.proc: subprocess.Popen | None = None
        self.scheme, self.cert, self.ssl_context = "http", None, None
        auth = ""
        if htpasswd:
            auth = f"auth:\n  htpasswd:\n    realm: nbdeploy-test\n    path: {htpasswd}\n"
        tls_block = ""
        if tls:
            import ssl

            self.scheme, self.cert = "https", Path(tls[0])
            self.ssl_context = ssl.create_default_context(cafile=str(self.cert))
            tls_block = f"  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}\n"
        (self.root / "config.yml").write_text(textwrap.dedent(f"""\
            version: 0.1
            log:
              level: info
              accesslog:
                disabled: false
            storage:
              filesystem:
                rootdirectory: {self.root / 'data'}
              delete:
                enabled: true
            http:
              addr: {self.host}
            """) + tls_block + auth)

    def start(self) -> Registry:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(self.root / "config.yml")],
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=self.root)
        wait_http(f"{self.scheme}://{self.host}/v2/", context=self.ssl_context)
        return self

    def kill(self) -> None:
        """SIGKILL: the registry dies mid-request, as in a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def access_log(self) -> list[str]:
        """The access-log lines (``"METHOD URI HTTP/1.1" status ...``)."""
        return [l for l in self.log_path.read_text(errors="replace").splitlines() if '" ' in l and "HTTP/1.1" in l
                and not l.startswith("time=")]

    def count(self, method: str, contains: str = "") -> int:
        return sum(1 for l in self.access_log() if f'"{method} ' in l and contains in l)

    def manifest(self, repo: str, tag: str) -> tuple[str, dict]:
        """(digest, manifest) of ``repo:tag`` as the registry itself reports it (Docker-Content-Digest),
        read with a plain HTTP GET, after checking that the body hashes to that digest."""
        import hashlib

        req = urllib.request.Request(f"{self.scheme}://{self.host}/v2/{repo}/manifests/{tag}",
                                     headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        with urllib.request.urlopen(req, timeout=10, context=self.ssl_context) as r:
            assert r.status == 200
            digest, body = r.headers["Docker-Content-Digest"], r.read()
        assert digest == "sha256:" + hashlib.sha256(body).hexdigest()
        manifest = json.loads(body)
        assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
        return digest, manifest


def assert_pushed(registry: Registry, ref: str, digest: str, *, base: str) -> None:
    """``ref`` in ``registry`` points at ``digest`` (as the registry reports it), and the image's
    first layers are those of the base image ``base`` (also in ``registry``)."""
    repo, tag = ref.split("/", 1)[1].rsplit(":", 1)
    got, manifest = registry.manifest(repo, tag)
    assert got == digest, (ref, got, digest)
    base_repo, base_tag = base.split("/", 1)[1].rsplit(":", 1)
    _, base_manifest = registry.manifest(base_repo, base_tag)
    base_layers = [l["digest"] for l in base_manifest["layers"]]
    assert [l["digest"] for l in manifest["layers"][:len(base_layers)]] == base_layers


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    need_tools("docker-registry")
    reg = Registry(tmp_path_factory.mktemp("registry")).start()
    yield reg
    reg.stop()


@pytest.fixture
def fresh_registry(tmp_path):
    """A registry of its own for tests that kill it or count uploads."""
    need_tools("docker-registry")
    reg = Registry(tmp_path / "registry").start()
    yield reg
    reg.stop()


@pytest.fixture
def tls_registry(tmp_path):
    """A registry serving HTTPS with a self-signed certificate (``.cert``, ``.ssl_context``)."""
    need_tools("docker-registry")
    need_cryptography("make a test certificate")
    reg = Registry(tmp_path / "registry", tls=make_tls_cert(tmp_path / "tls")).start()
    yield reg
    reg.stop()


@pytest.fixture
def auth_registry(tmp_path):
    """A registry with htpasswd (basic) auth; user ``alice``, password in ``.password``."""
    need_tools("docker-registry", "htpasswd")
    password = "pw-" + os.urandom(8).hex()
    htp = tmp_path / "htpasswd"
    out = subprocess.run(["htpasswd", "-Bbn", "alice", password], capture_output=True, text=True, check=True)
    htp.write_text(out.stdout)
    reg = Registry(tmp_path / "registry", htpasswd=htp).start()
    reg.user, reg.password = "alice", password
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def nbdeploy_home(tmp_path_factory):
    """One NBDEPLOY_HOME (blob store, dependency-layer cache) for the whole session."""
    return tmp_path_factory.mktemp("nbdeploy-home")


@pytest.fixture
def shared_image_cache(nbdeploy_home, monkeypatch):
    """For front ends that cannot pass ``home=`` (magic, widget, server extension): their image
    builds use the session's blob store and dependency-layer cache, so pip runs once a session."""
    monkeypatch.setenv("NBDEPLOY_HOME", str(nbdeploy_home))
    return nbdeploy_home


# --- base image ------------------------------------------------------------------------------------

def _bootstrap_rootfs() -> Path:
    """A Debian bookworm minbase + python3 (3.11) root file system, cached across runs."""
    dest = CACHE / "bookworm-python3-rootfs"
    if (dest / "usr" / "bin" / "python3").exists():
        return dest
    need_tools("debootstrap")
    need_root()
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="rootfs-", dir=CACHE))
    try:
        proc = subprocess.run(["debootstrap", "--variant=minbase", "--include=python3", "bookworm", str(tmp)],
                              capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            pytest.fail(f"debootstrap failed: {proc.stdout[-1500:]}{proc.stderr[-1500:]}")
        # Like a slim image: no package caches, docs or man pages.
        for sub in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
                    "usr/share/locale", "usr/share/info"):
            p = tmp / sub
            if p.is_dir():
                for child in p.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


@pytest.fixture(scope="session")
def base_rootfs():
    return _bootstrap_rootfs()


@pytest.fixture(scope="session")
def base_image_ref(registry, base_rootfs, nbdeploy_home):
    """The debootstrap root file system as a one-layer OCI image, pushed to the session registry."""
    from nbdeploy.image import image_from_rootfs
    from nbdeploy.registry import push_image

    img = image_from_rootfs(base_rootfs, home=nbdeploy_home, compresslevel=1,
                            env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                 "LANG": "C.UTF-8"}, cmd=["python3"])
    ref = f"{registry.host}/base/bookworm-python3:3.11"
    push_image(img, ref)
    return ref


# --- bentos --------------------------------------------------------------------------------------

SERVICE = '''\
import bentoml

FACTOR = {factor}


@bentoml.service
class Svc:
    @bentoml.api
    def predict(self, inputs: list[list[float]]) -> dict:
        return {{"predictions": [FACTOR * sum(r) for r in inputs]}}
'''


def build_bento(workdir: Path, home: Path, *, version: str, factor: float = 1.0) -> Path:
    """Build a tiny bento with the real ``bentoml build`` (in a subprocess, its own BENTOML_HOME)."""
    ctx = workdir / f"ctx-{version}"
    ctx.mkdir(parents=True, exist_ok=True)
    (ctx / "service.py").write_text(SERVICE.format(factor=factor))
    (ctx / "bentofile.yaml").write_text('service: "service:Svc"\nname: tiny\ninclude:\n  - "service.py"\n')
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    proc = subprocess.run([sys.executable, "-m", "bentoml", "build", str(ctx), "--version", version],
                          capture_output=True, text=True, env=env, cwd=ctx, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    path = home / "bentos" / "tiny" / version
    assert (path / "bento.yaml").exists(), proc.stdout[-2000:]
    return path


@pytest.fixture(scope="session")
def bentos(tmp_path_factory):
    """Two builds of the same service whose 'model' differs (factor 1 vs 2): same requirements."""
    work = tmp_path_factory.mktemp("bentos")
    home = work / "bentoml-home"
    return {"v1": build_bento(work, home, version="v1", factor=1.0),
            "v2": build_bento(work, home, version="v2", factor=2.0)}


# --- running an image --------------------------------------------------------------------------------

@contextlib.contextmanager
def run_bundle(bundle: Path, *, port: int, log_path: Path):
    """Run an umoci-unpacked bundle's process in a chroot, as its user, with BENTOML_PORT=port.

    Mounts /proc, /dev and the host's /etc/hosts the way a container runtime provides them,
    and undoes everything on exit.
    """
    cfg = json.loads((bundle / "config.json").read_text())
    proc_cfg = cfg["process"]
    rootfs = bundle / "rootfs"
    env = dict(e.split("=", 1) for e in proc_cfg["env"])
    env["BENTOML_PORT"] = str(port)
    hosts = rootfs / "etc" / "hosts"
    if not hosts.exists():
        hosts.touch()
    mounts = []
    try:
        for args, target in ((["--bind", "/etc/hosts"], hosts), (["-t", "proc", "proc"], rootfs / "proc"),
                             (["--bind", "/dev"], rootfs / "dev")):
            subprocess.run(["mount", *args, str(target)], check=True)
            mounts.append(target)
        uid, gid = proc_cfg["user"]["uid"], proc_cfg["user"]["gid"]
        cwd = proc_cfg.get("cwd", "/")

        def enter():
            os.chroot(rootfs)
            os.chdir(cwd)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)

        with open(log_path, "wb") as log:
            p = subprocess.Popen(proc_cfg["args"], env=env, preexec_fn=enter, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield p
        finally:
            stop_group(p, timeout=20)
    finally:
        for target in reversed(mounts):
            subprocess.run(["umount", "-l", str(target)], check=False)


# --- bearer-token auth: the registry trusts tokens from a small token service ---------------------

class TokenService:
    """A Docker-style token service (the ``realm`` of a Bearer challenge) on loopback.

    Checks HTTP basic credentials and issues RS256 JWTs that Distribution verifies against
    ``cert.pem`` (its ``rootcertbundle``). Anonymous callers get pull-only tokens when
    ``anonymous_pull`` is set.
    """

    def __init__(self, root: Path, user: str, password: str, *, anonymous_pull: bool = False):
        import datetime
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nbdeploy-test-token")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self.key, hashes.SHA256()))
        self.cert_path = Path(root) / "token-cert.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.user, self.password, self.anonymous_pull = user, password, anonymous_pull
        self.requests: list[dict] = []
        svc = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                from urllib.parse import parse_qs, urlparse

                q = parse_qs(urlparse(self.path).query)
                auth = self.headers.get("Authorization", "")
                who = None
                if auth.startswith("Basic "):
                    u, _, p = base64.b64decode(auth[6:]).decode().partition(":")
                    if (u, p) != (svc.user, svc.password):
                        self.send_response(401)
                        self.end_headers()
                        return
                    who = u
                svc.requests.append({"user": who, "scope": q.get("scope", []), "service": q.get("service")})
                access = []
                for sc in q.get("scope", []):
                    typ, repo, actions = sc.split(":")
                    allowed = [a for a in actions.split(",") if who or (svc.anonymous_pull and a == "pull")]
                    access.append({"type": typ, "name": repo, "actions": allowed})
                token = svc.sign({"iss": "nbdeploy-test-issuer", "sub": who or "", "aud": q["service"][0],
                                  "exp": int(time.time()) + 300, "nbf": int(time.time()) - 10,
                                  "iat": int(time.time()), "jti": os.urandom(8).hex(), "access": access})
                body = json.dumps({"token": token, "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def sign(self, claims: dict) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        sig = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64(sig)}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def token_registry(tmp_path):
    """A registry with bearer-token auth (like Docker Hub or GHCR); user ``carol``."""
    need_tools("docker-registry")
    need_cryptography("sign test tokens")
    password = "tok-" + os.urandom(8).hex()
    svc = TokenService(tmp_path, "carol", password, anonymous_pull=True)
    reg = Registry(tmp_path / "registry")
    with open(reg.root / "config.yml", "a") as fh:
        fh.write(textwrap.dedent(f"""\
            auth:
              token:
                realm: {svc.realm}
                service: nbdeploy-test-registry
                issuer: nbdeploy-test-issuer
                rootcertbundle: {svc.cert_path}
            """))
    reg.start()
    reg.user, reg.password, reg.tokens = "carol", password, svc
    yield reg
    reg.stop()
    svc.close()
