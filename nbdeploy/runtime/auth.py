"""Access control for a served bundle: API keys or OIDC/JWT bearer tokens, rate limits, and
the paths of its TLS certificate (HTTPS, see :func:`tls_paths`).

One pure ASGI middleware (:class:`AuthMiddleware`) in front of everything the bundle answers:
under ``bentoml serve`` it is added to the BentoML service (so it also guards BentoML's own
routes: ``/api/*``, ``/metrics``, ``/docs``...), under the direct engine it wraps the app.
``/livez``, ``/readyz`` and ``/healthz`` always stay open for probes.

Off unless configured.  Configuration comes from the environment (and mounted secret files),
never from the bundle: a bundle or an image holds no key.  The non-secret settings may also
sit in the bundle's ``model/config.json`` under ``"auth"`` (the environment wins).

=============================  ==============================================================
``NBDEPLOY_AUTH``              ``off``, ``key`` or ``oidc``; default: ``key`` when keys are
                               given, ``oidc`` when an issuer is, else config.json, else off.
                               ``key`` with no key configured refuses every request.
``NBDEPLOY_API_KEYS``          keys or key hashes, separated by commas or whitespace
``NBDEPLOY_API_KEYS_FILE``     a file of them, one a line (``HASH [NAME]``; ``#`` comments);
                               reread when it changes (checked at most once a second) or on
                               SIGHUP: rotation without a restart
``NBDEPLOY_OIDC_ISSUER``       the exact ``iss`` a token must carry
``NBDEPLOY_OIDC_AUDIENCE``     an ``aud`` a token must carry (required with OIDC)
``NBDEPLOY_OIDC_JWKS_URL``     default: ``jwks_uri`` of ``ISSUER/.well-known/openid-configuration``
``NBDEPLOY_OIDC_JWKS_MIN_REFRESH_S``  an unknown ``kid`` refetches the JWKS at most this often
                               (default 10 s; the cache otherwise lives 10 minutes)
``NBDEPLOY_OIDC_ALGORITHMS``   allow-list, default ``RS256,ES256``; only asymmetric algorithms
                               (RS*, PS*, ES*, EdDSA): never ``none``, never HS*
``NBDEPLOY_AUTH_SCOPES``       required scope per route: ``predict=model:predict,explain=...``
                               (routes: predict, explain, metadata, drift, plots, metrics, docs)
``NBDEPLOY_AUTH_METRICS``      ``protected`` (default when auth is on) or ``open``
``NBDEPLOY_RATE_LIMIT``        ``N/s``, ``N/min`` or ``N/h`` per key, token subject or (with auth
                               off) client address; off by default.  Over it: 429 + Retry-After
``NBDEPLOY_TLS_CERT``          PEM certificate (chain) file: the server speaks HTTPS only, with
``NBDEPLOY_TLS_KEY``           this PEM private key (both or neither; default: plain HTTP).  The
                               files are checked at start: a missing, unreadable or mismatched
                               one stops the server instead of serving plain HTTP.  Under
                               ``bentoml serve`` they become the service's ``ssl`` config
                               (BentoML's ``--ssl-certfile/--ssl-keyfile`` still win).
=============================  ==============================================================

Keys are kept only as salted SHA-256 digests (``nbd-sha256$SALT$DIGEST``; a plain key given
in the environment is hashed on load) and compared with :func:`hmac.compare_digest` against
every entry, so neither the answer nor its timing says which entries exist.  Keys are random
with at least 128 bits, which is why a fast hash is enough (a slow one would cost every request).
Tokens and keys are never logged: denied requests are logged with the route, the client address
and the reason.  JWT signatures are checked with joserfc (no crypto of our own).

Standard library only, except joserfc (with ``cryptography``), imported only in OIDC mode.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import signal
import threading
import time
import urllib.parse
import urllib.request
from collections import OrderedDict

log = logging.getLogger("nbdeploy.runtime.auth")

OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz"})
MODES = ("off", "key", "oidc")
HASH_PREFIX = "nbd-sha256$"
MIN_KEY_CHARS = 16
MAX_TOKEN_CHARS = 8192
ASYMMETRIC = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
              "EdDSA", "Ed25519"}
KEY_TYPE = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
REALM = 'Bearer realm="nbdeploy"'
JWKS_MAX_BYTES = 1 << 20
JWKS_TTL_S = 600.0
JWKS_MIN_REFRESH_S = 10.0  # an unknown kid refetches the JWKS at most this often
MAX_BUCKETS = 10_000


class AuthConfigError(ValueError):
    """The access-control settings are unusable: the server must not start with them."""


def hash_key(key: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.sha256(salt + key.encode("utf-8")).hexdigest()
    return f"{HASH_PREFIX}{salt.hex()}${digest}"


def new_key() -> str:
    """A fresh API key: 256 random bits, URL-safe."""
    return "nbd_" + secrets.token_urlsafe(32)


def route_of(path: str) -> str:
    """The route name that scopes and rate limits are set for."""
    p = path.rstrip("/") or "/"
    for name in ("predict", "explain"):
        if p in (f"/{name}", f"/api/{name}", f"/v1/{name}"):
            return name
    if p in ("/metadata", "/drift", "/metrics"):
        return p[1:]
    if p == "/plots" or p.startswith("/plots/"):
        return "plots"
    if p.startswith("/docs") or p in ("/schema.json", "/nbdeploy/openapi.json") or p.startswith("/static"):
        return "docs"
    return "other"


# -- API keys ------------------------------------------------------------------------------------

def _parse_entries(text: str, source: str) -> list[tuple[bytes, str, str]]:
    """``[(salt, hex digest, name)]`` from key lines; plain keys are hashed here."""
    out = []
    for n, raw in enumerate(text.replace(",", "\n").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        value, _, name = line.partition(" ")
        name = name.strip()
        if value.startswith(HASH_PREFIX):
            try:
                salt_hex, digest = value[len(HASH_PREFIX):].split("$")
                salt = bytes.fromhex(salt_hex)
                bytes.fromhex(digest)
                if len(digest) != 64:
                    raise ValueError
            except ValueError:
                log.warning("auth: ignoring malformed key hash on line %d of %s", n, source)
                continue
        else:
            if len(value) < MIN_KEY_CHARS:
                log.warning("auth: ignoring a key shorter than %d characters on line %d of %s",
                            MIN_KEY_CHARS, n, source)
                continue
            salt_hex, digest = hash_key(value)[len(HASH_PREFIX):].split("$")
            salt = bytes.fromhex(salt_hex)
        out.append((salt, digest, name or f"key-{digest[:8]}"))
    return out


class KeyStore:
    """Salted key digests from ``$NBDEPLOY_API_KEYS`` and ``$NBDEPLOY_API_KEYS_FILE``."""

    def __init__(self, env_value: str | None, path: str | None, check_every_s: float = 1.0):
        self.env_value = env_value or ""
        self.path = path
        self.check_every_s = check_every_s
        self.entries: list[tuple[bytes, str, str]] = []
        self._stamp = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self.reload()

    def _file_stamp(self):
        try:
            st = os.stat(self.path)
            return (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            return None

    def reload(self) -> None:
        with self._lock:
            entries = _parse_entries(self.env_value, "$NBDEPLOY_API_KEYS")
            if self.path:
                self._stamp = self._file_stamp()
                try:
                    with open(self.path, encoding="utf-8") as f:
                        entries += _parse_entries(f.read(1 << 20), self.path)
                except OSError as exc:
                    log.warning("auth: cannot read the key file %s (%s): its keys are refused",
                                self.path, type(exc).__name__)
            self.entries = entries
            self._checked = time.monotonic()
        log.info("auth: %d API key(s) loaded", len(entries))

    def maybe_reload(self) -> None:
        if not self.path or time.monotonic() - self._checked < self.check_every_s:
            return
        self._checked = time.monotonic()
        if self._file_stamp() != self._stamp:
            self.reload()

    def match(self, token: str) -> str | None:
        """The key's name, or None; compares against every entry whatever matches."""
        self.maybe_reload()
        found = None
        raw = token.encode("utf-8", "surrogateescape")
        for salt, digest, name in self.entries:
            if hmac.compare_digest(hashlib.sha256(salt + raw).hexdigest(), digest):
                found = name
        return found


