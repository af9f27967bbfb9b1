"""OCI names and vocabulary, with no I/O: image references, media types, platform choice.

The bottom layer of the OCI code, like go-containerregistry's ``name`` package:
:mod:`nbdeploy.registry` (the distribution client) and :mod:`nbdeploy.image` (building an
image) both import it, and it imports neither.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidInputError, RegistryError

# --- media types -----------------------------------------------------------------------------------

MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

#: Layer media types whose blobs are gzip-compressed tars (OCI and Docker v2 names).
GZIP_LAYER_TYPES = frozenset({MT_OCI_LAYER_GZIP, MT_DOCKER_LAYER_GZIP})
#: Media types of an index / manifest list (one manifest per platform).
INDEX_TYPES = frozenset({MT_OCI_INDEX, MT_DOCKER_LIST})
#: The ``Accept`` header for a manifest GET: an image manifest or an index, OCI or Docker.
MANIFEST_ACCEPT = ", ".join([MT_OCI_MANIFEST, MT_OCI_INDEX, MT_DOCKER_MANIFEST, MT_DOCKER_LIST])

# --- references ------------------------------------------------------------------------------------

DOCKER_HUB = "registry-1.docker.io"
HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})

# The distribution spec's grammar for repository names and tags.
REPOSITORY_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Reference:
    """A parsed image reference: ``registry/repository[:tag][@digest]``."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, ref: str) -> Reference:
        """Parse a reference the way docker does (``python:3.11`` is Docker Hub's ``library/python``)."""
        if not isinstance(ref, str) or not ref.strip():
            raise InvalidInputError("An image reference must be a non-empty string.",
                                    hint="Example: registry.example.com/team/model:1.0", received=repr(ref))
        text = ref.strip()
        if "://" in text:
            raise InvalidInputError(f"An image reference has no URL scheme: {text!r}.",
                                    hint="Drop the 'http://' or 'https://' prefix, e.g. localhost:5000/model:1.0")
        digest = None
        if "@" in text:
            text, digest = text.split("@", 1)
            if not DIGEST_RE.match(digest):
                raise InvalidInputError(f"Invalid digest in image reference {ref!r}.",
                                        hint="A digest looks like sha256:<64 hex characters>.")
        first, _, rest = text.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
            registry, path = first, rest
        else:
            registry, path = DOCKER_HUB, text
        tag = None
        last = path.rsplit("/", 1)[-1]
        if ":" in last:
            path, tag = path.rsplit(":", 1)
            if not TAG_RE.match(tag):
                raise InvalidInputError(f"Invalid tag {tag!r} in image reference {ref!r}.",
                                        hint="Tags use letters, digits, '_', '.' and '-' (at most 128).")
        if registry in HUB_ALIASES:
            registry = DOCKER_HUB
            if "/" not in path:
                path = "library/" + path
        if not REPOSITORY_RE.match(path):
            raise InvalidInputError(f"Invalid repository name {path!r} in image reference {ref!r}.",
                                    hint="Repository names are lowercase letters, digits and separators ('.', '_', '-', '/').")
        if tag is None and digest is None:
            tag = "latest"
        return cls(registry, path, tag, digest)

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest if pinned, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


# --- content-addressed blobs -----------------------------------------------------------------------

def blob_path(store: str | Path, digest: str) -> Path:
    """Where the blob ``digest`` lives in a content-addressed store: ``STORE/<algorithm>/<hex>``
    (the layout of an OCI image layout's ``blobs`` folder)."""
    algo, hexd = digest.split(":", 1)
    return Path(store) / algo / hexd


# --- platforms -------------------------------------------------------------------------------------

def select_platform(index: dict, platform: str = "linux/amd64") -> dict:
    """Pick the manifest descriptor for ``os/arch[/variant]`` from an index / manifest list."""
    want = platform.split("/")
    for desc in index.get("manifests", []):
        p = desc.get("platform") or {}
        if [p.get("os"), p.get("architecture")] != want[:2]:
            continue
        if len(want) > 2 and p.get("variant") and p["variant"] != want[2]:
            continue
        return desc
    found = sorted({f"{(d.get('platform') or {}).get('os')}/{(d.get('platform') or {}).get('architecture')}"
                    for d in index.get("manifests", [])})
    raise RegistryError(f"The base image has no {platform} variant.", hint=f"It offers: {', '.join(found) or 'none'}.")
