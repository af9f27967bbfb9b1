"""Issue 16 items 7 and 8: explanations and drift per ORIGINAL DataFrame column.

A ColumnTransformer pipeline (imputer + scaler on numeric columns with NaN, one-hot on string
columns) is trained here.  Oracles are the native pipeline and computations written out in the
test (exact Shapley values by enumeration, lime run on the raw encoded sample, PSI from its
definition) -- never nbdeploy's own numbers.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

pd = pytest.importorskip("pandas")

CITIES = ["Bergen", "Oslo", "Paris", "Rome"]
PLANS = ["basic", "max", "pro"]


def make_frame(n: int, seed: int, *, nan_age: bool = True) -> tuple:
    rng = np.random.default_rng(seed)
    age = rng.normal(40, 10, n)
    if nan_age:
        age[rng.random(n) < 0.1] = np.nan
    income = rng.lognormal(10, 0.5, n)
    city = rng.choice(CITIES, n, p=[0.4, 0.3, 0.2, 0.1]).astype(object)
    plan = rng.choice(PLANS, n).astype(object)
    score = ((np.nan_to_num(age, nan=40.0) > 42).astype(float) + (city == "Oslo") + (plan == "pro")
             + 0.3 * np.log(income / 20000.0) + rng.random(n))
    y = (score > 1.5).astype(int)
    return pd.DataFrame({"age": age, "income": income, "city": city, "plan": plan}), y


def make_pipeline(final):
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    pre = ColumnTransformer([
        ("num", Pipeline([("imp", SimpleImputer()), ("sc", StandardScaler())]), ["age", "income"]),
        ("cat", OneHotEncoder(handle_unknown="ignore"), ["city", "plan"])])
    return Pipeline([("pre", pre), ("clf", final)])


@pytest.fixture(scope="module")
def mixed():
    from sklearn.ensemble import RandomForestClassifier

    df, y = make_frame(240, 0)
    pipe = make_pipeline(RandomForestClassifier(n_estimators=25, max_depth=5, random_state=0)).fit(df, y)
    return df, y, pipe


@pytest.fixture(scope="module")
def mixed_lr(mixed):
    from sklearn.linear_model import LogisticRegression

    df, y, _ = mixed
    return df, y, make_pipeline(LogisticRegression(max_iter=1000)).fit(df, y)


def _convert(pipe, df):
    from nbdeploy.convert import convert

    c = convert(pipe, df)
    assert c.spec["input_mode"] == "table"
    return c


@pytest.fixture(scope="module")
def converted(mixed):
    return _convert(mixed[2], mixed[0])


@pytest.fixture(scope="module")
def converted_lr(mixed_lr):
    return _convert(mixed_lr[2], mixed_lr[0])


def native_tree_shap_per_column(pipe, frame: pd.DataFrame) -> np.ndarray:
    """The oracle for tree pipelines: shap.TreeExplainer on the native trees over sklearn's own
    preprocessing, one-hot columns summed by their sklearn names ("cat__city_Oslo" -> city)."""
    import shap

    T = pipe[:-1].transform(frame)
    T = T.toarray() if hasattr(T, "toarray") else np.asarray(T)
    phi = np.asarray(shap.TreeExplainer(pipe[-1]).shap_values(T))[:, :, 1]
    out_names = list(pipe[:-1].get_feature_names_out())
    cols = []
    for c in frame.columns:
        idx = [i for i, n in enumerate(out_names) if n == f"num__{c}" or n.startswith(f"cat__{c}_")]
        assert idx, c
        cols.append(phi[:, idx].sum(axis=1))
    return np.stack(cols, axis=1)


def native_p1(pipe, rows) -> np.ndarray:
    return pipe.predict_proba(rows)[:, 1]


def exact_shapley(f, x: pd.Series, background: pd.DataFrame) -> np.ndarray:
    """Shapley values of v(S) = mean_b f(x_S, b_~S), by enumerating every coalition."""
    cols = list(background.columns)
    M = len(cols)
    v = {}
    for r in range(M + 1):
        for S in itertools.combinations(range(M), r):
            frame = background.copy()
            for j in S:
                frame[cols[j]] = x[cols[j]]
            v[S] = float(np.mean(f(frame)))
    phi = np.zeros(M)
    for i in range(M):
        for S in v:
            if i in S:
                continue
            w = math.factorial(len(S)) * math.factorial(M - len(S) - 1) / math.factorial(M)
            phi[i] += w * (v[tuple(sorted(S + (i,)))] - v[S])
    return phi


# ---------------------------------------------------------------------------------------
# explanations in the notebook
# ---------------------------------------------------------------------------------------
def test_tree_pipeline_gets_exact_treeshap_summed_per_column(mixed, converted):
    from nbdeploy.explain import explain

    df, _, pipe = mixed
    rep = explain(converted, methods="shap")
    assert rep.explainer == "tree" and rep.output_space == "probability"
    assert rep.shap_values.shape == (len(df), 4, 2)
    want = native_tree_shap_per_column(pipe, df)
    np.testing.assert_allclose(rep.shap_values[:, :, 1], want, atol=1e-6)
    recon = rep.base_values[1] + rep.shap_values[:, :, 1].sum(axis=1)
    np.testing.assert_allclose(recon, native_p1(pipe, df), atol=1e-6)
    assert any("summed into its original column" in n for n in rep.notes)


@pytest.mark.parametrize("nesting", ["final step", "whole pipeline"])
def test_nested_pipelines_get_the_same_treeshap_per_column(mixed, nesting):
    """The trees are found through nested pipelines (adapters.base.final_estimator, issue 24):
    a pipeline whose last step is a pipeline, or a pipeline inside a one-step pipeline, gets
    the same exact TreeSHAP per column as the flat one."""
    from sklearn.pipeline import Pipeline

    from nbdeploy.explain import explain

    df, _, pipe = mixed
    nested = (Pipeline([("pre", pipe[0]), ("inner", Pipeline([("clf", pipe[-1])]))])
              if nesting == "final step" else Pipeline([("outer", pipe)]))
    rep = explain(_convert(nested, df), methods="shap")
    assert rep.explainer == "tree" and rep.output_space == "probability", rep.notes
    np.testing.assert_allclose(rep.shap_values[:, :, 1], native_tree_shap_per_column(pipe, df), atol=1e-6)
    recon = rep.base_values[1] + rep.shap_values[:, :, 1].sum(axis=1)
    np.testing.assert_allclose(recon, native_p1(pipe, df), atol=1e-6)


def test_shap_per_original_column_is_additive_against_the_native_model(mixed_lr, converted_lr):
    from nbdeploy.explain import explain

    df, _, pipe = mixed_lr
    rep = explain(converted_lr, methods="shap", max_rows=12)
    assert rep.explainer == "exact"                  # 4 columns: all 16 coalitions
    assert rep.feature_names == list(df.columns)
    assert rep.shap_values.shape == (12, 4, 2)
    assert rep.output_space == "probability"
    rows = df.iloc[:12]
    native = native_p1(pipe, rows)
    recon = rep.base_values[1] + rep.shap_values[:, :, 1].sum(axis=1)
    # documented tolerance: exact against the ONNX graph; ONNX vs native float32 <= 1e-5
    np.testing.assert_allclose(recon, native, atol=1e-5)
    assert rows["age"].isna().any()             # rows with a missing value are among them
    row = rep.explain_row(0, "shap")
    assert len(row["contributions"]) == 4 and row["values"][2] in CITIES
    d = rep.to_dict()
    assert [g["feature"] for g in d["global_importance"]] and set(
        g["feature"] for g in d["global_importance"]) == set(df.columns)
    json.dumps(d)  # JSON-ready: no NaN-bearing object cells


@pytest.mark.parametrize("which", ["lr", "rf-permutation"])
def test_shap_values_equal_exact_shapley_of_the_native_pipeline(which, mixed, mixed_lr, converted,
                                                                converted_lr):
    """Model-agnostic route.  Background = the whole sample (max_background >= its rows), so the
    test knows it and can enumerate all 16 coalitions with the native pipeline on DataFrames."""
    from nbdeploy.explain import explain

    df, _, pipe = mixed_lr if which == "lr" else mixed
    conv = converted_lr if which == "lr" else converted
    rows = [0, int(np.flatnonzero(df["age"].isna())[0])]        # one row with a missing age
    rep = explain(conv, methods="shap" if which == "lr" else "permutation",
                  max_background=len(df), max_rows=max(rows) + 1)
    assert rep.explainer == "exact"
    assert rep.config["background_rows"] == len(df)
    for r in rows:
        want = exact_shapley(lambda fr: native_p1(pipe, fr), df.iloc[r], df)
        np.testing.assert_allclose(rep.shap_values[r, :, 1], want, atol=2e-5)
        assert rep.base_values[1] == pytest.approx(native_p1(pipe, df).mean(), abs=1e-5)


def test_unseen_category_and_missing_value_are_explained(mixed, mixed_lr, converted, converted_lr):
    from nbdeploy.explain import explain

    df, _, pipe = mixed_lr
    rep = explain(converted_lr, methods="shap", max_rows=2)
    row = np.array([[np.nan, 21000.0, "Tokyo", "pro"]], dtype=object)
    body = rep._serve.explain(row, "shap", {})
    frame = pd.DataFrame([[np.nan, 21000.0, "Tokyo", "pro"]], columns=df.columns)
    want = native_p1(pipe, frame)[0]
    assert body["outputs"][0] == pytest.approx(want, abs=1e-5)
    assert body["base_values"][0] + sum(body["contributions"][0]) == pytest.approx(want, abs=1e-5)
    # the model ignores an unseen city: its contribution is what "no city one-hot" is worth,
    # the same as the exact Shapley value of the native pipeline over the stored background
    bg = rep._serve.codec.decode(rep._serve.background)
    want_phi = exact_shapley(lambda fr: native_p1(pipe, fr), frame.iloc[0],
                             pd.DataFrame(bg, columns=df.columns).astype(
                                 {"age": float, "income": float}))
    np.testing.assert_allclose(body["contributions"][0], want_phi, atol=2e-5)
    # the tree route: the same row, against TreeSHAP on the native preprocessing
    _, _, rf = mixed
    body = explain(converted, methods="shap", max_rows=2)._serve.explain(row, "shap", {})
    assert body["explainer"] == "tree"
    np.testing.assert_allclose(body["contributions"][0], native_tree_shap_per_column(rf, frame)[0],
                               atol=1e-6)
    assert body["outputs"][0] == pytest.approx(native_p1(rf, frame)[0], abs=1e-6)


def test_lime_per_column_matches_lime_run_on_the_encoded_sample(converted):
    """Stored statistics (no rows in the bundle) give lime's own answer from the raw sample."""
    from lime.lime_tabular import LimeTabularExplainer
    from sklearn.ensemble import RandomForestClassifier

    from nbdeploy.convert import convert
    from nbdeploy.explain import explain

    df, y = make_frame(200, 3, nan_age=False)          # lime's own quartiles cannot take NaN
    pipe = make_pipeline(RandomForestClassifier(n_estimators=15, max_depth=4, random_state=0)).fit(df, y)
    c = convert(pipe, df)
    rep = explain(c, methods="shap,lime", max_rows=3, seed=7)
    got = rep.explain_row(2, "lime")
    assert got["feature_names"] == list(df.columns) and len(got["contributions"]) == 4
    assert got["rules"][2] == f"city = {df['city'][2]}" and got["rules"][3] == f"plan = {df['plan'][2]}"

    # the oracle: lime fit on the encoded sample itself, predicting with the native pipeline
    codes = {"city": sorted(set(df["city"])), "plan": sorted(set(df["plan"]))}
    enc = df.copy()
    for k, cats in codes.items():
        enc[k] = [cats.index(v) for v in df[k]]
    enc = enc.to_numpy(dtype=float)

    def predict(Z):
        fr = pd.DataFrame(Z, columns=df.columns)
        for k, cats in codes.items():
            fr[k] = [cats[int(v)] for v in fr[k]]
        return pipe.predict_proba(fr)

    ref = LimeTabularExplainer(enc, mode="classification", feature_names=list(df.columns),
                               categorical_features=[2, 3], discretize_continuous=True,
                               discretizer="quartile", random_state=7)
    exp = ref.explain_instance(enc[2], predict, labels=(1,), num_features=4, num_samples=5000)
    want = np.zeros(4)
    for j, w in exp.local_exp[1]:
        want[j] = w
    np.testing.assert_allclose(got["contributions"], want, atol=1e-4)
    assert got["intercept"] == pytest.approx(exp.intercept[1], abs=1e-4)