# -- OIDC / JWT ----------------------------------------------------------------------------------

def _fetch_json(url: str, timeout: float = 5.0) -> dict:
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - scheme checked below
        data = r.read(JWKS_MAX_BYTES + 1)
    if len(data) > JWKS_MAX_BYTES:
        raise ValueError(f"{url} answered more than {JWKS_MAX_BYTES} bytes")
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise ValueError(f"{url} did not answer a JSON object")
    return doc


def _check_url(url: str, what: str) -> str:
    u = urllib.parse.urlsplit(url)
    loopback = u.hostname in ("127.0.0.1", "::1", "localhost")
    if u.scheme != "https" and not (u.scheme == "http" and loopback):
        raise AuthConfigError(f"{what} {url!r} must be an https:// URL (plain http only on loopback).")
    return url


def _b64json(part: str) -> dict:
    pad = "=" * (-len(part) % 4)
    value = json.loads(base64.urlsafe_b64decode(part + pad))
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


class InvalidToken(Exception):
    """A bearer token that is not accepted (the reason is for logs; clients see one answer)."""


class JwtVerifier:
    def __init__(self, issuer: str, audience: str, jwks_url: str | None, algorithms: list[str],
                 leeway_s: int = 30, min_refresh_s: float = JWKS_MIN_REFRESH_S):
        if not issuer:
            raise AuthConfigError("OIDC needs an issuer ($NBDEPLOY_OIDC_ISSUER).")
        if not audience:
            raise AuthConfigError("OIDC needs an audience ($NBDEPLOY_OIDC_AUDIENCE): without one, a "
                                  "token the issuer made for any other application would be accepted.")
        bad = [a for a in algorithms if a not in ASYMMETRIC]
        if bad or not algorithms:
            raise AuthConfigError(f"Algorithms {bad or algorithms} are not allowed for OIDC: use "
                                  f"asymmetric ones ({', '.join(sorted(ASYMMETRIC))}).")
        try:
            import joserfc  # noqa: F401
        except ImportError as exc:
            raise AuthConfigError("OIDC needs the joserfc package in the bundle's environment "
                                  "(pip install joserfc).") from exc
        self.issuer = issuer
        self.audience = audience
        if not jwks_url:  # discovery document at the issuer
            _check_url(issuer, "The issuer")
        self.jwks_url = _check_url(jwks_url, "The JWKS URL") if jwks_url else None
        self.algorithms = list(algorithms)
        self.leeway_s = leeway_s
        self.min_refresh_s = min_refresh_s
        self.keys: dict = {}
        self.fetched = -math.inf
        self._lock = threading.Lock()

    def refresh(self, force: bool = False) -> None:
        """Refetch the JWKS (at most every JWKS_MIN_REFRESH_S unless the cache expired)."""
        from joserfc import jwk

        with self._lock:
            age = time.monotonic() - self.fetched
            if age < self.min_refresh_s or (not force and age < JWKS_TTL_S):
                return
            self.fetched = time.monotonic()
            try:
                url = self.jwks_url
                if url is None:
                    disc = _fetch_json(self.issuer.rstrip("/") + "/.well-known/openid-configuration")
                    url = self.jwks_url = _check_url(str(disc.get("jwks_uri") or ""), "jwks_uri")
                doc = _fetch_json(url)
            except Exception as exc:  # keep the keys we had; an outage must not open anything
                log.warning("auth: cannot fetch the JWKS: %s", type(exc).__name__)
                return
            keys = {}
            for k in doc.get("keys") or []:
                if not isinstance(k, dict) or k.get("kty") not in ("RSA", "EC", "OKP"):
                    continue  # symmetric (oct) keys are never accepted from a JWKS
                if k.get("use") not in (None, "sig"):
                    continue
                try:
                    keys[k.get("kid")] = jwk.import_key({f: v for f, v in k.items()
                                                         if f not in ("d", "p", "q", "dp", "dq", "qi")})
                except Exception:
                    continue
            self.keys = keys
            log.info("auth: JWKS loaded (%d signing keys)", len(keys))

    def verify(self, token: str) -> dict:
        """The token's claims, or :class:`InvalidToken`.  Blocking (may fetch the JWKS)."""
        from joserfc import jwt
        from joserfc.errors import JoseError

        parts = token.split(".")
        if len(parts) != 3:
            raise InvalidToken("not a compact JWS")
        try:
            header = _b64json(parts[0])
        except (ValueError, UnicodeDecodeError):
            raise InvalidToken("unreadable header") from None
        alg = header.get("alg")
        if alg not in self.algorithms:  # none, HS256 with the public key as secret, ...
            raise InvalidToken(f"algorithm {str(alg)[:20]!r} not allowed")
        kid = header.get("kid")
        self.refresh()
        key = self.keys.get(kid)
        if key is None:  # a rotated signing key: refetch once (rate-limited)
            self.refresh(force=True)
            key = self.keys.get(kid)
        if key is None:
            raise InvalidToken("unknown kid")
        if KEY_TYPE.get(alg[:2]) != key.key_type:
            raise InvalidToken("algorithm does not match the key type")
        try:
            claims = jwt.decode(token, key, algorithms=[alg]).claims
            jwt.JWTClaimsRegistry(leeway=self.leeway_s, exp={"essential": True}).validate(claims)
        except (JoseError, ValueError, TypeError) as exc:
            raise InvalidToken(type(exc).__name__) from None
        if claims.get("iss") != self.issuer:
            raise InvalidToken("wrong issuer")
        aud = claims.get("aud")
        if not (aud == self.audience or (isinstance(aud, list) and self.audience in aud)):
            raise InvalidToken("wrong audience")
        return claims


