"""Models trained on real-looking DataFrames (issue 16): numeric columns with NaN, string
categories, a short text column.  Each model is trained here, deployed with nbdeploy's
defaults, served by stock ``bentoml serve`` and asked with JSON records carrying strings and
nulls; the oracle is the native model's own predict/predict_proba on the same rows."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import deployed_and_served

import nbdeploy
from nbdeploy.errors import ConversionError, InvalidInputError

CITIES = ["Oslo", "Bergen", "Paris", "Lyon", "Lima", "Quito"]
PLANS = ["basic", "plus", "pro"]
NOTES = ["great service and fast delivery", "slow support, bad experience", "ok", "love the app",
         "billing was wrong twice", "fast and friendly", "would not recommend", "fine overall",
         "delivery late again", "excellent value for money"]


def make_customers(n: int, seed: int):
    """A churn-like table: numbers with missing values, categories with missing values, text."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    age = rng.normal(42, 12, n).round(0)
    income = rng.lognormal(10.3, 0.5, n).round(-2)
    tenure = rng.integers(0, 120, n)
    city = rng.choice(CITIES, n, p=[0.3, 0.2, 0.2, 0.1, 0.1, 0.1])
    plan = rng.choice(PLANS, n)
    note = rng.choice(NOTES, n)
    member = rng.random(n) < 0.4
    df = pd.DataFrame({"age": age, "income": income, "tenure_months": tenure, "city": city,
                       "plan": plan, "note": note, "member": member})
    df.loc[rng.random(n) < 0.12, "age"] = np.nan
    df.loc[rng.random(n) < 0.08, "city"] = np.nan
    bad = np.isin(note, ["slow support, bad experience", "billing was wrong twice",
                         "would not recommend", "delivery late again"])
    score = (0.04 * (np.nan_to_num(age, nan=42) - 42) - 0.02 * tenure + 1.6 * bad
             + 0.8 * (plan == "basic") - 0.5 * member + 0.6 * (city == "Lima") + rng.normal(0, 0.7, n))
    churn = np.where(score > 0, "churn", "stay")
    spend = 20 + 0.001 * income + 5 * (plan == "pro") - 8 * bad + rng.normal(0, 2, n)
    return df, churn, spend


@pytest.fixture(scope="module")
def customers():
    train, y_train, s_train = make_customers(1200, seed=1)
    test, y_test, s_test = make_customers(300, seed=2)
    return train, y_train, s_train, test, y_test, s_test


def records(df) -> list[dict]:
    """The DataFrame's rows as a client sends them: strings, numbers, booleans, null."""
    out = []
    for row in df.to_dict("records"):
        rec = {}
        for k, v in row.items():
            if v is None or (isinstance(v, float) and math.isnan(v)):
                rec[k] = None
            elif hasattr(v, "item"):
                rec[k] = v.item()
            else:
                rec[k] = v
        out.append(rec)
    return out


def _lr_pipeline():
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    pre = ColumnTransformer([
        ("age", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), ["age"]),
        # no imputer: LogisticRegression raises on NaN here, so the served API refuses null
        ("num", StandardScaler(), ["income", "tenure_months"]),
        ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"),
                              OneHotEncoder(handle_unknown="ignore")), ["city", "plan"]),
        ("flag", "passthrough", ["member"]),
    ])
    return Pipeline([("pre", pre), ("clf", LogisticRegression(max_iter=2000))])


def _rf_pipeline():
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OrdinalEncoder

    pre = ColumnTransformer([
        ("num", SimpleImputer(strategy="mean"), ["age", "income", "tenure_months"]),
        # OrdinalEncoder's default handle_unknown="error": an unseen city is a 400
        ("cat", make_pipeline(SimpleImputer(strategy="constant", fill_value="unknown"),
                              OrdinalEncoder()), ["city", "plan"]),
    ])
    return Pipeline([("pre", pre), ("clf", RandomForestClassifier(n_estimators=40, max_depth=8,
                                                                   random_state=0))])


def _text_pipeline():
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import StandardScaler

    pre = ColumnTransformer([
        ("text", TfidfVectorizer(), "note"),
        ("num", make_pipeline(SimpleImputer(), StandardScaler()), ["income"]),
    ])
    return Pipeline([("pre", pre), ("reg", Ridge(alpha=0.5))])


MODELS = {"ct-logreg": (_lr_pipeline, "classifier"), "ct-forest": (_rf_pipeline, "classifier"),
          "tfidf-ridge": (_text_pipeline, "regressor")}


@pytest.fixture(scope="module")
def served_models(customers):
    """Each model trained on the DataFrame, deployed with defaults, served by `bentoml serve`."""
    train, y_train, s_train, test, *_ = customers
    models = {name: make().fit(train, y_train if task == "classifier" else s_train)
              for name, (make, task) in MODELS.items()}
    with deployed_and_served(models, test, prefix="tab") as out:
        yield out


