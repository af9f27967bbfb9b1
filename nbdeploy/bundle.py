"""bundle: render the service template and build a bento in the local BentoML store.

A bundle is a plain folder: ``service.py`` (from ``templates/``), ``nbdeploy_runtime/`` (a
copy of :mod:`nbdeploy.runtime`), ``model/`` (ONNX + JSON + .npy), ``plots/`` (PNG) and a
pinned ``requirements.txt``, pinned from :data:`DEPENDENCIES` (what the served code may import,
and when; :mod:`nbdeploy.portability` checks finished bundles against the same list).  Nothing in
it is pickled.  The bento is built from a staging folder and only appears in the store once
BentoML has finished writing it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
import shutil
import string
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata as _md
from pathlib import Path

from ._version import __version__
from .errors import BundleError
from .runtime.auth import TLS_CERT_ENV, TLS_KEY_ENV
from .schema import validate_name

TEMPLATES = Path(__file__).parent / "templates"
MODEL_ROUTES = ["/predict", "/explain", "/metadata", "/drift", "/plots"]
RUNTIME = Path(__file__).parent / "runtime"
TLS_ENV = (TLS_CERT_ENV, TLS_KEY_ENV)


def _version_of(dist: str) -> str | None:
    try:
        return _md.version(dist)
    except _md.PackageNotFoundError:
        return None


def new_version() -> str:
    """Sortable, unique bento version: UTC time plus a random suffix."""
    now = _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


@dataclass(frozen=True)
class Dependency:
    """One module the served bundle's code may import, and the distribution that provides it."""

    module: str                 # top-level import name in service.py / nbdeploy_runtime/
    dists: tuple[str, ...]      # distributions providing it; the first is the one pinned
    when: str                   # ALWAYS, IF_INSTALLED, one of FEATURES or several joined by "+"

    def needed(self, serves: set[str] | frozenset[str]) -> bool:
        """Whether a bundle serving ``serves`` (:data:`FEATURES`) needs this module."""
        if self.when in (ALWAYS, IF_INSTALLED):
            return self.when == ALWAYS
        return set(self.when.split("+")) <= set(serves)


ALWAYS = "always"
#: pinned when installed where the bundle is built; imported only if turned on where it is served
IF_INSTALLED = "if-installed"
#: what a bundle serves beyond predictions, each needing its own packages
#: ("shap": TreeSHAP, per-token or image SHAP; "lime": LIME; "image": image files; "text": raw text)
FEATURES = ("shap", "lime", "image", "text")

#: Everything the served bundle (service.py and nbdeploy_runtime/) may import: the one list
#: that :func:`requirements` pins from and :mod:`nbdeploy.portability` checks against.
DEPENDENCIES: tuple[Dependency, ...] = (
    Dependency("bentoml", ("bentoml",), ALWAYS),
    Dependency("onnxruntime", ("onnxruntime", "onnxruntime-gpu"), ALWAYS),
    Dependency("numpy", ("numpy",), ALWAYS),
    # come with bentoml (its own dependencies): never pinned on their own
    *(Dependency(m, ("bentoml",), ALWAYS)
      for m in ("starlette", "anyio", "pydantic", "uvicorn", "yaml", "attr", "h11", "httpx")),
    # uvicorn picks these up by itself: C HTTP parsing and event loop (~2x fewer CPU per request)
    Dependency("uvloop", ("uvloop",), IF_INSTALLED),
    Dependency("httptools", ("httptools",), IF_INSTALLED),
    # runtime/auth.py verifies OIDC tokens with joserfc, if turned on where the bundle is deployed
    Dependency("joserfc", ("joserfc",), IF_INSTALLED),
    Dependency("cryptography", ("cryptography",), IF_INSTALLED),
    # imported lazily, only for the explanations and the kind of input the bundle serves
    Dependency("shap", ("shap",), "shap"),
    Dependency("lime", ("lime",), "lime"),
    Dependency("sklearn", ("scikit-learn",), "lime"),
    Dependency("scipy", ("scipy",), "lime"),
    Dependency("PIL", ("pillow",), "image"),
    Dependency("skimage", ("scikit-image",), "lime+image"),    # lime_image's superpixels
    Dependency("tokenizers", ("tokenizers",), "text"),
)