def test_lime_explains_a_missing_numeric_cell_as_missing(mixed, converted):
    from nbdeploy.explain import explain

    df, _, _ = mixed
    r = int(np.flatnonzero(df["age"].isna())[0])
    rep = explain(converted, methods="shap,lime", max_rows=r + 1)
    got = rep.explain_row(r, "lime")
    assert got["rules"][0] == "age is missing" and got["values"][0] is None
    assert all(np.isfinite(got["contributions"]))


def test_plots_are_labelled_with_the_original_columns(mixed, converted, tmp_path):
    from nbdeploy.explain import explain

    df, _, _ = mixed
    rep = explain(converted, methods="shap,lime", max_rows=5)
    figs = rep.figures(row=0)
    labels = {t.get_text() for t in figs["shap_importance"].axes[0].get_yticklabels()}
    assert labels == set(df.columns)
    row_labels = {t.get_text() for t in figs["shap_row_0"].axes[0].get_yticklabels()}
    assert f"city = {df['city'][0]}" in row_labels and f"plan = {df['plan'][0]}" in row_labels
    paths = rep.save_plots(tmp_path)
    assert {p.name for p in paths} >= {"shap_summary.png", "lime_row_0.png"}


@pytest.mark.parametrize("which", ["lr", "rf"])
def test_artifacts_are_json_and_numeric_arrays(which, converted, converted_lr, tmp_path):
    from nbdeploy.explain import explain
    from nbdeploy.runtime.explain import ServeExplainer, load_trees
    from nbdeploy.runtime.model import OnnxModel

    conv = converted_lr if which == "lr" else converted
    rep = explain(conv, methods="shap,lime", max_rows=3)
    paths = rep.write_artifacts(tmp_path)
    folder = tmp_path / "explain"
    if which == "lr":
        bg = np.load(folder / "background.npy", allow_pickle=False)
        assert bg.dtype == np.float64 and bg.shape[1] == 4
    else:
        assert {p.name for p in paths} == {"trees.npz", "features.onnx", "explain_config.json"}
        assert all(a.dtype != object for a in load_trees(folder / "trees.npz").values())
    cfg = json.loads((folder / "explain_config.json").read_text())
    assert [c["name"] for c in cfg["table"]["columns"]] == ["age", "income", "city", "plan"]
    # the explainer rebuilt from the files answers as the notebook's does
    served = ServeExplainer.from_bundle(tmp_path, OnnxModel(conv.onnx_model.SerializeToString(),
                                                            conv.spec))
    body = served.explain(rep.X[:2], "shap", {})
    np.testing.assert_allclose(body["contributions"], rep.shap_values[:2, :, 1], atol=1e-12)


