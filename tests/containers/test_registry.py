"""The OCI distribution client against a real registry (Debian's docker-registry on loopback)."""

from __future__ import annotations

import base64
import copy
import gzip
import json
import logging
import os
import subprocess

import pytest

from nbdeploy.errors import InvalidInputError, RegistryError
from nbdeploy.image import OCIImage, image_from_rootfs
from nbdeploy.oci import MT_OCI_INDEX, Reference
from nbdeploy.publish import push
from nbdeploy.registry import RegistryClient, is_loopback, pull, push_image, resolve_credentials


def small_image(tmp_path, mb: int = 0, name: str = "img") -> OCIImage:
    """A one-layer image; ``mb`` megabytes of incompressible data so uploads take several chunks."""
    root = tmp_path / f"{name}-rootfs"
    (root / "data").mkdir(parents=True)
    (root / "hello.txt").write_text(f"hello from {name}\n")
    if mb:
        (root / "data" / "blob.bin").write_bytes(os.urandom(mb << 20))
    return image_from_rootfs(root, home=tmp_path / "home", compresslevel=1)


# --- pure logic ----------------------------------------------------------------------------------

def test_https_by_default_http_only_for_loopback_or_insecure():
    assert RegistryClient("registry.example.com").base == "https://registry.example.com"
    assert RegistryClient("10.0.0.5:5000").scheme == "https"
    assert RegistryClient("127.0.0.1:5000").scheme == "http"
    assert RegistryClient("localhost:5000").scheme == "http"
    assert RegistryClient("[::1]:5000").scheme == "http"
    assert RegistryClient("10.0.0.5:5000", insecure=True).scheme == "http"
    assert RegistryClient("127.0.0.1:5000", insecure=False).scheme == "https"
    assert is_loopback("127.1.2.3") and not is_loopback("example.com:443")


