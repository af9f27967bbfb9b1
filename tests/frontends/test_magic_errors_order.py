"""%deploy names the first thing to fix first: an undefined model before a missing --sample,
so the suggested command (which reuses the model's name) can work (issue 23)."""

from __future__ import annotations

import pytest
from IPython.utils.capture import capture_output


@pytest.fixture(scope="module")
def ip():
    from IPython.testing import globalipapp

    globalipapp.start_ipython()
    shell = globalipapp.get_ipython()
    shell.run_line_magic("load_ext", "nbdeploy")
    shell.run_cell("from sklearn.dummy import DummyClassifier\nmodel = DummyClassifier()")
    return shell


def _stderr(ip, line: str) -> str:
    with capture_output() as cap:
        ip.run_line_magic("deploy", line)
    return cap.stderr.strip()


def test_undefined_model_is_reported_before_a_missing_sample(ip):
    err = _stderr(ip, "nosuchmodel")
    assert err.count("\n") == 0 and "'nosuchmodel' is not defined" in err, err
    assert "--sample is required" not in err
    near = _stderr(ip, "modle")
    assert "Did you mean model?" in near and "--sample" not in near.split("Hint:")[0], near
    # with a defined model the missing sample is what is left, and its hint names the model
    err = _stderr(ip, "model")
    assert "--sample is required" in err and "%deploy model --sample X_test" in err, err
