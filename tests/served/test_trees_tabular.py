"""Tree boosters on real-looking DataFrames (issue 16 item 5): scikit-learn's
HistGradientBoosting with NaN and native categorical splits, LightGBM on pandas categories and
XGBoost with ``enable_categorical``.  Each model is trained here, deployed with nbdeploy's
defaults, served by stock ``bentoml serve`` and asked with JSON records carrying strings and
nulls; the oracle is the native model's own predict/predict_proba on the same rows."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import deployed_and_served

import nbdeploy
from nbdeploy.convert import convert
from nbdeploy.runtime.model import OnnxModel
from nbdeploy.verify import verify

pd = pytest.importorskip("pandas")

CITIES = ["Oslo", "Bergen", "Paris", "Lyon", "Lima", "Quito", "Pune"]
PLANS = ["basic", "plus", "pro"]


@pytest.fixture(autouse=True, scope="module")
def _one_openmp_thread():
    """The boosters' OpenMP threads spin on a busy shared machine (HistGradientBoosting's
    predict_proba: 600 ms instead of 24 ms on 2 loaded cores); answers do not change."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def make_frame(n: int, seed: int):
    """Numbers with missing values and pandas categories with missing values."""
    rng = np.random.default_rng(seed)
    age = rng.normal(42, 12, n).round(0)
    income = rng.lognormal(10.3, 0.5, n).round(-2)
    tenure = rng.integers(0, 120, n).astype(float)
    city = rng.choice(CITIES, n, p=[0.25, 0.15, 0.15, 0.15, 0.1, 0.1, 0.1])
    plan = rng.choice(PLANS, n)
    df = pd.DataFrame({"age": age, "income": income, "tenure_months": tenure,
                       "city": pd.Categorical(city, categories=CITIES),
                       "plan": pd.Categorical(plan, categories=PLANS)})
    df.loc[rng.random(n) < 0.12, "age"] = np.nan
    df.loc[rng.random(n) < 0.08, "city"] = np.nan
    df.loc[rng.random(n) < 0.05, "plan"] = np.nan
    score = (0.04 * (np.nan_to_num(age, nan=60) - 42) - 0.02 * tenure
             + 1.2 * np.isin(city, ["Lima", "Oslo", "Pune"]) - 0.9 * (plan == "pro")
             + 0.8 * np.isnan(df["age"].to_numpy()) + rng.normal(0, 0.5, n))
    label = np.where(score > 0, "churn", "stay")
    spend = (20 + 0.001 * income + 6 * (plan == "pro") + 4 * np.isin(city, ["Paris", "Lyon"])
             + 0.1 * np.nan_to_num(age, nan=30) + rng.normal(0, 1, n))
    return df, label, spend


def records(df) -> list[dict]:
    """The DataFrame's rows as a client sends them: strings, numbers, null."""
    out = []
    for row in df.astype(object).to_dict("records"):
        rec = {}
        for k, v in row.items():
            if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
                rec[k] = None
            elif hasattr(v, "item"):
                rec[k] = v.item()
            else:
                rec[k] = v
        out.append(rec)
    return out


def odd_rows(df):
    """Rows a client may send that the sample never had: an unseen city, all-null cells."""
    rows = df.head(4).copy()
    rows["city"] = pd.Categorical(["Reykjavik", None, "Oslo", None], categories=CITIES + ["Reykjavik"])
    rows.loc[rows.index[1], "age"] = np.nan
    rows.loc[rows.index[3], ["age", "plan"]] = [np.nan, np.nan]
    return rows


def known_rows(rows):
    """odd_rows without the unseen city, with the training categories (XGBoost checks the
    dtype's categories, not only the values)."""
    rows = rows[rows["city"].astype(object) != "Reykjavik"].copy()
    rows["city"] = rows["city"].cat.set_categories(CITIES)
    return rows


@pytest.fixture(scope="module")
def frames():
    train, y, s = make_frame(1500, seed=1)
    test, _, _ = make_frame(300, seed=2)
    return train, y, s, test


# --- HistGradientBoosting ------------------------------------------------------------------------

