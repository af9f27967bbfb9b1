"""bundle: the rendered service and the pinned requirements, judged without nbdeploy's own
parsers: Python's compiler and ``ast`` for the service, and for the requirements the imports of
the staged files (read here with ``ast``) mapped to distributions by ``importlib.metadata``.
Staging only (no BentoML build): seconds."""

from __future__ import annotations

import ast
import functools
import json
import sys
from importlib import metadata
from pathlib import Path

import pytest

from nbdeploy import bundle
from nbdeploy.bundle import ServeConfig
from nbdeploy.portability import check_bundle

LAZY_OPTIONAL = {"shap", "lime", "PIL", "tokenizers", "skimage"}     # what the runtime imports only for some bundles


@functools.cache
def _dists(module: str) -> set[str]:
    """Distributions that provide top-level ``module``, per importlib.metadata."""
    return {d.lower() for d in _PACKAGES().get(module, [module])}


_PACKAGES = functools.cache(metadata.packages_distributions)


@pytest.fixture(scope="module")
def onnx_bytes():
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    X = X.astype("float32")
    return to_onnx(LogisticRegression(max_iter=300).fit(X, y), X[:1],
                   options={"zipmap": False}).SerializeToString()


def _stage(ctx: Path, onnx_bytes: bytes, *, spec: dict | None = None,
           explain: dict | None = None) -> dict[str, str]:
    def write_explain(model_dir: Path) -> None:
        if explain is not None:
            (model_dir / "explain").mkdir()
            (model_dir / "explain" / "explain_config.json").write_text(json.dumps(explain))

    bundle.stage(ctx, name="iris-lr", onnx_bytes=onnx_bytes, spec=spec or {"task": "classification"},
                 metadata={"description": "test"}, config=ServeConfig(), extra=write_explain)
    pins = {}
    for line in (ctx / "requirements.txt").read_text().split():
        name, version = line.split("==")
        pins[name.lower()] = version
    return pins


def _imports(folder: Path) -> tuple[set[str], set[str]]:
    """Third-party top-level modules imported by the staged code: (module level, in functions)."""
    local = {p.stem for p in folder.glob("*.py")} | {p.name for p in folder.iterdir() if p.is_dir()}
    eager, lazy = set(), set()
    for py in folder.rglob("*.py"):
        tree = ast.parse(py.read_text())
        in_function = set()
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                in_function |= {id(n) for n in ast.walk(fn)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module]
            else:
                continue
            for m in mods:
                top = m.split(".")[0]
                if top not in sys.stdlib_module_names and top not in local and top != "__future__":
                    (lazy if id(node) in in_function else eager).add(top)
    return eager, lazy - eager


def _requires(dist: str, *, extras: bool = False) -> set[str]:
    """Distribution names ``dist`` depends on (with ``extras``, those of its extras too)."""
    import re

    out = set()
    for r in metadata.requires(dist) or []:
        if "extra ==" in r and not extras:
            continue
        out.add(re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0].lower().replace("_", "-"))
    return out


def _bentoml_closure() -> set[str]:
    """bentoml and every distribution it installs (not its extras)."""
    seen, todo = set(), ["bentoml"]
    while todo:
        d = todo.pop()
        if d in seen:
            continue
        seen.add(d)
        try:
            todo.extend(_requires(d))
        except metadata.PackageNotFoundError:
            pass
    return seen


def _provided(module: str, pins: dict[str, str], bentoml_deps: set[str]) -> bool:
    dists = _dists(module)
    return bool(dists & set(pins)) or bool(dists & bentoml_deps) or \
        (module == "onnxruntime" and "onnxruntime-gpu" in pins)


# ---------------------------------------------------------------------------------------------
# the rendered service
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["iris-lr", "3d-model", "a_b.c", "x"])
def test_rendered_service_compiles_and_names_its_class(name):
    cfg = ServeConfig(workers=3, max_concurrency=7, timeout_s=12.5, tracing=True)
    text = bundle.render_service(name, cfg, 'has """ quotes and $dollars')
    tree = ast.parse(text)
    compile(tree, "service.py", "exec")
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    assert len(classes) == 1 and classes[0].name == bundle.class_name(name)
    assert classes[0].name.isidentifier() and classes[0].name.endswith("Service")
    call = next(d for d in classes[0].decorator_list if isinstance(d, ast.Call)
                and ast.unparse(d.func) == "bentoml.service")
    kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg is not None}
    assert kw["name"] == name and kw["workers"] == 3
    assert kw["traffic"] == {"timeout": 12.5, "max_concurrency": 7}
    assert kw["tracing"] == {} and kw["logging"] == {"access": {"enabled": False}}
    assert ast.get_docstring(classes[0]) == "has ''' quotes and $dollars"


def test_rendered_service_for_cuda_asks_for_a_gpu():
    text = bundle.render_service("m", ServeConfig(device="cuda"), "")
    call = next(d for n in ast.parse(text).body if isinstance(n, ast.ClassDef)
                for d in n.decorator_list if isinstance(d, ast.Call)
                and ast.unparse(d.func) == "bentoml.service")
    kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg is not None}
    assert kw["resources"] == {"gpu": 1}
    assert kw["tracing"] == {"excluded_urls": bundle.MODEL_ROUTES}