def scopes_of(claims: dict) -> set[str]:
    out: set[str] = set()
    for name in ("scope", "scp"):
        v = claims.get(name)
        if isinstance(v, str):
            out.update(v.split())
        elif isinstance(v, list):
            out.update(str(s) for s in v)
    return out


# -- rate limits ---------------------------------------------------------------------------------

def parse_rate(text: str) -> tuple[float, float]:
    """``"100/min"`` -> (tokens per second, burst)."""
    units = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600,
             "hour": 3600}
    try:
        n, _, unit = str(text).strip().partition("/")
        count = float(n)
        per = units[(unit or "s").strip().lower()]
        if not (count > 0 and math.isfinite(count)):
            raise ValueError
    except (ValueError, KeyError):
        raise AuthConfigError(f"Rate limit {str(text)[:40]!r} is not N/s, N/min or N/h.") from None
    return count / per, max(1.0, count)


class RateLimiter:
    """A token bucket per identity (bounded: the least recently seen are forgotten)."""

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = rate, burst
        self.buckets: OrderedDict[str, list] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, who: str) -> float:
        """0 when admitted, else the seconds until the next request would be."""
        now = time.monotonic()
        with self._lock:
            b = self.buckets.get(who)
            if b is None:
                b = self.buckets[who] = [self.burst, now]
                if len(self.buckets) > MAX_BUCKETS:
                    self.buckets.popitem(last=False)
            else:
                self.buckets.move_to_end(who)
                b[0] = min(self.burst, b[0] + (now - b[1]) * self.rate)
                b[1] = now
            if b[0] >= 1:
                b[0] -= 1
                return 0.0
            return (1 - b[0]) / self.rate


