"""Notebook-side explanations: additivity per model family, LIME determinism, fallbacks, plots."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from nbdeploy.convert import convert
from nbdeploy.errors import InvalidInputError
from nbdeploy.explain import explain

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def cls_data():
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=200, n_features=6, n_informative=4, random_state=0)
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def reg_data():
    from sklearn.datasets import make_regression

    X, y = make_regression(n_samples=200, n_features=5, noise=0.5, random_state=0)
    return X.astype(np.float32), y


def _additive(rep, tol=1e-6):
    """base + sum(SHAP) == the model output reported for every row and output."""
    recon = rep.base_values[None, :] + rep.shap_values.sum(axis=1)
    scale = max(1.0, float(np.abs(rep.outputs).max()))
    np.testing.assert_allclose(recon, rep.outputs, atol=tol * scale)


def test_random_forest_treeshap_explains_probabilities(cls_data):
    from sklearn.ensemble import RandomForestClassifier

    X, y = cls_data
    m = RandomForestClassifier(n_estimators=15, max_depth=5, random_state=0).fit(X, y)
    rep = explain(convert(m, X), methods=("shap",), max_rows=60)
    assert rep.explainer == "tree" and rep.output_space == "probability"
    assert rep.shap_values.shape == (60, 6, 2)
    np.testing.assert_allclose(rep.outputs, m.predict_proba(X[:60]), atol=1e-12)
    _additive(rep, 1e-9)
    assert rep.serve_agreement is not None and rep.serve_agreement < 1e-9


@pytest.mark.parametrize("kind", ["sklearn-gbm", "xgboost", "lightgbm"])
def test_boosters_treeshap_margin_space(cls_data, kind):
    X, y = cls_data
    if kind == "sklearn-gbm":
        from sklearn.ensemble import GradientBoostingClassifier

        m = GradientBoostingClassifier(n_estimators=15, max_depth=3, random_state=0).fit(X, y)
        margin = m.decision_function(X[:50])
    elif kind == "xgboost":
        import xgboost

        m = xgboost.XGBClassifier(n_estimators=15, max_depth=3).fit(X, y)
        margin = m.predict(X[:50], output_margin=True)
    else:
        import lightgbm

        m = lightgbm.LGBMClassifier(n_estimators=15, verbose=-1).fit(X, y)
        margin = m.predict(X[:50], raw_score=True)
    rep = explain(convert(m, X), methods=("shap",), max_rows=50)
    assert rep.explainer == "tree" and rep.output_space == "log_odds"
    assert any("sigmoid" in n for n in rep.notes)
    np.testing.assert_allclose(rep.outputs[:, 0], margin, atol=1e-5)
    _additive(rep, 1e-5)
    # the exported (pickle-free) trees reproduce the native TreeSHAP numbers
    assert rep.serve_agreement < 1e-5


def test_multiclass_xgboost_base_offset_fixed(cls_data):
    import xgboost
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=150, n_features=5, n_informative=4, n_redundant=0,
                               n_classes=3, random_state=1)
    m = xgboost.XGBClassifier(n_estimators=5, max_depth=3).fit(X, y)
    rep = explain(convert(m, X.astype(np.float32)), methods=("shap",), max_rows=40)
    assert rep.output_space == "margin" and rep.shap_values.shape[2] == 3
    _additive(rep, 1e-5)
    served = rep._serve.shap_values(rep.X)
    np.testing.assert_allclose(served[2], m.predict(X[:40], output_margin=True), atol=1e-5)
    assert rep.serve_agreement < 1e-5


@pytest.mark.parametrize("kind", ["lightgbm", "sklearn-gbm", "sklearn-forest"])
def test_regressor_tree_value_space(reg_data, kind):
    import lightgbm
    from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor

    X, y = reg_data
    m = {"lightgbm": lambda: lightgbm.LGBMRegressor(n_estimators=10, verbose=-1),
         "sklearn-gbm": lambda: GradientBoostingRegressor(n_estimators=10, random_state=0),
         "sklearn-forest": lambda: RandomForestRegressor(n_estimators=5, random_state=0)}[kind]().fit(X, y)
    rep = explain(convert(m, X), methods=("shap",), max_rows=30)
    assert rep.explainer == "tree" and rep.output_space == "value"
    np.testing.assert_allclose(rep.outputs[:, 0], m.predict(X[:30]), rtol=1e-6, atol=1e-6)
    _additive(rep)
    assert rep.serve_agreement < 1e-6 * max(1.0, float(np.abs(rep.outputs).max()))


def test_poisson_booster_is_explained_in_margin_space(reg_data):
    import lightgbm

    X, y = reg_data
    m = lightgbm.LGBMRegressor(n_estimators=10, objective="poisson", verbose=-1).fit(X, np.abs(y) + 1)
    rep = explain(convert(m, X), methods=("shap",), max_rows=20)
    assert rep.output_space == "margin" and "inverse link" in " ".join(rep.notes)
    np.testing.assert_allclose(np.exp(rep.outputs[:, 0]), m.predict(X[:20]), rtol=1e-6)
    _additive(rep)


def test_linear_model_is_model_agnostic_and_exact(reg_data):
    from sklearn.linear_model import Ridge

    X, y = reg_data
    m = Ridge().fit(X, y)
    rep = explain(convert(m, X), methods=("shap",), max_rows=20, max_background=200)
    # 5 features: all 32 coalitions fit the budget, so the values are exact Shapley values
    assert rep.explainer == "exact" and rep.output_space == "value"
    _additive(rep)
    bg = rep._artifacts["background"].astype(np.float64)
    expected = m.coef_[None, :] * (X[:20].astype(np.float64) - bg.mean(0))   # phi_i = w_i (x_i - E x_i)
    np.testing.assert_allclose(rep.shap_values[:, :, 0], expected, atol=1e-3 * np.abs(expected).max())


def test_permutation_is_exact_for_additive_model():
    """Antithetic permutations give exact Shapley values for an additive model (closed form)."""
    from nbdeploy.runtime.explain import agnostic_shap

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 12)).astype(np.float32)
    w = rng.normal(size=12)
    f = lambda Z: (np.tanh(Z.astype(np.float64)) @ w)[:, None]   # additive, nonlinear per feature
    bg = X[3:23]
    phi, base, out, algo = agnostic_shap(f, X[:3], bg, max_evals=200, seed=3)
    assert algo == "permutation"
    expected = w * (np.tanh(X[:3].astype(np.float64)) - np.tanh(bg.astype(np.float64)).mean(0))
    np.testing.assert_allclose(phi[:, :, 0], expected, atol=1e-9)
    np.testing.assert_allclose(base[0] + phi.sum(1)[:, 0], out[:, 0], atol=1e-12)


def _brute_force_shapley(f, x, bg):
    """Shapley values of v(S) = mean_b f(x_S, b_~S) by enumerating every coalition."""
    from itertools import combinations
    from math import factorial

    M = len(x)

    def v(S):
        Z = bg.copy()
        Z[:, list(S)] = x[list(S)]
        return f(Z)[:, 0].mean()

    phi = np.zeros(M)
    for i in range(M):
        others = [j for j in range(M) if j != i]
        for size in range(M):
            for S in combinations(others, size):
                weight = factorial(size) * factorial(M - size - 1) / factorial(M)
                phi[i] += weight * (v(S + (i,)) - v(S))
    return phi


def test_exact_small_model_matches_brute_force():
    from nbdeploy.runtime.explain import agnostic_shap

    rng = np.random.default_rng(1)
    X = rng.normal(size=(30, 4)).astype(np.float32)
    f = lambda Z: np.stack([Z[:, 0] * Z[:, 1] + np.sin(Z[:, 2]) * Z[:, 3]], axis=1).astype(np.float64)
    phi, base, out, algo = agnostic_shap(f, X[:4], X[4:24], max_evals=500)
    assert algo == "exact"
    for r in range(4):
        np.testing.assert_allclose(phi[r, :, 0], _brute_force_shapley(f, X[r], X[4:24]), atol=1e-9)


def test_torch_mlp_model_agnostic_additive(cls_data):
    torch = pytest.importorskip("torch")

    X, _ = cls_data
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    rep = explain(convert(net, X), methods=("shap",), max_rows=5, max_background=20)
    assert rep.explainer == "exact" and rep.output_space == "probability"
    assert any("PyTorch" in n for n in rep.notes)
    _additive(rep, 1e-6)
    with torch.no_grad():
        probs = torch.softmax(net(torch.from_numpy(X[:5])), dim=1).numpy()
    np.testing.assert_allclose(rep.outputs, probs, atol=1e-5)


def test_tree_requested_for_linear_model_falls_back_with_note(cls_data):
    from sklearn.linear_model import LogisticRegression

    X, y = cls_data
    m = LogisticRegression(max_iter=300).fit(X, y)
    rep = explain(convert(m, X), methods=("tree",), max_rows=5, max_background=20)
    assert rep.explainer in ("exact", "permutation")
    note = " ".join(rep.notes)
    assert "TreeSHAP does not apply" in note and "LinearExplainer" in note
    assert rep.to_dict()["notes"] == rep.notes
    _additive(rep)


def test_multiclass_sklearn_gbm_falls_back(cls_data):
    from sklearn.datasets import make_classification
    from sklearn.ensemble import GradientBoostingClassifier

    X, y = make_classification(n_samples=120, n_features=5, n_informative=3, n_redundant=0,
                               n_classes=3, random_state=0)
    m = GradientBoostingClassifier(n_estimators=5, random_state=0).fit(X, y)
    rep = explain(convert(m, X.astype(np.float32)), methods=("shap",), max_rows=4, max_background=15)
    assert rep.explainer == "exact" and "TreeSHAP could not handle" in " ".join(rep.notes)
    _additive(rep)


def test_lime_is_seeded_and_reproducible(cls_data):
    from sklearn.ensemble import RandomForestClassifier

    X, y = cls_data
    c = convert(RandomForestClassifier(n_estimators=10, random_state=0).fit(X, y), X)
    a = explain(c, methods=("shap", "lime"), max_rows=10, seed=7)
    b = explain(c, methods=("shap", "lime"), max_rows=10, seed=7)
    ra, rb = a.explain_row(3, "lime"), b.explain_row(3, "lime")
    assert ra["contributions"] == rb["contributions"] and ra["intercept"] == rb["intercept"]
    assert a.explain_row(3, "lime") == ra                         # cached and stable
    # the same answer no matter which rows were asked for before
    assert a._serve.explain(a.X[3:4], "lime", {"seed": 7})["contributions"][0] == ra["contributions"]
    other = explain(c, methods=("lime",), max_rows=10, seed=8).explain_row(3, "lime")
    assert other["contributions"] != ra["contributions"]
    assert len(ra["rules"]) == 6 and any("<" in r or ">" in r for r in ra["rules"])
    assert 0.0 <= ra["output"] <= 1.0


def test_lime_regression(reg_data):
    from sklearn.linear_model import Ridge

    X, y = reg_data
    rep = explain(convert(Ridge().fit(X, y), X), methods=("lime",), max_rows=3, max_background=20)
    r = rep.explain_row(1, "lime")
    assert r["explained_output"] == "value" and len(r["contributions"]) == 5
    assert r == rep.explain_row(1, "lime")


def test_to_dict_json_and_html(cls_data):
    from sklearn.ensemble import RandomForestClassifier

    X, y = cls_data
    rep = explain(convert(RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y), X),
                  max_rows=20)
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["explainer"] == "tree" and len(d["global_importance"]) == 6
    assert d["lime"] and d["rows"][0]["contributions"]
    assert "mean |SHAP|" in rep._repr_html_()
    assert "tree SHAP" in rep.summary()
    with pytest.raises(InvalidInputError):
        rep.explain_row(999)
    with pytest.raises(InvalidInputError):
        rep.explain_row(0, "anchors")


def test_plots_are_png(cls_data, tmp_path):
    from sklearn.ensemble import RandomForestClassifier

    X, y = cls_data
    rep = explain(convert(RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y), X),
                  max_rows=30)
    figs = rep.figures()
    assert {"shap_importance", "shap_summary", "shap_row_0", "lime_row_0"} <= set(figs)
    assert figs["shap_summary"]._repr_png_().startswith(PNG)      # displays in Jupyter as is
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)     # e.g. "FigureCanvasAgg is non-interactive"
        paths = rep.save_plots(tmp_path / "plots")
    assert len(paths) == 4
    for p in paths:
        data = p.read_bytes()
        assert data.startswith(PNG) and len(data) > 2000


def test_bad_methods_rejected(cls_data):
    from sklearn.linear_model import LogisticRegression

    X, y = cls_data
    c = convert(LogisticRegression().fit(X, y), X)
    with pytest.raises(InvalidInputError, match="Unknown explanation"):
        explain(c, methods=("anchors",))
    with pytest.raises(InvalidInputError):
        explain(c, methods=("tree", "permutation"))


def test_lime_from_stored_stats_equals_lime_on_training_rows():
    """The bundle keeps quartile statistics, not rows; lime gives the very same answer from them."""
    from lime.lime_tabular import LimeTabularExplainer
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    from nbdeploy.explain import lime_stats
    from nbdeploy.runtime.explain import lime_explain_row, lime_stats_from_json

    X, y = make_classification(n_samples=150, n_features=6, random_state=0)
    m = LogisticRegression().fit(X, y)
    names = [f"f{i}" for i in range(6)]
    ref = LimeTabularExplainer(X, mode="classification", feature_names=names,
                               discretize_continuous=True, random_state=4)
    e = ref.explain_instance(X[3], m.predict_proba, labels=(1,), num_features=6, num_samples=800)
    stats = lime_stats_from_json(json.loads(json.dumps(lime_stats(X, names))))
    mine = lime_explain_row(m.predict_proba, X[3], stats, names, mode="classification", label=1,
                            num_samples=800, seed=4)
    expected = np.zeros(6)
    for j, v in e.local_exp[1]:
        expected[j] = v
    np.testing.assert_allclose(mine["weights"], expected, atol=1e-12)
    assert mine["intercept"] == pytest.approx(e.intercept[1], abs=1e-12)


def test_requirements_name_what_the_bundle_imports(cls_data):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    X, y = cls_data
    tree = explain(convert(RandomForestClassifier(n_estimators=3).fit(X, y), X), methods=("shap",),
                   max_rows=5)
    assert [r.split("==")[0] for r in tree.requirements()] == ["shap"]
    lin = explain(convert(LogisticRegression().fit(X, y), X), methods=("shap", "lime"), max_rows=2,
                  max_background=10)
    assert [r.split("==")[0] for r in lin.requirements()] == ["lime", "scikit-learn", "scipy"]
    # the pins come from the bundle's one list of what served code imports, with versions here
    from importlib.metadata import version

    from nbdeploy.bundle import DEPENDENCIES
    from nbdeploy.explain_text import TextExplainReport

    assert tree.requirements() == [f"shap=={version('shap')}"]
    listed = {d.dists[0] for d in DEPENDENCIES}
    assert {r.split("==")[0] for r in lin.requirements()} <= listed
    text = TextExplainReport([], methods=("shap", "lime"), budget={}, explainer=None,
                             X=np.zeros((0, 1), dtype=object), seconds=0.0)
    assert [r.split("==")[0] for r in text.requirements()] == ["shap", "lime", "scikit-learn", "scipy"]


def test_plan_chooses_the_path_before_computing_anything(cls_data):
    """explain()'s planning step: route, SHAP path, rows and notes, from the model and options."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from nbdeploy.explain import DEFAULT_ROWS, plan_explanation

    X, y = cls_data
    rf = convert(RandomForestClassifier(n_estimators=3, random_state=0).fit(X, y), X)
    p = plan_explanation(rf)
    assert (p.route, p.mode, p.methods, p.try_tree, p.notes) == ("tabular", "auto", ["shap", "lime"], True, [])
    assert p.rows("tree") == DEFAULT_ROWS["tree"] and p.rows("agnostic") == DEFAULT_ROWS["agnostic"]
    assert plan_explanation(rf, max_rows=7).rows("tree") == 7
    p = plan_explanation(rf, methods="permutation")
    assert p.mode == "agnostic" and not p.try_tree and "TreeSHAP ('tree') would be exact" in p.notes[0]
    assert explain(rf, methods="permutation", max_rows=3, max_background=10).explainer != "tree"

    lr = convert(LogisticRegression(max_iter=300).fit(X, y), X)
    p = plan_explanation(lr, methods=("tree", "lime"))
    assert p.mode == "tree" and not p.try_tree and "LinearExplainer" in p.notes[0]
    piped = convert(make_pipeline(StandardScaler(), RandomForestClassifier(n_estimators=3)).fit(X, y), X)
    p = plan_explanation(piped)
    assert not p.try_tree and "TreeSHAP not used" in p.notes[0] and "pipeline ends in a tree" in p.notes[0]
    with pytest.raises(InvalidInputError, match="max_background"):
        plan_explanation(rf, max_background=0)


def test_methods_are_the_vocabulary_words(cls_data):
    """Every word vocab lists is accepted with its SHAP flavour; the error names exactly them."""
    from sklearn.linear_model import LogisticRegression

    from nbdeploy import vocab
    from nbdeploy.explain import plan_explanation

    X, y = cls_data
    c = convert(LogisticRegression(max_iter=300).fit(X, y), X)
    for word in (*vocab.SHAP_MODES, *vocab.EXPLAIN_METHODS):
        p = plan_explanation(c, methods=word.upper())
        assert p.mode == vocab.SHAP_MODES.get(word, "auto"), word
        assert p.methods == (["shap", "lime"] if word == "lime" else ["shap"]), word
    with pytest.raises(InvalidInputError) as err:
        plan_explanation(c, methods="shap, anchors")
    assert set(err.value.expected) == {*vocab.SHAP_MODES, *vocab.EXPLAIN_METHODS, "none"}
    assert err.value.received == ["anchors"]
    for nothing in ("none", "", ()):                     # explain() needs a method to compute
        with pytest.raises(InvalidInputError, match="No explanation method"):
            plan_explanation(c, methods=nothing)