# --- served: records in, the native model's answers out ------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_records_with_strings_and_nulls_match_native(served_models, customers, post, name):
    model, d, server = served_models[name]
    test = customers[3]
    assert test.isna().any().any()           # the rows really carry missing values
    status, body = post(server.url + "/predict", {"inputs": records(test)})
    assert status == 200, body
    native = model.predict(test)
    if MODELS[name][1] == "classifier":
        assert body["predictions"] == list(native)
        np.testing.assert_allclose(body["probabilities"], model.predict_proba(test), atol=1e-4)
    else:
        np.testing.assert_allclose(body["predictions"], native, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_schema_in_metadata_and_openapi(served_models, get):
    _, d, server = served_models["ct-logreg"]
    status, meta = get(server.url + "/metadata")
    assert status == 200
    cols = {c["name"]: c for c in meta["input_schema"]["columns"]}
    assert list(cols) == ["age", "income", "tenure_months", "city", "plan", "note", "member"]
    assert cols["city"]["kind"] == "categorical" and set(cols["city"]["categories"]) == set(CITIES)
    assert cols["age"]["nullable"] and cols["city"]["nullable"]
    assert not cols["income"]["nullable"]      # the native pipeline raises on NaN there
    assert cols["member"]["kind"] == "boolean"
    status, doc = get(server.url + "/nbdeploy/openapi.json")
    record = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"][
        "schema"]["properties"]["inputs"]["items"]
    assert record["properties"]["city"]["type"] == "string"
    assert record["properties"]["age"]["nullable"] is True
    assert "nullable" not in record["properties"]["income"]


@pytest.mark.slow
@pytest.mark.parametrize("city", ["Reykjavik", ""])
def test_unseen_category_answered_as_native(served_models, customers, post, city):
    model, _, server = served_models["ct-logreg"]
    rows = customers[3].head(3).copy()
    rows["city"] = city                        # handle_unknown="ignore": the native model answers
    status, body = post(server.url + "/predict", {"inputs": records(rows)})
    assert status == 200, body
    assert body["predictions"] == list(model.predict(rows))
    np.testing.assert_allclose(body["probabilities"], model.predict_proba(rows), atol=1e-4)


@pytest.mark.slow
def test_unseen_category_refused_where_native_raises(served_models, customers, post):
    model, _, server = served_models["ct-forest"]
    rows = customers[3].head(2).copy()
    rows["city"] = "Reykjavik"
    with pytest.raises(ValueError):            # the native pipeline (OrdinalEncoder) raises
        model.predict(rows)
    status, body = post(server.url + "/predict", {"inputs": records(rows)})
    assert status == 400, body
    assert body["column"] == "city" and "Reykjavik" in body["received"]
    assert all(c in body["expected"] for c in CITIES)
    assert body["hint"]


@pytest.mark.slow
@pytest.mark.parametrize("name, change, column, words", [
    ("ct-logreg", {"age": "forty"}, "age", "expects a number"),
    ("ct-logreg", {"city": 3}, "city", "expects"),
    ("ct-logreg", {"member": "yes"}, "member", "expects true or false"),
    ("ct-logreg", {"zipcode": "0150"}, "zipcode", "unknown column"),
    ("ct-logreg", {"plan": None, "__drop__": "plan"}, "plan", "lacks column"),
    ("ct-logreg", {"income": None}, "income", "does not accept null"),   # no imputer there
    ("tfidf-ridge", {"note": None}, "note", "does not accept null"),     # TfidfVectorizer raises
    ("tfidf-ridge", {"note": 7}, "note", "expects a string"),
])
def test_bad_records_are_400_naming_the_column(served_models, customers, post, name, change,
                                               column, words):
    _, _, server = served_models[name]
    rec = records(customers[3].head(1))[0]
    change = dict(change)
    drop = change.pop("__drop__", None)
    rec.update(change)
    if drop:
        del rec[drop]
    status, body = post(server.url + "/predict", {"inputs": [rec]})
    assert status == 400, body
    assert body["column"] == column and column in body["message"] and words in body["message"]
    assert body["expected"] and body["received"] is not None and body["hint"]
    assert len(body["message"]) < 300


@pytest.mark.slow
def test_null_in_a_column_the_model_drops_is_answered(served_models, customers, post):
    """ct-logreg drops the text column: null there is what the native model takes too."""
    model, _, server = served_models["ct-logreg"]
    rows = customers[3].head(3).copy()
    rows["note"] = None
    status, body = post(server.url + "/predict", {"inputs": records(rows)})
    assert status == 200, body
    assert body["predictions"] == list(model.predict(rows))