@pytest.mark.parametrize("final", ["lr", "rf"])
def test_text_column_is_explained_as_one_column(final):
    """A TF-IDF text column next to numeric and categorical ones: one contribution for the
    whole text (its token features summed on the tree route), additive against the native model."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from nbdeploy.explain import explain

    rng = np.random.default_rng(5)
    n = 200
    words = ["great", "bad", "slow", "fast", "cheap", "pricey", "ok", "nice"]
    df = pd.DataFrame({"x": rng.normal(size=n), "plan": rng.choice(PLANS, n).astype(object),
                       "note": [" ".join(rng.choice(words, 4)) for _ in range(n)]})
    y = ((df["x"] + (df["plan"] == "pro") + df["note"].str.contains("great")) > 0.8).astype(int)
    pre = ColumnTransformer([("num", StandardScaler(), ["x"]),
                             ("cat", OneHotEncoder(handle_unknown="ignore"), ["plan"]),
                             ("txt", TfidfVectorizer(), "note")])
    clf = LogisticRegression(max_iter=1000) if final == "lr" else \
        RandomForestClassifier(n_estimators=15, max_depth=5, random_state=0)
    pipe = Pipeline([("pre", pre), ("clf", clf)]).fit(df, y)
    conv = _convert(pipe, df)
    assert [c["kind"] for c in conv.spec["columns"]] == ["numeric", "categorical", "text"]
    rep = explain(conv, methods="shap,lime", max_rows=6)
    assert rep.explainer == ("tree" if final == "rf" else "exact")
    assert rep.shap_values.shape[:2] == (6, 3)
    recon = rep.base_values[1] + rep.shap_values[:, :, 1].sum(axis=1)
    np.testing.assert_allclose(recon, native_p1(pipe, df.iloc[:6]), atol=1e-5)
    lime = rep.explain_row(1, "lime")
    assert len(lime["contributions"]) == 3 and lime["rules"][2].startswith("note = ")
    body = rep._serve.explain(conv.X[:2], "shap", {})
    if final == "lr":
        assert "text_tokens" not in body and any("not per token" in note for note in rep.notes)
        return
    # tree route: per-token terms, against TreeSHAP on sklearn's own TF-IDF features
    import shap

    T = pipe[:-1].transform(df.iloc[:2])
    T = T.toarray() if hasattr(T, "toarray") else np.asarray(T)
    native = np.asarray(shap.TreeExplainer(pipe[-1]).shap_values(T))[:, :, 1]
    out_names = list(pipe[:-1].get_feature_names_out())
    for r in range(2):
        tokens = dict((t, v) for t, v in body["text_tokens"][r]["note"])
        assert len(tokens) == 8                               # the vocabulary is 8 words
        for t, v in tokens.items():
            assert v == pytest.approx(native[r, out_names.index(f"txt__{t}")], abs=1e-6)
        assert sum(tokens.values()) == pytest.approx(body["contributions"][r][2], abs=1e-9)


@pytest.mark.parametrize("final", ["lr", "rf"])
def test_boolean_column_and_missing_category(final):
    """A boolean column and a categorical one with missing values (imputed inside the pipeline)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from nbdeploy.drift import baseline
    from nbdeploy.explain import explain
    from nbdeploy.runtime.drift import TableDriftMonitor

    rng = np.random.default_rng(8)
    n = 300
    city = rng.choice(["Oslo", "Bergen", "Rome"], n).astype(object)
    city[rng.random(n) < 0.1] = None
    df = pd.DataFrame({"x": rng.normal(size=n), "vip": rng.random(n) < 0.3, "city": city})
    y = ((df["x"] + df["vip"] + (df["city"] == "Oslo")) > 0.8).astype(int)
    pre = ColumnTransformer([
        ("num", StandardScaler(), ["x"]), ("b", "passthrough", ["vip"]),
        ("cat", Pipeline([("imp", SimpleImputer(strategy="constant", fill_value="none")),
                          ("oh", OneHotEncoder(handle_unknown="ignore"))]), ["city"])])
    clf = LogisticRegression() if final == "lr" else RandomForestClassifier(20, max_depth=4, random_state=0)
    pipe = Pipeline([("pre", pre), ("clf", clf)]).fit(df, y)
    conv = _convert(pipe, df)
    assert [c["kind"] for c in conv.spec["columns"]] == ["numeric", "boolean", "categorical"]
    rep = explain(conv, methods="shap,lime", max_rows=20)
    assert rep.explainer == ("tree" if final == "rf" else "exact")
    recon = rep.base_values[1] + rep.shap_values[:, :, 1].sum(axis=1)
    np.testing.assert_allclose(recon, native_p1(pipe, df.iloc[:20]), atol=1e-5)
    r = int(np.flatnonzero(df["city"].iloc[:20].isna())[0])
    lime = rep.explain_row(r, "lime")
    assert lime["rules"][2] == "city is missing" and lime["values"][2] is None
    assert lime["rules"][1] == f"vip = {bool(df['vip'][r])}"
    mon = TableDriftMonitor(baseline(conv.X, None, columns=conv.spec["columns"]))
    mon.observe(conv.X)
    f = {x["feature"]: x for x in mon.report()["features"]}
    assert f["city"]["missing_rate"] == pytest.approx(float(df["city"].isna().mean()), abs=1e-6)
    assert max(x["psi"] for x in f.values()) < 1e-9          # the sample itself: no drift


