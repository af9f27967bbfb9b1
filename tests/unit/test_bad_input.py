"""Bad input gets a clear error (what was expected, what was received, what to do) and writes nothing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import nbdeploy
from nbdeploy.errors import InvalidInputError, InvalidNameError, NbdeployError, UnsupportedModelError


def _store_tags():
    import bentoml

    return sorted(str(b.tag) for b in bentoml.bentos.list())


@pytest.fixture
def unchanged_store():
    before = _store_tags()
    yield
    assert _store_tags() == before, "a failed deploy must not leave a bundle behind"


class NotAModel:
    def predict(self, X):
        return X


def test_plain_python_class_is_unsupported(unchanged_store, breast_cancer):
    with pytest.raises(UnsupportedModelError) as e:
        nbdeploy.deploy(NotAModel(), breast_cancer[1], name="x")
    assert "NotAModel" in e.value.message
    assert "scikit-learn" in e.value.hint and "ONNX" in e.value.hint


def test_string_column_for_a_model_that_does_not_encode_it(unchanged_store):
    """Pipelines that encode strings deploy (tests/served/test_tabular.py); a model fit on numbers
    that is handed a string column gets one line naming the value, nothing written."""
    from sklearn.linear_model import LogisticRegression

    df = pd.DataFrame({"color": ["red", "blue", "green", "red"] * 10, "x": np.arange(40.0)})
    y = np.arange(40) % 2
    numeric = pd.DataFrame({"color": [0, 1, 2, 0] * 10, "x": np.arange(40.0)})
    model = LogisticRegression().fit(numeric, y)
    with pytest.raises(InvalidInputError) as e:
        nbdeploy.deploy(model, df, name="strings")
    assert "'red'" in e.value.message and "could not predict" in e.value.message
    assert len(e.value.message) < 400 and e.value.hint


@pytest.mark.parametrize("bad, words", [
    (np.zeros((5, 3)), "expects 30"),
    (np.zeros((0, 30)), "empty"),
    (np.zeros(7), "2-D"),
    (np.array([["a"] * 30]), "numeric"),
])
def test_bad_samples(unchanged_store, rf_model, bad, words):
    with pytest.raises(InvalidInputError) as e:
        nbdeploy.deploy(rf_model, bad, name="bad-sample")
    assert words in e.value.message
    assert e.value.hint


def test_nan_in_sample(unchanged_store, rf_model, breast_cancer):
    X = breast_cancer[1].copy()
    X.iloc[3, 2] = np.nan
    with pytest.raises(InvalidInputError) as e:
        nbdeploy.deploy(rf_model, X, name="nan")
    assert "NaN" in e.value.message and "row 3" in e.value.message


@pytest.mark.parametrize("name", ["../evil", "a/b", "Upper", "", "x" * 64, "..", "a b", "-lead"])
def test_invalid_bundle_names(unchanged_store, rf_model, breast_cancer, name):
    with pytest.raises(InvalidNameError) as e:
        nbdeploy.deploy(rf_model, breast_cancer[1], name=name)
    assert "lowercase" in e.value.hint


def test_unfitted_model(unchanged_store, breast_cancer):
    from sklearn.ensemble import RandomForestClassifier

    with pytest.raises(UnsupportedModelError) as e:
        nbdeploy.deploy(RandomForestClassifier(), breast_cancer[1], name="unfitted")
    assert "not fitted" in e.value.message


def test_verification_failure_is_an_error_with_numbers(unchanged_store, rf_model, breast_cancer):
    with pytest.raises(NbdeployError) as e:
        nbdeploy.deploy(rf_model, breast_cancer[1], name="strict", explain="none", quantize="none",
                        tolerance=nbdeploy.Tolerance(proba_atol=-1.0))
    assert "does not match" in e.value.message and "max |Δ|" in e.value.message


def test_unknown_options(rf_model, breast_cancer):
    with pytest.raises(InvalidInputError):
        nbdeploy.deploy(rf_model, breast_cancer[1], quantize="int4")
    with pytest.raises(InvalidInputError):
        nbdeploy.deploy(rf_model, breast_cancer[1], explain="magic")
    with pytest.raises(InvalidInputError):
        nbdeploy.deploy(rf_model, breast_cancer[1], device="tpu")


def test_errors_render_without_traceback(rf_model):
    err = InvalidInputError("The sample is empty.", hint="Pass rows.", expected=1, received=0)
    assert str(err) == "The sample is empty.\nHint: Pass rows."
    assert err.to_dict()["expected"] == 1
