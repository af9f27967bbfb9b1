"""nbdeploy.spark (issue 17): a real local Spark session (``local[2]``, pyspark from PyPI, Java 17)
scores Spark DataFrames with a bundle; the oracle is the native model's predict/predict_proba
and shap's TreeExplainer on the native forest."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import customers

import nbdeploy

pytestmark = pytest.mark.slow
pyspark = pytest.importorskip("pyspark")


@pytest.fixture(scope="module")
def spark():
    import os
    import sys

    from pyspark.sql import SparkSession

    # executors must run this interpreter (pyspark's default is whatever `python3` is on PATH)
    old = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    s = (SparkSession.builder.master("local[2]").appName("nbdeploy-tests")
         .config("spark.ui.enabled", "false")
         .config("spark.sql.shuffle.partitions", "2")
         .config("spark.driver.memory", "1g")
         .getOrCreate())
    s.sparkContext.setLogLevel("ERROR")
    yield s
    s.stop()
    if old is None:
        os.environ.pop("PYSPARK_PYTHON", None)
    else:
        os.environ["PYSPARK_PYTHON"] = old


@pytest.fixture(scope="module")
def shap_bundle(ref_explained):
    return ref_explained


def _decided(P):
    # exact ties (0.5/0.5 of 20 trees) may tip either way in float32: compare labels elsewhere
    return np.abs(P[:, 1] - P[:, 0]) > 1e-6


def test_predict_udf_defaults_one_session_per_worker(spark, ref_deployment, rf_model, breast_cancer):
    import os

    import pandas as pd
    from pyspark.sql.functions import pandas_udf

    import nbdeploy.spark as nbspark

    X_train, _, _, _ = breast_cancer
    X = X_train.reset_index(drop=True)
    sdf = spark.createDataFrame(X.assign(id=np.arange(len(X)))).repartition(8)
    predict = nbspark.predict_udf(spark, ref_deployment.tag)

    @pandas_udf("string")
    def probe(ids):     # runs in the same Python worker as `predict`
        return pd.Series([f"{os.getpid()}:{nbspark.SESSIONS_CREATED}"] * len(ids))

    got = (sdf.select("id", predict(*[sdf[c] for c in X.columns]).alias("prediction"),
                      probe("id").alias("probe"))
           .toPandas().sort_values("id"))
    assert list(got["id"]) == list(range(len(X)))
    P = rf_model.predict_proba(X)
    d = _decided(P)
    np.testing.assert_array_equal(got["prediction"].to_numpy()[d], rf_model.predict(X)[d])
    # one onnxruntime session per executor Python worker, reused across the 8 partitions
    per_pid = {}
    for s in got["probe"]:
        pid, n = s.split(":")
        per_pid[pid] = max(per_pid.get(pid, 0), int(n))
    assert set(per_pid.values()) == {1}, per_pid
    assert len(per_pid) < 8, per_pid


def test_score_map_in_pandas_with_shap(spark, shap_bundle, rf_model, breast_cancer):
    import shap

    import nbdeploy.spark as nbspark

    _, X_test, _, _ = breast_cancer
    X = X_test.reset_index(drop=True)
    sdf = spark.createDataFrame(X.assign(id=[f"p{i}" for i in range(len(X))])).repartition(3)
    out = nbspark.score(sdf, shap_bundle.tag, explain=True).toPandas()
    out["i"] = out["id"].str[1:].astype(int)
    out = out.sort_values("i").reset_index(drop=True)
    np.testing.assert_allclose(out[list(X.columns)].to_numpy(), X.to_numpy())   # passed through
    P = rf_model.predict_proba(X)
    np.testing.assert_allclose(out[["proba_0", "proba_1"]].to_numpy(), P, atol=1e-5)
    d = _decided(P)
    np.testing.assert_array_equal(out["prediction"].to_numpy()[d], rf_model.predict(X)[d])
    phi = out[[f"shap_{c}" for c in X.columns]].to_numpy()
    np.testing.assert_allclose(out["shap_base"] + phi.sum(axis=1), P[:, 1], atol=1e-5)
    sv = shap.TreeExplainer(rf_model).shap_values(X.to_numpy(dtype=np.float32))
    np.testing.assert_allclose(phi, sv[:, :, 1] if np.ndim(sv) == 3 else sv[1], atol=1e-5)
    # the explain UDF: a struct column with the same fields
    explain = nbspark.explain_udf(spark, shap_bundle.tag)
    got = sdf.select("id", explain(*[sdf[c] for c in X.columns]).alias("e")).select("id", "e.*") \
        .toPandas()
    got = got.assign(i=got["id"].str[1:].astype(int)).sort_values("i").reset_index(drop=True)
    np.testing.assert_allclose(got[[f"shap_{c}" for c in X.columns]].to_numpy(), phi, atol=5e-7)
    np.testing.assert_allclose(got["shap_base"].to_numpy(), out["shap_base"].to_numpy(), atol=5e-7)
    # the same answers as nbdeploy.score on the driver (to float32 rounding: onnxruntime's sums
    # over trees run in an order that depends on the batch, and Spark's batches are others)
    local = nbdeploy.score(shap_bundle.tag, X, explain=True, progress=False)
    np.testing.assert_allclose(out[local.columns[1:-1]].to_numpy(dtype=float),
                               local[local.columns[1:-1]].to_numpy(dtype=float), atol=5e-7)


def test_bad_row_fails_the_job_with_the_served_message(spark, ref_deployment, breast_cancer):
    from pyspark.errors import PythonException

    import nbdeploy.spark as nbspark

    _, X_test, _, _ = breast_cancer
    X = X_test.reset_index(drop=True).copy()
    X.loc[17, "mean texture"] = np.nan                 # null in Spark: this model takes none
    sdf = spark.createDataFrame(X)
    with pytest.raises(PythonException) as ei:
        nbspark.score(sdf, ref_deployment.tag).collect()
    text = str(ei.value)
    assert "InvalidInputError" in text and "'mean texture'" in text and ref_deployment.tag in text
    with pytest.raises(nbdeploy.NbdeployError, match="lacks 1 of the model's columns"):
        nbspark.score(sdf.drop("mean texture"), ref_deployment.tag)


def test_table_bundle_on_spark_with_strings_and_nulls(spark, customer_table):
    import nbdeploy.spark as nbspark

    model, d = customer_table
    Xt, _ = customers(120, 5)
    sdf = spark.createDataFrame(Xt.assign(k=np.arange(len(Xt))).astype({"city": object})
                                .replace({np.nan: None}))
    predict = nbspark.predict_udf(spark, d.tag, probabilities=True)
    got = sdf.select("k", predict("age", "city", "income").alias("s")).select("k", "s.*") \
        .toPandas().sort_values("k")
    np.testing.assert_array_equal(got["prediction"].to_numpy(), model.predict(Xt))
    np.testing.assert_allclose(got[["proba_churn", "proba_stay"]].to_numpy(),
                               model.predict_proba(Xt), atol=1e-5)