def _hgb_models(frames):
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    train, y, s, _ = frames
    clf = HistGradientBoostingClassifier(max_iter=60, random_state=0).fit(train, y)
    reg = HistGradientBoostingRegressor(max_iter=60, random_state=0).fit(train, s)
    return {"hgb-clf": clf, "hgb-reg": reg}


def test_hgb_numpy_with_nan_and_multiclass_converts_exactly():
    """Without a DataFrame: a float matrix with NaN, binary, 3-class and a regressor."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 6)).astype(np.float32)
    X[rng.random(X.shape) < 0.15] = np.nan
    y = (np.nan_to_num(X[:, 0]) + X[:, 1] > 0).astype(int) + np.isnan(X[:, 2])
    for model in (HistGradientBoostingClassifier(max_iter=40).fit(X, y > 0),
                  HistGradientBoostingClassifier(max_iter=40).fit(X, y),
                  HistGradientBoostingRegressor(max_iter=40).fit(X, 3 * np.nan_to_num(X[:, 3]) + y),
                  HistGradientBoostingRegressor(max_iter=40, loss="poisson").fit(X, y + 1.0)):
        c = convert(model, X)
        assert verify(c).passed
        out = OnnxModel(c.onnx_bytes, c.spec).run(X)
        if hasattr(model, "predict_proba"):
            np.testing.assert_allclose(out["probabilities"], model.predict_proba(X), atol=1e-9)
            assert (out["label"] == model.predict(X)).all()
        else:
            np.testing.assert_allclose(out["value"], model.predict(X), rtol=1e-9)


def test_hgb_numeric_categorical_features_in_a_matrix():
    """categorical_features on integer-coded columns of a numpy matrix."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    rng = np.random.default_rng(3)
    X = np.column_stack([rng.integers(0, 8, 500), rng.normal(size=500), rng.integers(0, 3, 500)]).astype(np.float32)
    X[::13, 0] = np.nan
    y = np.where(np.isin(X[:, 0], [1, 4, 6]), 5.0, 0.0) + X[:, 1] + 2 * (X[:, 2] == 1)
    model = HistGradientBoostingRegressor(max_iter=40, categorical_features=[0, 2]).fit(X, y)
    c = convert(model, X)
    assert verify(c).passed
    X2 = X[:20].copy()
    X2[0, 0] = 11.0          # a code never seen in training: scikit-learn treats it as missing
    np.testing.assert_allclose(OnnxModel(c.onnx_bytes, c.spec).run(X2)["value"], model.predict(X2),
                               rtol=1e-9)


def test_hgb_categorical_features_named_on_string_columns(frames):
    """pandas 3's default string dtype with categorical_features=[names]: same exact graph."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    train, y, _, test = frames
    as_str = {"city": "str", "plan": "str"}
    model = HistGradientBoostingClassifier(max_iter=40, categorical_features=["city", "plan"]
                                           ).fit(train.astype(as_str), y)
    c = convert(model, test.astype(as_str))
    assert c.converter == "nbdeploy.trees_onnx" and verify(c).passed
    rows = odd_rows(test).astype(as_str)        # an unseen city and missing cells
    out = OnnxModel(c.onnx_bytes, c.spec).run(table_of(rows, c.spec))
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(rows), atol=1e-9)
    assert list(out["label"]) == list(model.predict(rows))


def test_hgb_predictions_on_the_users_frame_keep_float64(frames):
    """HistGradientBoosting's graph reads doubles: Deployment.predict on the user's own
    DataFrame must not round numbers to float32 first (a value just above a split threshold
    would fall below it)."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    train, _, s, test = frames
    model = HistGradientBoostingRegressor(max_iter=60, random_state=0).fit(train, s)
    d = nbdeploy.deploy(model, test, name="trees-hgb-f64", quantize="none", explain="none")
    # put incomes 1e-3 above the model's own split points for income (the binner's thresholds,
    # the only large ones): float32 (spacing ~0.002 at 30,000) would move them onto the split
    thresholds = max(model._bin_mapper.bin_thresholds_, key=lambda t: float(np.max(t)))
    edge = test.copy()
    edge["income"] = np.resize(thresholds, len(edge)) + 1e-3
    rounded = edge.assign(income=edge["income"].astype(np.float32).astype(np.float64))
    assert not np.allclose(model.predict(rounded), model.predict(edge)), "the rows must be sensitive"
    got = np.asarray(d.predict(edge)["predictions"], dtype=float)
    want = model.predict(edge)
    assert np.allclose(got, want, rtol=1e-6, atol=1e-9), np.abs(got - want).max()