# ---------------------------------------------------------------------------------------------
# requirements == what the staged code imports
# ---------------------------------------------------------------------------------------------
def test_plain_bundle_pins_what_its_code_imports_and_nothing_optional(tmp_path, onnx_bytes):
    pins = _stage(tmp_path, onnx_bytes)
    eager, lazy = _imports(tmp_path)
    bentoml_deps = _bentoml_closure()
    assert {"bentoml", "numpy", "onnxruntime"} <= set(pins)
    assert all(v and v[0].isdigit() for v in pins.values()), pins
    # every module imported at module level is provided
    missing = {m for m in eager if not _provided(m, pins, bentoml_deps)}
    assert not missing, (missing, pins)
    # none of the lazily imported extras (explanations, images, text) is pinned
    for m in lazy & LAZY_OPTIONAL:
        assert not _dists(m) & set(pins), m
    # every pin is imported by the code, or is what an imported package picks up by itself
    imported = {d for m in eager | lazy for d in _dists(m)}
    picked_up = _requires("uvicorn", extras=True) | _requires("joserfc")  # uvloop...; cryptography
    assert set(pins) - imported - {"onnxruntime"} <= picked_up, pins
    # the portability check agrees with the pins
    assert check_bundle(tmp_path) == []


def test_bundle_with_every_feature_pins_every_lazy_import(tmp_path, onnx_bytes):
    spec = {"task": "classification", "preprocess": {"size": [8, 8]}, "input_mode": "text",
            "text": {"tokenizer_file": "tokenizer.json"}}
    pins = _stage(tmp_path, onnx_bytes, spec=spec, explain={"kind": "tree", "methods": ["shap", "lime"]})
    eager, lazy = _imports(tmp_path)
    bentoml_deps = _bentoml_closure()
    assert lazy & LAZY_OPTIONAL == LAZY_OPTIONAL      # the runtime does import each lazily
    missing = {m for m in eager | lazy if not _provided(m, pins, bentoml_deps)}
    assert not missing, (missing, pins)
    # lime's own dependencies are pinned too (to the versions the explanations were made with)
    assert {"scikit-learn", "scipy"} <= _requires("lime") & set(pins)
    assert {"shap", "lime", "pillow", "tokenizers", "scikit-image"} <= set(pins)
    assert check_bundle(tmp_path) == []


@pytest.mark.parametrize("explain, spec, needs", [
    ({"kind": "tree", "methods": ["shap"]}, {}, {"shap"}),
    ({"kind": "text", "methods": ["shap"]}, {"input_mode": "text"}, {"shap", "tokenizers"}),
    ({"kind": "agnostic", "methods": ["shap", "lime"]}, {}, {"lime", "scikit-learn", "scipy"}),
    # image models: image SHAP (partition explainer) and lime_image at /explain
    ({"kind": "agnostic", "methods": ["shap"]}, {"preprocess": {"size": [8, 8]}}, {"pillow", "shap"}),
    ({"kind": "agnostic", "methods": ["shap", "lime"]}, {"input_shape": [None, 1, 8, 8]},
     {"shap", "lime", "scikit-learn", "scipy", "scikit-image", "pillow"}),
    ({"kind": "agnostic", "methods": ["shap"]}, {"input_shape": [None, 30]}, set()),
])
def test_portability_check_and_requirements_share_one_list(tmp_path, onnx_bytes, explain, spec, needs):
    """What the requirements pin for a bundle is what the check asks of it: drop the pin of a
    module the code imports and the check names it."""
    pins = _stage(tmp_path, onnx_bytes, spec=dict(spec, task="classification"), explain=explain)
    optional = {"shap", "lime", "scikit-learn", "scipy", "pillow", "tokenizers", "scikit-image"}
    assert set(pins) & optional == needs
    assert check_bundle(tmp_path) == []
    req = tmp_path / "requirements.txt"
    _, lazy = _imports(tmp_path)
    imported = {d for m in lazy & LAZY_OPTIONAL for d in _dists(m)}
    for dist in sorted(needs & imported):
        req.write_text("".join(f"{d}=={v}\n" for d, v in pins.items() if d != dist))
        problems = "\n".join(check_bundle(tmp_path))
        assert f"(add {dist}==VERSION)" in problems, (dist, problems)


def test_requirements_explain_flag_and_extra_pins():
    base = bundle.requirements()
    assert [r.split("==")[0] for r in base[:3]] == ["bentoml", "onnxruntime", "numpy"]
    every = bundle.requirements(explain=True)
    assert {r.split("==")[0] for r in every} - {r.split("==")[0] for r in base} == \
        {"shap", "lime", "scikit-learn", "scipy"}
    gpu = bundle.requirements(device="cuda")
    assert gpu[1].split("==") == ["onnxruntime-gpu", metadata.version("onnxruntime")] \
        or gpu[1].split("==")[0] == "onnxruntime-gpu"
    # extra pins are added once, never twice
    extra = bundle.requirements(extra=["numpy==0.0.1", "pandas==2.0"])
    assert sum(r.startswith("numpy==") for r in extra) == 1 and "pandas==2.0" in extra


def test_features_from_unreadable_files_ask_for_everything(tmp_path):
    (tmp_path / "model" / "explain").mkdir(parents=True)
    assert bundle.bundle_features(tmp_path) == set()
    (tmp_path / "model" / "spec.json").write_text("{not json")
    (tmp_path / "model" / "explain" / "explain_config.json").write_text("[1, 2")
    assert bundle.bundle_features(tmp_path) == set(bundle.FEATURES)