# -- the guard: settings + counters, one per process ---------------------------------------------

class Guard:
    def __init__(self, env: dict | None = None, config: dict | None = None):
        env = os.environ if env is None else env
        cfg = dict((config or {}).get("auth") or {})
        keys_env, keys_file = env.get("NBDEPLOY_API_KEYS"), env.get("NBDEPLOY_API_KEYS_FILE")
        issuer = env.get("NBDEPLOY_OIDC_ISSUER") or (cfg.get("oidc") or {}).get("issuer")
        mode = (env.get("NBDEPLOY_AUTH") or "").strip().lower()
        if not mode:
            mode = "key" if (keys_env or keys_file) else "oidc" if issuer else str(cfg.get("mode") or "off")
        if mode not in MODES:
            raise AuthConfigError(f"NBDEPLOY_AUTH={mode[:20]!r}: use one of {list(MODES)}.")
        self.mode = mode
        self.keys = KeyStore(keys_env, keys_file) if mode == "key" else None
        if mode == "key" and not self.keys.entries and not keys_file:
            log.warning("auth: API keys are required but none is configured: every request "
                        "except the probes is refused (set $NBDEPLOY_API_KEYS_FILE)")
        self.jwt = None
        if mode == "oidc":
            oc = dict(cfg.get("oidc") or {})
            algs = env.get("NBDEPLOY_OIDC_ALGORITHMS") or oc.get("algorithms") or "RS256,ES256"
            if isinstance(algs, str):
                algs = [a.strip() for a in algs.split(",") if a.strip()]
            self.jwt = JwtVerifier(issuer or "", env.get("NBDEPLOY_OIDC_AUDIENCE") or oc.get("audience") or "",
                                   env.get("NBDEPLOY_OIDC_JWKS_URL") or oc.get("jwks_url"), list(algs),
                                   int(env.get("NBDEPLOY_OIDC_LEEWAY_S") or oc.get("leeway_s") or 30),
                                   float(env.get("NBDEPLOY_OIDC_JWKS_MIN_REFRESH_S") or JWKS_MIN_REFRESH_S))
        scopes = env.get("NBDEPLOY_AUTH_SCOPES")
        if scopes is not None:
            self.scopes = {}
            for pair in scopes.replace(";", ",").split(","):
                if pair.strip():
                    route, _, scope = pair.partition("=")
                    if not scope.strip():
                        raise AuthConfigError(f"NBDEPLOY_AUTH_SCOPES: {pair.strip()[:40]!r} is not route=scope.")
                    self.scopes[route.strip()] = scope.strip()
        else:
            self.scopes = {str(k): str(v) for k, v in (cfg.get("scopes") or {}).items()}
        metrics = (env.get("NBDEPLOY_AUTH_METRICS") or cfg.get("metrics") or "protected").strip().lower()
        if metrics not in ("open", "protected"):
            raise AuthConfigError(f"NBDEPLOY_AUTH_METRICS={metrics[:20]!r}: use open or protected.")
        self.metrics_open = metrics == "open"
        rate = env.get("NBDEPLOY_RATE_LIMIT") or cfg.get("rate_limit")
        self.limiter = RateLimiter(*parse_rate(rate)) if rate and str(rate).lower() != "off" else None
        self.denied: dict[str, int] = {}
        self.limited = 0
        self._log_window = [0.0, 0]

    @property
    def active(self) -> bool:
        return self.mode != "off" or self.limiter is not None

    def count(self, reason: str) -> None:
        self.denied[reason] = self.denied.get(reason, 0) + 1

    def log_denied(self, status: int, scope: dict, reason: str) -> None:
        now = time.monotonic()  # at most 20 lines a second: a flood must not fill the disk
        if now - self._log_window[0] >= 1:
            self._log_window = [now, 0]
        self._log_window[1] += 1
        if self._log_window[1] <= 20:
            client = (scope.get("client") or ("?",))[0]
            log.warning("auth: %d %s %s from %s: %s", status, scope.get("method", ""),
                        route_of(scope.get("path", "")), client, reason)

    def prometheus(self) -> str:
        if not self.active:
            return ""
        out = ["# HELP nbdeploy_auth_denied_total Requests refused by access control, by reason",
               "# TYPE nbdeploy_auth_denied_total counter"]
        for reason in ("missing", "invalid", "forbidden"):
            out.append(f'nbdeploy_auth_denied_total{{reason="{reason}"}} {self.denied.get(reason, 0)}')
        out += ["# HELP nbdeploy_rate_limited_total Requests refused with 429 over the rate limit",
                "# TYPE nbdeploy_rate_limited_total counter", f"nbdeploy_rate_limited_total {self.limited}"]
        return "\n".join(out) + "\n"