def test_numeric_frame_with_missing_values_treeshap_and_lime():
    """HistGradientBoosting on an all-numeric DataFrame with NaN: TreeSHAP additive against the
    native margin, LIME explains the missing cell as missing (lime's own statistics cannot)."""
    import shap
    from sklearn.ensemble import HistGradientBoostingClassifier

    from nbdeploy.convert import convert
    from nbdeploy.explain import explain

    rng = np.random.default_rng(2)
    n = 300
    # float32-exact values: the sample's float32 copy and the DataFrame agree cell for cell
    df = pd.DataFrame({k: rng.normal(size=n).astype(np.float32).astype(np.float64) for k in "abc"})
    df.loc[rng.random(n) < 0.15, "a"] = np.nan
    y = ((np.nan_to_num(df["a"], nan=1.0) + df["b"]) > 0.3).astype(int)
    m = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(df, y)
    rep = explain(convert(m, df), methods="shap,lime", max_rows=60)
    assert rep.explainer == "tree" and rep.output_space == "log_odds"
    margin = m.decision_function(df.iloc[:60])
    np.testing.assert_allclose(rep.base_values[0] + rep.shap_values[:, :, 0].sum(axis=1), margin, atol=1e-6)
    want = shap.TreeExplainer(m).shap_values(df.iloc[:60])
    np.testing.assert_allclose(rep.shap_values[:, :, 0], want, atol=1e-6)
    r = int(np.flatnonzero(df["a"].iloc[:60].isna())[0])
    lime = rep.explain_row(r, "lime")
    assert lime["rules"][0] == "a is missing" and np.all(np.isfinite(lime["contributions"]))