def dists_of(module: str) -> tuple[str, ...]:
    """The distributions that provide top-level module ``module`` (its own name if unlisted)."""
    return next((d.dists for d in DEPENDENCIES if d.module == module), (module,))


def features(spec: dict | None, explain_config: dict | None) -> set[str]:
    """The :data:`FEATURES` a bundle serves, from its spec and its explanation config: shap for
    TreeSHAP, per-token and image SHAP (model-agnostic tabular SHAP is numpy), lime for LIME, image
    for models fed image files (``preprocess``), text for models fed raw text."""
    out: set[str] = set()
    spec = spec or {}
    # image models: files decoded with Pillow (preprocess), or tensors of rank > 2 (H x W x C)
    # explained with image SHAP / lime_image at /explain
    image = bool(spec.get("preprocess")) or len(spec.get("input_shape") or ()) > 2
    if explain_config is not None:
        kind, methods = explain_config.get("kind"), explain_config.get("methods") or ()
        if kind in ("tree", "text") or (image and "shap" in methods):
            out.add("shap")
        if "lime" in methods:
            out.add("lime")
    if image:
        out.add("image")
    if spec.get("input_mode") == "text" or spec.get("text"):
        out.add("text")
    return out


def bundle_features(src: Path) -> set[str]:
    """:func:`features` of a bundle's ``src`` folder (``model/spec.json`` and
    ``model/explain/explain_config.json``); a file that does not parse counts as every
    feature it could enable, so that nothing it might need goes unchecked."""
    def read(path: Path, everything: set[str]) -> tuple[dict | None, set[str]]:
        if not path.is_file():
            return None, set()
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return None, everything
        return (doc, set()) if isinstance(doc, dict) else (None, everything)

    spec, bad_spec = read(src / "model" / "spec.json", {"image", "text"})
    ecfg, bad_ecfg = read(src / "model" / "explain" / "explain_config.json", {"shap", "lime"})
    return features(spec, ecfg) | bad_spec | bad_ecfg


