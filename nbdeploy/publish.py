"""Publishing a bento as a container image: the use case the front ends call.

The top layer of the OCI code (like go-containerregistry's ``crane``): it pulls the base
image (:mod:`nbdeploy.registry`), builds on it (:mod:`nbdeploy.image`) and pushes the result
(:mod:`nbdeploy.registry`); or it hands the job to ``bentoml containerize`` and a local
builder.  Neither lower module imports this one.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from .errors import InvalidInputError, RegistryError
from .image import DEFAULT_PLATFORM, OCIImage, blob_store, build_image, image_from_store
from .oci import Reference
from .registry import PushResult, RegistryClient, pull, push_image, scrub

#: The base image with Python when neither ``base=`` nor ``$NBDEPLOY_BASE_IMAGE`` names one.
DEFAULT_BASE = "python:3.11-slim"
LOCAL_BUILDERS = ("docker", "podman", "buildah")


def default_base() -> str:
    """``$NBDEPLOY_BASE_IMAGE``, else :data:`DEFAULT_BASE` (Docker Hub's ``python:3.11-slim``)."""
    return os.environ.get("NBDEPLOY_BASE_IMAGE", "").strip() or DEFAULT_BASE


# --- daemonless: pull the base, build, push ---------------------------------------------------------

def pull_base(ref: str | Reference, *, home: str | Path | None = None, platform: str = DEFAULT_PLATFORM,
              insecure: bool | None = None, credentials=None, use_env: bool = False) -> OCIImage:
    """Pull ``ref`` for ``platform`` into the blob store and return it as an :class:`OCIImage`
    whose ``ref`` is pinned to the manifest digest the registry served."""
    store = blob_store(Path(home) if home else None)
    store.mkdir(parents=True, exist_ok=True)
    pulled = pull(ref, store, platform=platform, insecure=insecure, credentials=credentials, use_env=use_env)
    pinned = str(pulled.ref) if pulled.ref.digest else f"{pulled.ref}@{pulled.manifest_digest}"
    return image_from_store(pulled.config, pulled.layers, store, ref=pinned)


def build(bento, *, base: str | Reference | OCIImage | None = None, platform: str = DEFAULT_PLATFORM,
          home: str | Path | None = None, insecure: bool | None = None, credentials=None,
          base_env_credentials: bool = False, **build_kwargs) -> OCIImage:
    """Build the image of ``bento`` on ``base`` without a daemon.

    ``base``: an image reference, pulled from its registry (default :func:`default_base`), or
    an :class:`OCIImage`.  ``credentials`` / ``insecure`` are for the base image's registry;
    the ``NBDEPLOY_REGISTRY_*`` env vars are used for it only if ``base_env_credentials``.
    Other options go to :func:`nbdeploy.image.build_image`.
    """
    if base is None:
        base = default_base()
    if not isinstance(base, OCIImage):
        base = pull_base(base, home=home, platform=platform, insecure=insecure, credentials=credentials,
                         use_env=base_env_credentials)
    return build_image(bento, base=base, platform=platform, home=home, **build_kwargs)


# --- local builders (bentoml containerize) ----------------------------------------------------------

def detect_builder() -> str | None:
    """The first local container builder on PATH, or None."""
    for name in LOCAL_BUILDERS:
        if shutil.which(name):
            return name
    return None


def containerize(tag: str, ref: str, *, builder: str | None = None, push: bool = True) -> str:
    """Build with ``bentoml containerize`` using a local builder (docker/podman/buildah).

    Returns the image reference. Needs the builder to reach the base image's registry.
    """
    import subprocess
    import sys

    name = builder or detect_builder()
    if not name:
        raise RegistryError("No local container builder (docker, podman, buildah) was found.",
                            hint="Use the daemonless builder instead: push(..., builder='oci').")
    if name not in LOCAL_BUILDERS:
        raise InvalidInputError(f"Unknown builder {name!r}.", expected=list(LOCAL_BUILDERS), received=name)
    cmd = [sys.executable, "-m", "bentoml", "containerize", str(tag), "--backend", name, "-t", ref]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RegistryError(f"bentoml containerize with {name} failed (exit {proc.returncode}).",
                            hint=scrub(proc.stderr[-2000:], limit=600))
    if push:
        pcmd = [name, "push", ref] if name != "buildah" else ["buildah", "push", ref, f"docker://{ref}"]
        proc = subprocess.run(pcmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RegistryError(f"{name} push {ref} failed (exit {proc.returncode}).",
                                hint=scrub(proc.stderr[-2000:], limit=600))
    return ref


# --- the one call front ends use --------------------------------------------------------------------

def push(bento, ref: str, *, builder: str = "oci", base: str | None = None, insecure: bool | None = None,
         credentials=None, chunk_size: int | None = None,
         progress: Callable[[str, int, int], None] | None = None, **build_kwargs) -> PushResult:
    """Build the image of ``bento`` and push it to ``ref``; returns where it landed (``ref@sha256:...``).

    ``builder``: ``"oci"`` (default) builds without a daemon (:func:`build`);
    ``"bentoml"`` runs ``bentoml containerize`` with a detected local builder, or name one
    (``"docker"``, ``"podman"``, ``"buildah"``); ``"auto"`` uses a local builder when one exists.
    ``base``: the base image with Python; default ``$NBDEPLOY_BASE_IMAGE``, else
    ``python:3.11-slim`` from Docker Hub (set the variable where Docker Hub is out of reach).
    ``insecure`` and ``credentials`` apply to the target registry and to the base image's.
    """
    r = Reference.parse(ref)
    if builder == "auto":
        builder = "bentoml" if detect_builder() else "oci"
    if builder in ("bentoml",) + LOCAL_BUILDERS:
        t0 = time.perf_counter()
        target = f"{r.name}:{r.tag or 'latest'}"
        containerize(str(bento), target, builder=None if builder == "bentoml" else builder)
        c = RegistryClient(r.registry, insecure=insecure, credentials=credentials)
        digest = c.manifest_exists(r.repository, r.tag or "latest") or "unknown"
        return PushResult(target, digest, (), (), 0, time.perf_counter() - t0)
    if builder != "oci":
        raise InvalidInputError(f"Unknown builder {builder!r}.", expected=["oci", "bentoml", "auto", *LOCAL_BUILDERS],
                                received=builder)
    base = base or default_base()
    # Target credentials go to the base's registry only when it is the same registry.
    same = isinstance(base, str) and Reference.parse(base).registry == r.registry
    image = build(bento, base=base, insecure=insecure if same else None, credentials=credentials if same else None,
                  base_env_credentials=same, **build_kwargs)
    return push_image(image, r, insecure=insecure, credentials=credentials, chunk_size=chunk_size, progress=progress)