# ---------------------------------------------------------------------------------------
# drift per column
# ---------------------------------------------------------------------------------------
def independent_psi(base: np.ndarray, served: np.ndarray, eps: float = 1e-4) -> float:
    """PSI from its definition: deciles of the baseline's observed values, shares clipped at eps."""
    base = base[~np.isnan(base)]
    served = served[~np.isnan(served)]
    edges = np.unique(np.quantile(base, np.linspace(0, 1, 11)[1:-1]))
    e = np.bincount(np.searchsorted(edges, base, side="right"), minlength=10)[:10] / len(base)
    a = np.bincount(np.searchsorted(edges, served, side="right"), minlength=10)[:10] / len(served)
    e, a = np.clip(e, eps, None), np.clip(a, eps, None)
    return float(np.sum((a - e) * np.log(a / e)))


@pytest.fixture(scope="module")
def drift_baseline(mixed, converted):
    from nbdeploy.drift import baseline

    df, _, _ = mixed
    return json.loads(json.dumps(baseline(converted.X, list(df.columns),
                                          columns=converted.spec["columns"])))


def test_drift_in_distribution_control_is_not_flagged(drift_baseline):
    from nbdeploy.runtime.drift import DriftMonitor, TableDriftMonitor

    served, _ = make_frame(600, 11)
    mon = TableDriftMonitor(drift_baseline)
    mon.observe(served.to_numpy(dtype=object))
    r = mon.report()
    assert r["enough_data"] and not r["drift"], r
    assert [f["feature"] for f in r["features"]] == ["age", "income", "city", "plan"]
    assert all(f["psi"] < 0.1 and abs(f["missing_rate_change"]) < 0.05 for f in r["features"])
    # an old all-numeric baseline still gets the per-feature monitor
    assert isinstance(DriftMonitor({"feature_names": ["a"], "edges": [[0.0]], "shares": [[0.5, 0.5]]}),
                      DriftMonitor)


