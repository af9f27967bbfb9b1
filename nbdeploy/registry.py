"""A small client for the OCI distribution API: pull a base image, push an image.

No daemon is needed: blobs are plain files in a local content-addressed store
(:func:`nbdeploy.oci.blob_path`), and this module moves them over HTTP.  It knows nothing of
how images are built: :func:`push_image` takes any object with ``blobs()``,
``manifest_bytes`` and ``manifest_media_type`` (an :class:`nbdeploy.image.OCIImage`).
The push use case (build, then push) is :mod:`nbdeploy.publish`.

Rules kept on purpose:

* HTTPS by default; plain HTTP only for loopback hosts or with ``insecure=True``.
* Blobs the registry already has are not uploaded again (HEAD, then a cross-repo
  mount when the base came from the same registry).
* The manifest is PUT last, so a tag never points at a partial image.
* Credentials (docker ``config.json`` or ``NBDEPLOY_REGISTRY_USER`` /
  ``NBDEPLOY_REGISTRY_PASSWORD``) never appear in logs, errors or results: registry
  response bodies are cut to a few hundred characters and scrubbed (:func:`scrub`) of the
  credentials and tokens in use and of anything that looks like an ``Authorization`` value
  before they reach an error message.
* The ``Authorization`` header goes only to the registry's own host; credentials go to a
  token service on another host only over HTTPS.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, quote_plus, urlencode, urljoin, urlparse

from .errors import InvalidInputError, RegistryError, RegistryUnreachableError
from .oci import DOCKER_HUB, INDEX_TYPES, MANIFEST_ACCEPT, Reference, blob_path, select_platform

log = logging.getLogger(__name__)

_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ``::1`` (with or without a port)."""
    h = host
    if h.startswith("["):
        h = h[1:h.index("]")]
    elif h.count(":") == 1:
        h = h.split(":", 1)[0]
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


# --- credentials --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Credentials:
    """A user name and secret. ``repr`` hides the secret so it never lands in a log."""

    username: str
    password: str = field(repr=False)
    source: str = "explicit"

    def __repr__(self) -> str:  # pragma: no cover - trivial
        return f"Credentials(username={self.username!r}, password='***', source={self.source!r})"


def _docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def resolve_credentials(registry: str, credentials: Credentials | tuple[str, str] | None = None, *,
                        use_env: bool = True) -> Credentials | None:
    """Credentials for ``registry``: explicit, else env vars (if ``use_env``), else docker ``config.json`` ``auths``.

    The env vars name no registry, so callers only use them for the push target (never
    to pull a base image from another registry, which would send them to a third party).
    """
    if credentials is not None:
        if isinstance(credentials, Credentials):
            return credentials
        user, pw = credentials
        return Credentials(user, pw, "explicit")
    user = os.environ.get("NBDEPLOY_REGISTRY_USER")
    pw = os.environ.get("NBDEPLOY_REGISTRY_PASSWORD")
    if use_env and user and pw is not None:
        return Credentials(user, pw, "environment")
    path = _docker_config_path()
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("Ignoring unreadable docker config %s: %s", path, type(exc).__name__)
        return None
    auths = cfg.get("auths") or {}
    keys = {registry, f"https://{registry}", f"http://{registry}"}
    if registry == DOCKER_HUB:
        keys |= {"https://index.docker.io/v1/", "index.docker.io", "docker.io", "https://index.docker.io/v1"}
    for key, entry in auths.items():
        if key.rstrip("/") in {k.rstrip("/") for k in keys} or urlparse(key).netloc == registry:
            if not isinstance(entry, dict):
                continue
            if entry.get("auth"):
                try:
                    decoded = base64.b64decode(entry["auth"]).decode()
                    user, _, pw = decoded.partition(":")
                except Exception:
                    log.warning("Ignoring malformed 'auth' entry for %s in %s", registry, path)
                    continue
                return Credentials(user, pw, f"docker config ({path})")
            if entry.get("username") and entry.get("password") is not None:
                return Credentials(entry["username"], entry["password"], f"docker config ({path})")
    if cfg.get("credsStore") or (cfg.get("credHelpers") or {}).get(registry):
        log.info("Docker credential helpers are not supported; set NBDEPLOY_REGISTRY_USER/PASSWORD instead.")
    return None


