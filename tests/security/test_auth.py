"""Access control and transport security of served bundles (issue 19).

API keys, OIDC/JWT against a JWKS served by a real loopback HTTP server in this test, rate
limits, HTTPS with a certificate made here and verified by the client, and that keys leak
nowhere (logs, /metadata, the bundle's files, the report).  The served checks run a real
``bentoml serve`` (and the direct engine), nothing of BentoML, onnxruntime or joserfc mocked.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from nbdeploy.runtime import auth

AUDIENCE = "nbdeploy-tests"
ROWS = None  # filled from the breast-cancer fixture


# -- helpers -------------------------------------------------------------------------------------

def call(method: str, url: str, body=None, *, token: str | None = None, context=None,
         headers: dict | None = None, timeout: float = 30.0):
    """(status, headers, parsed JSON or bytes) of a real request."""
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            status, h, raw = r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        status, h, raw = e.code, dict(e.headers), e.read()
    try:
        return status, {k.lower(): v for k, v in h.items()}, json.loads(raw)
    except ValueError:
        return status, {k.lower(): v for k, v in h.items()}, raw


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Jwks:
    """A loopback JWKS + discovery server whose key set the test changes."""

    def __init__(self):
        self.keys: list[dict] = []
        self.fetches = 0
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                if self.path == "/jwks":
                    outer.fetches += 1
                    body = json.dumps({"keys": outer.keys}).encode()
                elif self.path == "/.well-known/openid-configuration":
                    body = json.dumps({"issuer": outer.issuer, "jwks_uri": outer.issuer + "/jwks"}).encode()
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def keys_rsa():
    from joserfc import jwk

    k1 = jwk.RSAKey.generate_key(2048, parameters={"kid": "k1"})
    k2 = jwk.RSAKey.generate_key(2048, parameters={"kid": "k2"})
    return k1, k2


@pytest.fixture(scope="module")
def jwks(keys_rsa):
    s = Jwks()
    s.keys = [keys_rsa[0].as_dict(private=False)]
    yield s
    s.close()


def mint(key, issuer: str, *, aud=AUDIENCE, exp_in: float = 300, alg="RS256", **claims) -> str:
    from joserfc import jwt

    now = int(time.time())
    body = {"iss": issuer, "aud": aud, "sub": "alice", "iat": now, "exp": int(now + exp_in), **claims}
    return jwt.encode({"alg": alg, "kid": key.kid}, body, key)


def forged_none(issuer: str) -> str:
    claims = {"iss": issuer, "aud": AUDIENCE, "sub": "mallory", "exp": int(time.time()) + 300}
    return (b64(json.dumps({"alg": "none", "kid": "k1"}).encode()) + "."
            + b64(json.dumps(claims).encode()) + ".")


def forged_hs256(key, issuer: str) -> str:
    """The classic confusion: HS256 with the RSA *public* key (PEM) as the HMAC secret."""
    claims = {"iss": issuer, "aud": AUDIENCE, "sub": "mallory", "exp": int(time.time()) + 300}
    signing = (b64(json.dumps({"alg": "HS256", "kid": key.kid}).encode()) + "."
               + b64(json.dumps(claims).encode()))
    sig = hmac.new(key.as_pem(private=False), signing.encode(), hashlib.sha256).digest()
    return signing + "." + b64(sig)


# -- the pieces, in process (fast) ---------------------------------------------------------------

def test_keys_are_salted_digests_compared_against_every_entry(tmp_path):
    k = auth.new_key()
    h1, h2 = auth.hash_key(k), auth.hash_key(k)
    assert h1 != h2 and k not in h1  # salted: the same key never hashes the same twice
    store = auth.KeyStore(f"{h1} ci, plain-key-of-twenty-chars", None)
    assert store.match(k) == "ci"
    assert store.match("plain-key-of-twenty-chars").startswith("key-")
    assert store.match(k + "x") is None and store.match("") is None
    assert [n for _, _, n in auth.KeyStore("short", None).entries] == []  # under 16 chars refused


def test_key_file_is_reread_when_it_changes_and_on_sighup(tmp_path):
    from nbdeploy import keys

    f = tmp_path / "api_keys"
    a = keys.create("a", f)
    store = auth.KeyStore(None, str(f), check_every_s=0.0)
    assert store.match(a) == "a"
    b = keys.create("b", f)
    assert store.match(b) == "b"
    keys.revoke("a", f)
    assert store.match(a) is None and store.match(b) == "b"
    assert [k.name for k in keys.list_keys(f)] == ["b"]
    assert oct(f.stat().st_mode & 0o777) == "0o600"
    assert a not in f.read_text() and b not in f.read_text()


def test_bad_settings_refuse_to_start(jwks):
    bad = [({"NBDEPLOY_AUTH": "maybe"}, "NBDEPLOY_AUTH"),
           ({"NBDEPLOY_OIDC_ISSUER": jwks.issuer}, "audience"),
           ({"NBDEPLOY_OIDC_ISSUER": jwks.issuer, "NBDEPLOY_OIDC_AUDIENCE": "a",
             "NBDEPLOY_OIDC_ALGORITHMS": "RS256,HS256"}, "HS256"),
           ({"NBDEPLOY_OIDC_ISSUER": jwks.issuer, "NBDEPLOY_OIDC_AUDIENCE": "a",
             "NBDEPLOY_OIDC_ALGORITHMS": "none"}, "none"),
           ({"NBDEPLOY_OIDC_ISSUER": "http://idp.example.com", "NBDEPLOY_OIDC_AUDIENCE": "a"}, "https"),
           ({"NBDEPLOY_API_KEYS": "x" * 20, "NBDEPLOY_RATE_LIMIT": "lots"}, "Rate limit"),
           ({"NBDEPLOY_API_KEYS": "x" * 20, "NBDEPLOY_AUTH_METRICS": "sometimes"}, "METRICS")]
    for env, words in bad:
        with pytest.raises(auth.AuthConfigError, match=words):
            auth.Guard(env=env)
    assert not auth.Guard(env={}).active  # off by default
    assert auth.parse_rate("30/min") == (0.5, 30.0)


def test_jwt_verifier_against_a_real_jwks(jwks, keys_rsa):
    k1, k2 = keys_rsa
    v = auth.Guard(env={"NBDEPLOY_OIDC_ISSUER": jwks.issuer, "NBDEPLOY_OIDC_AUDIENCE": AUDIENCE,
                        "NBDEPLOY_OIDC_JWKS_MIN_REFRESH_S": "0.2"}).jwt
    assert v.verify(mint(k1, jwks.issuer))["sub"] == "alice"   # found jwks_uri by discovery
    assert v.verify(mint(k1, jwks.issuer, aud=["other", AUDIENCE]))["sub"] == "alice"
    refused = {"expired": mint(k1, jwks.issuer, exp_in=-120),
               "wrong audience": mint(k1, jwks.issuer, aud="someone-else"),
               "wrong issuer": mint(k1, "http://127.0.0.1:1"),
               "no exp": None, "alg none": forged_none(jwks.issuer),
               "hs256 with the public key": forged_hs256(k1, jwks.issuer),
               "other key, same kid": None, "garbage": "a.b.c"}
    from joserfc import jwt

    refused["no exp"] = jwt.encode({"alg": "RS256", "kid": "k1"},
                                   {"iss": jwks.issuer, "aud": AUDIENCE, "sub": "x"}, k1)
    impostor = type(k2).import_key(k2.as_dict(private=True) | {"kid": "k1"})
    refused["other key, same kid"] = mint(impostor, jwks.issuer)
    for what, token in refused.items():
        with pytest.raises(auth.InvalidToken):
            v.verify(token)
            pytest.fail(f"accepted a token with {what}")
    # a rotated signing key: an unknown kid refetches the JWKS (once, rate-limited)
    with pytest.raises(auth.InvalidToken, match="unknown kid"):
        v.verify(mint(k2, jwks.issuer))
    jwks.keys = [k1.as_dict(private=False), k2.as_dict(private=False)]
    try:
        time.sleep(0.3)
        before = jwks.fetches
        assert v.verify(mint(k2, jwks.issuer))["sub"] == "alice"
        assert jwks.fetches == before + 1
        v.verify(mint(k2, jwks.issuer))
        assert jwks.fetches == before + 1   # cached
    finally:
        jwks.keys = [k1.as_dict(private=False)]


def test_openapi_declares_what_the_guard_enforces(monkeypatch, jwks):
    from nbdeploy.runtime.openapi import _declare_security

    def doc():
        return {"paths": {"/predict": {"post": {"responses": {}}}, "/metadata": {"get": {"responses": {}}},
                          "/livez": {"get": {"security": [], "responses": {}}}}}

    def declared(guard):
        monkeypatch.setattr(auth, "current_guard", lambda: guard)
        d = doc()
        _declare_security(d, {"description": "Client error"}, None)
        return d, d["paths"]["/predict"]["post"]["responses"], d["paths"]["/metadata"]["get"]

    assert declared(auth.Guard(env={}))[0] == doc()                       # off: nothing
    d, predict, _ = declared(auth.Guard(env={"NBDEPLOY_RATE_LIMIT": "5/s"}))
    assert "security" not in d and set(predict) == {"429"}                # a limit alone: 429 only
    d, predict, metadata = declared(auth.Guard(env={"NBDEPLOY_API_KEYS": "k" * 20}))
    assert d["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": "An API key (nbdeploy keys create)."}
    assert d["security"] == [{"bearerAuth": []}] and set(predict) == {"401"} == set(metadata["responses"])
    assert d["paths"]["/livez"]["get"] == {"security": [], "responses": {}}  # probes untouched
    d, predict, metadata = declared(auth.Guard(env={
        "NBDEPLOY_OIDC_ISSUER": jwks.issuer, "NBDEPLOY_OIDC_AUDIENCE": AUDIENCE,
        "NBDEPLOY_AUTH_SCOPES": "predict=model:predict", "NBDEPLOY_RATE_LIMIT": "5/s"}))
    assert d["components"]["securitySchemes"]["bearerAuth"]["bearerFormat"] == "JWT"
    assert set(predict) == {"401", "403", "429"} and set(metadata["responses"]) == {"401", "429"}
    assert d["paths"]["/predict"]["post"]["x-required-scope"] == "model:predict"
    assert "x-required-scope" not in metadata


def test_rate_limiter_token_bucket():
    rl = auth.RateLimiter(rate=2.0, burst=3)
    assert [rl.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = rl.take("a")
    assert 0 < wait <= 0.5
    assert rl.take("b") == 0.0        # per identity
    time.sleep(wait + 0.05)
    assert rl.take("a") == 0.0


# -- served: bentoml serve with HTTPS + API keys + rate limits ----------------------------------

def tls_files(d: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate for 127.0.0.1 signed by it (PEM files)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nbdeploy test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_pem, cert_pem, key_pem = d / "ca.pem", d / "server.pem", d / "server.key"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    os.chmod(key_pem, 0o600)
    return ca_pem, cert_pem, key_pem


@pytest.fixture(scope="module")
def secure(ref_deployment, tmp_path_factory):
    """ref_deployment under stock ``bentoml serve``: HTTPS, API keys from a file, 30/min."""
    from nbdeploy import keys, serve

    d = tmp_path_factory.mktemp("secure")
    ca, cert, key = tls_files(d)
    kf = d / "api_keys"
    issued = {name: keys.create(name, kf) for name in ("main", "rotated", "flood")}
    h = serve.start(ref_deployment.tag, tls_cert=str(cert), tls_key=str(key),
                    env={"NBDEPLOY_API_KEYS_FILE": str(kf), "NBDEPLOY_RATE_LIMIT": "30/min"})
    ctx = ssl.create_default_context(cafile=str(ca))
    yield {"h": h, "url": h.url, "ctx": ctx, "keys": issued, "file": kf}
    h.stop()


ROUTES = [("POST", "/predict"), ("POST", "/explain"), ("GET", "/metadata"), ("GET", "/drift"),
          ("GET", "/plots"), ("GET", "/plots/x.png"), ("GET", "/nbdeploy/openapi.json"),
          ("GET", "/metrics"), ("POST", "/api/predict"), ("POST", "/api/explain"), ("GET", "/docs"),
          ("GET", "/docs.json"), ("GET", "/schema.json"), ("GET", "/no/such/route")]


def _rows(breast_cancer, n=2):
    _, X_test, _, _ = breast_cancer
    return X_test.iloc[:n].values.tolist()


@pytest.mark.slow
def test_https_is_verified_and_plain_http_refused(secure):
    assert secure["url"].startswith("https://127.0.0.1:")
    status, _, _ = call("GET", secure["url"] + "/readyz", context=secure["ctx"])
    assert status == 200
    with pytest.raises(urllib.error.URLError) as e:  # no CA: the client must refuse the certificate
        call("GET", secure["url"] + "/readyz", context=ssl.create_default_context())
    assert isinstance(e.value.reason, ssl.SSLCertVerificationError)
    plain = "http://" + secure["url"].split("://", 1)[1]
    got = None
    try:
        got = call("GET", plain + "/readyz", timeout=5)[0]
    except (urllib.error.URLError, ConnectionError, OSError):
        pass
    assert got is None, f"plain HTTP answered {got}"


@pytest.mark.slow
def test_every_route_needs_a_key_except_probes(secure, breast_cancer):
    url, ctx = secure["url"], secure["ctx"]
    body = {"inputs": _rows(breast_cancer)}
    for probe in ("/livez", "/readyz"):
        assert call("GET", url + probe, context=ctx)[0] == 200
    answers = set()
    for token in (None, "", "nbd_" + "A" * 43, secure["keys"]["main"] + "x"):
        for method, path in ROUTES:
            status, headers, out = call(method, url + path, body if method == "POST" else None,
                                        token=token, context=ctx,
                                        headers={"Content-Type": "text/plain"} if path == "/api/predict" else None)
            assert status == 401, (token and token[:6], path, status)
            assert headers.get("www-authenticate") == 'Bearer realm="nbdeploy"'
            answers.add(json.dumps(out, sort_keys=True))
    assert len(answers) == 1  # no answer tells a missing key from a wrong one


@pytest.mark.slow
def test_right_key_is_served_on_every_route(secure, breast_cancer):
    url, ctx, key = secure["url"], secure["ctx"], secure["keys"]["main"]
    rows = _rows(breast_cancer)
    status, _, out = call("POST", url + "/predict", {"inputs": rows}, token=key, context=ctx)
    assert status == 200 and len(out["predictions"]) == 2
    status, _, out = call("POST", url + "/api/predict", {"inputs": rows}, token=key, context=ctx)
    assert status == 200 and len(out["predictions"]) == 2
    expected = {"/metadata": 200, "/drift": 200, "/plots": 200, "/nbdeploy/openapi.json": 200,
                "/metrics": 200, "/docs.json": 200, "/plots/x.png": 404}
    for path, code in expected.items():
        assert call("GET", url + path, token=key, context=ctx)[0] == code, path
    assert call("POST", url + "/explain", {"inputs": rows}, token=key, context=ctx)[0] == 501  # no explainer


@pytest.mark.slow
def test_revoked_key_is_refused_without_restart(secure, breast_cancer):
    from nbdeploy import keys

    url, ctx, k = secure["url"], secure["ctx"], secure["keys"]["rotated"]
    assert call("GET", url + "/metadata", token=k, context=ctx)[0] == 200
    keys.revoke("rotated", secure["file"])
    new = keys.create("rotated2", secure["file"])
    deadline = time.monotonic() + 10
    while call("GET", url + "/metadata", token=k, context=ctx)[0] != 401:
        assert time.monotonic() < deadline, "the revoked key still works"
        time.sleep(0.3)
    assert call("GET", url + "/metadata", token=new, context=ctx)[0] == 200
    secure["keys"]["rotated2"] = new


@pytest.mark.slow
def test_rate_limit_answers_429_with_retry_after_and_counts_it(secure):
    url, ctx = secure["url"], secure["ctx"]
    statuses, retry = [], None
    for _ in range(45):
        status, headers, out = call("GET", url + "/metadata", token=secure["keys"]["flood"], context=ctx)
        statuses.append(status)
        if status == 429:
            retry = headers.get("retry-after")
            assert out["error"] == "rate_limited"
    assert statuses[:25] == [200] * 25 and 429 in statuses
    assert retry is not None and 1 <= int(retry) <= 2   # 30/min: one request every 2 s
    # another key is not slowed down by this one
    assert call("GET", url + "/metadata", token=secure["keys"]["main"], context=ctx)[0] == 200
    status, _, text = call("GET", url + "/metrics", token=secure["keys"]["main"], context=ctx)
    text = text.decode() if isinstance(text, bytes) else str(text)
    limited = [ln for ln in text.splitlines() if ln.startswith("nbdeploy_rate_limited_total")]
    assert limited and float(limited[0].split()[-1]) >= statuses.count(429)
    assert 'nbdeploy_auth_denied_total{reason="missing"}' in text


@pytest.mark.slow
def test_keys_never_leak(secure, ref_deployment):
    """Not in the server's log, /metadata, the bundle's files (what an image is built from) or
    the report."""
    import bentoml

    url, ctx = secure["url"], secure["ctx"]
    # a denied request with a token, then a served one: both would be logged if anything were
    call("GET", url + "/metadata", token="nbd_wrong-key-that-must-not-be-logged", context=ctx)
    status, _, meta = call("GET", url + "/metadata", token=secure["keys"]["main"], context=ctx)
    assert status == 200
    secrets_ = list(secure["keys"].values()) + ["nbd_wrong-key-that-must-not-be-logged"]
    log = secure["h"].logs(tail=None)
    assert "auth:" in log and "401" in log   # denials are logged...
    blobs = {"log": log, "metadata": json.dumps(meta),
             "report": json.dumps(ref_deployment.to_dict(), default=str)}
    root = Path(bentoml.get(ref_deployment.tag).path)
    for p in root.rglob("*"):
        if p.is_file():
            blobs[str(p)] = p.read_bytes().decode("latin-1")
    for where, text in blobs.items():
        for s in secrets_:
            assert s not in text, f"a key leaked into {where}"
            assert s.removeprefix("nbd_")[:20] not in text, f"part of a key leaked into {where}"


# -- served: bentoml serve with OIDC --------------------------------------------------------------

@pytest.fixture(scope="module")
def oidc(ref_deployment, jwks):
    from nbdeploy import serve

    h = serve.start(ref_deployment.tag, env={
        "NBDEPLOY_OIDC_ISSUER": jwks.issuer, "NBDEPLOY_OIDC_AUDIENCE": AUDIENCE,
        "NBDEPLOY_OIDC_JWKS_URL": jwks.issuer + "/jwks", "NBDEPLOY_AUTH_SCOPES": "predict=model:predict",
        "NBDEPLOY_AUTH_METRICS": "open"})
    yield h
    h.stop()


@pytest.mark.slow
def test_oidc_tokens_under_bentoml_serve(oidc, jwks, keys_rsa, breast_cancer):
    k1, _ = keys_rsa
    url, body = oidc.url, {"inputs": _rows(breast_cancer)}
    good = mint(k1, jwks.issuer, scope="openid model:predict")
    status, _, out = call("POST", url + "/predict", body, token=good)
    assert status == 200 and len(out["predictions"]) == 2
    assert call("POST", url + "/api/predict", body, token=good)[0] == 200
    bad = {"expired": mint(k1, jwks.issuer, exp_in=-120, scope="model:predict"),
           "audience": mint(k1, jwks.issuer, aud="another-app", scope="model:predict"),
           "issuer": mint(k1, "http://127.0.0.1:9", scope="model:predict"),
           "alg none": forged_none(jwks.issuer),
           "HS256 with the RSA public key": forged_hs256(k1, jwks.issuer)}
    for what, token in bad.items():
        status, headers, _ = call("POST", url + "/predict", body, token=token)
        assert status == 401, what
        assert headers["www-authenticate"].startswith("Bearer")
    # per-route scope: a valid token without it reads the model card but cannot predict
    plain = mint(k1, jwks.issuer, scope="openid")
    assert call("GET", url + "/metadata", token=plain)[0] == 200
    status, headers, out = call("POST", url + "/predict", body, token=plain)
    assert status == 403 and 'error="insufficient_scope"' in headers["www-authenticate"]
    assert call("GET", url + "/metrics")[0] == 200        # opened by NBDEPLOY_AUTH_METRICS=open
    assert call("GET", url + "/metadata")[0] == 401
    log = oidc.logs(tail=None)
    assert "auth: 401" in log and "auth: 403" in log   # denials are logged, tokens are not:
    for token in [good, plain, *bad.values()]:
        for part in token.split(".")[1:]:          # claims and signature
            assert not part or part[:24] not in log


@pytest.mark.slow
def test_served_api_conforms_to_its_document_with_auth_on(oidc, jwks, keys_rsa):
    """schemathesis over the bundle's OpenAPI document, through the token check: valid and
    invalid inputs, no 5xx, documented answers."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    hdr = {"Authorization": "Bearer " + mint(keys_rsa[0], jwks.issuer, exp_in=900, scope="model:predict")}
    assert call("GET", oidc.url + "/nbdeploy/openapi.json")[0] == 401
    schema = schemathesis.openapi.from_url(oidc.url + "/nbdeploy/openapi.json", headers=hdr, timeout=30)
    # the document declares what the guard enforces: a bearer JWT, the per-route scope, open probes
    doc = schema.raw_schema
    scheme = doc["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "bearer", "JWT")
    assert jwks.issuer in scheme["description"] and doc["security"] == [{"bearerAuth": []}]
    predict = doc["paths"]["/predict"]["post"]
    assert predict["x-required-scope"] == "model:predict" and {"401", "403"} <= set(predict["responses"])
    assert "403" not in doc["paths"]["/metadata"]["get"]["responses"]
    assert doc["paths"]["/readyz"]["get"]["security"] == [] == doc["paths"]["/livez"]["get"]["security"]
    for path, method in (("/predict", "POST"), ("/metadata", "GET"), ("/drift", "GET")):
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if method == "POST" else (
                GenerationMode.POSITIVE,):
            @given(case=schema[path][method].as_strategy(generation_mode=mode))
            @settings(max_examples=20, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def check(case):
                response = case.call_and_validate(base_url=oidc.url, headers=hdr, timeout=30)
                # negative generation also leaves the declared token out: then, and only then, 401
                sent = response.request.headers.get("Authorization") == hdr["Authorization"]
                assert response.status_code != 403
                assert (response.status_code == 401) is not sent, (sent, response.status_code)

            check()


# -- served: the direct engine ------------------------------------------------------------------

@pytest.mark.slow
def test_direct_engine_is_guarded_too(ref_deployment, breast_cancer, tmp_path):
    from nbdeploy import keys, serve

    kf = tmp_path / "api_keys"
    key = keys.create("ci", kf)
    h = serve.start(ref_deployment.tag, engine="direct", env={"NBDEPLOY_API_KEYS_FILE": str(kf)})
    try:
        body = {"inputs": _rows(breast_cancer)}
        for method, path in [("POST", "/predict"), ("POST", "/api/predict"), ("GET", "/metrics"),
                             ("GET", "/schema.json"), ("GET", "/metadata")]:
            assert call(method, h.url + path, body if method == "POST" else None)[0] == 401, path
            assert call(method, h.url + path, body if method == "POST" else None, token=key)[0] == 200, path
        for probe in ("/livez", "/readyz", "/healthz"):
            assert call("GET", h.url + probe)[0] == 200
        _, _, text = call("GET", h.url + "/metrics", token=key)
        assert 'nbdeploy_auth_denied_total{reason="missing"} 5' in text.decode()
    finally:
        h.stop()


@pytest.mark.slow
def test_sighup_reloads_the_key_file_under_the_direct_engine(ref_deployment, monkeypatch, tmp_path):
    """Revoke a key by editing the local key file so that the periodic check cannot see it (same
    size, inode and mtime): the key keeps working until SIGHUP, then gets 401, no restart."""
    import signal

    from nbdeploy import keys, serve

    monkeypatch.setenv("NBDEPLOY_HOME", str(tmp_path / "home"))
    gone, kept = keys.create("gone"), keys.create("kept")
    h = serve.start(ref_deployment.tag, engine="direct", auth="key")
    try:
        url = h.url + "/metadata"
        assert call("GET", url, token=gone)[0] == 200 and call("GET", url, token=kept)[0] == 200
        f = keys.keys_file()
        st = f.stat()
        text = f.read_text()
        line = next(ln for ln in text.splitlines() if ln.split("#")[0].split()[1:2] == ["gone"])
        digest = line.split()[0].rsplit("$", 1)[1]
        other = "".join("0" if c != "0" else "1" for c in digest)   # same length, matches nothing
        with open(f, "r+", encoding="utf-8") as fh:                  # in place: same inode
            fh.write(text.replace(line, line.replace(digest, other)))
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert (f.stat().st_ino, f.stat().st_size, f.stat().st_mtime_ns) == (st.st_ino, st.st_size,
                                                                            st.st_mtime_ns)
        time.sleep(1.5)   # past the once-a-second check: it must not have noticed anything
        assert call("GET", url, token=gone)[0] == 200
        os.kill(h.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while call("GET", url, token=gone)[0] != 401:
            assert time.monotonic() < deadline, "SIGHUP did not reload the key file"
            time.sleep(0.2)
        assert call("GET", url, token=kept)[0] == 200   # the same process, the other key still good
        assert serve.find(h.id) and h.pid == serve.find(h.id)[0].pid
        assert call("GET", h.url + "/readyz")[0] == 200
    finally:
        h.stop()


@pytest.mark.slow
def test_local_serve_with_auth_key_and_snippets_that_carry_the_header(ref_deployment, monkeypatch, tmp_path):
    """``serve.start(auth="key")`` reads the local key file of ``nbdeploy keys``; the report's
    curl and Python snippets send the header from $NBDEPLOY_API_KEY and work as printed."""
    import subprocess
    import sys
    from types import SimpleNamespace

    from nbdeploy import keys, report, serve
    from nbdeploy.cli import main

    monkeypatch.setenv("NBDEPLOY_HOME", str(tmp_path / "home"))
    assert main(["keys", "create", "laptop"]) == 0
    key = keys.create("second")
    h = serve.start(ref_deployment.tag, engine="direct", auth="key")
    try:
        assert h.auth == "key" and serve.find(h.id)[0].auth == "key"   # recorded for front ends
        d = SimpleNamespace(converted=ref_deployment.converted, tag=ref_deployment.tag, server=h)
        snips = report.snippets(d, h.url)
        assert "Authorization: Bearer $NBDEPLOY_API_KEY" in snips["curl"]
        assert key not in json.dumps(snips)
        env = dict(os.environ, NBDEPLOY_API_KEY=key)
        out = subprocess.run(["bash", "-c", snips["curl"] + " --fail -sS"], env=env, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0 and "predictions" in out.stdout, out.stderr
        out = subprocess.run([sys.executable, "-c", snips["python"]], env=env, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0 and "predictions" in out.stdout, out.stderr[-2000:]
        env["NBDEPLOY_API_KEY"] = key[:-1] + ("A" if key[-1] != "A" else "B")
        out = subprocess.run(["bash", "-c", snips["curl"] + " --fail -sS"], env=env, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode != 0 and "401" in out.stderr
        plain = report.snippets(SimpleNamespace(converted=ref_deployment.converted, tag="t", server=None), None)
        assert "Authorization" not in plain["curl"] + plain["python"]
        assert key not in h.logs(tail=None)
    finally:
        h.stop()


def test_cli_k8s_with_keys_and_tls_ingress(ref_deployment, tmp_path):
    import kubernetes_validate
    import yaml

    from nbdeploy import keys
    from nbdeploy.cli import main

    kf = tmp_path / "api_keys"
    key = keys.create("prod", kf)
    out = tmp_path / "m.yaml"
    image = "registry.example.com/ml/ref:1@sha256:" + "cd" * 32
    assert main(["k8s", ref_deployment.tag, "--image", image, "--auth", "key", "--keys-file", str(kf),
                 "--rate-limit", "50/s", "--ingress-host", "ref.example.com", "--tls-secret", "ref-tls",
                 "-o", str(out)]) == 0
    text = out.read_text()
    assert key not in text and "nbd-sha256$" in text
    kinds = [m["kind"] for m in yaml.safe_load_all(text)]
    assert kinds[0] == "Secret" and sorted(kinds[1:]) == sorted(
        ["Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Ingress"])
    assert kubernetes_validate.validate_file(str(out), "1.33.0", strict=True, quiet=True, no_warn=True) == 0
    assert main(["k8s", ref_deployment.tag, "--image", image, "--auth", "oidc",
                 "--oidc-issuer", "https://idp.example.com"]) == 2   # no audience: a clear error


@pytest.mark.slow
def test_magic_deploy_serve_auth_key(monkeypatch, tmp_path, breast_cancer):
    """``%deploy ... --serve --auth key`` in a real IPython shell: the server needs the key, the
    key goes into the session's environment and into no output."""
    from IPython.testing import globalipapp
    from IPython.utils.capture import capture_output

    monkeypatch.setenv("NBDEPLOY_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NBDEPLOY_API_KEY", raising=False)   # restored (removed) afterwards
    globalipapp.start_ipython()
    ip = globalipapp.get_ipython()
    ip.run_line_magic("load_ext", "nbdeploy")
    ip.run_cell("from sklearn.datasets import load_iris\n"
                "from sklearn.linear_model import LogisticRegression\n"
                "Xa, ya = load_iris(return_X_y=True)\n"
                "auth_model = LogisticRegression(max_iter=500).fit(Xa, ya)\n")
    with capture_output() as cap:
        d = ip.run_line_magic("deploy", "auth_model --sample Xa[:60] --auth key --text")
    assert d is None and "--auth applies to the local server" in cap.stderr
    with capture_output() as cap:
        d = ip.run_line_magic("deploy", "auth_model --sample Xa[:60] --labels ya[:60] --name magic-auth "
                                        "--quantize none --explain none --budget 1 --serve --auth key --text")
    try:
        assert d is not None, cap.stderr
        key = os.environ["NBDEPLOY_API_KEY"]
        assert key not in cap.stdout + cap.stderr and "NBDEPLOY_API_KEY" in cap.stdout
        rows = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}
        assert call("POST", d.server.url + "/predict", rows)[0] == 401
        status, _, out = call("POST", d.server.url + "/predict", rows, token=key)
        assert status == 200 and len(out["predictions"]) == 1
        assert d.server.auth == "key"
    finally:
        if d is not None:
            d.stop()
