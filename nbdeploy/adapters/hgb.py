"""scikit-learn's HistGradientBoostingClassifier/Regressor, translated tree by tree to ONNX.

skl2onnx 1.20 cannot be used: with numpy 2 it crashes building the TreeEnsemble node (its
attribute lists hold numpy scalars), and even where it runs it reads every split as a numeric
threshold, so ``categorical_features`` splits (category-in-set) come out wrong.  The model's own
trees are simple to read (``_predictors``: per iteration, one predictor per class, nodes with
``feature_idx``, ``num_threshold``, ``missing_go_to_left``, ``is_categorical``, ``bitset_idx``,
``value``), so this module writes them into a TreeEnsemble (see ``trees_onnx``):

* numeric split: ``x <= num_threshold`` goes left, NaN goes where ``missing_go_to_left`` says;
* categorical split: the category's code in the left bitset goes left; missing values and
  categories unseen in training go where ``missing_go_to_left`` says (what scikit-learn does);
* the model's internal OrdinalEncoder (categorical columns first, then numeric ones) becomes a
  LabelEncoder per categorical column: string (or number) -> code, anything else -> NaN.

Thresholds and inputs are doubles, as in scikit-learn, so served answers match ``predict``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConversionError
from .base import Converted, class_modules
from .sklearn import SklearnAdapter
from .trees_onnx import LEQ, MEMBER, Ensemble, Front, Leaf, Split, Tree, build_model

HGB_CLASSES = ("HistGradientBoostingClassifier", "HistGradientBoostingRegressor")


def _in_bitset(words: np.ndarray, code: int) -> bool:
    return bool((int(words[code // 32]) >> (code % 32)) & 1)


def _is_nan(v) -> bool:
    """None or a NaN of any float type (np.float32 is not a Python float)."""
    if v is None:
        return True
    try:
        return bool(v != v)
    except Exception:
        return False


class HistGradientBoostingAdapter(SklearnAdapter):
    """HistGradientBoosting models (not inside a Pipeline: those go through skl2onnx)."""

    framework = "sklearn"

    @classmethod
    def matches(cls, obj: Any) -> bool:
        return any(m == "sklearn" or m.startswith("sklearn.") for m in class_modules(obj)) \
            and any(c.__name__ in HGB_CLASSES for c in type(obj).__mro__)

    # -- the model's feature layout -------------------------------------------------------------
    def _layout(self) -> tuple[list[int], dict[int, list]]:
        """(original column of each tree feature, {original column: known categories}).

        With categorical features scikit-learn encodes them first (an OrdinalEncoder inside
        ``_preprocessor``) and puts them before the numeric columns."""
        m = self.model
        n = int(m.n_features_in_)
        mask = getattr(m, "is_categorical_", None)
        if mask is None or getattr(m, "_preprocessor", None) is None:
            return list(range(n)), {}
        mask = np.asarray(mask, dtype=bool)
        cat_cols = [int(i) for i in np.where(mask)[0]]
        num_cols = [int(i) for i in np.where(~mask)[0]]
        enc = m._preprocessor.named_transformers_["encoder"]
        known = {}
        for col, cats in zip(cat_cols, enc.categories_):
            cats = [c for c in cats if not _is_nan(c)]   # the encoder lists NaN last when seen
            known[col] = cats
        return cat_cols + num_cols, known

    def column_hints(self) -> dict[str, dict]:
        """Categorical columns and the categories the model was trained on."""
        names = self.feature_names()
        if not names:
            return {}
        _, known = self._layout()
        return {names[col]: {"kind": "categorical", "categories": [str(c) for c in cats]}
                for col, cats in known.items()}

    def _ensemble(self, order: list[int], known: dict[int, list]) -> Ensemble:
        m = self.model
        k = int(m.n_trees_per_iteration_)
        n_cats = {r: len(known[col]) for r, col in enumerate(order) if col in known}
        trees = []
        for iteration in m._predictors:
            for target, predictor in enumerate(iteration):
                bitsets = np.asarray(predictor.raw_left_cat_bitsets)
                nodes: list = []
                for nd in predictor.nodes:
                    if nd["is_leaf"]:
                        nodes.append(Leaf(float(nd["value"])))
                        continue
                    f = int(nd["feature_idx"])
                    left, right = int(nd["left"]), int(nd["right"])
                    miss = bool(nd["missing_go_to_left"])
                    if nd["is_categorical"]:
                        words = bitsets[int(nd["bitset_idx"])]
                        members = tuple(c for c in range(n_cats.get(f, 0)) if _in_bitset(words, c))
                        if members:
                            nodes.append(Split(f, MEMBER, left, right, miss, members=members))
                        else:    # no known category goes left: codes are >= 0, so never true
                            nodes.append(Split(f, LEQ, left, right, miss, threshold=-1.0))
                    else:
                        nodes.append(Split(f, LEQ, left, right, miss, threshold=float(nd["num_threshold"])))
                trees.append(Tree(nodes, target=target))
        base = np.asarray(m._baseline_prediction, dtype=np.float64).reshape(-1).tolist()
        if self.task() == "classifier":
            link = "sigmoid" if k == 1 else "softmax"
        else:
            name = type(getattr(m._loss, "link", None)).__name__
            links = {"IdentityLink": "identity", "LogLink": "exp"}
            if name not in links:
                raise ConversionError(f"{self.model_type} with loss={m.loss!r} ({name}) is not supported.",
                                      hint="Use loss='squared_error', 'absolute_error', 'quantile', "
                                           "'poisson' or 'gamma'.")
            link = links[name]
        return Ensemble(trees, n_targets=k, base=base, link=link, dtype="double")

    # -- conversion ----------------------------------------------------------------------------
    def to_onnx(self, X, *, feature_names=None, opset=None, columns=None) -> Converted:
        order, known = self._layout()
        n = int(self.model.n_features_in_)
        if columns is not None:
            if len(columns) != n:
                raise ConversionError(f"{self.model_type} takes {n} columns; the sample has {len(columns)}.",
                                      hint="Pass the training DataFrame's columns.")
            inputs = []
            for c in columns:
                t = "string" if c["kind"] in ("categorical", "text") else "double"
                c["onnx_input"], c["onnx_type"] = c["name"], t
                inputs.append((c["name"], t))
            features = []
            for col in order:
                codes = None
                if col in known:
                    key = str if inputs[col][1] == "string" else float
                    codes = {key(v): i for i, v in enumerate(known[col])}
                    if inputs[col][1] == "string":
                        columns[col]["categories"] = [str(v) for v in known[col]]
                features.append((col, 0, codes))
            front = Front(inputs, features)
        else:
            features = [(0, col, {float(v): i for i, v in enumerate(known[col])} if col in known else None)
                        for col in order]
            front = Front([("input", "float")], features, tensor_width=n)
        try:
            onx, out = build_model(self._ensemble(order, known), front, task=self.task())
        except ConversionError:
            raise
        except Exception as exc:
            from ..errors import brief

            raise ConversionError(f"Translating {self.model_type}'s trees to ONNX failed: {brief(exc)}",
                                  hint="Please report this model's settings; as a workaround export "
                                       "it to ONNX yourself and deploy the .onnx file.") from exc
        task = self.task()
        spec = {"task": task, "input_mode": "table" if columns is not None else "tensor",
                "input_names": [name for name, _ in front.inputs], "classes": self.classes(),
                "outputs": {"probabilities": out} if task == "classifier" else {"value": out},
                "postprocess": "none"}
        notes = ["HistGradientBoosting trees translated to an ONNX TreeEnsemble by nbdeploy "
                 "(skl2onnx 1.20 cannot convert them with numpy 2, nor their categorical splits)."]
        return Converted(onx, spec, converter="nbdeploy.trees_onnx", notes=notes)