def _hgb_pipeline(**hgb):
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder

    pre = ColumnTransformer([
        ("cat", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1,
                               encoded_missing_value=-1), ["city", "plan"]),
        ("num", "passthrough", ["age", "income", "tenure_months"]),   # NaN left to the booster
    ])
    return Pipeline([("pre", pre), ("hgb", HistGradientBoostingClassifier(max_iter=40, **hgb))])


def test_hgb_at_the_end_of_a_pipeline(frames):
    """Inside a Pipeline skl2onnx converts the whole thing; nbdeploy fixes its HGB converter
    for numpy 2 (it crashed with a 600-kB message) and the answers match the native pipeline."""
    train, y, _, test = frames
    as_str = {"city": object, "plan": object}
    pipe = _hgb_pipeline().fit(train.astype(as_str), y)
    c = convert(pipe, test.astype(as_str))
    assert c.converter == "skl2onnx" and verify(c).passed
    rows = odd_rows(test).astype(as_str)
    out = OnnxModel(c.onnx_bytes, c.spec).run(table_of(rows, c.spec))
    np.testing.assert_allclose(out["probabilities"], pipe.predict_proba(rows), atol=1e-5)
    assert list(out["label"]) == list(pipe.predict(rows))


def test_hgb_categorical_inside_a_pipeline_is_a_bounded_error(frames):
    from nbdeploy.errors import ConversionError

    train, y, _, test = frames
    as_str = {"city": object, "plan": object}
    pipe = _hgb_pipeline(categorical_features=[0, 1]).fit(train.astype(as_str), y)
    with pytest.raises(ConversionError) as e:
        convert(pipe, test.astype(as_str))
    msg = str(e.value)
    assert "categorical_features inside a Pipeline" in msg and len(msg) < 1000


@pytest.fixture(scope="module")
def served_hgb(frames):
    with deployed_and_served(_hgb_models(frames), frames[3], prefix="trees") as out:
        yield out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["hgb-clf", "hgb-reg"])
def test_hgb_records_with_strings_and_nulls_match_native(served_hgb, frames, post, name):
    model, d, server = served_hgb[name]
    test = frames[3]
    assert test.isna().any().any() and d.converted.spec["input_mode"] == "table"
    cols = {c["name"]: c for c in d.converted.spec["columns"]}
    assert cols["city"]["kind"] == "categorical" and cols["age"]["nullable"] and cols["city"]["nullable"]
    for rows in (test, odd_rows(test)):
        status, body = post(server.url + "/predict", {"inputs": records(rows)})
        assert status == 200, body
        if name == "hgb-clf":
            assert body["predictions"] == list(model.predict(rows))
            np.testing.assert_allclose(body["probabilities"], model.predict_proba(rows), atol=1e-6)
        else:
            np.testing.assert_allclose(body["predictions"], model.predict(rows), rtol=1e-4, atol=1e-9)


@pytest.mark.slow
def test_hgb_served_explain_is_additive_per_column(served_hgb, frames, post):
    model, _, server = served_hgb["hgb-clf"]
    rows = frames[3].head(3)
    status, out = post(server.url + "/explain", {"inputs": records(rows), "method": "shap"})
    assert status == 200, out
    assert out["feature_names"] == list(rows.columns)
    contrib = np.asarray(out["contributions"])
    assert contrib.shape == (3, 5)
    np.testing.assert_allclose(np.asarray(out["base_values"]) + contrib.sum(axis=1), out["outputs"],
                               atol=1e-5)
    # each explained output is the native probability of the class it names (or its log-odds)
    proba = model.predict_proba(rows)
    classes = [str(c) for c in model.classes_]
    if out["output_space"] == "probability":
        want = [proba[i, classes.index(k)] for i, k in enumerate(out["explained_output"])]
        np.testing.assert_allclose(out["outputs"], want, atol=1e-5)
    else:
        np.testing.assert_allclose(out["outputs"], model.decision_function(rows), atol=1e-5)