def requirements(*, device: str = "cpu", explain: bool = False, extra: list[str] | None = None,
                 serves: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Pinned requirements of the served bundle: only what its code imports (:data:`DEPENDENCIES`).

    ``serves``: the :data:`FEATURES` the bundle serves (:func:`bundle_features`); ``explain``
    adds every explanation feature (shap and lime).  ``extra`` (e.g. from
    ``ExplainReport.requirements()``) adds pins for distributions not already listed.
    """
    ort = "onnxruntime-gpu" if device == "cuda" else "onnxruntime"
    # onnxruntime-gpu releases mirror onnxruntime's versions: without a GPU build in the
    # notebook, pin the release the model was verified with on CPU.
    ort_version = _version_of(ort) or _version_of("onnxruntime")
    missing = [d for d, v in (("bentoml", _version_of("bentoml")), ("onnxruntime", ort_version),
                              ("numpy", _version_of("numpy"))) if not v]
    if missing:
        raise BundleError(f"Cannot pin the bundle's requirements: {missing} not installed here.",
                          hint="pip install " + " ".join(missing))
    wanted = set(serves) | ({"shap", "lime"} if explain and extra is None else set())
    pins: dict[str, str] = {}
    for dep in DEPENDENCIES:
        dist = ort if dep.module == "onnxruntime" else dep.dists[0]
        if dist in pins:
            continue
        version = ort_version if dep.module == "onnxruntime" else _version_of(dist)
        if version and (dep.needed(wanted) or dep.when == IF_INSTALLED):
            pins[dist] = f"{dist}=={version}"
    reqs = list(pins.values())
    if extra is not None:
        reqs.extend(r for r in extra if r.split("==")[0] not in {q.split("==")[0] for q in reqs})
    return reqs


@dataclass(frozen=True)
class ServeConfig:
    """How the served bundle runs (chosen from benchmark numbers by the pipeline)."""

    device: str = "cpu"
    workers: int = 1
    threads: int | None = 1
    max_rows: int = 10_000
    max_body_bytes: int = 16 * 1024 * 1024
    timeout_s: float = 30.0
    max_concurrency: int | None = None
    allow_cpu_fallback: bool = False
    # BentoML's per-request access log line costs more than the model itself (~1.5 ms of
    # the ~2.7 ms p50 measured on a 100-tree forest); request metrics stay on /metrics.
    access_log: bool = False
    # OpenTelemetry spans for the model routes cost ~25% of a single-row request; BentoML
    # samples none by default anyway.  Set True to trace them (e.g. with an exporter).
    tracing: bool = False
    batching: dict | None = None    # {"max_batch_size": N, "max_latency_ms": M} when it pays

    @property
    def providers(self) -> list[str]:
        if self.device == "cuda":
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def runtime_config(self) -> dict:
        return {"model_file": "model.onnx", "providers": self.providers, "threads": self.threads,
                "max_rows": self.max_rows, "max_body_bytes": self.max_body_bytes,
                "device": self.device, "allow_cpu_fallback": self.allow_cpu_fallback,
                "batching": self.batching,
                # the runtime's own limit (503 + Retry-After; runtime/limits.py): this, else derived
                "max_concurrency": self.max_concurrency}

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


@dataclass
class BundleInfo:
    """A built bento."""

    tag: str
    path: str
    name: str
    version: str
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"tag": self.tag, "path": self.path, "name": self.name, "version": self.version}


def class_name(name: str) -> str:
    """The Python class name of bundle ``name``'s service (``service:CLASS`` in bento.yaml)."""
    parts = [p for p in "".join(c if c.isalnum() else " " for c in name).split() if p]
    cls = "".join(p[:1].upper() + p[1:] for p in parts) or "Model"
    if cls[0].isdigit():
        cls = "Model" + cls
    return cls + "Service"


def render_service(name: str, config: ServeConfig, description: str) -> str:
    tmpl = string.Template((TEMPLATES / "service.py.tmpl").read_text(encoding="utf-8"))
    resources = {"gpu": 1} if config.device == "cuda" else {"cpu": "1"}
    traffic = {"timeout": config.timeout_s}
    if config.max_concurrency:
        traffic["max_concurrency"] = config.max_concurrency
    return tmpl.substitute(
        nbdeploy_version=__version__, name=name, workers=int(config.workers),
        resources=repr(resources), traffic=repr(traffic), class_name=class_name(name),
        logging=repr({"access": {"enabled": bool(config.access_log)}}),
        tracing=repr({} if config.tracing else {"excluded_urls": MODEL_ROUTES}),
        description=description.replace('"""', "'''"))


def stage(ctx: Path, *, name: str, onnx_bytes: bytes, spec: dict, metadata: dict,
          config: ServeConfig, extra: Callable[[Path], None] | None = None,
          plots: list[Path] | None = None, extra_requirements: list[str] | None = None) -> list[str]:
    """Write every file of the bundle into ``ctx``; return the include list for BentoML."""
    model_dir = ctx / "model"
    model_dir.mkdir(parents=True)
    (model_dir / "model.onnx").write_bytes(onnx_bytes)
    text = spec.get("text") or {}
    if text.get("tokenizer_json"):   # issue 21: the tokenizer ships as model/tokenizer.json
        (model_dir / text.get("tokenizer_file", "tokenizer.json")).write_text(text["tokenizer_json"], encoding="utf-8")
        spec = dict(spec, text={k: v for k, v in text.items() if k != "tokenizer_json"})
    (model_dir / "spec.json").write_text(json.dumps(spec, indent=1), encoding="utf-8")
    (model_dir / "config.json").write_text(json.dumps(config.runtime_config(), indent=1), encoding="utf-8")
    if extra is not None:
        extra(model_dir)
    (model_dir / "metadata.json").write_text(json.dumps(metadata, indent=1, default=str), encoding="utf-8")
    rt = ctx / "nbdeploy_runtime"
    rt.mkdir()
    for src in sorted(RUNTIME.glob("*.py")):
        shutil.copyfile(src, rt / src.name)
    if plots:
        (ctx / "plots").mkdir()
        for p in plots:
            shutil.copyfile(p, ctx / "plots" / Path(p).name)
    # pinned from what the staged files say the bundle serves: the same judgement the
    # portability check (nbdeploy.portability) makes of the finished bundle
    (ctx / "requirements.txt").write_text(
        "\n".join(requirements(device=config.device, extra=extra_requirements,
                               serves=bundle_features(ctx))) + "\n", encoding="utf-8")
    (ctx / "service.py").write_text(render_service(name, config, metadata.get("description", "")),
                                    encoding="utf-8")
    return ["service.py", "requirements.txt", "nbdeploy_runtime/*.py", "model/**", "plots/*.png"]


def _forget_service_modules(ctx: Path | None = None) -> None:
    """BentoML imports the staged ``service`` module in this process to read its config; drop
    it afterwards so the next build (another model, same module name) imports its own."""
    import sys

    for mod in [m for m in sys.modules if m == "service" or m.split(".")[0] == "nbdeploy_runtime"]:
        del sys.modules[mod]
    if ctx is not None:
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ctx.resolve()]