def test_drift_numeric_psi_categorical_shift_and_missing_rate(mixed, drift_baseline):
    from nbdeploy.runtime.drift import TableDriftMonitor

    df, _, _ = mixed
    served, _ = make_frame(500, 12, nan_age=False)
    served["income"] = served["income"] * 2.5                     # numeric shift
    served["city"] = np.where(np.arange(500) % 2 == 0, "Tokyo", "Paris")   # categorical shift
    served.loc[served.index[:200], "age"] = np.nan                # 40% missing vs ~10%
    mon = TableDriftMonitor(drift_baseline)
    table = served.to_numpy(dtype=object)
    mon.observe(table[:250])
    mon.observe(table[250:])                                      # counts accumulate
    r = {f["feature"]: f for f in mon.report()["features"]}
    want = independent_psi(df["income"].to_numpy(float), served["income"].to_numpy(float))
    assert r["income"]["psi"] == pytest.approx(want, rel=1e-4, abs=1e-6) and r["income"]["drift"]
    want_age = independent_psi(df["age"].to_numpy(float), served["age"].to_numpy(float))
    assert r["age"]["psi"] == pytest.approx(want_age, rel=1e-4, abs=1e-6)
    base_missing = float(df["age"].isna().mean())
    assert r["age"]["missing_rate"] == pytest.approx(0.4)
    assert r["age"]["missing_rate_change"] == pytest.approx(0.4 - base_missing, abs=1e-6)
    assert r["age"]["drift"]
    # city: half unseen, half Paris (10% -> 50%): category PSI from its definition
    base_shares = np.array([(df["city"] == c).mean() for c in CITIES] + [0.0])
    served_shares = np.array([0.0, 0.0, 0.5, 0.0, 0.5])
    e, a = np.clip(base_shares, 1e-4, None), np.clip(served_shares, 1e-4, None)
    assert r["city"]["psi"] == pytest.approx(float(np.sum((a - e) * np.log(a / e))), rel=1e-4)
    assert r["city"]["unseen_share"] == pytest.approx(0.5) and r["city"]["drift"]
    assert not r["plan"]["drift"] and r["plan"]["psi"] < 0.1
    text = mon.prometheus()
    assert 'nbdeploy_drift_psi{feature="city"}' in text
    assert f'nbdeploy_drift_missing_rate_change{{feature="age"}} {r["age"]["missing_rate_change"]}' in text
    assert "nbdeploy_drift_detected 1" in text


