"""explain's tree path: exact TreeSHAP on tree ensembles (see :mod:`nbdeploy.explain`).

* :func:`tabular_tree` explains a tree ensemble on numeric rows with ``shap.TreeExplainer`` on
  the native model, and :func:`check_exported` checks that the trees exported for the bundle
  (``trees.npz``) give the same values.
* :func:`table_tree` explains a ``ColumnTransformer [-> per-feature steps] -> tree ensemble``
  pipeline on the features the trees see (computed by the served graph cut at the ensemble's
  input), summed back per original column (:func:`column_groups`, :func:`features_graph`);
  :func:`table_tree_config` and :func:`table_tree_values` finish it.

Each function either returns its result or appends a note saying why TreeSHAP does not apply
and returns None; the caller then takes the model-agnostic path.  This module only reads its
arguments: it imports nothing from :mod:`nbdeploy.explain`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np


def _first_line(exc: BaseException, limit: int | None = None) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text[:limit] if limit else text


def _output_names(task: str, classes: Any, space: str, width: int) -> list[str]:
    """Names of the explained outputs: the positive class for log-odds, every class for
    probabilities and margins, ``value`` / ``value_i`` for regressors."""
    if task == "classifier":
        cls = [str(c) for c in classes] if classes is not None else [str(i) for i in range(width)]
        return [cls[-1]] if space == "log_odds" else cls
    return ["value"] if width == 1 else [f"value_{i}" for i in range(width)]


def _space(adapter: Any, task: str, meta: dict, n_outputs: int, frame: Any) -> str:
    """The trees' own output space: probabilities for scikit-learn forests and trees, the
    margin (log-odds, per-class margins) for boosted classifiers, the value for regressors
    unless the objective has a link (poisson, ...)."""
    if task == "classifier" and meta.get("tree_output") == "probability":
        return "probability"
    if task == "classifier":
        return "log_odds" if n_outputs == 1 else "margin"
    margin = adapter.native_output(frame, "margin")
    value = adapter.native_output(frame, "value")
    return "value" if np.allclose(margin, value, rtol=1e-5, atol=1e-5) else "margin"


# ---------------------------------------------------------------------------------------
# numeric rows
# ---------------------------------------------------------------------------------------
def tabular_tree(adapter: Any, spec: dict, onnx: Any, rows: np.ndarray, notes: list[str],
                 report: Callable[[float, str], None]) -> dict | None:
    """TreeSHAP on the native trees for ``rows``: ``phi [N, F, K]``, ``base [K]``, the native
    ``outputs`` in the trees' space, the config entries and the ``trees`` arrays for the
    bundle; None (with a note) when shap is missing or refuses the model."""
    try:
        import shap
    except ImportError:
        notes.append("TreeSHAP needs the 'shap' package (pip install shap); used model-agnostic "
                     "SHAP over the ONNX model instead.")
        return None
    from .runtime.explain import tree_arrays_from_ensemble

    t0 = time.perf_counter()
    report(0.05, "TreeSHAP: parsing the trees")
    try:
        te = shap.TreeExplainer(adapter.model)
        arrays, meta = tree_arrays_from_ensemble(te.model)
    except Exception as exc:  # shap refuses some configurations (e.g. multi-class sklearn GBM)
        notes.append(f"TreeSHAP could not handle {adapter.model_type} ({type(exc).__name__}: "
                     f"{_first_line(exc)}); used model-agnostic SHAP over the ONNX model instead.")
        return None
    task = spec["task"]
    Xn = adapter.native_frame(rows, spec.get("feature_names"))
    phi = te.shap_values(Xn, check_additivity=False)
    if isinstance(phi, list):
        phi = np.stack(phi, axis=-1)
    phi = np.asarray(phi, dtype=np.float64)
    phi = phi if phi.ndim == 3 else phi[:, :, None]
    base = np.asarray(te.expected_value, dtype=np.float64).reshape(-1)
    space = _space(adapter, task, meta, phi.shape[2], Xn)
    native = adapter.native_output(Xn, space)
    if space in ("log_odds", "margin") and task == "classifier":
        notes.append(f"TreeSHAP explains {adapter.model_type} in margin space "
                     f"({space}: apply the {'sigmoid' if space == 'log_odds' else 'softmax'} "
                     "to base + sum(SHAP) to get probabilities).")
    elif space == "margin":
        notes.append(f"TreeSHAP explains {adapter.model_type} in margin space (before the "
                     "objective's inverse link, e.g. exp for Poisson): apply it to base + "
                     "sum(SHAP) to get predictions.")
    if space in ("probability", "value"):
        diff = float(np.max(np.abs(onnx.output_matrix(rows) - native))) if len(rows) else 0.0
        if diff > 1e-4:
            notes.append(f"TreeSHAP explains the native trees; the served ONNX variant's "
                         f"outputs differ from them by up to {diff:.3g} on the sample.")
    config = {"tree": meta, "kind": "tree", "output_space": space,
              "output_names": _output_names(task, spec.get("classes"), space, phi.shape[2])}
    return {"phi": phi, "base": base, "outputs": native, "config": config,
            "artifacts": {"trees": arrays}, "seconds": round(time.perf_counter() - t0, 4)}


def check_exported(onnx: Any, config: dict, tree: dict, rows: np.ndarray, notes: list[str],
                   report: Callable[[float, str], None]) -> tuple[Any, float]:
    """The served explainer over the exported trees, and how far its values are from native
    TreeSHAP (``tree`` from :func:`tabular_tree`).  A constant per-output offset (shap's parser
    can miss a booster's intercept, e.g. XGBoost 3's per-class base scores) is folded into the
    exported base offset (``config["tree"]`` is updated)."""
    from .runtime.explain import ServeExplainer

    report(0.5, "TreeSHAP: checking the exported trees")
    trees = tree["artifacts"]["trees"]
    serve = ServeExplainer(onnx, config, trees=trees)
    sphi, sbase, souts, _ = serve.shap_values(rows)
    resid = tree["outputs"] - souts
    if len(rows) and np.max(np.abs(resid)) > 1e-6 and np.max(np.ptp(resid, axis=0)) < 1e-4:
        meta = config["tree"]
        meta["base_offset"] = [float(b + r) for b, r in
                               zip(np.broadcast_to(meta["base_offset"], resid.shape[1:]), resid.mean(0))]
        serve = ServeExplainer(onnx, config, trees=trees)
        sphi, sbase, souts, _ = serve.shap_values(rows)
    agreement = float(max(np.max(np.abs(sphi - tree["phi"])) if sphi.size else 0.0,
                          np.max(np.abs(sbase - tree["base"]))))
    if agreement > 1e-4:
        notes.append(f"The exported trees reproduce native TreeSHAP only to {agreement:.2g}.")
    return serve, agreement


# ---------------------------------------------------------------------------------------
# tables (one contribution per DataFrame column)
# ---------------------------------------------------------------------------------------
def _flat_steps(model: Any) -> list:
    """The steps of a (possibly nested) Pipeline, flattened, without dropped/passthrough ones."""
    out = []
    for _, t in getattr(model, "steps", None) or []:
        if t is None or t == "passthrough":
            continue
        out.extend(_flat_steps(t) if getattr(t, "steps", None) else [t])
    return out


def column_groups(model: Any, names: list[str]) -> tuple[list[int] | None, Any, str]:
    """For a Pipeline ``ColumnTransformer [-> per-feature steps] -> tree ensemble``: the original
    column index of every transformed feature, the preprocessing as a callable, or a reason."""
    from .adapters.base import TREE_ENSEMBLES, final_estimator

    steps = _flat_steps(model)
    if not getattr(model, "steps", None) or len(steps) < 2:
        return None, None, "not a Pipeline"
    final = final_estimator(model)
    if type(final).__name__ not in TREE_ENSEMBLES:
        return None, None, f"the pipeline ends in {type(final).__name__}, not a tree ensemble"
    pre = steps[:-1]
    ct = pre[0] if pre else None
    if not hasattr(ct, "output_indices_"):
        return None, None, "its first step is not a ColumnTransformer"
    inputs = list(getattr(ct, "feature_names_in_", names))
    n_out = max((sl.stop for sl in ct.output_indices_.values()), default=0)
    groups: list[int | None] = [None] * n_out
    for name, tr, cols in ct.transformers_:
        sl = ct.output_indices_.get(name)
        if tr == "drop" or sl is None or sl.stop == sl.start:
            continue
        if isinstance(cols, str):
            cols = [cols]
        cols = [inputs[c] if isinstance(c, (int, np.integer)) else str(c) for c in np.asarray(cols).tolist()]
        if any(c not in names for c in cols):
            return None, None, f"transformer {name!r} reads columns the table does not name"
        if len(cols) == 1:
            groups[sl] = [names.index(cols[0])] * (sl.stop - sl.start)
            continue
        try:
            outs = list(cols) if tr == "passthrough" else [str(o) for o in tr.get_feature_names_out(cols)]
        except Exception:
            return None, None, f"transformer {name!r} does not name its outputs"
        if len(outs) != sl.stop - sl.start:
            return None, None, f"transformer {name!r} names {len(outs)} outputs for {sl.stop - sl.start}"
        for k, o in enumerate(outs):
            o = o.removeprefix("missingindicator_")
            hits = [c for c in cols if o == c or o.startswith(c + "_")]
            if not hits:
                return None, None, f"output {o!r} of {name!r} cannot be traced to one column"
            groups[sl.start + k] = names.index(max(hits, key=len))
    if any(g is None for g in groups):
        return None, None, "some transformed features come from no column"
    prev = [str(n) for n in ct.get_feature_names_out()] if hasattr(ct, "get_feature_names_out") else None
    for t in pre[1:]:          # later steps must keep features one to one (scalers, ...)
        try:
            now = [str(n) for n in t.get_feature_names_out(prev)]
        except Exception:
            return None, None, f"step {type(t).__name__} does not name its outputs"
        if now != prev:
            return None, None, f"step {type(t).__name__} mixes or drops features"

    def transform(frame):
        Z = frame
        for t in pre:
            Z = t.transform(Z)
        return np.asarray(Z.toarray() if hasattr(Z, "toarray") else Z, dtype=np.float64)

    # transformed feature names without the transformer prefix ("txt__great" -> "great")
    transform.feature_names = [n.split("__", 1)[-1] for n in prev] if prev else None
    return [int(g) for g in groups], transform, ""


def features_graph(onnx_model: Any, n_features: int) -> tuple[bytes | None, str]:
    """The ONNX graph cut at the tree ensemble's input: its output is the preprocessed
    features (bytes, output name), or (None, reason)."""
    import onnx
    from onnx import helper

    m = onnx.ModelProto()
    m.CopyFrom(onnx_model if hasattr(onnx_model, "graph") else onnx.load_from_string(onnx_model))
    trees = [n for n in m.graph.node if n.op_type.startswith("TreeEnsemble")]
    inputs = {n.input[0] for n in trees}
    if len(inputs) != 1:
        return None, "the graph has no single tree-ensemble input"
    target = inputs.pop()
    producers = {o: n for n in m.graph.node for o in n.output}
    keep, todo = set(), [target]
    while todo:                 # the nodes the features depend on, nothing downstream
        t = todo.pop()
        n = producers.get(t)
        if n is None or id(n) in keep:
            continue
        keep.add(id(n))
        todo.extend(i for i in n.input if i)
    nodes = [n for n in m.graph.node if id(n) in keep]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info(target, onnx.TensorProto.FLOAT, [None, n_features]))
    used = {i for n in nodes for i in n.input}
    inits = [t for t in m.graph.initializer if t.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(inits)
    return m.SerializeToString(), target


def table_tree(converted: Any, onnx: Any, names: list[str], rows: np.ndarray,
               notes: list[str], *, asked: bool = False) -> dict | None:
    """Exact TreeSHAP for a ColumnTransformer -> tree pipeline, summed back per column: the
    explainer, the exported trees, the column groups and the served features graph, or None
    (with a note when the user asked for trees or the pipeline looked like one)."""
    groups, transform, why = column_groups(converted.adapter.model, names)
    if groups is None:
        if converted.adapter.tree_support()[0]:
            notes.append("TreeSHAP not used: the trees read columns encoded inside the ONNX graph "
                         "(e.g. category splits); model-agnostic SHAP per column instead.")
        elif asked or (why != "not a Pipeline" and "not a tree ensemble" not in why):
            notes.append(f"TreeSHAP per column not used ({why}); model-agnostic SHAP per column instead.")
        return None
    try:
        import shap
    except ImportError:
        notes.append("TreeSHAP needs the 'shap' package; used model-agnostic SHAP per column instead.")
        return None
    from .adapters.base import final_estimator
    from .runtime.explain import FeatureGraph, tree_arrays_from_ensemble

    final = final_estimator(converted.adapter.model)
    try:
        graph, out_name = features_graph(converted.onnx_model, len(groups))
        if graph is None:
            raise ValueError(out_name)
        features = FeatureGraph(graph, out_name, onnx.feeds)
        te = shap.TreeExplainer(final)
        arrays, meta = tree_arrays_from_ensemble(te.model)
        frame = converted.adapter.native_frame(rows, names)
        native_t = transform(frame)
        onnx_t = features(rows).astype(np.float64)
    except Exception as exc:
        notes.append(f"TreeSHAP per column not used ({type(exc).__name__}: "
                     f"{_first_line(exc, 200)}); model-agnostic SHAP instead.")
        return None
    gap = float(np.max(np.abs(onnx_t - native_t) / (1.0 + np.abs(native_t)))) if len(rows) else 0.0
    if native_t.shape != onnx_t.shape or gap > 1e-4:
        notes.append(f"TreeSHAP per column not used: the ONNX preprocessing differs from the native "
                     f"one by {gap:.2g}; model-agnostic SHAP instead.")
        return None
    return {"te": te, "arrays": arrays, "meta": meta, "groups": groups, "graph": graph,
            "output": out_name, "features": features, "transform": transform, "frame": frame,
            "feature_names": transform.feature_names}


def table_tree_config(adapter: Any, tree: dict, *, task: str, classes: Any, columns: list[dict],
                      width: int, notes: list[str]) -> tuple[dict, dict]:
    """The config entries and bundle artifacts of table-mode TreeSHAP (``tree`` from
    :func:`table_tree`)."""
    meta = tree["meta"]
    K = int(meta["num_outputs"])
    space = _space(adapter, task, meta, K, tree["frame"])
    config = {"kind": "tree", "tree": meta, "tree_groups": tree["groups"],
              "tree_features_output": tree["output"], "output_space": space,
              "output_names": _output_names(task, classes, space, width if task == "classifier" else K)}
    if tree["feature_names"] and any(c["kind"] == "text" for c in columns):
        config["tree_feature_names"] = tree["feature_names"]     # per-token detail of text
    if space in ("log_odds", "margin"):
        notes.append(f"TreeSHAP explains the trees in margin space ({space}); apply the model's "
                     "link to base + sum(SHAP) to get its predictions.")
    notes.append("Exact TreeSHAP on the features the trees see (computed by the served graph's "
                 "preprocessing); each transformed feature, e.g. every one-hot column, is summed "
                 "into its original column.")
    if "tree_feature_names" in config:
        notes.append("Text columns: one contribution per column (the sum over its tokens, present "
                     "or absent); the largest token terms are listed per row in text_tokens.")
    return config, {"trees": tree["arrays"], "features_onnx": tree["graph"]}


def table_tree_values(serve: Any, adapter: Any, tree: dict, rows: np.ndarray, *, n_columns: int,
                      output_space: str, notes: list[str]) -> tuple:
    """Served TreeSHAP per column for ``rows`` (``phi, base, native outputs, algorithm``) and
    its largest distance from TreeSHAP on the native preprocessing."""
    from .runtime.explain import group_columns

    phi, base, _, algo = serve.shap_values(rows)
    outputs = adapter.native_output(tree["frame"], output_space)
    nphi = tree["te"].shap_values(tree["transform"](tree["frame"]), check_additivity=False)
    nphi = np.asarray(np.stack(nphi, -1) if isinstance(nphi, list) else nphi, dtype=np.float64)
    nphi = group_columns(nphi if nphi.ndim == 3 else nphi[:, :, None], tree["groups"], n_columns)
    agreement = float(np.max(np.abs(nphi - phi))) if len(rows) else 0.0
    if agreement > 1e-4:
        notes.append(f"TreeSHAP on the served graph's features differs from TreeSHAP on the native "
                     f"preprocessing by up to {agreement:.2g} (float32 features near split thresholds).")
    return phi, base, outputs, algo, agreement


__all__ = ["tabular_tree", "check_exported", "column_groups", "features_graph", "table_tree",
           "table_tree_config", "table_tree_values"]
