"""The bundles nbdeploy built, as BentoML's store sees them: list, read, delete."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidInputError, NotFoundError
from .schema import validate_name, validate_tag


@dataclass
class BundleSummary:
    name: str
    version: str
    tag: str
    created: str
    path: str
    size_bytes: int
    variant: str | None = None
    framework: str | None = None
    task: str | None = None
    labels: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def _dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())


def _summary(bento) -> BundleSummary:
    labels = dict(bento.info.labels or {})
    return BundleSummary(name=bento.tag.name, version=bento.tag.version, tag=str(bento.tag),
                         created=bento.info.creation_time.isoformat(), path=str(bento.path),
                         size_bytes=_dir_size(Path(bento.path)), variant=labels.get("variant"),
                         framework=labels.get("framework"), task=labels.get("task"), labels=labels)


def _is_ours(bento) -> bool:
    return (bento.info.labels or {}).get("created-by") == "nbdeploy"


def list_bundles(name: str | None = None) -> list[BundleSummary]:
    """nbdeploy bundles in the BentoML store, newest first (optionally one name's versions)."""
    import bentoml

    if name is not None:
        validate_name(name)
    try:
        bentos = bentoml.bentos.list(name) if name else bentoml.bentos.list()
    except bentoml.exceptions.NotFound:  # a name with no versions is an empty list, not an error
        return []
    out = [_summary(b) for b in bentos if _is_ours(b)]
    out.sort(key=lambda s: s.created, reverse=True)
    return out


def get(tag: str):
    """The BentoML ``Bento`` for ``tag`` (``name`` means the latest version)."""
    import bentoml

    validate_tag(tag)
    try:
        bento = bentoml.get(tag)
    except Exception as exc:
        raise NotFoundError(f"No bundle {tag!r} in the BentoML store.",
                            hint="`nbdeploy list` shows the bundles there are.") from exc
    if not _is_ours(bento):
        raise NotFoundError(f"{tag!r} is a BentoML bundle not made by nbdeploy.",
                            hint="nbdeploy only manages bundles it built.")
    return bento


def bundle_dir(tag: str) -> Path:
    """The ``src`` folder of a bundle (service.py, model/, plots/)."""
    return Path(get(tag).path) / "src"


def read_report(tag: str) -> dict:
    """The model card (``model/metadata.json``) of a bundle, plus its plot names."""
    src = bundle_dir(tag)
    meta = json.loads((src / "model" / "metadata.json").read_text(encoding="utf-8"))
    plots = src / "plots"
    meta["plots"] = sorted(p.name for p in plots.glob("*.png")) if plots.is_dir() else []
    return meta


def plot_path(tag: str, plot: str) -> Path:
    """Path of one PNG plot of a bundle; only names listed in the bundle are accepted."""
    plots = bundle_dir(tag) / "plots"
    names = sorted(p.name for p in plots.glob("*.png")) if plots.is_dir() else []
    if plot not in names:
        raise NotFoundError(f"Bundle {tag!r} has no plot {plot!r}.", hint=f"Plots: {names}.")
    return plots / plot


def delete(tag: str) -> str:
    """Delete one version (``name:version``) of a bundle; refuses while it is being served."""
    from .serve import list_servers

    if ":" not in tag:
        raise InvalidInputError(f"Give the version to delete, e.g. {tag}:VERSION.",
                                hint="`nbdeploy list NAME` shows the versions.")
    bento = get(tag)
    full = str(bento.tag)
    if any(h.tag == full for h in list_servers()):
        raise InvalidInputError(f"{full} is being served; stop it first.",
                                hint=f"nbdeploy stop {bento.tag.name}")
    import bentoml

    bentoml.bentos.delete(full)
    return full


def prune(name: str, keep: int = 3) -> list[str]:
    """Delete all but the ``keep`` newest versions of ``name``; never a version being served."""
    from .serve import list_servers

    if keep < 1:
        raise InvalidInputError("keep must be at least 1.", expected=">= 1", received=keep)
    served = {h.tag for h in list_servers()}
    removed = []
    for s in list_bundles(name)[keep:]:
        if s.tag not in served:
            delete(s.tag)
            removed.append(s.tag)
    return removed