_guard: Guard | None = None
_guard_lock = threading.Lock()


def current_guard() -> Guard | None:
    """The guard this process made (by :func:`guard`), or None before the first request."""
    return _guard


def guard(config: dict | None = None) -> Guard:
    """The process's guard, made on first use from the environment (+ ``config``)."""
    global _guard
    with _guard_lock:
        if _guard is None:
            _guard = Guard(config=config)
            _install_sighup(_guard)
        return _guard


def _install_sighup(g: Guard) -> None:
    if g.keys is None or threading.current_thread() is not threading.main_thread():
        return
    try:
        signal.signal(signal.SIGHUP, lambda *_: g.keys.reload())
    except (ValueError, OSError, AttributeError):  # not the main thread / no SIGHUP here
        pass


def prometheus() -> str:
    return _guard.prometheus() if _guard is not None else ""


TLS_CERT_ENV, TLS_KEY_ENV = "NBDEPLOY_TLS_CERT", "NBDEPLOY_TLS_KEY"
# TLS 1.2 suites of Mozilla's "intermediate" profile (forward secrecy, AEAD only; TLS 1.3 suites
# are not affected by this string).  BentoML's and uvicorn's default, "TLSv1", offers only
# CBC-SHA1 suites for TLS 1.2, which current clients (Python's default context: !SHA1) reject,
# leaving them TLS 1.3 or nothing; without a TLS 1.0/1.1 suite here, those versions cannot be
# negotiated whatever the image's OpenSSL configuration says.
TLS_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
               "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
               "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384")