def build(*, name: str, onnx_bytes: bytes, spec: dict, metadata: dict,
          config: ServeConfig = ServeConfig(), extra: Callable[[Path], None] | None = None,
          plots: list[Path] | None = None, version: str | None = None,
          extra_requirements: list[str] | None = None) -> BundleInfo:
    """Stage the bundle in a temporary folder and build it into the BentoML store."""
    validate_name(name)
    version = version or new_version()
    tag = f"{name}:{version}"
    metadata = dict(metadata, name=name, version=version, tag=tag)
    with tempfile.TemporaryDirectory(prefix="nbdeploy-build-") as tmp:
        ctx = Path(tmp)
        try:
            include = stage(ctx, name=name, onnx_bytes=onnx_bytes, spec=spec, metadata=metadata,
                            config=config, extra=extra, plots=plots,
                            extra_requirements=extra_requirements)
        except OSError as exc:
            raise BundleError(f"Could not write the bundle {tag}: {exc.strerror or exc}.",
                              hint=f"Free disk space under {tempfile.gettempdir()} (or point TMPDIR "
                                   "elsewhere) and try again; nothing was added to the store.") from exc
        _forget_service_modules()
        import bentoml
        from bentoml._internal.bento import BentoStore

        root = store_root()
        private = private_store(root)
        # the certificate variables configure a server, not a build: BentoML imports service.py
        # here and would write their paths into bento.yaml's service config
        tls_env = {v: os.environ.pop(v) for v in TLS_ENV if v in os.environ}
        try:
            bentoml.bentos.build(
                service=f"service:{class_name(name)}", name=name, version=version,
                build_ctx=str(ctx), include=include,
                description=metadata.get("description"),
                labels={"created-by": "nbdeploy", "nbdeploy-version": __version__,
                        "framework": str(metadata.get("framework", "")),
                        "task": str(spec.get("task", "")),
                        "variant": str((metadata.get("optimize") or {}).get("chosen", "fp32"))},
                python={"requirements_txt": "requirements.txt", "lock_packages": False},
                _bento_store=BentoStore(str(private)),
            )
            # the finished bento enters the real store in one rename (same filesystem): a
            # killed or failing build never leaves a half-written folder under its name
            final = root / name / version
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(private / name / version, final)
            latest = root / name / "latest"
            tmp_latest = latest.with_name(f".latest-{version}")
            tmp_latest.write_text(version, encoding="utf-8")
            os.replace(tmp_latest, latest)
        except Exception as exc:
            raise BundleError(f"BentoML could not build the bundle {tag}: {type(exc).__name__}: {exc}",
                              hint="Nothing was added to the store. Check the message above; "
                                   "`bentoml list` shows the bundles that exist.") from exc
        finally:
            os.environ.update(tls_env)
            shutil.rmtree(private, ignore_errors=True)
            _forget_service_modules(ctx)
    bento = bentoml.get(tag)
    return BundleInfo(tag=str(bento.tag), path=str(bento.path), name=name, version=version)


def store_root() -> Path:
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.bento_store.get()._path)


def private_store(store_root: Path, stale_after_s: float = 6 * 3600) -> Path:
    """A private BentoML store next to the real one (same filesystem, so the final rename is
    atomic), outside the folder `bentoml list` reads; leftovers of killed builds are swept."""
    import time

    staging = store_root.parent / ".nbdeploy-staging"
    staging.mkdir(parents=True, exist_ok=True)
    for old in staging.iterdir():
        try:
            if time.time() - old.stat().st_mtime > stale_after_s:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    return Path(tempfile.mkdtemp(prefix="build-", dir=staging))
