"""Per-token explanations of text models in the notebook (issue 21).

The computation is the bundle's own (:class:`nbdeploy.runtime.text.TextExplainer` over the
served ONNX variant), so the notebook shows what ``/explain`` answers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .plots import token_html  # noqa: F401  (public here: render one served row, as the example does)
from .runtime.text import DEFAULT_TEXT_BUDGET


def explanation_pins(config: dict) -> list[str]:
    """``dist==version`` of what serving an explanation ``config`` imports beyond what every
    bundle has (:func:`nbdeploy.bundle.features` over :data:`nbdeploy.bundle.DEPENDENCIES`);
    a distribution not installed here is named without a version.  Used by both
    explanation reports (here so that explain_text imports nothing from explain)."""
    from importlib.metadata import PackageNotFoundError, version

    from .bundle import ALWAYS, DEPENDENCIES, IF_INSTALLED, features

    serves = features(None, config)
    out = []
    for dep in DEPENDENCIES:
        dist = dep.dists[0]
        if dep.when in (ALWAYS, IF_INSTALLED) or not dep.needed(serves) or any(
                r.split("==")[0] == dist for r in out):
            continue
        try:
            out.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:  # pragma: no cover
            out.append(dist)
    return out


class TextExplainReport:
    """SHAP per token for a few sample texts (LIME on demand), and the bundle's explain config."""

    def __init__(self, rows: list[dict], *, methods: tuple[str, ...], budget: dict, explainer,
                 X: np.ndarray, seconds: float):
        self.rows = rows
        self.methods = methods
        self.budget = budget
        self._explainer = explainer
        self.X = X
        self.seconds = seconds

    def summary(self) -> str:
        n = sum(1 for r in self.rows if "tokens" in r)
        return (f"SHAP per token (partition explainer, Text masker) on {n} texts in "
                f"{self.seconds:.1f} s" + ("; LIME text on demand" if "lime" in self.methods else ""))

    def requirements(self) -> list[str]:
        """Pinned packages its served explanations import (shap; lime with scikit-learn and
        scipy when LIME is served), from :data:`nbdeploy.bundle.DEPENDENCIES`."""
        return explanation_pins({"kind": "text", "methods": list(self.methods)})

    def explain_row(self, i: int, method: str = "shap", **options) -> dict:
        if method == "shap" and not options and i < len(self.rows) and "tokens" in self.rows[i]:
            return self.rows[i]
        return self._explainer.explain(self.X[i:i + 1], method=method, options=options)["explanations"][0]

    def to_dict(self, *, max_rows: int = 50) -> dict:
        return {"kind": "text", "methods": list(self.methods), "budget": self.budget,
                "seconds": round(self.seconds, 3), "rows": self.rows[:max_rows]}

    def save_plots(self, directory: str | Path, *, row: int = 0) -> list[Path]:
        return []   # the coloured text is HTML (_repr_html_, the widget), not a PNG

    def write_artifacts(self, model_dir: str | Path) -> list[Path]:
        from .runtime.explain import CONFIG_FILE, EXPLAIN_DIR

        folder = Path(model_dir) / EXPLAIN_DIR
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / CONFIG_FILE
        path.write_text(json.dumps({"kind": "text", "methods": list(self.methods),
                                    "budget": self.budget}, indent=1), encoding="utf-8")
        return [path]

    def _repr_html_(self) -> str:
        return "".join(token_html(r) for r in self.rows[:10] if "tokens" in r)


def explain_text(converted: Any, *, onnx_model: Any = None, methods: Any = ("shap", "lime"),
                 max_rows: int = 5, budget: dict | None = None,
                 progress: Callable[[float, str], None] | None = None) -> TextExplainReport:
    """SHAP per token on the first ``max_rows`` sample texts, with the served ONNX variant."""
    import time

    from .runtime.model import OnnxModel
    from .runtime.text import TextExplainer

    model = onnx_model if onnx_model is not None else converted.onnx_model
    om = OnnxModel(model.SerializeToString(), converted.spec)
    b = dict(DEFAULT_TEXT_BUDGET, **(budget or {}))
    ex = TextExplainer(om, b)
    X = converted.X
    t0 = time.perf_counter()
    rows = []
    n = min(int(max_rows), len(X))
    for i in range(n):
        if progress is not None:
            progress(i / max(n, 1), f"SHAP on text {i + 1}/{n}")
        rows.extend(ex.explain(X[i:i + 1], method="shap")["explanations"])
    methods = tuple(m for m in ("shap", "lime") if m in tuple(methods) or m == "shap")
    return TextExplainReport(rows, methods=methods, budget=b, explainer=ex, X=X,
                             seconds=time.perf_counter() - t0)
