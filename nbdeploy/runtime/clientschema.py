"""``/schema.json`` as BentoML's clients read it, for the direct engine (``engine.py``), whose
app (``app.py``) answers it so that ``bentoml.SyncHTTPClient`` works unchanged."""

from __future__ import annotations

import json


def client_schema(runtime) -> dict:
    """``/schema.json`` as BentoML's clients read it: the service's two typed endpoints (the
    same parameters as the ``@bentoml.api`` methods of the generated ``service.py``)."""
    cell = {"oneOf": [{"type": "number"}, {"type": "string"}, {"type": "boolean"}], "nullable": True}
    rows = {"type": "array", "title": "Inputs",  # oneOf: BentoML's client passes rows through as they are
            "items": {"oneOf": [{"type": "array", "items": cell, "description": "values in feature order"},
                                {"type": "object", "additionalProperties": cell,
                                 "description": "values by feature name"}]}}

    def opt(kind: str, title: str) -> dict:
        return {"anyOf": [{"type": kind}, {"type": "null"}], "default": None, "title": title}

    out = {"additionalProperties": True, "type": "object"}
    explain = {"properties": {"inputs": rows,
                              "method": {"default": "shap", "title": "Method", "type": "string"},
                              "output": {"anyOf": [{"type": "integer"}, {"type": "string"},
                                                   {"type": "null"}], "default": None, "title": "Output"},
                              "seed": opt("integer", "Seed"), "max_evals": opt("integer", "Max Evals"),
                              "num_samples": opt("integer", "Num Samples")},
               "required": ["inputs"], "title": "Input", "type": "object"}
    predict = {"properties": {"inputs": rows}, "required": ["inputs"], "title": "Input", "type": "object"}
    try:
        with open(runtime.model_dir / "metadata.json", encoding="utf-8") as f:
            meta = json.load(f) or {}
    except (OSError, ValueError):
        meta = {}
    return {"name": meta.get("name", "nbdeploy"), "type": "service",
            "description": meta.get("description", ""),
            "routes": [{"name": n, "route": f"/api/{n}", "batchable": False, "input": i, "output": out,
                        "is_task": False} for n, i in (("predict", predict), ("explain", explain))]}
