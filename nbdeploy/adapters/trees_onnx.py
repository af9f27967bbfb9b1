"""Tree ensembles written straight into ONNX (``ai.onnx.ml`` TreeEnsemble, opset 5).

Used where a converter cannot express the model: scikit-learn's HistGradientBoosting (skl2onnx
1.20 crashes on numpy 2 attributes and ignores categorical splits) and LightGBM/XGBoost trained
on pandas categories (set-membership splits).  TreeEnsemble v5 has what these trees need:
``BRANCH_MEMBER`` for "category in set", ``nodes_missing_value_tracks_true`` for the side a
missing value (NaN) takes, double thresholds, and several targets (one per class).

The graph is: a *front* that turns the model's inputs into one matrix of the codes the trees
were trained on (strings -> category codes with a LabelEncoder, unknown -> NaN; numbers cast),
the TreeEnsemble (raw scores), the base score, and the link (identity, exp, sigmoid, softmax).
Verification against the native model decides whether the translation is right.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ML_OPSET = 5
ONNX_OPSET = 21          # TreeEnsemble (ai.onnx.ml 5) came with ONNX 1.16, alongside opset 21

LEQ, LT, MEMBER = 0, 1, 6    # TreeEnsemble nodes_modes: BRANCH_LEQ, BRANCH_LT, BRANCH_MEMBER


@dataclass
class Split:
    """An interior node: ``x[feature] <= threshold`` (LEQ), ``< threshold`` (LT) or
    ``in members`` (MEMBER) goes to ``left``; a NaN goes left when ``missing_left``.
    ``left``/``right`` are node indices within the same tree."""

    feature: int
    mode: int
    left: int
    right: int
    missing_left: bool
    threshold: float = 0.0
    members: tuple = ()


@dataclass
class Leaf:
    value: float


@dataclass
class Tree:
    nodes: list                 # Split | Leaf, node 0 is the root
    target: int = 0             # which output column (class) the tree adds to


@dataclass
class Ensemble:
    """Trees over ``n_features`` inputs plus a base score per target, then a link."""

    trees: list
    n_targets: int
    base: list = field(default_factory=list)        # one per target (0 when empty)
    link: str = "identity"                          # identity | exp | sigmoid | softmax
    dtype: str = "double"                           # "double" or "float": inputs and thresholds


def tree_ensemble_node(ens: Ensemble, x: str, y: str):
    """One ``ai.onnx.ml.TreeEnsemble`` node computing raw scores ``y`` [N, n_targets] from ``x``."""
    from onnx import helper, numpy_helper

    np_t = np.float64 if ens.dtype == "double" else np.float32
    roots, feats, modes, splits, tnode, tleaf, fnode, fleaf, miss = ([] for _ in range(9))
    members: list[float] = []
    leaf_targets: list[int] = []
    leaf_weights: list[float] = []

    for tree in ens.trees:
        nodes = tree.nodes
        if isinstance(nodes[0], Leaf):
            # A tree that is one leaf: v5 roots must be interior nodes, so split on anything
            # with both branches ending in that leaf.
            roots.append(len(feats))
            leaf = len(leaf_weights)
            leaf_targets.append(tree.target)
            leaf_weights.append(float(nodes[0].value))
            feats.append(0)
            modes.append(LEQ)
            splits.append(0.0)
            miss.append(0)
            tnode.append(leaf)
            tleaf.append(1)
            fnode.append(leaf)
            fleaf.append(1)
            continue
        # number interior nodes and leaves of this tree in the flat arrays
        interior: dict[int, int] = {}
        leaves: dict[int, int] = {}
        for i, nd in enumerate(nodes):
            if isinstance(nd, Split):
                interior[i] = len(feats) + len(interior)
        for i, nd in enumerate(nodes):
            if isinstance(nd, Leaf):
                leaves[i] = len(leaf_weights)
                leaf_targets.append(tree.target)
                leaf_weights.append(float(nd.value))
        roots.append(interior[0])
        for nd in nodes:
            if not isinstance(nd, Split):
                continue
            feats.append(int(nd.feature))
            modes.append(int(nd.mode))
            miss.append(1 if nd.missing_left else 0)
            if nd.mode == MEMBER:
                splits.append(np.nan)
                if members:
                    members.append(np.nan)      # sets are NaN-separated, in node order
                members.extend(float(m) for m in nd.members)
            else:
                splits.append(float(nd.threshold))
            for child, ids, is_leaf in ((nd.left, tnode, tleaf), (nd.right, fnode, fleaf)):
                if isinstance(nodes[child], Leaf):
                    ids.append(leaves[child])
                    is_leaf.append(1)
                else:
                    ids.append(interior[child])
                    is_leaf.append(0)

    attrs = dict(
        n_targets=int(ens.n_targets), aggregate_function=1, post_transform=0,   # SUM, NONE
        tree_roots=roots, nodes_featureids=feats,
        nodes_modes=numpy_helper.from_array(np.asarray(modes, dtype=np.uint8)),
        nodes_splits=numpy_helper.from_array(np.asarray(splits, dtype=np_t)),
        nodes_truenodeids=tnode, nodes_trueleafs=tleaf,
        nodes_falsenodeids=fnode, nodes_falseleafs=fleaf,
        nodes_missing_value_tracks_true=miss,
        leaf_targetids=leaf_targets,
        leaf_weights=numpy_helper.from_array(np.asarray(leaf_weights, dtype=np_t)))
    if members:
        attrs["membership_values"] = numpy_helper.from_array(np.asarray(members, dtype=np_t))
    return helper.make_node("TreeEnsemble", [x], [y], domain="ai.onnx.ml", name="trees", **attrs)


@dataclass
class Front:
    """How graph inputs become the trees' feature matrix.

    ``inputs``: ``(name, onnx type "float"|"double"|"string")`` of each graph input, [N, 1] per
    column in table mode or one [N, F] ``"input"`` in tensor mode.
    ``features``: for each tree feature index, ``(input position, column within it, codes)``
    where ``codes`` maps a category (str or float) to the code the trees test, or None for a
    number passed as it is.
    """

    inputs: list
    features: list
    tensor_width: int | None = None      # tensor mode: the one input's number of columns


def build_model(ens: Ensemble, front: Front, *, task: str):
    """The whole graph: front -> TreeEnsemble -> base -> link.  Returns (ModelProto, outputs)."""
    from onnx import TensorProto, helper, numpy_helper

    T = TensorProto.DOUBLE if ens.dtype == "double" else TensorProto.FLOAT
    np_t = np.float64 if ens.dtype == "double" else np.float32
    onnx_type = {"float": TensorProto.FLOAT, "double": TensorProto.DOUBLE,
                 "string": TensorProto.STRING}
    nodes, inits = [], []
    graph_inputs = []
    tensor_mode = front.tensor_width is not None
    for name, t in front.inputs:
        width = front.tensor_width if tensor_mode else 1
        graph_inputs.append(helper.make_tensor_value_info(name, onnx_type[t], [None, width]))
    in_types = dict(front.inputs)

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    plain = all(codes is None for _, _, codes in front.features)
    if tensor_mode and plain and [c for _, c, _ in front.features] == list(range(front.tensor_width)):
        x = "input"
        if in_types["input"] != ens.dtype:
            nodes.append(helper.make_node("Cast", ["input"], ["x_cast"], to=T))
            x = "x_cast"
    else:
        cols = []
        for k, (pos, col, codes) in enumerate(front.features):
            name, t = front.inputs[pos]
            src = name
            if tensor_mode:
                src = f"col{k}"
                nodes.append(helper.make_node("Slice", [name, const(f"s{k}", np.array([col])),
                                                        const(f"e{k}", np.array([col + 1])),
                                                        const(f"a{k}", np.array([1]))], [src]))
            if codes is not None:
                keys = list(codes)
                coded = f"codes{k}"
                values = [float(codes[key]) for key in keys]
                if t == "string":
                    nodes.append(helper.make_node(
                        "LabelEncoder", [src], [coded], domain="ai.onnx.ml",
                        keys_strings=[str(key) for key in keys], values_floats=values,
                        default_float=float("nan")))
                else:
                    fsrc = src
                    if t != "float":
                        fsrc = f"f{k}"
                        nodes.append(helper.make_node("Cast", [src], [fsrc], to=TensorProto.FLOAT))
                    nodes.append(helper.make_node(
                        "LabelEncoder", [fsrc], [coded], domain="ai.onnx.ml",
                        keys_floats=[float(key) for key in keys], values_floats=values,
                        default_float=float("nan")))
                src, t = coded, "float"
            if t != ens.dtype:
                nodes.append(helper.make_node("Cast", [src], [f"c{k}"], to=T))
                src = f"c{k}"
            cols.append(src)
        x = "features"
        nodes.append(helper.make_node("Concat", cols, [x], axis=1))

    nodes.append(tree_ensemble_node(ens, x, "raw"))
    raw = "raw"
    base = np.asarray(ens.base or [0.0] * ens.n_targets, dtype=np_t).reshape(1, -1)
    if np.any(base != 0):
        nodes.append(helper.make_node("Add", ["raw", const("base", base)], ["score"]))
        raw = "score"
    if task == "classifier":
        out = "probabilities"
        if ens.link == "sigmoid":
            nodes.append(helper.make_node("Sigmoid", [raw], ["p1"]))
            nodes.append(helper.make_node("Sub", [const("one", np.ones((1, 1), dtype=np_t)), "p1"], ["p0"]))
            nodes.append(helper.make_node("Concat", ["p0", "p1"], [out], axis=1))
        elif ens.link == "softmax":
            nodes.append(helper.make_node("Softmax", [raw], [out], axis=1))
        else:
            raise ValueError(f"unknown classifier link {ens.link!r}")
        width = 2 if ens.link == "sigmoid" else ens.n_targets
    else:
        out = "value"
        if ens.link == "exp":
            nodes.append(helper.make_node("Exp", [raw], [out]))
        elif ens.link == "identity":
            nodes.append(helper.make_node("Identity", [raw], [out]))
        else:
            raise ValueError(f"unknown regressor link {ens.link!r}")
        width = ens.n_targets
    graph = helper.make_graph(nodes, "nbdeploy_trees", graph_inputs,
                              [helper.make_tensor_value_info(out, T, [None, width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET),
                                                    helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
                              producer_name="nbdeploy")
    model.ir_version = min(model.ir_version, 10)
    return model, out
