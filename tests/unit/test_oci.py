"""Image references, media types and platform choice (nbdeploy.oci), without a registry.

Oracles: the reference examples of the distribution project's reference grammar
(github.com/distribution/reference, reference_test.go: which strings parse and into what),
docker's normalisation of Docker Hub names, and the media-type strings of the OCI image spec
(image-spec media-types.md) and of Docker's image manifest v2 schema 2.
"""

from __future__ import annotations

import pytest

from nbdeploy import oci
from nbdeploy.errors import InvalidInputError, RegistryError
from nbdeploy.oci import Reference, blob_path, select_platform

D = "sha256:" + "ffff" * 16
HUB = "registry-1.docker.io"


@pytest.mark.parametrize("text, expected", [
    # (registry, repository, tag, digest); names without a registry are Docker Hub's, and a
    # single-component Docker Hub name lives under library/ (docker's normalisation).
    ("python:3.11-slim", (HUB, "library/python", "3.11-slim", None)),
    ("docker.io/team/model", (HUB, "team/model", "latest", None)),
    ("index.docker.io/library/ubuntu", (HUB, "library/ubuntu", "latest", None)),
    ("localhost:5000/m:1", ("localhost:5000", "m", "1", None)),
    ("127.0.0.1:5000/a/b/c:v2", ("127.0.0.1:5000", "a/b/c", "v2", None)),
    ("ghcr.io/o/r@" + D, ("ghcr.io", "o/r", None, D)),
    # from distribution/reference's reference_test.go
    ("test_com", (HUB, "library/test_com", "latest", None)),
    ("test.com:tag", (HUB, "library/test.com", "tag", None)),
    ("test.com:5000", (HUB, "library/test.com", "5000", None)),
    ("test.com/repo:tag", ("test.com", "repo", "tag", None)),
    ("test:5000/repo", ("test:5000", "repo", "latest", None)),
    ("test:5000/repo:tag", ("test:5000", "repo", "tag", None)),
    ("test:5000/repo@" + D, ("test:5000", "repo", None, D)),
    ("test:5000/repo:tag@" + D, ("test:5000", "repo", "tag", D)),
    ("sub-dom1.foo.com/bar/baz/quux", ("sub-dom1.foo.com", "bar/baz/quux", "latest", None)),
    ("sub-dom1.foo.com/bar/baz/quux:some-long-tag", ("sub-dom1.foo.com", "bar/baz/quux", "some-long-tag", None)),
    ("b.gcr.io/test.example.com/my-app:test.example.com",
     ("b.gcr.io", "test.example.com/my-app", "test.example.com", None)),
    ("xn--n3h.com/myimage:xn--n3h.com", ("xn--n3h.com", "myimage", "xn--n3h.com", None)),
    ("foo_bar.com:8080", (HUB, "library/foo_bar.com", "8080", None)),
    ("foo/foo_bar.com:8080", (HUB, "foo/foo_bar.com", "8080", None)),
    ("lowercase:Uppercase", (HUB, "library/lowercase", "Uppercase", None)),
    ("[2001:db8::1]:5000/repo", ("[2001:db8::1]:5000", "repo", "latest", None)),
    ("a__b/c--d/e.f_g:" + "t" * 128, (HUB, "a__b/c--d/e.f_g", "t" * 128, None)),
])
def test_reference_parsing(text, expected):
    r = Reference.parse(text)
    assert (r.registry, r.repository, r.tag, r.digest) == expected
    # str() is the fully qualified form, and parsing it again changes nothing
    assert Reference.parse(str(r)) == r


@pytest.mark.parametrize("bad", [
    "", "   ", ":justtag", "@" + D, "repo@sha256:" + "f" * 34, "validname@invaliddigest:" + "f" * 64,
    "Uppercase:tag", "test:5000/Uppercase/lowercase:tag", "aa/asdf$$^/aa", "a:" + "t" * 129,
    "a:-tag", "a/", "a//b", "-a/b", "a-/b", "http://x.io/a:b", "x.io/a:b c", None, 42,
])
def test_invalid_references(bad):
    with pytest.raises(InvalidInputError):
        Reference.parse(bad)


def test_reference_parts():
    r = Reference.parse("reg.example.com/team/model:1.0@" + D)
    assert r.name == "reg.example.com/team/model"
    assert r.reference == D  # a pinned reference fetches by digest
    assert Reference.parse("reg.example.com/team/model:1.0").reference == "1.0"
    assert str(Reference.parse("python")) == "registry-1.docker.io/library/python:latest"


def test_media_types_are_the_specs_strings():
    assert oci.MT_OCI_MANIFEST == "application/vnd.oci.image.manifest.v1+json"
    assert oci.MT_OCI_INDEX == "application/vnd.oci.image.index.v1+json"
    assert oci.MT_OCI_CONFIG == "application/vnd.oci.image.config.v1+json"
    assert oci.MT_OCI_LAYER_GZIP == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert oci.MT_OCI_LAYER_TAR == "application/vnd.oci.image.layer.v1.tar"
    assert oci.MT_DOCKER_MANIFEST == "application/vnd.docker.distribution.manifest.v2+json"
    assert oci.MT_DOCKER_LIST == "application/vnd.docker.distribution.manifest.list.v2+json"
    assert oci.GZIP_LAYER_TYPES == {"application/vnd.oci.image.layer.v1.tar+gzip",
                                    "application/vnd.docker.image.rootfs.diff.tar.gzip"}
    accepted = [t.strip() for t in oci.MANIFEST_ACCEPT.split(",")]
    assert sorted(accepted) == sorted([oci.MT_OCI_MANIFEST, oci.MT_OCI_INDEX, oci.MT_DOCKER_MANIFEST,
                                       oci.MT_DOCKER_LIST])
    assert oci.INDEX_TYPES == {oci.MT_OCI_INDEX, oci.MT_DOCKER_LIST}


def test_one_definition_of_the_media_types():
    """image.py and registry.py use oci's constants rather than copies of them."""
    from nbdeploy import image, registry

    assert image.MT_OCI_MANIFEST is oci.MT_OCI_MANIFEST
    assert registry.MANIFEST_ACCEPT is oci.MANIFEST_ACCEPT
    assert registry.Reference is oci.Reference


def test_blob_path_is_the_oci_layout(tmp_path):
    assert blob_path(tmp_path, D) == tmp_path / "sha256" / ("ffff" * 16)


def test_select_platform():
    index = {"manifests": [
        {"digest": "sha256:arm", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"digest": "sha256:amd", "platform": {"os": "linux", "architecture": "amd64"}}]}
    assert select_platform(index)["digest"] == "sha256:amd"
    assert select_platform(index, "linux/arm64")["digest"] == "sha256:arm"
    assert select_platform(index, "linux/arm64/v8")["digest"] == "sha256:arm"
    with pytest.raises(RegistryError, match="s390x") as ei:
        select_platform(index, "linux/s390x")
    assert "linux/amd64" in ei.value.hint and "linux/arm64" in ei.value.hint
