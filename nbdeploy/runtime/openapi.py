"""OpenAPI 3 document for the bundle's own routes (used by clients and API fuzzers)."""

from __future__ import annotations

F32_MAX = 3.4028234663852886e38


def _explainer(runtime):
    try:
        return runtime._get_explainer()
    except Exception:
        return None


def column_schema(col: dict) -> dict:
    """The JSON schema of one column's values (OpenAPI 3.0: ``nullable`` for null)."""
    kind = col.get("kind")
    if kind == "numeric":
        out = {"type": "number", "minimum": -F32_MAX, "maximum": F32_MAX}
    elif kind == "boolean":
        out = {"type": "boolean"}
    else:
        out = {"type": "string"}
        cats = col.get("categories")
        if kind == "categorical" and cats is not None:
            if col.get("accepts_unseen") is False:
                out["enum"] = list(cats)
            else:
                out["x-categories-seen"] = list(cats[:1000])
    if col.get("nullable"):
        out["nullable"] = True
    out["description"] = (f"{kind} column ({col.get('dtype')})"
                          + ("; null = missing" if col.get("nullable") else ""))
    return out


def _explain_options(explainer, method: str) -> dict:
    """The options POST /explain reads besides ``inputs`` and ``method`` (runtime/explain.py)."""
    opts: dict = {"seed": {"type": "integer", "minimum": 0, "maximum": 2 ** 32 - 1}}

    def output(names: list[str], extra: list[str]) -> dict:
        return {"oneOf": [{"type": "string", "enum": extra + list(names)},
                          {"type": "integer", "minimum": 0, "maximum": max(0, len(names) - 1)}]}

    # max_evals / num_samples are left out: above their limit the server answers 413 (a work
    # budget), which a schema maximum would present as a validation error
    if method == "shap":
        names = list(getattr(explainer, "output_names", None) or [])
        if names:
            opts["output"] = output(names, ["auto", "all"])
    else:
        names = list(getattr(explainer, "class_names", None) or [])
        if getattr(explainer, "task", None) == "classifier" and names:
            opts["output"] = output(names, ["auto"])
    return opts


def openapi_document(runtime) -> dict:
    n = int(runtime.spec["n_features"])
    # values must fit float32 (the model's input type): larger ones are a 400, so say so
    number = {"type": "number", "minimum": -F32_MAX, "maximum": F32_MAX}
    row = {"type": "array", "items": number, "minItems": n, "maxItems": n}
    names = runtime.spec.get("feature_names")
    columns = runtime.spec.get("columns") or []
    record = ({"type": "object", "properties": {f: number for f in names},
               "required": list(names), "additionalProperties": False} if names else None)
    if columns and len(columns) == n:
        props = {c["name"]: column_schema(c) for c in columns}
        record = {"type": "object", "properties": props, "required": list(props),
                  "additionalProperties": False}
        if runtime.spec.get("input_mode") == "table":
            # OpenAPI 3.0 cannot type an array position by position, so only records are
            # documented; rows of values in column order are accepted too
            row = None
        elif all(c.get("nullable") for c in columns):
            row = dict(row, items=dict(number, nullable=True))

    def rows_schema(limit: int) -> dict:
        # all rows are lists, or all rows are records: the server refuses a mix
        lists = {"type": "array", "minItems": 1, "maxItems": limit, "items": row}
        if not record:
            return lists
        if row is None:
            return dict(lists, items=record)
        return {"oneOf": [lists, dict(lists, items=record)]}

    rows = rows_schema(runtime.max_rows)
    explainer = _explainer(runtime)
    if explainer is None:
        explain_body = {"type": "object", "properties": {"inputs": rows}, "required": ["inputs"]}
    else:  # one branch per enabled method, each with its own row limit
        branches = []
        for m in explainer.methods:
            props = {"inputs": rows_schema(min(runtime.max_rows, explainer._row_limit(m))),
                     "method": {"type": "string", "enum": [m]}}
            props.update(_explain_options(explainer, m))
            branches.append({"type": "object", "properties": props,
                             "required": ["inputs"] if m == "shap" else ["inputs", "method"]})
        explain_body = {"oneOf": branches} if len(branches) > 1 else branches[0]
    err = {"type": "object", "properties": {"error": {"type": "string"}, "message": {"type": "string"},
                                             "hint": {"type": "string"},
                                             "column": {"type": "string"}},
           "required": ["error", "message"]}
    err_resp = {"description": "Client error", "content": {"application/json": {"schema": err}}}
    pred = {"type": "object", "properties": {"predictions": {"type": "array"},
                                              "probabilities": {"type": "array",
                                                                "items": {"type": "array",
                                                                          "items": {"type": "number"}}}},
            "required": ["predictions"]}
    obj = {"type": "object"}
    doc = {
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
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": explain_body}}},
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
            # probes: always open, whatever access control says (auth.OPEN_PATHS)
            "/livez": {"get": {"summary": "Liveness probe (never needs a token)", "security": [],
                               "responses": {"200": {"description": "Alive"}}}},
            "/readyz": {"get": {"summary": "Readiness probe (never needs a token)", "security": [],
                                "responses": {"200": {"description": "Ready"},
                                              "503": {"description": "Not ready yet"}}}},
        },
    }
    _declare_security(doc, err_resp, getattr(runtime, "config", None))
    return doc


def _declare_security(doc: dict, err_resp: dict, config: dict | None) -> None:
    """The bearer scheme, its 401/403 and the 429 of rate limits, as the running guard (the
    environment + config.json, see auth.py) enforces them; nothing when access control is off."""
    from . import auth

    g = auth.current_guard()
    if g is None:  # no middleware in this process (yet): read the same settings it would
        try:
            g = auth.Guard(config=config)
        except auth.AuthConfigError:
            return
    if not g.active:
        return
    ops = [(path, op) for path, item in doc["paths"].items() for op in item.values()
           if path not in auth.OPEN_PATHS]
    if g.mode != "off":
        scheme = {"type": "http", "scheme": "bearer"}
        if g.jwt is not None:
            scheme["bearerFormat"] = "JWT"
            scheme["description"] = (f"An access token from the issuer {g.jwt.issuer} for the "
                                     f"audience {g.jwt.audience}.")
        else:
            scheme["description"] = "An API key (nbdeploy keys create)."
        doc["components"] = {"securitySchemes": {"bearerAuth": scheme}}
        doc["security"] = [{"bearerAuth": []}]
        for path, op in ops:
            op["responses"]["401"] = err_resp
            need = g.scopes.get(auth.route_of(path)) if g.jwt is not None else None
            if need:
                op["x-required-scope"] = need
                op["responses"]["403"] = err_resp
    if g.limiter is not None:
        for _, op in ops:
            op["responses"]["429"] = err_resp
