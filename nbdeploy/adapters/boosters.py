"""XGBoost and LightGBM scikit-learn-API models.

Numeric inputs go through onnxmltools.  Models trained on pandas ``category`` columns
(LightGBM's pandas categories, XGBoost's ``enable_categorical=True``) are served from strings:
their trees are read from the booster's own dump (LightGBM ``dump_model()``, XGBoost's JSON
model) and written into an ONNX TreeEnsemble by ``trees_onnx``, behind one LabelEncoder per
categorical column that maps the string to the code the booster was trained on (its own
category list; anything else -> NaN, i.e. missing).  onnxmltools handles LightGBM's
categorical splits only on numeric codes, and would need a second graph merged in front of
it; one translation for both boosters keeps missing values and unknown categories in one place.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConversionError, UnsupportedModelError
from .base import Converted, SklearnApiAdapter, class_modules, squeeze_value
from .trees_onnx import LEQ, LT, MEMBER, Ensemble, Front, Leaf, Split, Tree, build_model

OPSET = 15


class _BoosterAdapter(SklearnApiAdapter):
    module = "?"

    @classmethod
    def matches(cls, obj: Any) -> bool:
        return any(m == cls.module or m.startswith(cls.module + ".") for m in class_modules(obj))

    def _check_sklearn_api(self):
        if not hasattr(self.model, "predict") or not hasattr(self.model, "n_features_in_"):
            name = "XGBClassifier/XGBRegressor" if self.framework == "xgboost" \
                else "LGBMClassifier/LGBMRegressor"
            raise UnsupportedModelError(
                f"{self.model_type} is a raw booster; nbdeploy converts the scikit-learn API models.",
                hint=f"Train with {name} (the scikit-learn wrappers), or export the booster to "
                     f"ONNX yourself and deploy the .onnx file.")

    def task(self) -> str:
        if self._task:
            return self._task
        self._check_sklearn_api()
        return "classifier" if hasattr(self.model, "classes_") and hasattr(self.model, "predict_proba") \
            else "regressor"

    def predict(self, X):
        Xn = self.native_frame(X, self.feature_names())
        if self.task() == "classifier":
            proba = np.asarray(self.model.predict_proba(Xn), dtype=np.float64)
            idx = proba.argmax(axis=1)
            classes = np.asarray(self.classes())
            return {"label": classes[idx], "probabilities": proba}
        return {"value": squeeze_value(self.model.predict(Xn))}

    # -- pandas categories (table mode) ---------------------------------------------------------
    #: the ONNX type numeric columns are fed as: the precision the booster compares in
    numeric_type = "double"

    def _categories(self) -> dict[int, list]:
        """{feature index: the categories the booster was trained on, in code order}."""
        raise NotImplementedError

    def _ensemble(self) -> Ensemble:
        raise NotImplementedError

    def column_hints(self) -> dict[str, dict]:
        names = self.feature_names() or []
        try:
            cats = self._categories()
        except Exception:
            return {}
        return {names[i]: {"kind": "categorical", "categories": [str(c) for c in v]}
                for i, v in cats.items() if i < len(names)}

    def native_frame(self, X, feature_names):
        """In table mode, the DataFrame a user would pass: category columns keep the training
        categories and add any value outside them (so the library itself decides what an
        unseen category means: LightGBM reads it as missing, XGBoost raises)."""
        frame = super().native_frame(X, feature_names)
        columns = getattr(self, "columns", None)
        if columns is None:
            return frame
        import pandas as pd

        table = np.asarray(X)
        for j, col in enumerate(columns):
            if col.get("dtype") != "category" or table.dtype != object:
                continue
            known = list(col.get("categories") or [])
            seen = set(known)
            extra = sorted({v for v in table[:, j] if isinstance(v, str) and v not in seen})
            if extra:
                cells = [np.nan if v is None else v for v in table[:, j]]
                frame[col["name"]] = pd.Categorical(cells, categories=known + extra)
        return frame

    def _table_to_onnx(self, columns: list[dict]) -> Converted:
        cats = self._categories()
        n = len(columns)
        if self.n_features() is not None and n != self.n_features():
            raise ConversionError(f"{self.model_type} takes {self.n_features()} columns; the sample has {n}.",
                                  hint="Pass the training DataFrame's columns.")
        inputs, features = [], []
        for i, c in enumerate(columns):
            string = c["kind"] in ("categorical", "text")
            if string and i not in cats:
                raise ConversionError(
                    f"Column {c['name']!r} holds strings, but {self.model_type} does not treat it "
                    "as categorical.",
                    hint="Give it the pandas 'category' dtype before fitting (and enable_categorical"
                         "=True for XGBoost), or encode it as numbers.")
            t = "string" if string else self.numeric_type
            c["onnx_input"], c["onnx_type"] = c["name"], t
            inputs.append((c["name"], t))
            codes = None
            if i in cats:
                key = str if string else float
                codes = {key(v): k for k, v in enumerate(cats[i])}
                if string:
                    c["categories"] = [str(v) for v in cats[i]]
            features.append((i, 0, codes))
        try:
            onx, out = build_model(self._ensemble(), Front(inputs, features), task=self.task())
        except ConversionError:
            raise
        except Exception as exc:
            from ..errors import brief

            raise ConversionError(f"Translating {self.model_type}'s trees to ONNX failed: {brief(exc)}",
                                  hint="Train with the default objective for the task, or export "
                                       "the model to ONNX yourself and deploy the .onnx file.") from exc
        task = self.task()
        spec = {"task": task, "input_mode": "table", "input_names": [n for n, _ in inputs],
                "classes": self.classes(),
                "outputs": {"probabilities": out} if task == "classifier" else {"value": out},
                "postprocess": "none"}
        notes = [f"{self.framework} trees on pandas categories translated to an ONNX TreeEnsemble by "
                 "nbdeploy (string inputs, the booster's own category codes)."]
        return Converted(onx, spec, converter="nbdeploy.trees_onnx", notes=notes)

    def _spec(self, onx) -> dict:
        outputs = [o.name for o in onx.graph.output]
        task = self.task()
        out = ({"label": outputs[0], "probabilities": outputs[-1]} if task == "classifier"
               else {"value": outputs[0]})
        return {"task": task, "input_mode": "tensor", "input_names": ["input"],
                "classes": self.classes(), "outputs": out, "postprocess": "none"}


def _fix_batch_dim(onx) -> None:
    """Converters declare the label output as shape [1]; make it [N] so onnxruntime stays quiet."""
    for out in onx.graph.output:
        dims = out.type.tensor_type.shape.dim
        if len(dims) >= 1 and dims[0].HasField("dim_value"):
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "N"


class XGBoostAdapter(_BoosterAdapter):
    framework = "xgboost"
    module = "xgboost"

    def margin(self, Xn):
        return self.model.predict(Xn, output_margin=True)

    numeric_type = "float"          # XGBoost compares float32 inputs with float32 thresholds

    def _json(self) -> dict:
        import json

        return json.loads(bytes(self.model.get_booster().save_raw(raw_format="json")))

    def _categories(self) -> dict[int, list]:
        learner = self._json()["learner"]
        types = learner.get("feature_types") or []
        cat_idx = [i for i, t in enumerate(types) if t == "c"]
        if not cat_idx:
            return {}
        enc = (learner["gradient_booster"]["model"].get("cats") or {}).get("enc")
        if enc is None:
            raise ConversionError(
                f"This XGBoost version does not store the training categories in {self.model_type}.",
                hint="Use XGBoost >= 3.1 (it records them), or encode the categories as numbers.")
        out = {}
        for i in cat_idx:
            e = enc[i]
            offsets, values = e.get("offsets") or [], e.get("values") or []
            if offsets:         # strings: UTF-8 bytes, one slice per category
                out[i] = [bytes(values[a:b]).decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:])]
            else:               # numeric categories
                out[i] = list(values)
        return out

    def _ensemble(self) -> Ensemble:
        learner = self._json()["learner"]
        gb = learner["gradient_booster"]
        if gb.get("name") != "gbtree":
            raise ConversionError(f"XGBoost booster={gb.get('name')!r} is not supported on categories.",
                                  hint="Use booster='gbtree' (the default).")
        model = gb["model"]
        obj = learner["objective"]["name"]
        base = [float(v) for v in str(learner["learner_model_param"]["base_score"]).strip("[]").split(",")]
        task = self.task()
        if task == "classifier" and obj in ("binary:logistic",):
            link, base = "sigmoid", [float(np.log(b / (1 - b))) for b in base]
        elif task == "classifier" and obj in ("multi:softprob", "multi:softmax"):
            link = "softmax"
        elif task == "regressor" and obj in ("reg:squarederror", "reg:squaredlogerror",
                                             "reg:absoluteerror", "reg:pseudohubererror",
                                             "reg:quantileerror"):
            link = "identity"
        elif task == "regressor" and obj in ("count:poisson", "reg:gamma", "reg:tweedie"):
            link, base = "exp", [float(np.log(b)) for b in base]
        else:
            raise ConversionError(f"XGBoost objective {obj!r} is not supported on categories.",
                                  hint="Use binary:logistic, multi:softprob, reg:squarederror or "
                                       "count:poisson/reg:gamma/reg:tweedie.")
        k = int(learner["learner_model_param"].get("num_class") or 0) or 1
        trees = model["trees"]
        info = model["tree_info"]
        limit = len(trees)
        best = getattr(self.model, "best_iteration", None) if _has_best(self.model) else None
        if best is not None and model.get("iteration_indptr"):
            limit = int(model["iteration_indptr"][int(best) + 1])
        out = []
        for t, target in zip(trees[:limit], info[:limit]):
            out.append(Tree(_xgb_nodes(t), target=int(target)))
        if len(base) == 1 and k > 1:
            base = base * k
        return Ensemble(out, n_targets=k, base=base, link=link, dtype="double")

    def to_onnx(self, X, *, feature_names=None, opset=None, columns=None) -> Converted:
        self._check_sklearn_api()
        if columns is not None:
            return self._table_to_onnx(columns)
        from onnxmltools import convert_xgboost
        from onnxmltools.convert.common.data_types import FloatTensorType

        try:
            onx = convert_xgboost(self.model, initial_types=[("input", FloatTensorType([None, X.shape[1]]))],
                                  target_opset=opset or OPSET)
        except Exception as exc:
            raise ConversionError(f"onnxmltools could not convert {self.model_type}: {exc}",
                                  hint="Check the objective is supported by onnxmltools' XGBoost "
                                       "converter (binary/multi:softprob, reg:squarederror, ...).") from exc
        _fix_batch_dim(onx)
        return Converted(onx, self._spec(onx), converter="onnxmltools")


class LightGBMAdapter(_BoosterAdapter):
    framework = "lightgbm"
    module = "lightgbm"

    def margin(self, Xn):
        return self.model.predict(Xn, raw_score=True)

    def _dump(self) -> dict:
        if not hasattr(self, "_dump_cache"):
            self._dump_cache = self.model.booster_.dump_model()
        return self._dump_cache

    def _categories(self) -> dict[int, list]:
        d = self._dump()
        pandas_cats = d.get("pandas_categorical") or []
        if not pandas_cats:
            return {}
        # categorical features list their values in feature_infos ({"values": [...]} in
        # LightGBM 4, "1:3:5" before); numeric ones give a range
        cat_idx = []
        for i, info in enumerate(d.get("feature_infos", {}).values()):
            if (isinstance(info, dict) and info.get("values")) or (
                    isinstance(info, str) and not info.startswith("[") and info != "none"):
                cat_idx.append(i)
        if len(cat_idx) != len(pandas_cats):
            raise ConversionError(
                f"{self.model_type} mixes pandas categories with other categorical_feature columns.",
                hint="Give every categorical column the pandas 'category' dtype (and no "
                     "categorical_feature argument).")
        return {i: list(c) for i, c in zip(cat_idx, pandas_cats)}

    def _ensemble(self) -> Ensemble:
        d = self._dump()
        if d.get("average_output"):
            raise ConversionError("LightGBM boosting_type='rf' is not supported on categories.",
                                  hint="Use boosting_type='gbdt'.")
        name, *rest = str(d["objective"]).split()
        params = dict(p.split(":", 1) for p in rest if ":" in p)
        scale = 1.0
        task = self.task()
        if task == "classifier" and name == "binary":
            link, scale = "sigmoid", float(params.get("sigmoid", 1.0))
        elif task == "classifier" and name in ("multiclass", "softmax"):
            link = "softmax"
        elif task == "regressor" and name in ("regression", "regression_l1", "huber", "fair",
                                              "quantile", "mape"):
            link = "identity"
        elif task == "regressor" and name in ("poisson", "gamma", "tweedie"):
            link = "exp"
        else:
            raise ConversionError(f"LightGBM objective {name!r} is not supported on categories.",
                                  hint="Use binary, multiclass, regression or poisson/gamma/tweedie.")
        k = int(d.get("num_tree_per_iteration", 1))
        infos = d["tree_info"]
        best = getattr(self.model, "best_iteration_", None)
        if best:
            infos = infos[:int(best) * k]
        trees = [Tree(_lgbm_nodes(info["tree_structure"], scale), target=i % k)
                 for i, info in enumerate(infos)]
        return Ensemble(trees, n_targets=k, base=[0.0] * k, link=link, dtype="double")

    def to_onnx(self, X, *, feature_names=None, opset=None, columns=None) -> Converted:
        self._check_sklearn_api()
        if columns is not None:
            return self._table_to_onnx(columns)
        from onnxmltools import convert_lightgbm
        from onnxmltools.convert.common.data_types import FloatTensorType

        try:
            onx = convert_lightgbm(self.model, initial_types=[("input", FloatTensorType([None, X.shape[1]]))],
                                   zipmap=False, target_opset=opset or OPSET)
        except Exception as exc:
            raise ConversionError(f"onnxmltools could not convert {self.model_type}: {exc}",
                                  hint="Check the objective is supported by onnxmltools' LightGBM converter.") from exc
        _fix_batch_dim(onx)
        return Converted(onx, self._spec(onx), converter="onnxmltools")


def _has_best(model) -> bool:
    try:
        return getattr(model, "best_iteration", None) is not None
    except Exception:       # xgboost raises AttributeError-like errors without early stopping
        return False


def _xgb_nodes(t: dict) -> list:
    """One tree of XGBoost's JSON model as Split/Leaf nodes.

    Numeric: ``x < split_condition`` goes left.  Categorical: the categories listed for the
    node go *right* (XGBoost's ``Decision``), the others left.  Missing: the default child."""
    left, right = t["left_children"], t["right_children"]
    cond, feat, dleft = t["split_conditions"], t["split_indices"], t["default_left"]
    stype = t.get("split_type") or [0] * len(left)
    members = {}
    for node, beg, size in zip(t.get("categories_nodes") or [], t.get("categories_segments") or [],
                               t.get("categories_sizes") or []):
        members[int(node)] = tuple(int(c) for c in t["categories"][int(beg):int(beg) + int(size)])
    nodes = []
    for i in range(len(left)):
        if left[i] == -1:
            nodes.append(Leaf(float(cond[i])))
        elif stype[i] == 1:
            cats = members.get(i, ())
            default = left[i] if dleft[i] else right[i]
            if cats:    # true branch (in the set) is XGBoost's right child
                nodes.append(Split(int(feat[i]), MEMBER, int(right[i]), int(left[i]),
                                   missing_left=default == right[i], members=cats))
            else:       # empty set: every category goes left
                nodes.append(Split(int(feat[i]), LEQ, int(right[i]), int(left[i]),
                                   missing_left=default == right[i], threshold=-1.0))
        else:
            nodes.append(Split(int(feat[i]), LT, int(left[i]), int(right[i]), missing_left=bool(dleft[i]),
                               threshold=float(np.float32(cond[i]))))
    return nodes


def _lgbm_nodes(root: dict, scale: float) -> list:
    """One tree of LightGBM's ``dump_model()`` as Split/Leaf nodes (LightGBM's decision rules:
    ``x <= threshold`` goes left; NaN goes the default way when missing_type is NaN and is read
    as 0 when it is None; a categorical split sends its listed categories left and missing
    ones right)."""
    from ..errors import ConversionError

    nodes: list = []

    def visit(n: dict) -> int:
        i = len(nodes)
        if "split_index" not in n:
            nodes.append(Leaf(float(n["leaf_value"]) * scale))
            return i
        nodes.append(None)
        f = int(n["split_feature"])
        if n["decision_type"] == "==":
            cats = tuple(int(c) for c in str(n["threshold"]).split("||"))
            split = Split(f, MEMBER, 0, 0, missing_left=False, members=cats)
        else:
            thr = float(n["threshold"])
            mt = n.get("missing_type", "None")
            if mt == "NaN":
                miss = bool(n.get("default_left", False))
            elif mt == "None":
                miss = 0.0 <= thr
            else:
                raise ConversionError("LightGBM models trained with zero_as_missing=True are not "
                                      "supported on categories.", hint="Train with the default "
                                      "missing-value handling (use_missing=True, zero_as_missing=False).")
            split = Split(f, LEQ, 0, 0, missing_left=miss, threshold=thr)
        split.left = visit(n["left_child"])
        split.right = visit(n["right_child"])
        nodes[i] = split
        return i

    visit(root)
    return nodes
