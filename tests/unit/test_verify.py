"""verify: real native models against their real ONNX graphs, and against deliberately broken ones.

The oracle is the native model (its predict / predict_proba and scikit-learn's metrics computed
here); broken graphs are the converted graph with its weights changed, so verification must
notice a real difference computed by onnxruntime.
"""

from __future__ import annotations

import numpy as np
import pytest

from nbdeploy.convert import convert
from nbdeploy.errors import InvalidInputError, VerificationError
from nbdeploy.verify import Tolerance, check_labels, compare, verify


def _perturbed(model, factor: float, shift: float = 0.0):
    """A copy of the ONNX graph with every float weight (initializers and the float-list
    attributes of ai.onnx.ml linear operators) scaled by ``factor`` and shifted by ``shift``."""
    import onnx
    from onnx import numpy_helper

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    changed = 0
    for init in copy.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype.kind == "f" and w.size > 1:
            init.CopyFrom(numpy_helper.from_array((w * factor + shift).astype(w.dtype), init.name))
            changed += 1
    for node in copy.graph.node:
        for a in node.attribute:
            if a.name in ("coefficients", "intercepts") and a.floats:
                vals = [v * factor + shift for v in a.floats]
                del a.floats[:]
                a.floats.extend(vals)
                changed += 1
    assert changed, "nothing to perturb in this graph"
    return copy


@pytest.fixture(scope="module")
def classifier(breast_cancer):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X_train, X_test, y_train, y_test = breast_cancer
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X_train, y_train)
    return model, convert(model, X_test), X_test, y_test.to_numpy()


@pytest.fixture(scope="module")
def regressor(regression_data):
    import torch
    from torch import nn

    X, y = regression_data
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(X.shape[1], 16), nn.Tanh(), nn.Linear(16, 1)).eval()
    return net, convert(net, X[:150]), X[:150], y[:150]


def test_faithful_graphs_pass_with_metrics_from_the_native_model(classifier, regressor):
    from sklearn.metrics import accuracy_score, mean_squared_error

    model, c, X, y = classifier
    rep = verify(c, labels=y)
    assert rep.passed and rep.rows == len(X) and rep.label_agreement == 1.0
    assert rep.max_abs_diff < 1e-5 and not rep.mismatched_rows
    assert rep.metric == "accuracy"
    assert rep.native_metric == pytest.approx(accuracy_score(y, model.predict(X)))
    assert rep.onnx_metric == pytest.approx(rep.native_metric)
    assert rep.summary().startswith("PASS")

    import torch

    net, c, X, y = regressor
    rep = verify(c, labels=y)
    with torch.no_grad():
        native = net(torch.from_numpy(X)).numpy().reshape(-1)
    assert rep.passed and rep.metric == "rmse"
    assert rep.native_metric == pytest.approx(np.sqrt(mean_squared_error(y, native)), rel=1e-6)


def test_a_broken_classifier_graph_fails_with_the_rows(classifier):
    model, c, X, _ = classifier
    broken = _perturbed(c.onnx_model, factor=-1.0)      # coefficients negated: labels flip
    with pytest.raises(VerificationError) as err:
        verify(c, onnx_model=broken)
    assert "does not match" in err.value.message and "mismatched rows" in err.value.message
    assert err.value.hint
    rep = verify(c, onnx_model=broken, raise_on_fail=False)
    assert not rep.passed and rep.summary().startswith("FAIL")
    # the report's numbers are onnxruntime's on the broken graph, checked by hand here
    from nbdeploy.runtime.model import OnnxModel

    out = OnnxModel(broken.SerializeToString(), c.spec).run(c.X)
    flips = np.where(out["label"] != model.predict(X))[0]
    assert rep.label_agreement == pytest.approx(1 - len(flips) / len(X))
    assert rep.mismatched_rows and set(rep.mismatched_rows) <= set(flips.tolist())
    assert rep.max_abs_diff == pytest.approx(np.abs(out["probabilities"] - model.predict_proba(X)).max(),
                                             rel=1e-6)


def test_a_slightly_wrong_regressor_fails_and_a_tolerance_admits_it(regressor):
    _, c, _, _ = regressor
    tiny = _perturbed(c.onnx_model, factor=1 + 1e-7)     # float32 rounding: still equal
    assert verify(c, onnx_model=tiny).passed
    off = _perturbed(c.onnx_model, factor=1.0, shift=1e-2)   # every weight shifted: outputs move
    rep = verify(c, onnx_model=off, raise_on_fail=False)
    assert not rep.passed and rep.max_abs_diff > 1e-3
    loose = Tolerance(atol=2 * rep.max_abs_diff, rtol=0.0)
    assert verify(c, onnx_model=off, tolerance=loose).passed


def test_labels_must_match_the_sample(classifier):
    _, c, _, y = classifier
    with pytest.raises(InvalidInputError) as err:
        verify(c, labels=y[:-1])
    assert f"{len(y) - 1} entries" in err.value.message and err.value.hint
    assert check_labels(None, 3) is None
    np.testing.assert_array_equal(check_labels([[1], [0], [1]], 3), [1, 0, 1])
    with pytest.raises(InvalidInputError):
        check_labels([1, 0], 3)


def test_compare_shapes_and_near_ties():
    with pytest.raises(VerificationError):
        compare("regressor", {"value": np.zeros((4, 1))}, {"value": np.zeros((4, 2))})
    # a label flip where the native model's top two probabilities tie is rounding, not a bug
    native = {"label": np.array([0, 1, 1]), "probabilities": np.array([[0.5, 0.5], [0.1, 0.9], [0.2, 0.8]])}
    flipped = {"label": np.array([1, 1, 1]), "probabilities": np.array([[0.5, 0.5], [0.1, 0.9], [0.2, 0.8]])}
    rep = compare("classifier", native, flipped)
    assert rep.near_ties == 1 and rep.passed and rep.mismatched_rows == []
    wrong = {"label": np.array([0, 0, 1]), "probabilities": np.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])}
    rep = compare("classifier", native, wrong)
    assert not rep.passed and rep.mismatched_rows == [1] and rep.max_abs_diff == pytest.approx(0.8)