@pytest.mark.slow
def test_rows_in_column_order_still_work(served_models, customers, post):
    model, d, server = served_models["ct-logreg"]
    test = customers[3].head(5)
    rows = [list(r.values()) for r in records(test)]
    status, body = post(server.url + "/predict", {"inputs": rows})
    assert status == 200, body
    assert body["predictions"] == list(model.predict(test))


# --- in the notebook -----------------------------------------------------------------------------

def test_deployment_predict_takes_the_dataframe(customers):
    train, y_train, _, test, *_ = customers
    model = _lr_pipeline().fit(train, y_train)
    d = nbdeploy.Deployment(model, test, explain="none", quantize="none")
    d.run(build=False)
    out = d.predict(test.head(20))
    assert out["predictions"] == list(model.predict(test.head(20)))
    from nbdeploy.schema import describe_columns

    assert "city: categorical (6 values, nulls ok)" in describe_columns(d.converted.columns)


def test_native_model_raising_on_nan_is_said_at_deploy_time(customers):
    train, y_train, _, test, *_ = customers
    model = _lr_pipeline().fit(train, y_train)
    sample = test.copy()
    sample.loc[sample.index[4], "income"] = np.nan
    with pytest.raises(InvalidInputError) as e:
        nbdeploy.deploy(model, sample, name="tab-nan", explain="none", quantize="none")
    msg = str(e.value)
    assert "income" in msg and "row 4" in msg and "SimpleImputer" in msg
    assert len(msg) < 800 and msg.count("\n") <= 4


@pytest.mark.slow
def test_numeric_model_with_nan_gets_nulls_through_the_tensor_path(post):
    """A numeric (all-float) model that handles NaN itself: NaN in the sample is fine and null
    is served, as list-of-rows."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 4))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    X[rng.random(X.shape) < 0.1] = np.nan
    model = make_pipeline(SimpleImputer(), LogisticRegression()).fit(X, y)
    d = nbdeploy.deploy(model, X[:200], name="tab-numeric-nan", explain="none", quantize="none")
    assert d.converted.spec["input_mode"] == "tensor"
    assert all(c["nullable"] for c in d.converted.columns)
    server = d.serve()
    try:
        rows = X[200:260]
        body_rows = [[None if math.isnan(v) else float(v) for v in r] for r in rows]
        status, body = post(server.url + "/predict", {"inputs": body_rows})
        assert status == 200, body
        assert body["predictions"] == model.predict(rows).tolist()
        np.testing.assert_allclose(body["probabilities"], model.predict_proba(rows), atol=1e-4)
    finally:
        server.stop()


def test_conversion_errors_are_bounded(customers):
    """A step skl2onnx cannot convert: a few lines that say what to do, not a converter dump."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

    train, y_train, _, test, *_ = customers
    pre = ColumnTransformer([("num", FunctionTransformer(lambda x: np.log1p(np.abs(x))),
                              ["income"]),
                             ("cat", OneHotEncoder(handle_unknown="ignore"), ["plan"])])
    model = Pipeline([("pre", pre), ("clf", LogisticRegression())]).fit(train, y_train)
    with pytest.raises(ConversionError) as e:
        nbdeploy.deploy(model, test, name="tab-bad", explain="none", quantize="none")
    msg = str(e.value)
    assert len(e.value.message) <= 600 and msg.count("\n") <= 3, msg
    assert "FunctionTransformer" in e.value.hint


def test_quantize_on_a_table_model_skips_what_does_not_apply(customers):
    train, y_train, _, test, *_ = customers
    model = _lr_pipeline().fit(train, y_train)
    d = nbdeploy.Deployment(model, test, explain="none", quantize="auto", benchmark_budget_s=5)
    d.run(build=False)
    q = d.optimized.quantization
    fp16 = q.get("fp16")
    assert fp16.status == "not_applicable" and fp16.reason
    assert q.get("fp32").within_tolerance
    assert d.chosen_variant in ("fp32", "int8-dynamic", "int8-static")


def test_non_numeric_sample_for_a_numeric_only_framework():
    import pandas as pd
    import torch

    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    df = pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]})
    with pytest.raises(nbdeploy.errors.UnsupportedModelError) as e:
        nbdeploy.deploy(net, df, name="tab-torch", explain="none", quantize="none")
    assert "'b'" in e.value.message and e.value.hint


def test_in_process_predict_refuses_nan_where_the_server_refuses_null(customers):
    from sklearn.linear_model import LogisticRegression

    train, y_train, *_ = customers
    X = train[["income", "tenure_months"]].to_numpy(dtype=float)
    model = LogisticRegression(max_iter=2000).fit(X, y_train)
    d = nbdeploy.Deployment(model, X[:200], explain="none", quantize="none")
    d.run(build=False)
    assert not any(c["nullable"] for c in d.converted.columns)   # LogisticRegression raises on NaN
    bad = X[:3].copy()
    bad[1, 0] = np.nan
    with pytest.raises(InvalidInputError) as e:
        d.predict(bad)
    assert "row 1" in e.value.message and e.value.hint