class TLSConfigError(RuntimeError):
    """The HTTPS settings are unusable: the server must not start (rather than serve plain HTTP).
    Not a ValueError: BentoML's loader reads a ValueError raised while it loads a bento by tag
    as "not a tag" and would show its own message instead of this one."""


def tls_paths(env=None) -> tuple[str, str] | None:
    """(certificate, key) absolute paths from ``NBDEPLOY_TLS_CERT`` / ``NBDEPLOY_TLS_KEY``, or
    None (plain HTTP) when neither is set.  Only paths: the files stay where the deployment
    mounted them (a Kubernetes ``kubernetes.io/tls`` Secret, ``docker run -v``), never in the
    bundle or the image.  Raises :class:`TLSConfigError` when one is set without the other, or
    the pair cannot serve TLS (missing, unreadable, not PEM, key not the certificate's), so a
    server told to speak HTTPS never falls back to plain HTTP."""
    env = os.environ if env is None else env
    cert, key = (str(env.get(v) or "").strip() for v in (TLS_CERT_ENV, TLS_KEY_ENV))
    if not cert and not key:
        return None
    if not cert or not key:
        missing, given = (TLS_KEY_ENV, TLS_CERT_ENV) if cert else (TLS_CERT_ENV, TLS_KEY_ENV)
        raise TLSConfigError(f"HTTPS: {given} is set but {missing} is not. Expected both (a PEM "
                              f"certificate and its private key) or neither (plain HTTP); set {missing}.")
    cert, key = os.path.abspath(cert), os.path.abspath(key)
    for var, path in ((TLS_CERT_ENV, cert), (TLS_KEY_ENV, key)):
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as exc:
            raise TLSConfigError(f"HTTPS: {var}={path} cannot be read ({exc.strerror or exc}). Expected a "
                                  f"PEM file readable by this server's user (uid {os.getuid()}); mount it "
                                  f"there, or unset {TLS_CERT_ENV} and {TLS_KEY_ENV} for plain HTTP.") from None
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, ValueError, OSError) as exc:
        raise TLSConfigError(f"HTTPS: {TLS_CERT_ENV}={cert} and {TLS_KEY_ENV}={key} are not a PEM "
                              f"certificate and its unencrypted private key ({exc}). Expected e.g. the "
                              f"tls.crt and tls.key of a kubernetes.io/tls Secret.") from None
    return cert, key