# --- HTTP client --------------------------------------------------------------------------------

def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """Parse ``WWW-Authenticate: Bearer realm="...",service="...",scope="..."``."""
    scheme, _, rest = header.strip().partition(" ")
    params = dict((k.lower(), v) for k, v in re.findall(r'(\w+)\s*=\s*"([^"]*)"', rest))
    for k, v in re.findall(r'(\w+)\s*=\s*([^",\s]+)', rest):
        params.setdefault(k.lower(), v)
    return scheme.lower(), params


class RegistryClient:
    """Talks to one registry. Handles anonymous, basic and bearer-token auth, and retries."""

    def __init__(self, registry: str, *, insecure: bool | None = None,
                 credentials: Credentials | tuple[str, str] | None = None,
                 timeout: float = 60.0, retries: int = 3, backoff: float = 0.5,
                 verify: bool | str = True, use_env: bool = True):
        import requests

        self.registry = registry
        self.host = "registry-1.docker.io" if registry == DOCKER_HUB else registry
        if insecure is None:
            insecure = is_loopback(self.host)
        self.scheme = "http" if insecure else "https"
        self.base = f"{self.scheme}://{self.host}"
        self.credentials = resolve_credentials(registry, credentials, use_env=use_env)
        self.timeout = timeout
        self.retries = max(1, retries)
        self.backoff = backoff
        self.session = requests.Session()
        self.session.verify = verify
        self.session.headers["User-Agent"] = f"nbdeploy/{_nbdeploy_version()}"
        self._auth_header: str | None = None
        self._scope_tokens: dict[str, str] = {}

    # -- low level --

    def _url(self, path: str) -> str:
        return path if path.startswith("http") else f"{self.base}{path}"

    def _own_url(self, url: str) -> bool:
        """True when ``url`` is on this registry (its scheme, host and port): only then does
        it get the ``Authorization`` header (an upload ``Location`` may name another host)."""
        p = urlparse(url)
        return f"{p.scheme}://{p.netloc}".lower() == self.base.lower()

    def _plain_http_realm_ok(self, realm_host: str) -> bool:
        """Credentials may go over plain HTTP only where the registry itself is plain HTTP
        (loopback or ``insecure=True``) and the token service is on the same host."""
        if self.scheme != "http":
            return False
        reg_host = urlparse(self.base).hostname or ""
        return realm_host.lower() == reg_host.lower() or (is_loopback(realm_host) and is_loopback(reg_host))

    def _secrets(self) -> list[str]:
        """Every secret this client holds: the password, user name, and Authorization values."""
        out: list[str] = []
        c = self.credentials
        if c is not None:
            out += [c.password, base64.b64encode(f"{c.username}:{c.password}".encode()).decode()]
            if len(c.username) >= _MIN_SCRUB:  # a short user name would withhold every body
                out.append(c.username)
        for value in [self._auth_header, *self._scope_tokens.values()]:
            if value:
                out += [value, value.split(" ", 1)[-1]]
        return out

    def _body(self, resp) -> str:
        """A registry's response body, fit for an error message: cut short and scrubbed."""
        try:
            raw = resp.content[:_BODY_READ_LIMIT]
        except Exception:  # a body we cannot read says nothing useful
            return ""
        return scrub(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else "", self._secrets())

    def _auth_for(self, response, scope: str) -> tuple[str, bool]:
        """Answer a 401 challenge: the Authorization header value to use, and whether it holds
        for every scope (basic auth) rather than only for ``scope`` (a bearer token)."""
        header = response.headers.get("WWW-Authenticate", "")
        scheme, params = _parse_challenge(header)
        if scheme == "basic":
            if not self.credentials:
                raise RegistryError(f"Registry {self.registry} requires a login.",
                                    hint=_LOGIN_HINT.format(registry=self.registry))
            raw = f"{self.credentials.username}:{self.credentials.password}".encode()
            return "Basic " + base64.b64encode(raw).decode(), True
        if scheme == "bearer":
            realm = params.get("realm")
            if not realm:
                raise RegistryError(f"Registry {self.registry} sent a bearer challenge without a realm.")
            query = [("service", params["service"])] if params.get("service") else []
            query += [("scope", sc) for sc in scope.split()]
            auth = (self.credentials.username, self.credentials.password) if self.credentials else None
            rp = urlparse(realm)
            if rp.scheme not in ("http", "https") or not rp.hostname:
                raise RegistryError(f"Registry {self.registry} sent a bearer challenge with an invalid realm.",
                                    received=scrub(realm, self._secrets(), limit=120))
            if auth and rp.scheme != "https" and not self._plain_http_realm_ok(rp.hostname):
                raise RegistryError(
                    f"Registry {self.registry} asks for credentials to be sent over plain HTTP to another "
                    f"host ({rp.hostname}); refusing to send them.",
                    hint="Use a token service that speaks HTTPS, or one on the registry's own host.")
            resp = self._send("GET", realm + ("&" if "?" in realm else "?") + urlencode(query),
                              auth=auth, _allow_auth=False)
            if resp.status_code in (401, 403):
                raise RegistryError(
                    f"Registry {self.registry} refused the credentials"
                    f"{' from ' + self.credentials.source if self.credentials else ' (anonymous)'}"
                    f" (HTTP {resp.status_code} from its token service).",
                    hint=_LOGIN_HINT.format(registry=self.registry))
            if resp.status_code != 200:
                raise RegistryError(f"Token service of {self.registry} answered HTTP {resp.status_code}.")
            try:
                body = resp.json()
            except ValueError:
                body = None
            token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
            if not isinstance(token, str) or not token or any(ch in token for ch in "\r\n"):
                raise RegistryError(f"Token service of {self.registry} returned no usable token.")
            return f"Bearer {token}", False
        raise RegistryError(f"Registry {self.registry} asks for an unsupported auth scheme {scheme!r}.")

    def _send(self, method: str, url: str, *, data=None, headers=None, stream=False,
              auth=None, _allow_auth=True, rewind: Callable[[], object] | None = None):
        """One request with retries on connection errors and transient statuses."""
        import requests

        last_exc: Exception | None = None
        for attempt in range(self.retries):
            if attempt and rewind is not None:
                data = rewind()
            try:
                # verify per request: requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override
                # a session's verify (psf/requests#3829), which would drop a CA given here
                resp = self.session.request(method, url, data=data, headers=headers, stream=stream,
                                            auth=auth, timeout=self.timeout, allow_redirects=True,
                                            verify=self.session.verify)
            except requests.exceptions.SSLError as exc:
                raise RegistryError(
                    f"TLS error talking to {self.registry}: {type(exc).__name__}.",
                    hint="If this registry speaks plain HTTP on a trusted network, pass insecure=True; "
                         "for a private CA set REQUESTS_CA_BUNDLE.") from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                    requests.exceptions.ChunkedEncodingError) as exc:
                last_exc = exc
                log.debug("%s %s failed (%s), attempt %d/%d", method, _redact(url), type(exc).__name__,
                          attempt + 1, self.retries)
                if attempt + 1 < self.retries:
                    time.sleep(self.backoff * (2 ** attempt))
                continue
            if resp.status_code in _RETRY_STATUS and attempt + 1 < self.retries:
                log.debug("%s %s -> HTTP %d, retrying", method, _redact(url), resp.status_code)
                resp.close()
                time.sleep(self.backoff * (2 ** attempt))
                continue
            return resp
        raise RegistryUnreachableError(
            f"Cannot reach registry {self.registry} ({self.base}) after {self.retries} attempts: "
            f"{type(last_exc).__name__}.",
            hint="Check the registry address and that it is running; "
                 "for a plain-HTTP registry outside localhost pass insecure=True.") from None

    def request(self, method: str, path: str, *, scope: str = "", data=None, headers=None,
                stream=False, rewind: Callable[[], object] | None = None, ok: Iterable[int] = (200,)):
        """A request with auth: retries once after answering a 401 challenge."""
        url = self._url(path)
        hdrs = dict(headers or {})
        own = self._own_url(url)
        token = self._scope_tokens.get(scope) or self._auth_header
        if token and own:
            hdrs["Authorization"] = token
        resp = self._send(method, url, data=data, headers=hdrs, stream=stream, rewind=rewind)
        if resp.status_code == 401 and not own:
            resp.close()
            raise RegistryError(f"{urlparse(url).hostname}, where registry {self.registry} sent this request, "
                                "asks for a login; nbdeploy sends credentials only to the registry itself.")
        if resp.status_code == 401:
            resp.close()
            token, every_scope = self._auth_for(resp, scope)
            if every_scope:
                self._auth_header = token
            else:
                self._scope_tokens[scope] = token
            hdrs["Authorization"] = token
            if rewind is not None:
                data = rewind()
            resp = self._send(method, url, data=data, headers=hdrs, stream=stream, rewind=rewind)
            if resp.status_code == 401 and not self.credentials:
                raise RegistryError(f"Registry {self.registry} requires a login for {method} {urlparse(url).path}.",
                                    hint=_LOGIN_HINT.format(registry=self.registry))
            if resp.status_code == 401:
                raise RegistryError(
                    f"Registry {self.registry} rejected the credentials"
                    f"{' from ' + self.credentials.source if self.credentials else ' (none given)'} "
                    f"for {method} {urlparse(url).path}.",
                    hint=_LOGIN_HINT.format(registry=self.registry))
        if resp.status_code == 403:
            raise RegistryError(f"Registry {self.registry} denied {method} {urlparse(url).path} (HTTP 403).",
                                hint="The account may lack push/pull rights on this repository.")
        return resp

    # -- API --

    def check(self) -> None:
        """GET /v2/ — raises a clear error if the registry is unreachable or refuses us."""
        resp = self.request("GET", "/v2/")
        if resp.status_code != 200:
            raise RegistryError(f"{self.base}/v2/ answered HTTP {resp.status_code}; is this an OCI registry?")

    def get_manifest(self, repo: str, reference: str, *, accept: str = MANIFEST_ACCEPT) -> tuple[bytes, str, str]:
        """Return (raw bytes, media type, digest) of a manifest or index; NotFound -> RegistryError."""
        resp = self.request("GET", f"/v2/{repo}/manifests/{reference}", scope=f"repository:{repo}:pull",
                            headers={"Accept": accept})
        if resp.status_code == 404:
            raise RegistryError(f"Image {self.registry}/{repo}:{reference} not found (HTTP 404).",
                                hint="Check the repository name and tag.")
        if resp.status_code != 200:
            raise RegistryError(f"GET manifest {repo}:{reference} from {self.registry} failed: "
                                f"HTTP {resp.status_code} {self._body(resp)}")
        raw = resp.content
        media = resp.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            media = json.loads(raw).get("mediaType") or media
        except ValueError:
            raise RegistryError(f"Manifest of {repo}:{reference} is not JSON.") from None
        return raw, media, "sha256:" + hashlib.sha256(raw).hexdigest()

    def manifest_exists(self, repo: str, reference: str) -> str | None:
        """Digest of the manifest a tag points at, or None."""
        resp = self.request("HEAD", f"/v2/{repo}/manifests/{reference}", scope=f"repository:{repo}:pull",
                            headers={"Accept": MANIFEST_ACCEPT})
        if resp.status_code == 200:
            return resp.headers.get("Docker-Content-Digest") or "unknown"
        return None

    def blob_exists(self, repo: str, digest: str) -> bool:
        resp = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", scope=f"repository:{repo}:pull")
        return resp.status_code == 200

    def get_blob(self, repo: str, digest: str, dest: Path) -> Path:
        """Download a blob to ``dest`` (atomically), verifying its digest."""
        dest = Path(dest)
        if dest.exists():
            return dest
        resp = self.request("GET", f"/v2/{repo}/blobs/{digest}", scope=f"repository:{repo}:pull", stream=True)
        if resp.status_code != 200:
            raise RegistryError(f"GET blob {digest[:19]} of {repo} failed: HTTP {resp.status_code}.")
        dest.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in resp.iter_content(1 << 20):
                    h.update(chunk)
                    fh.write(chunk)
            if "sha256:" + h.hexdigest() != digest:
                raise RegistryError(f"Blob {digest[:19]} of {repo} did not match its digest (corrupt download).")
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return dest

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Cross-repository mount; True if the registry mounted it (no upload needed)."""
        resp = self.request("POST", f"/v2/{repo}/blobs/uploads/?" + urlencode({"mount": digest, "from": from_repo}),
                            scope=f"repository:{repo}:pull,push repository:{from_repo}:pull")
        if resp.status_code == 201:
            return True
        if resp.status_code == 202 and resp.headers.get("Location"):
            # The registry opened an upload session instead; cancel it politely.
            try:
                self.request("DELETE", urljoin(self.base + "/", resp.headers["Location"]),
                             scope=f"repository:{repo}:pull,push")
            except RegistryError:
                pass
        return False

    def upload_blob(self, repo: str, path: Path, digest: str, *, chunk_size: int | None = None,
                    progress: Callable[[int, int], None] | None = None) -> None:
        """Upload a blob: monolithic PUT, or PATCH chunks then PUT when ``chunk_size`` is set."""
        scope = f"repository:{repo}:pull,push"
        path = Path(path)
        size = path.stat().st_size
        resp = self.request("POST", f"/v2/{repo}/blobs/uploads/", scope=scope)
        if resp.status_code != 202 or not resp.headers.get("Location"):
            raise RegistryError(f"Starting an upload to {self.registry}/{repo} failed: "
                                f"HTTP {resp.status_code} {self._body(resp)}")
        location = urljoin(self.base + "/", resp.headers["Location"])
        if chunk_size and size > chunk_size:
            sent = 0
            with open(path, "rb") as fh:
                while sent < size:
                    chunk = fh.read(chunk_size)
                    end = sent + len(chunk) - 1
                    r = self.request("PATCH", location, scope=scope, data=chunk, headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{sent}-{end}", "Content-Length": str(len(chunk))})
                    if r.status_code != 202:
                        raise RegistryError(f"Uploading a chunk of {digest[:19]} to {self.registry}/{repo} "
                                            f"failed: HTTP {r.status_code} {self._body(r)}")
                    location = urljoin(self.base + "/", r.headers.get("Location", location))
                    sent = end + 1
                    if progress:
                        progress(sent, size)
            r = self.request("PUT", _with_query(location, digest=digest), scope=scope,
                             headers={"Content-Length": "0"})
        else:
            fh = open(path, "rb")

            def rewind():
                fh.seek(0)
                return fh

            try:
                r = self.request("PUT", _with_query(location, digest=digest), scope=scope, data=fh,
                                 rewind=rewind, headers={"Content-Type": "application/octet-stream",
                                                         "Content-Length": str(size)})
            finally:
                fh.close()
            if progress:
                progress(size, size)
        if r.status_code not in (201, 204):
            raise RegistryError(f"Finishing the upload of {digest[:19]} to {self.registry}/{repo} failed: "
                                f"HTTP {r.status_code} {self._body(r)}")

    def put_manifest(self, repo: str, tag: str, raw: bytes, media_type: str) -> str:
        resp = self.request("PUT", f"/v2/{repo}/manifests/{tag}", scope=f"repository:{repo}:pull,push",
                            data=raw, headers={"Content-Type": media_type})
        if resp.status_code not in (200, 201):
            raise RegistryError(f"PUT manifest {repo}:{tag} to {self.registry} failed: "
                                f"HTTP {resp.status_code} {self._body(resp)}")
        return resp.headers.get("Docker-Content-Digest") or "sha256:" + hashlib.sha256(raw).hexdigest()


_LOGIN_HINT = ("Check the user name and password: set NBDEPLOY_REGISTRY_USER and NBDEPLOY_REGISTRY_PASSWORD, "
               "or log in so that ~/.docker/config.json has an 'auths' entry for {registry}.")


def _with_query(url: str, **params) -> str:
    return url + ("&" if "?" in url else "?") + urlencode(params)


def _redact(url: str) -> str:
    p = urlparse(url)
    return f"{p.scheme}://{p.hostname}{(':' + str(p.port)) if p.port else ''}{p.path}"


def _short(text: str, n: int = 200) -> str:
    text = _CONTROL.sub(" ", text or "").strip()
    return text[:n] + ("…" if len(text) > n else "")


_BODY_READ_LIMIT = 64 * 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_SECRET_PATTERNS = [
    # Authorization: <scheme> <value>  (header dumps, JSON echoes, Python reprs)
    (re.compile(r"(?i)(\b(?:proxy-)?authorization\b[\"']?\s*[:=,]\s*[\"']?)"
                r"(?:(?:basic|bearer|digest|token)\s+)?[^\s\"',;}\]]+"), r"\1***"),
    (re.compile(r"(?i)\b(basic|bearer)(\s+)[A-Za-z0-9._~+/=-]{6,}"), r"\1\2***"),
    # password=..., "token": "..." and the like
    (re.compile(r"(?i)(\b(?:password|passwd|pwd|secret|token|access_token|refresh_token|api_key)\b"
                r"[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&}\]]+"), r"\1***"),
]
_MIN_SCRUB = 4
_WITHHELD = "(response body withheld: a credential in use is too short to scrub from it reliably)"


def scrub(text: str, secrets: Iterable[str] = (), *, limit: int = 200) -> str:
    """``text`` without the given secrets (also JSON-, URL- and base64-encoded), without
    anything that looks like an Authorization/password/token value, without control
    characters, and cut to ``limit`` characters.  Scrubbing happens before the cut, so no
    prefix of a secret survives at the edge.

    A secret shorter than 4 characters cannot be replaced without mangling the text, so
    a text that contains one is withheld whole.
    """
    text = text or ""
    variants: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        if len(secret) < _MIN_SCRUB:
            if secret in text:
                return _WITHHELD
            continue
        variants |= {secret, json.dumps(secret)[1:-1], quote(secret, safe=""), quote_plus(secret),
                     base64.b64encode(secret.encode()).decode()}
    for v in sorted(variants, key=len, reverse=True):
        text = text.replace(v, "***")
    for pattern, repl in _SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    return _short(text, limit)


def _nbdeploy_version() -> str:
    from ._version import __version__

    return __version__


# --- pull ---------------------------------------------------------------------------------------

@dataclass
class PulledImage:
    """A base image fetched into the local blob store."""

    ref: Reference
    manifest_digest: str
    config: dict
    config_digest: str
    layers: list[dict]  # descriptors: mediaType, digest, size (blobs are in the store)


def pull(ref: str | Reference, blob_store: Path, *, platform: str = "linux/amd64",
         insecure: bool | None = None, credentials=None, use_env: bool = False,
         client: RegistryClient | None = None) -> PulledImage:
    """Fetch manifest, config and layer blobs of ``ref`` (for ``platform``) into ``blob_store``."""
    r = ref if isinstance(ref, Reference) else Reference.parse(ref)
    c = client or RegistryClient(r.registry, insecure=insecure, credentials=credentials, use_env=use_env)
    raw, media, digest = c.get_manifest(r.repository, r.reference)
    manifest = json.loads(raw)
    if media in INDEX_TYPES or "manifests" in manifest:
        desc = select_platform(manifest, platform)
        raw, media, digest = c.get_manifest(r.repository, desc["digest"])
        manifest = json.loads(raw)
    if manifest.get("schemaVersion") != 2 or "config" not in manifest:
        raise RegistryError(f"Unsupported manifest format for {r} ({media}).",
                            hint="Use a base image published with a Docker v2 or OCI manifest.")
    store = Path(blob_store)
    cfg_digest = manifest["config"]["digest"]
    cfg_path = c.get_blob(r.repository, cfg_digest, blob_path(store, cfg_digest))
    config = json.loads(cfg_path.read_bytes())
    for layer in manifest["layers"]:
        mt = layer.get("mediaType", "")
        if "zstd" in mt or "foreign" in mt or "nondistributable" in mt:
            raise RegistryError(f"Base image layer type {mt} is not supported.")
        c.get_blob(r.repository, layer["digest"], blob_path(store, layer["digest"]))
    cfg_platform = f"{config.get('os')}/{config.get('architecture')}"
    if cfg_platform != "/".join(platform.split("/")[:2]):
        raise RegistryError(f"Base image {r} is {cfg_platform}, not {platform}.",
                            hint="Pick a base image built for the target platform.")
    return PulledImage(r, digest, config, cfg_digest, list(manifest["layers"]))


# --- push ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PushResult:
    """Where an image landed. ``str(result)`` is ``registry/repo:tag@sha256:...``."""

    ref: str
    digest: str
    uploaded: tuple[str, ...]
    skipped: tuple[str, ...]
    bytes_uploaded: int
    seconds: float

    @property
    def pinned(self) -> str:
        return f"{self.ref}@{self.digest}"

    @property
    def by_digest(self) -> str:
        """``registry/repo@sha256:...`` (for tools that refuse a tag and a digest together)."""
        return f"{self.ref.rsplit(':', 1)[0]}@{self.digest}"

    def __str__(self) -> str:
        return self.pinned

    def to_dict(self) -> dict:
        return {"ref": self.ref, "digest": self.digest, "pinned": self.pinned, "by_digest": self.by_digest,
                "uploaded": list(self.uploaded), "skipped": list(self.skipped),
                "bytes_uploaded": self.bytes_uploaded, "seconds": round(self.seconds, 3)}

    def _repr_html_(self) -> str:
        import html

        return (f"<div><b>Pushed</b> <code>{html.escape(self.pinned)}</code><br>"
                f"{len(self.uploaded)} blob(s) uploaded ({self.bytes_uploaded / 1e6:.1f} MB), "
                f"{len(self.skipped)} already there; {self.seconds:.1f} s</div>")


def push_image(image, ref: str | Reference, *, insecure: bool | None = None, credentials=None,
               chunk_size: int | None = None, progress: Callable[[str, int, int], None] | None = None,
               client: RegistryClient | None = None) -> PushResult:
    """Push an :class:`nbdeploy.image.OCIImage` to ``ref``; the manifest goes last.

    ``progress(digest, done_bytes, total_bytes)`` is called as blobs upload.
    """
    r = ref if isinstance(ref, Reference) else Reference.parse(ref)
    if r.digest and not r.tag:
        raise InvalidInputError(f"Push needs a tag, not only a digest: {r}.", hint="Example: registry/model:1.0")
    tag = r.tag or "latest"
    c = client or RegistryClient(r.registry, insecure=insecure, credentials=credentials)
    t0 = time.perf_counter()
    c.check()
    uploaded, skipped, nbytes = [], [], 0
    base = getattr(image, "base_ref", None)
    mount_from = None
    if base:
        try:
            b = Reference.parse(base)
            if b.registry == r.registry and b.repository != r.repository:
                mount_from = b.repository
        except InvalidInputError:
            pass
    for digest, path in image.blobs():
        if c.blob_exists(r.repository, digest):
            skipped.append(digest)
            continue
        if mount_from and digest in getattr(image, "base_layer_digests", ()) and \
                c.mount_blob(r.repository, digest, mount_from):
            skipped.append(digest)
            continue
        size = Path(path).stat().st_size
        log.info("uploading %s (%.1f MB) to %s/%s", digest[:19], size / 1e6, r.registry, r.repository)
        cb = (lambda done, total, d=digest: progress(d, done, total)) if progress else None
        try:
            c.upload_blob(r.repository, path, digest, chunk_size=chunk_size, progress=cb)
        except RegistryUnreachableError:
            raise  # the client already retried the connection
        except RegistryError as exc:
            # An upload session can die with a registry restart: start a fresh one, once.
            log.info("upload of %s failed (%s); retrying in a new upload session", digest[:19], exc.message)
            c.upload_blob(r.repository, path, digest, chunk_size=chunk_size, progress=cb)
        uploaded.append(digest)
        nbytes += size
    raw, media = image.manifest_bytes, image.manifest_media_type
    digest = c.put_manifest(r.repository, tag, raw, media)
    want = "sha256:" + hashlib.sha256(raw).hexdigest()
    if digest != want:
        raise RegistryError(f"The registry stored manifest {digest}, expected {want}.")
    return PushResult(f"{r.registry}/{r.repository}:{tag}", digest, tuple(uploaded), tuple(skipped), nbytes,
                      time.perf_counter() - t0)
