"""OpenAPI 3 document for the bundle's own routes (used by clients and API fuzzers)."""

from __future__ import annotations


def openapi_document(runtime) -> dict:
    n = int(runtime.spec["n_features"])
    row = {"type": "array", "items": {"type": "number"}, "minItems": n, "maxItems": n}
    names = runtime.spec.get("feature_names")
    record = ({"type": "object", "properties": {f: {"type": "number"} for f in names},
               "required": list(names), "additionalProperties": False} if names else None)
    rows = {"type": "array", "minItems": 1, "maxItems": runtime.max_rows,
            "items": {"oneOf": [row, record]} if record else row}
    err = {"type": "object", "properties": {"error": {"type": "string"}, "message": {"type": "string"},
                                             "hint": {"type": "string"}},
           "required": ["error", "message"]}
    err_resp = {"description": "Client error", "content": {"application/json": {"schema": err}}}
    pred = {"type": "object", "properties": {"predictions": {"type": "array"},
                                              "probabilities": {"type": "array",
                                                                "items": {"type": "array",
                                                                          "items": {"type": "number"}}}},
            "required": ["predictions"]}
    obj = {"type": "object"}
    return {
        "openapi": "3.0.3",
        "info": {"title": f"nbdeploy bundle {runtime.metadata().get('name', '')}".strip(),
                 "version": str(runtime.metadata().get("tag") or "0")},
        "paths": {
            "/predict": {"post": {
                "summary": "Predict for one or more rows",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"inputs": rows}, "required": ["inputs"]}}}},
                "responses": {"200": {"description": "Predictions",
                                      "content": {"application/json": {"schema": pred}}},
                              "400": err_resp, "413": err_resp, "415": err_resp}}},
            "/explain": {"post": {
                "summary": "Explain predictions with SHAP or LIME",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"inputs": rows,
                                                     "method": {"type": "string", "enum": ["shap", "lime"]}},
                    "required": ["inputs"]}}}},
                "responses": {"200": {"description": "Explanations",
                                      "content": {"application/json": {"schema": obj}}},
                              "400": err_resp, "413": err_resp, "415": err_resp, "501": err_resp}}},
            "/metadata": {"get": {"summary": "Model card",
                                  "responses": {"200": {"description": "Metadata",
                                                        "content": {"application/json": {"schema": obj}}}}}},
            "/drift": {"get": {"summary": "Input drift against the training sample",
                               "responses": {"200": {"description": "Drift report",
                                                     "content": {"application/json": {"schema": obj}}},
                                             "404": err_resp}}},
        },
    }