# ---------------------------------------------------------------------------------------
# served: nbdeploy.deploy(pipeline, DataFrame) -> stock bentoml serve -> JSON records
# ---------------------------------------------------------------------------------------
def _deploy_and_serve(pipe, df, name):
    import nbdeploy

    d = nbdeploy.deploy(pipe, df, name=name)          # defaults: quantize auto, shap + lime
    return d, d.serve()


@pytest.fixture(scope="module")
def served_mixed(mixed):
    d, server = _deploy_and_serve(mixed[2], mixed[0], "explain-tabular-rf")
    yield d, server
    server.stop()


@pytest.fixture(scope="module")
def served_lr(mixed_lr):
    d, server = _deploy_and_serve(mixed_lr[2], mixed_lr[0], "explain-tabular-lr")
    yield d, server
    server.stop()


def records(frame: pd.DataFrame) -> list[dict]:
    out = []
    for rec in frame.to_dict(orient="records"):
        out.append({k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in rec.items()})
    return out


@pytest.mark.slow
@pytest.mark.parametrize("which", ["lr", "rf"])
def test_served_explain_on_records_is_per_column_and_additive(which, request, post):
    d, server = request.getfixturevalue("served_lr" if which == "lr" else "served_mixed")
    df, _, pipe = request.getfixturevalue("mixed_lr" if which == "lr" else "mixed")
    frame = pd.DataFrame({"age": [np.nan, 51.0, 33.0], "income": [25000.0, 12000.0, 40000.0],
                          "city": ["Oslo", "Tokyo", "Rome"], "plan": ["pro", "basic", "max"]})
    body = {"inputs": records(frame), "method": "shap"}
    assert body["inputs"][0]["age"] is None and body["inputs"][1]["city"] == "Tokyo"
    status, out = post(server.url + "/explain", body)
    assert status == 200, out
    assert out["feature_names"] == list(df.columns)
    assert np.asarray(out["contributions"]).shape == (3, 4)
    native = native_p1(pipe, frame)
    recon = np.asarray(out["base_values"]) + np.asarray(out["contributions"]).sum(axis=1)
    np.testing.assert_allclose(recon, native, atol=1e-5)
    np.testing.assert_allclose(out["outputs"], native, atol=1e-5)
    if which == "rf":       # exact TreeSHAP, summed per column
        assert out["explainer"] == "tree"
        np.testing.assert_allclose(out["contributions"], native_tree_shap_per_column(pipe, frame),
                                   atol=1e-6)
    else:                   # exact Shapley values of the native pipeline over the bundle's background
        assert out["explainer"] == "exact"
        rep = d.explanation
        bg = pd.DataFrame(rep._serve.codec.decode(rep._serve.background), columns=df.columns).astype(
            {"age": float, "income": float})
        for r in range(3):
            want = exact_shapley(lambda fr: native_p1(pipe, fr), frame.iloc[r], bg)
            np.testing.assert_allclose(out["contributions"][r], want, atol=2e-5)

    status, lime = post(server.url + "/explain", {"inputs": records(frame.iloc[:1]), "method": "lime"})
    assert status == 200, lime
    assert len(lime["contributions"][0]) == 4
    assert lime["rules"][0][0] == "age is missing" and lime["rules"][0][2] == "city = Oslo"
    assert lime["outputs"][0] == pytest.approx(native[0], abs=1e-5)