def test_report_prints_the_columns(customers, capsys):
    from nbdeploy.cli import main

    train, y_train, _, test, *_ = customers
    model = _rf_pipeline().fit(train, y_train)
    d = nbdeploy.deploy(model, test, name="tab-report", explain="none", quantize="none")
    assert main(["report", d.tag, "--columns"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["COLUMN", "KIND", "DTYPE", "NULL"]
    city = next(line for line in out if line.startswith("city"))
    assert "categorical" in city and "Oslo" in city and "others refused" in city
    age = next(line for line in out if line.startswith("age"))
    assert "numeric" in age and "accepted" in age


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_openapi_fuzz_on_a_table_model(served_models, mode):
    """schemathesis against the table bundle's own document: records it generates from the
    column schema are answered (valid ones 200, invalid ones 4xx), never a 5xx."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    _, _, server = served_models["ct-logreg"]
    schema = schemathesis.openapi.from_url(server.url + "/nbdeploy/openapi.json", timeout=30)
    gen = GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE

    @given(case=schema["/predict"]["POST"].as_strategy(generation_mode=gen))
    @settings(max_examples=40, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case):
        case.call_and_validate(base_url=server.url, timeout=30)

    check()



def test_brief_caps_a_converter_dump():
    """skl2onnx once embedded 659,120 characters of tree nodes in one message."""
    from nbdeploy.errors import brief

    nodes = "[" + ", ".join(f"np.uint32({i})" for i in range(80_000)) + "]"
    try:
        raise RuntimeError(f"Unable to create node 'TreeEnsembleRegressor' with attributes {nodes}"
                           "\nmore lines\nof the same")
    except RuntimeError as exc:
        text = brief(exc)
    assert len(nodes) > 600_000
    assert len(text) <= 300 and "\n" not in text
    assert text.startswith("RuntimeError: Unable to create node 'TreeEnsembleRegressor'")


def test_front_ends_show_the_schema(customers):
    """%deploy (text mode, a real IPython shell) prints the columns; the widget's Summary lists
    them and its snippets send a record that the served API's validation takes."""
    import json

    from IPython.testing import globalipapp
    from IPython.utils.capture import capture_output

    from nbdeploy.runtime.validation import parse_table
    from nbdeploy.widget import DeployWidget

    train, y_train, _, test, *_ = customers
    globalipapp.start_ipython()
    ip = globalipapp.get_ipython()
    ip.run_line_magic("load_ext", "nbdeploy")
    ip.user_ns.update(tab_model=_lr_pipeline().fit(train, y_train), tab_test=test)
    with capture_output() as cap:
        d = ip.run_line_magic("deploy", "tab_model --sample tab_test --name tab-magic --quantize none "
                                        "--explain none --budget 1 --text")
    assert "columns: age: numeric (nulls ok)" in cap.stdout, cap.stdout
    assert "city: categorical (6 values, nulls ok)" in cap.stdout
    assert "income: numeric (no nulls)" in cap.stdout
    w = DeployWidget(d)
    w.refresh()
    summary = w.summary_html.value
    assert "Columns" in summary and "city" in summary and "categorical" in summary
    body = json.loads(w.curl_snippet.split("-d '", 1)[1].rsplit("'", 1)[0])
    rec = body["inputs"][0]
    assert set(rec) == set(test.columns) and isinstance(rec["city"], (str, type(None)))
    parse_table(body["inputs"], d.converted.columns)   # raises if the served API would refuse it
    # the JupyterLab report tab renders the stored model card: it lists the columns too
    from nbdeploy.report import card_html
    from nbdeploy.store import read_report

    page = card_html(d.tag, read_report(d.tag))
    assert "<b>Columns</b>" in page and "city" in page and "categorical" in page


def test_numeric_records_name_the_column():
    from nbdeploy.runtime.validation import ClientError, parse_rows

    names = ["a", "b", "c"]
    cases = [([{"a": 1.0, "b": "x", "c": 2.0}], "b", "only numbers"),
             ([{"a": 1.0, "b": 2.0}], "c", "missing column 'c'"),
             ([{"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}], "d", "unknown column 'd'"),
             ([[1.0, True, 2.0]], "b", "column 'b'")]
    for rows, column, words in cases:
        with pytest.raises(ClientError) as e:
            parse_rows({"inputs": rows}, n_features=3, feature_names=names, max_rows=10)
        assert e.value.status == 400 and e.value.column == column and words in e.value.message
        assert e.value.to_dict()["column"] == column