# --- LightGBM and XGBoost on pandas categories ---------------------------------------------------

def table_of(rows, spec) -> np.ndarray:
    """Rows as the table a served bundle builds from records: floats with NaN, str or None."""
    out = np.empty((len(rows), len(spec["columns"])), dtype=object)
    for j, col in enumerate(spec["columns"]):
        values = rows[col["name"]].astype(object).tolist()
        if col["kind"] == "categorical":
            out[:, j] = [None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
                         for v in values]
        else:
            out[:, j] = [np.nan if v is None else float(v) for v in values]
    return out


def _booster(name, frames):
    import lightgbm
    import xgboost

    train, y, s, _ = frames
    y3 = np.where(train["income"] > 35000, "high", np.where(train["age"].fillna(0) > 45, "older", "other"))
    make = {
        "lgbm-binary": lambda: lightgbm.LGBMClassifier(n_estimators=40, verbose=-1).fit(train, y),
        "lgbm-3class": lambda: lightgbm.LGBMClassifier(n_estimators=40, verbose=-1).fit(train, y3),
        "lgbm-regression": lambda: lightgbm.LGBMRegressor(n_estimators=40, verbose=-1).fit(train, s),
        "lgbm-poisson": lambda: lightgbm.LGBMRegressor(n_estimators=40, verbose=-1,
                                                       objective="poisson").fit(train, s),
        "xgb-binary": lambda: xgboost.XGBClassifier(n_estimators=40, max_depth=4, enable_categorical=True
                                                    ).fit(train, (y == "churn").astype(int)),
        "xgb-3class": lambda: xgboost.XGBClassifier(n_estimators=40, max_depth=4, enable_categorical=True
                                                    ).fit(train, pd.Series(y3).astype("category").cat.codes),
        "xgb-regression": lambda: xgboost.XGBRegressor(n_estimators=40, max_depth=4,
                                                       enable_categorical=True).fit(train, s),
        "xgb-poisson": lambda: xgboost.XGBRegressor(n_estimators=40, max_depth=4, enable_categorical=True,
                                                    objective="count:poisson").fit(train, s),
    }
    return make[name]()


@pytest.mark.parametrize("name", ["lgbm-binary", "lgbm-3class", "lgbm-regression", "lgbm-poisson",
                                  "xgb-binary", "xgb-3class", "xgb-regression", "xgb-poisson"])
def test_boosters_on_pandas_categories_take_strings(name, frames):
    model = _booster(name, frames)
    test = frames[3]
    c = convert(model, test)
    assert c.spec["input_mode"] == "table" and verify(c).passed
    cols = {col["name"]: col for col in c.spec["columns"]}
    assert cols["city"]["onnx_type"] == "string" and cols["city"]["categories"] == CITIES
    assert cols["age"]["nullable"] and cols["city"]["nullable"]
    session = OnnxModel(c.onnx_bytes, c.spec)
    rows = odd_rows(test)
    for frame in (test, rows):
        try:
            native = model.predict_proba(frame) if c.spec["task"] == "classifier" else model.predict(frame)
        except Exception:
            # XGBoost refuses a category it was not trained on: so does the served API
            assert frame is rows and name.startswith("xgb") and cols["city"]["accepts_unseen"] is False
            frame = known_rows(frame)
            native = model.predict_proba(frame) if c.spec["task"] == "classifier" else model.predict(frame)
        out = session.run(table_of(frame, c.spec))
        if c.spec["task"] == "classifier":
            np.testing.assert_allclose(out["probabilities"], native, atol=1e-6)
            assert [str(v) for v in out["label"]] == [str(v) for v in model.predict(frame)]
        else:
            np.testing.assert_allclose(out["value"], native, rtol=1e-5, atol=1e-6)
    if name.startswith("lgbm"):       # LightGBM reads an unseen category as missing
        assert cols["city"]["accepts_unseen"] is True