def tls_service_config(env=None) -> dict:
    """``{"ssl": {...}}`` for ``@bentoml.service(**...)`` when :func:`tls_paths` names files,
    else ``{}``: stock ``bentoml serve`` then serves HTTPS only on its port (its
    ``serve_http`` takes ``ssl_certfile``/``ssl_keyfile``/``ssl_ciphers`` from this config
    unless given on the command line): TLS 1.3, and TLS 1.2 with :data:`TLS_CIPHERS`."""
    paths = tls_paths(env)
    if paths is None:
        return {}
    return {"ssl": {"enabled": True, "certfile": paths[0], "keyfile": paths[1], "ciphers": TLS_CIPHERS}}


async def _send_json(send, status: int, body: dict, headers: list) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()), *headers]})
    await send({"type": "http.response.body", "body": data})


UNAUTHORIZED = {"error": "unauthorized", "message": "This API requires a valid bearer token.",
                "hint": "Send the header Authorization: Bearer <API key or access token>."}


class AuthMiddleware:
    """Pure ASGI middleware: 401/403 without valid credentials, 429 over the rate limit."""

    def __init__(self, app, config: dict | None = None):
        self.app = app
        self.guard = guard(config)

    @staticmethod
    def _bearer(scope) -> str | None:
        for k, v in scope.get("headers") or ():
            if k == b"authorization":
                scheme, _, token = v.decode("latin-1").strip().partition(" ")
                token = token.strip()
                if scheme.lower() == "bearer" and token and len(token) <= MAX_TOKEN_CHARS:
                    return token
                return ""
        return None

    async def __call__(self, scope, receive, send):
        g = self.guard
        if scope["type"] == "lifespan" or not g.active or scope.get("path") in OPEN_PATHS:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":  # nothing of ours speaks websocket
            if g.mode != "off":
                await send({"type": "websocket.close", "code": 1008})
                return
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        route = route_of(path)
        who = None
        if g.mode != "off" and not (route == "metrics" and g.metrics_open):
            token = self._bearer(scope)
            if not token:
                g.count("missing")
                g.log_denied(401, scope, "no bearer token")
                return await _send_json(send, 401, UNAUTHORIZED, [(b"www-authenticate", REALM.encode())])
            if g.keys is not None:
                who = g.keys.match(token)
                reason = "unknown or revoked key"
                claims = {}
            else:
                from starlette.concurrency import run_in_threadpool

                try:  # in a thread: a JWKS refresh blocks on the network
                    claims = await run_in_threadpool(g.jwt.verify, token)
                    who = "sub:" + str(claims.get("sub") or "?")[:200]
                except InvalidToken as exc:
                    reason = f"token refused ({exc})"
            if who is None:
                g.count("invalid")
                g.log_denied(401, scope, reason)
                return await _send_json(send, 401, UNAUTHORIZED, [(b"www-authenticate", REALM.encode())])
            need = g.scopes.get(route)
            if need and g.jwt is not None and need not in scopes_of(claims):
                g.count("forbidden")
                g.log_denied(403, scope, f"{who} lacks scope {need}")
                return await _send_json(
                    send, 403, {"error": "forbidden", "message": f"This token lacks the scope {need!r}.",
                                "hint": "Ask the identity provider for a token with that scope."},
                    [(b"www-authenticate", f'{REALM}, error="insufficient_scope", scope="{need}"'.encode())])
        if g.limiter is not None and not (route == "metrics" and g.metrics_open):
            ident = who or "addr:" + str((scope.get("client") or ("?",))[0])
            wait = g.limiter.take(ident)
            if wait:
                g.limited += 1
                retry = max(1, math.ceil(wait))
                g.log_denied(429, scope, f"rate limit for {ident if who else 'client'}")
                return await _send_json(
                    send, 429, {"error": "rate_limited", "message": "Too many requests for this client.",
                                "hint": f"Retry after {retry} s."},
                    [(b"retry-after", str(retry).encode())])
        await self.app(scope, receive, send)