def test_credentials_from_env_and_docker_config(tmp_path, monkeypatch):
    monkeypatch.delenv("NBDEPLOY_REGISTRY_USER", raising=False)
    monkeypatch.delenv("NBDEPLOY_REGISTRY_PASSWORD", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert resolve_credentials("reg.example.com") is None
    (tmp_path / "config.json").write_text(json.dumps({"auths": {
        "https://reg.example.com": {"auth": base64.b64encode(b"bob:pa:ss").decode()},
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:hubpw").decode()}}}))
    c = resolve_credentials("reg.example.com")
    assert (c.username, c.password) == ("bob", "pa:ss") and "docker config" in c.source
    assert resolve_credentials(Reference.parse("python:3.11").registry).username == "hub"
    assert "pa:ss" not in repr(c)
    monkeypatch.setenv("NBDEPLOY_REGISTRY_USER", "envuser")
    monkeypatch.setenv("NBDEPLOY_REGISTRY_PASSWORD", "envpw")
    assert resolve_credentials("reg.example.com").username == "envuser"
    assert resolve_credentials("reg.example.com", use_env=False).username == "bob"
    assert resolve_credentials("x", ("u", "p")).password == "p"


# --- against a real registry ---------------------------------------------------------------------

def test_unreachable_registry_is_a_clear_error(tmp_path):
    from containers.fixtures import free_port

    img = small_image(tmp_path)
    with pytest.raises(RegistryError) as ei:
        push_image(img, f"127.0.0.1:{free_port()}/x:1")
    assert "Cannot reach registry" in ei.value.message and ei.value.hint


def test_push_skips_blobs_the_registry_has(fresh_registry, tmp_path):
    reg = fresh_registry
    img = small_image(tmp_path, mb=1)
    first = push_image(img, f"{reg.host}/skip/me:1")
    assert len(first.uploaded) == 2 and not first.skipped  # layer + config
    assert reg.count("POST", "/blobs/uploads/") == 2
    second = push_image(img, f"{reg.host}/skip/me:2")
    assert not second.uploaded and len(second.skipped) == 2 and second.bytes_uploaded == 0
    assert second.digest == first.digest
    # Checked on the registry's side too: no new upload sessions, only HEADs.
    assert reg.count("POST", "/blobs/uploads/") == 2
    assert reg.count("HEAD", "/blobs/sha256:") >= 4
    assert str(second) == f"{reg.host}/skip/me:2@{first.digest}"


def test_pull_picks_linux_amd64_from_an_index(registry, tmp_path):
    amd = small_image(tmp_path, name="multi")
    arm_cfg = copy.deepcopy(amd.config)
    arm_cfg["architecture"] = "arm64"
    arm = OCIImage(arm_cfg, amd.layers, amd.store)
    repo = "multi/arch"
    a = push_image(amd, f"{registry.host}/{repo}:amd64")
    b = push_image(arm, f"{registry.host}/{repo}:arm64")
    index = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": [
        {"mediaType": arm.manifest_media_type, "digest": b.digest, "size": len(arm.manifest_bytes),
         "platform": {"os": "linux", "architecture": "arm64"}},
        {"mediaType": amd.manifest_media_type, "digest": a.digest, "size": len(amd.manifest_bytes),
         "platform": {"os": "linux", "architecture": "amd64"}}]}
    RegistryClient(registry.host).put_manifest(repo, "multi", json.dumps(index).encode(), MT_OCI_INDEX)
    got = pull(f"{registry.host}/{repo}:multi", tmp_path / "blobs")
    assert got.manifest_digest == a.digest and got.config["architecture"] == "amd64"
    assert (tmp_path / "blobs" / "sha256" / amd.layers[0].digest.split(":")[1]).exists()
    assert pull(f"{registry.host}/{repo}:multi", tmp_path / "blobs", platform="linux/arm64").config[
        "architecture"] == "arm64"
    with pytest.raises(RegistryError, match="not found"):
        pull(f"{registry.host}/{repo}:nope", tmp_path / "blobs")


def test_wrong_credentials_and_no_leaks(auth_registry, tmp_path, monkeypatch, caplog):
    reg = auth_registry
    img = small_image(tmp_path)
    ref = f"{reg.host}/private/model:1"
    monkeypatch.delenv("NBDEPLOY_REGISTRY_USER", raising=False)
    monkeypatch.delenv("NBDEPLOY_REGISTRY_PASSWORD", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(RegistryError, match="requires a login") as anon:
        push_image(img, ref)
    wrong = "wrong-" + os.urandom(6).hex()
    with pytest.raises(RegistryError, match="rejected the credentials") as bad:
        push_image(img, ref, credentials=("alice", wrong))
    assert "NBDEPLOY_REGISTRY_USER" in bad.value.hint
    for exc in (anon.value, bad.value):
        assert wrong not in str(exc) and reg.password not in str(exc)
    # Right password from the environment ...
    monkeypatch.setenv("NBDEPLOY_REGISTRY_USER", reg.user)
    monkeypatch.setenv("NBDEPLOY_REGISTRY_PASSWORD", reg.password)
    ok = push_image(img, ref)
    # ... and from docker's config.json.
    monkeypatch.delenv("NBDEPLOY_REGISTRY_USER")
    monkeypatch.delenv("NBDEPLOY_REGISTRY_PASSWORD")
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "config.json").write_text(json.dumps({"auths": {reg.host: {
        "auth": base64.b64encode(f"{reg.user}:{reg.password}".encode()).decode()}}}))
    again = push_image(img, f"{reg.host}/private/model:2")
    assert again.digest == ok.digest and not again.uploaded
    token = base64.b64encode(f"{reg.user}:{reg.password}".encode()).decode()
    for text in (caplog.text, json.dumps(ok.to_dict()), ok._repr_html_(),
                 img.config_bytes.decode(), img.manifest_bytes.decode()):
        assert reg.password not in text and wrong not in text and token not in text
    assert reg.password.encode() not in gzip.decompress(img.layers[0].path.read_bytes())


@pytest.mark.slow
def test_push_cut_off_halfway_then_retry(fresh_registry, tmp_path):
    """Kill the registry mid-upload: a clear error, no tag; restart it: the retry completes."""
    reg = fresh_registry
    img = small_image(tmp_path, mb=6)
    ref = f"{reg.host}/cut/off:1"
    seen = []

    def kill_midway(digest, done, total):
        seen.append(done)
        if done >= 2 << 20 and reg.proc.poll() is None:
            reg.kill()

    with pytest.raises(RegistryError, match="Cannot reach registry"):
        push_image(img, ref, chunk_size=1 << 20, progress=kill_midway)
    assert seen and seen[-1] < img.layers[0].size  # really cut off halfway
    reg.start()
    client = RegistryClient(reg.host)
    assert client.manifest_exists("cut/off", "1") is None  # the tag never points at a partial image
    result = push_image(img, ref, chunk_size=1 << 20)
    assert result.digest == img.digest
    # An independent client agrees on what the tag points at.
    from containers.fixtures import need_tools

    need_tools("skopeo")
    out = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == json.loads(img.manifest_bytes)
    blob = client.get_blob("cut/off", img.layers[0].digest, tmp_path / "pulled.blob")
    assert blob.read_bytes() == img.layers[0].path.read_bytes()


@pytest.mark.slow
def test_push_bento_with_env_credentials_leaks_nothing(auth_registry, bentos, base_image_ref, nbdeploy_home,
                                                     monkeypatch, caplog):
    """A real bento image pushed with credentials: none in logs, result, config, history or layers."""
    reg = auth_registry
    monkeypatch.setenv("NBDEPLOY_REGISTRY_USER", reg.user)
    monkeypatch.setenv("NBDEPLOY_REGISTRY_PASSWORD", reg.password)
    caplog.set_level(logging.DEBUG)
    result = push(bentos["v1"], f"{reg.host}/team/tiny:v1", base=base_image_ref, home=nbdeploy_home)
    assert result.pinned.startswith(f"{reg.host}/team/tiny:v1@sha256:")
    assert len(result.uploaded) == 4  # base layer (other registry: no mount), deps, bento, config
    from nbdeploy.publish import build

    img = build(bentos["v1"], base=base_image_ref, home=nbdeploy_home)
    assert img.digest == result.digest
    secret = reg.password.encode()
    assert secret not in img.config_bytes and secret not in img.manifest_bytes
    assert reg.password not in caplog.text and reg.password not in json.dumps(result.to_dict())
    for layer in img.layers[-2:]:
        assert secret not in gzip.decompress(layer.path.read_bytes())


def test_bearer_token_auth(token_registry, tmp_path, monkeypatch, caplog):
    """Bearer challenge -> token service (basic creds) -> JWT; anonymous pull, authenticated push."""
    reg = token_registry
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker"))
    monkeypatch.delenv("NBDEPLOY_REGISTRY_USER", raising=False)
    monkeypatch.delenv("NBDEPLOY_REGISTRY_PASSWORD", raising=False)
    caplog.set_level(logging.DEBUG)
    img = small_image(tmp_path, mb=1)
    ref = f"{reg.host}/tok/model:1"
    with pytest.raises(RegistryError, match="requires a login"):
        push_image(img, ref)  # anonymous: the token only grants pull
    with pytest.raises(RegistryError, match="refused the credentials") as bad:
        push_image(img, ref, credentials=("carol", "not-it"))
    assert "not-it" not in str(bad.value)
    result = push_image(img, ref, credentials=("carol", reg.password))
    assert result.digest == img.digest
    scopes = [s for r in reg.tokens.requests if r["user"] == "carol" for s in r["scope"]]
    assert "repository:tok/model:pull,push" in scopes
    # Anonymous pull works with a pull-only token, as with public images on Docker Hub.
    got = pull(ref, tmp_path / "blobs")
    assert got.manifest_digest == result.digest
    assert reg.password not in caplog.text


def test_containerize_needs_a_local_builder(tmp_path, monkeypatch):
    """builder='bentoml' is explicit; without docker/podman/buildah it says what to do instead."""
    from nbdeploy.publish import containerize, detect_builder

    monkeypatch.setenv("PATH", str(tmp_path))  # no builder on PATH
    assert detect_builder() is None
    with pytest.raises(RegistryError, match="No local container builder") as ei:
        push("tiny:v1", "127.0.0.1:1/x:1", builder="bentoml")
    assert "oci" in ei.value.hint
    with pytest.raises(InvalidInputError):
        push("tiny:v1", "127.0.0.1:1/x:1", builder="kaniko")
    with pytest.raises(InvalidInputError):
        containerize("tiny:v1", "127.0.0.1:1/x:1", builder="kaniko")


def test_private_ca_is_used_even_with_a_ca_bundle_in_the_environment(tls_registry, tmp_path, monkeypatch):
    """``verify=CA`` reaches every request: requests would let REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE
    (set in many CI and container images) override a session's verify and fail on the private CA."""
    reg = tls_registry
    system = "/etc/ssl/certs/ca-certificates.crt"
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", system)
    monkeypatch.setenv("CURL_CA_BUNDLE", system)
    img = small_image(tmp_path)
    ref = f"{reg.host}/tls/model:1"
    with pytest.raises(RegistryError, match="TLS error") as ei:  # the system CAs do not know it
        push_image(img, ref, client=RegistryClient(reg.host, insecure=False, retries=1))
    assert "REQUESTS_CA_BUNDLE" in ei.value.hint
    result = push_image(img, ref, client=RegistryClient(reg.host, insecure=False, verify=str(reg.cert)))
    digest, _ = reg.manifest("tls/model", "1")  # read back over HTTPS, outside our client
    assert result.digest == digest == img.digest