def test_boosters_with_early_stopping_use_the_best_iteration(frames):
    """predict() stops at best_iteration; so must the graph (the later trees are left out)."""
    import lightgbm
    import xgboost

    train, _, s, test = frames
    val, _, s_val = make_frame(300, seed=3)
    band = lambda df: np.where(df["income"] > 35000, 2, np.where(df["age"].fillna(0) > 45, 1, 0))  # noqa: E731
    xgb = xgboost.XGBClassifier(n_estimators=300, max_depth=6, learning_rate=0.3, enable_categorical=True,
                                early_stopping_rounds=5).fit(train, band(train), eval_set=[(val, band(val))],
                                                             verbose=False)
    assert xgb.best_iteration + 1 < xgb.get_booster().num_boosted_rounds()
    lgbm = lightgbm.LGBMRegressor(n_estimators=300, verbose=-1).fit(
        train, s, eval_set=[(val, s_val)], callbacks=[lightgbm.early_stopping(5, verbose=False)])
    for model in (xgb, lgbm):
        c = convert(model, test)
        out = OnnxModel(c.onnx_bytes, c.spec).run(table_of(test, c.spec))
        if hasattr(model, "predict_proba"):
            np.testing.assert_allclose(out["probabilities"], model.predict_proba(test), atol=1e-6)
        else:
            np.testing.assert_allclose(out["value"], model.predict(test), rtol=1e-6)


@pytest.fixture(scope="module")
def served_boosters(frames):
    models = {name: _booster(name, frames) for name in ("lgbm-binary", "xgb-regression")}
    with deployed_and_served(models, frames[3], prefix="trees") as out:
        yield out


@pytest.mark.slow
def test_lightgbm_on_categories_served_from_records(served_boosters, frames, post):
    model, _, server = served_boosters["lgbm-binary"]
    test = frames[3]
    for rows in (test, odd_rows(test)):     # nulls, and an unseen city (missing to LightGBM)
        status, body = post(server.url + "/predict", {"inputs": records(rows)})
        assert status == 200, body
        assert body["predictions"] == list(model.predict(rows))
        np.testing.assert_allclose(body["probabilities"], model.predict_proba(rows), atol=1e-6)
    status, out = post(server.url + "/explain", {"inputs": records(test.head(2)), "method": "shap"})
    assert status == 200, out
    assert out["feature_names"] == list(test.columns)
    np.testing.assert_allclose(np.asarray(out["base_values"]) + np.asarray(out["contributions"]).sum(axis=1),
                               out["outputs"], atol=1e-5)


@pytest.mark.slow
def test_xgboost_enable_categorical_served_from_records(served_boosters, frames, post):
    model, _, server = served_boosters["xgb-regression"]
    test = frames[3]
    rows = odd_rows(test)
    known = known_rows(rows)
    for frame in (test, known):
        status, body = post(server.url + "/predict", {"inputs": records(frame)})
        assert status == 200, body
        np.testing.assert_allclose(body["predictions"], model.predict(frame), rtol=1e-4, atol=1e-6)
    # XGBoost raises on a category it never saw; the served API answers 400 naming the column
    import xgboost

    with pytest.raises(xgboost.core.XGBoostError, match="Reykjavik"):
        model.predict(rows)
    status, body = post(server.url + "/predict", {"inputs": records(rows)})
    assert status == 400, body
    assert body["column"] == "city" and "Reykjavik" in str(body["received"])


def _explain_regressor(server, model, rows, post):
    status, out = post(server.url + "/explain", {"inputs": records(rows), "method": "shap"})
    assert status == 200, out
    assert out["feature_names"] == list(rows.columns)
    contrib = np.asarray(out["contributions"], dtype=np.float64).reshape(len(rows), -1)
    assert contrib.shape == (len(rows), 5)
    total = np.asarray(out["base_values"], dtype=np.float64).reshape(-1) + contrib.sum(axis=1)
    np.testing.assert_allclose(total, np.asarray(out["outputs"], dtype=np.float64).reshape(-1), rtol=1e-5,
                               atol=1e-4)
    if out["output_space"] == "value":
        np.testing.assert_allclose(np.asarray(out["outputs"]).reshape(-1), model.predict(rows), rtol=1e-4)


@pytest.mark.slow
def test_regressors_served_explain_is_additive(served_hgb, served_boosters, frames, post):
    rows = frames[3].head(3)
    model, _, server = served_hgb["hgb-reg"]
    _explain_regressor(server, model, rows, post)
    model, _, server = served_boosters["xgb-regression"]
    _explain_regressor(server, model, rows, post)