@pytest.mark.slow
def test_served_drift_per_column_on_drift_and_metrics(served_mixed, mixed, post, get):
    _, server = served_mixed
    df, _, _ = mixed
    control, _ = make_frame(300, 21)
    status, _ = post(server.url + "/predict", {"inputs": records(control)})
    assert status == 200
    status, r = get(server.url + "/drift")
    assert status == 200 and r["observed_rows"] == 300 and r["enough_data"]
    assert not r["drift"], r

    shifted, _ = make_frame(600, 22, nan_age=False)
    shifted["income"] = shifted["income"] * 2.5
    shifted["city"] = np.where(np.arange(600) % 2 == 0, "Tokyo", "Paris")
    shifted.loc[shifted.index[:300], "age"] = np.nan
    for s in range(0, 600, 200):
        status, _ = post(server.url + "/predict", {"inputs": records(shifted.iloc[s:s + 200])})
        assert status == 200
    status, r = get(server.url + "/drift")
    assert status == 200 and r["observed_rows"] == 900
    f = {x["feature"]: x for x in r["features"]}
    both = pd.concat([control, shifted])
    want = independent_psi(df["income"].to_numpy(float), both["income"].to_numpy(float))
    assert f["income"]["psi"] == pytest.approx(want, rel=1e-4, abs=1e-6) and f["income"]["drift"]
    assert f["city"]["drift"] and f["city"]["unseen_share"] == pytest.approx(
        300 / (300 + 600), abs=1e-6)
    want_rate = float(both["age"].isna().mean())
    assert f["age"]["missing_rate"] == pytest.approx(want_rate, abs=1e-6)
    assert f["age"]["missing_rate_change"] == pytest.approx(want_rate - df["age"].isna().mean(), abs=1e-6)
    assert not f["plan"]["drift"]
    status, metrics = get(server.url + "/metrics")
    assert status == 200
    text = metrics.decode() if isinstance(metrics, bytes) else str(metrics)
    assert f'nbdeploy_drift_psi{{feature="income"}} {f["income"]["psi"]}' in text
    assert f'nbdeploy_drift_missing_rate_change{{feature="age"}} {f["age"]["missing_rate_change"]}' in text
    assert 'nbdeploy_drift_unseen_share{feature="city"}' in text
    assert "nbdeploy_drift_detected 1" in text


def test_numeric_drift_counts_missing_values_apart():
    """A numeric model that accepts NaN: PSI over the observed values, missing rate reported."""
    from nbdeploy.drift import baseline
    from nbdeploy.runtime.drift import DriftMonitor

    rng = np.random.default_rng(4)
    X = rng.normal(size=(400, 2)).astype(np.float32)
    X[rng.random(400) < 0.1, 0] = np.nan
    mon = DriftMonitor(json.loads(json.dumps(baseline(X, ["a", "b"]))))
    served = rng.normal(0.5, 1.0, size=(300, 2)).astype(np.float32)
    served[:150, 0] = np.nan
    mon.observe(served)
    f = {x["feature"]: x for x in mon.report()["features"]}
    assert f["a"]["psi"] == pytest.approx(independent_psi(X[:, 0].astype(float), served[:, 0].astype(float)),
                                          rel=1e-4)
    assert f["b"]["psi"] == pytest.approx(independent_psi(X[:, 1].astype(float), served[:, 1].astype(float)),
                                          rel=1e-4)
    assert f["a"]["missing_rate"] == pytest.approx(0.5)
    assert f["a"]["missing_rate_change"] == pytest.approx(0.5 - np.isnan(X[:, 0]).mean(), abs=1e-6)
    assert f["a"]["drift"] and f["b"]["missing_rate_change"] == 0.0
    assert 'nbdeploy_drift_missing_rate{feature="a"} 0.5' in mon.prometheus()
    # a sample without missing values keeps the baseline it always had
    assert "missing_rates" not in baseline(np.nan_to_num(X), ["a", "b"])
