"""Weigh registry clients for pushing images: nbdeploy's own (``nbdeploy.registry``), the ORAS
project's Python SDK (``oras``) and ``python-dxf``, against Debian's ``docker-registry``
(Distribution) served over TLS with bearer-token auth, as Docker Hub, GHCR and most hosted
registries are.

What each client is asked to do, as ``push_image`` does:

1. token auth: answer the registry's Bearer challenge by fetching a token with a user name
   and password from the token service (the same JWT service the container tests use);
2. push a ~50 MB blob in one PUT (monolithic);
3. push it in 8 MiB PATCH chunks (the chunked upload that lets a large layer go up in pieces);
4. push an OCI image manifest (``application/vnd.oci.image.manifest.v1+json``) byte for byte,
   so that the digest the caller computed is the digest the registry stores.

Oracle for "it worked": the registry's own storage on disk (the repository's layer link, the
tag's ``current/link``), not the client's return value.  Times are the median of ``--runs``
pushes of fresh random blobs (a fresh client each time, so each push includes getting a
token); "peak MB" is the Python heap's peak during one monolithic push (tracemalloc).

Run::

    python benchmarks/registry_clients.py [--mb 50] [--runs 3] [--chunk-mb 8]

Needs ``docker-registry`` on PATH and the ``cryptography`` package; ``oras`` and
``python-dxf`` are optional (a client that is not installed is reported as such).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import ssl
import statistics
import sys
import tempfile
import textwrap
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from containers.fixtures import Registry, TokenService, make_tls_cert  # noqa: E402

from nbdeploy.oci import MT_OCI_CONFIG, MT_OCI_LAYER_GZIP, MT_OCI_MANIFEST  # noqa: E402

USER = "carol"


# --- a TLS registry with token auth ----------------------------------------------------------------

class TokenRegistry:
    """docker-registry on 127.0.0.1:PORT trusting a token service (the test suite's ``Registry``
    and ``TokenService``); with ``tls``, both speak HTTPS only."""

    def __init__(self, root: Path, *, tls: bool = True):
        root.mkdir(parents=True, exist_ok=True)
        self.password = "tok-" + os.urandom(8).hex()
        self.tokens = TokenService(root, USER, self.password)
        cert = key = None
        if tls:
            cert, key = make_tls_cert(root / "tls")
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            # the service is already listening: serve TLS on the same socket from now on
            self.tokens.server.socket = ctx.wrap_socket(self.tokens.server.socket, server_side=True)
            self.tokens.realm = self.tokens.realm.replace("http://", "https://")
        self.tls = tls
        self.reg = Registry(root / "registry", tls=(cert, key) if tls else None)
        with open(self.reg.root / "config.yml", "a") as fh:
            fh.write(textwrap.dedent(f"""\
                auth:
                  token:
                    realm: {self.tokens.realm}
                    service: bench-registry
                    issuer: nbdeploy-test-issuer
                    rootcertbundle: {self.tokens.cert_path}
                """))
        self.reg.start()
        self.host, self.cert, self.data = self.reg.host, cert, self.reg.root / "data"

    # oracle: the registry's storage
    def _repo(self, repo: str) -> Path:
        return self.data / "docker" / "registry" / "v2" / "repositories" / repo

    def has_blob(self, repo: str, digest: str) -> bool:
        return (self._repo(repo) / "_layers" / "sha256" / digest.split(":")[1] / "link").exists()

    def tag_digest(self, repo: str, tag: str) -> str | None:
        p = self._repo(repo) / "_manifests" / "tags" / tag / "current" / "link"
        return p.read_text().strip() if p.exists() else None

    def close(self) -> None:
        self.reg.stop()
        self.tokens.close()


# --- the clients, each behind the same three calls --------------------------------------------------

class Ours:
    name = "nbdeploy.registry"
    chunked = True

    def __init__(self, reg: TokenRegistry):
        from nbdeploy.registry import RegistryClient

        self.c = RegistryClient(reg.host, insecure=not reg.tls, credentials=(USER, reg.password),
                                verify=str(reg.cert) if reg.tls else True, retries=1)

    def push_blob(self, repo, path, digest, chunk):
        self.c.upload_blob(repo, path, digest, chunk_size=chunk)

    def push_manifest(self, repo, tag, raw, media_type):
        self.c.put_manifest(repo, tag, raw, media_type)


class Oras:
    name = "oras (ORAS Python SDK)"
    chunked = True

    def __init__(self, reg: TokenRegistry):
        import oras.provider

        self.host = reg.host
        self.c = oras.provider.Registry(hostname=reg.host, insecure=not reg.tls,
                                        tls_verify=str(reg.cert) if reg.tls else True, auth_backend="token")
        self.c.auth.set_basic_auth(USER, reg.password)

    def push_blob(self, repo, path, digest, chunk):
        layer = {"mediaType": MT_OCI_LAYER_GZIP, "digest": digest, "size": Path(path).stat().st_size}
        r = self.c.upload_blob(str(path), f"{self.host}/{repo}:x", layer, do_chunked=bool(chunk),
                               **({"chunk_size": chunk} if chunk else {}))
        if r.status_code not in (200, 201, 202):
            raise RuntimeError(f"HTTP {r.status_code}")

    def push_manifest(self, repo, tag, raw, media_type):
        # the SDK takes a dict and serialises it itself (requests' json=)
        r = self.c.upload_manifest(json.loads(raw), self.c.get_container(f"{self.host}/{repo}:{tag}"))
        if r.status_code not in (200, 201):
            raise RuntimeError(f"HTTP {r.status_code}")


class OrasPushScopeFirst(Oras):
    """The SDK with a workaround: it keeps the first token it got and asks for a new one only
    on 403, but Distribution (and Docker Hub) answer 401 when a token lacks the push scope; so
    open an upload session first, whose challenge asks for ``pull,push``."""

    name = "oras, push-scoped token first"

    def push_blob(self, repo, path, digest, chunk):
        if self.c.auth.token is None:
            self.c.do_request(f"{self.c.prefix}://{self.host}/v2/{repo}/blobs/uploads/", "POST")
        super().push_blob(repo, path, digest, chunk)


class Dxf:
    name = "python-dxf"
    chunked = False  # push_blob has no chunked mode: one streamed PUT

    def __init__(self, reg: TokenRegistry):
        import dxf

        self.reg = reg
        self.mod = dxf

    def _client(self, repo):
        pw = self.reg.password
        return self.mod.DXF(self.reg.host, repo, auth=lambda d, resp: d.authenticate(USER, pw, response=resp),
                            insecure=not self.reg.tls, tlsverify=str(self.reg.cert) if self.reg.tls else True)

    def push_blob(self, repo, path, digest, chunk):
        if chunk:
            raise NotImplementedError("python-dxf has no chunked blob upload")
        got = self._client(repo).push_blob(str(path))
        if got != digest:
            raise RuntimeError(f"pushed {got}, expected {digest}")

    def push_manifest(self, repo, tag, raw, media_type):
        self._client(repo).set_manifest(tag, raw.decode())


CLIENTS = [("nbdeploy.registry", Ours), ("oras", Oras), ("oras-workaround", OrasPushScopeFirst),
           ("python-dxf", Dxf)]


# --- measuring ---------------------------------------------------------------------------------------

def random_blob(directory: Path, mb: int) -> tuple[Path, str]:
    path = Path(tempfile.mkstemp(dir=directory, suffix=".blob")[1])
    h = hashlib.sha256()
    with open(path, "wb") as fh:
        for _ in range(mb):
            chunk = os.urandom(1 << 20)
            h.update(chunk)
            fh.write(chunk)
    return path, "sha256:" + h.hexdigest()


def short(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or ""
    return f"{type(exc).__name__}: {' '.join(text.split())[:90]}"


def measure(key, cls, reg, work, mb, runs, chunk) -> dict:
    row: dict = {"client": key}
    try:
        cls(reg)
    except ImportError as exc:
        row["error"] = f"not installed ({exc.name})"
        return row
    for mode, size in (("mono", None), ("chunked", chunk)):
        times, err = [], None
        for i in range(runs):
            path, digest = random_blob(work, mb)
            repo = f"bench/{key}-{mode}-{i}"
            try:
                t0 = time.perf_counter()
                cls(reg).push_blob(repo, path, digest, size)
                dt = time.perf_counter() - t0
                if not reg.has_blob(repo, digest):
                    raise RuntimeError("the registry does not have the blob")
                times.append(dt)
            except Exception as exc:  # a client's failure is a result here
                err = short(exc)
                break
            finally:
                path.unlink()
        row[mode] = f"{statistics.median(times):.2f} s" if times and not err else f"no ({err})"
    # peak Python heap during one monolithic push
    path, digest = random_blob(work, mb)
    try:
        client = cls(reg)
        tracemalloc.start()
        client.push_blob(f"bench/{key}-mem", path, digest, None)
        row["peak_mb"] = f"{tracemalloc.get_traced_memory()[1] / 1e6:.1f}"
    except Exception as exc:
        row["peak_mb"] = f"— ({short(exc)})"
    finally:
        tracemalloc.stop()
        path.unlink()
    # an OCI image manifest, byte for byte
    repo = f"bench/{key}-manifest"
    layer_path, layer_digest = random_blob(work, 1)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [layer_digest]}},
                        sort_keys=True, separators=(",", ":")).encode()
    cfg_path = work / "config.json"
    cfg_path.write_bytes(config)
    cfg_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
                           "config": {"mediaType": MT_OCI_CONFIG, "digest": cfg_digest, "size": len(config)},
                           "layers": [{"mediaType": MT_OCI_LAYER_GZIP, "digest": layer_digest,
                                       "size": layer_path.stat().st_size}],
                           "annotations": {"org.opencontainers.image.title": "bench"}},
                          sort_keys=True, separators=(",", ":")).encode()
    want = "sha256:" + hashlib.sha256(manifest).hexdigest()
    try:
        c = cls(reg)
        c.push_blob(repo, layer_path, layer_digest, None)
        c.push_blob(repo, cfg_path, cfg_digest, None)
        c.push_manifest(repo, "1", manifest, MT_OCI_MANIFEST)
        got = reg.tag_digest(repo, "1")
        row["manifest"] = "yes, same digest" if got == want else \
            (f"stored, other digest ({got[:15]}…: re-serialised)" if got else "no (not stored)")
    except Exception as exc:
        row["manifest"] = f"no ({short(exc)})"
    finally:
        layer_path.unlink()
    return row


def plain_http(cls, reg, work) -> str:
    """One 1 MiB push to a loopback registry whose registry and token service speak plain HTTP
    (how the test suite runs them)."""
    path, digest = random_blob(work, 1)
    try:
        cls(reg).push_blob("bench/plain", path, digest, None)
        return "yes" if reg.has_blob("bench/plain", digest) else "no (not stored)"
    except ImportError:
        return ""
    except Exception as exc:
        return f"no ({short(exc)})"
    finally:
        path.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=50, help="blob size in MiB (default 50)")
    ap.add_argument("--runs", type=int, default=3, help="pushes per mode, median reported (default 3)")
    ap.add_argument("--chunk-mb", type=int, default=8, help="chunk size for the chunked push (default 8)")
    args = ap.parse_args()
    if not shutil.which("docker-registry"):
        sys.exit("docker-registry is not on PATH (apt-get install docker-registry)")
    with tempfile.TemporaryDirectory(prefix="regbench-") as tmp:
        root = Path(tmp)
        reg = TokenRegistry(root / "tls")
        plain = TokenRegistry(root / "plain", tls=False)
        work = root / "work"
        work.mkdir()
        try:
            # hashing cost, for reading the times: python-dxf hashes the file itself inside push_blob
            path, _ = random_blob(work, args.mb)
            t0 = time.perf_counter()
            with open(path, "rb") as fh:
                hashlib.file_digest(fh, "sha256")
            hash_s = time.perf_counter() - t0
            path.unlink()
            rows = [measure(k, cls, reg, work, args.mb, args.runs, args.chunk_mb << 20) for k, cls in CLIENTS]
            for row, (_, cls) in zip(rows, CLIENTS):
                row["plain"] = plain_http(cls, plain, work)
        finally:
            reg.close()
            plain.close()
    print(f"\nRegistry clients against docker-registry over TLS with bearer-token auth; "
          f"{args.mb} MiB random blob, median of {args.runs}, chunks of {args.chunk_mb} MiB; "
          f"sha256 of the blob alone takes {hash_s:.2f} s here.\n")
    cols = [("client", "client"), ("mono", "token auth + monolithic push"),
            ("chunked", "token auth + chunked push"), ("peak_mb", "peak heap MB (mono)"),
            ("manifest", "OCI manifest pushed byte for byte"), ("plain", "token auth, plain-HTTP loopback")]
    print("| " + " | ".join(h for _, h in cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        if "error" in row:
            print(f"| {row['client']} | {row['error']} |" + " |" * (len(cols) - 2))
            continue
        print("| " + " | ".join(str(row.get(k, "")) for k, _ in cols) + " |")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
