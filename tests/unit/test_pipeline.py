"""pipeline.Deployment without a server: option checks, step states and the order of events,
default names, the public skip marker, and the serving policy (benchmark.serving_policy) on
synthetic serving hints.  The deployments here are real (a small LogisticRegression on iris,
quantize="none", explain="none"); nothing is mocked."""

from __future__ import annotations

import numpy as np
import pytest

from nbdeploy import vocab
from nbdeploy.benchmark import (
    CHEAP_ROW_MS,
    BenchEntry,
    BenchPoint,
    BenchReport,
    serving_hints,
    serving_policy,
    serving_reasons,
)
from nbdeploy.errors import InvalidInputError, InvalidNameError, NbdeployError
from nbdeploy.pipeline import STEPS, Deployment, StepEvent, default_name, deploy


@pytest.fixture(scope="module")
def iris():
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    X = X.astype(np.float32)
    return LogisticRegression(max_iter=500).fit(X, y), X[:60], y[:60]


def _quick(model, X, **kw) -> Deployment:
    kw.setdefault("quantize", "none")
    kw.setdefault("explain", "none")
    kw.setdefault("benchmark_budget_s", 1.0)
    return Deployment(model, X, **kw)


# --- options ---------------------------------------------------------------------------------------

def test_steps_are_the_shared_vocabulary(iris):
    d = _quick(*iris[:2])
    assert STEPS is vocab.STEPS
    assert list(d.steps) == list(vocab.STEPS)
    assert all(e.state == "pending" for e in d.steps.values())


@pytest.mark.parametrize("choice", vocab.QUANTIZE_CHOICES)
def test_every_quantize_choice_is_accepted(iris, choice):
    assert _quick(*iris[:2], quantize=choice).quantize == choice


def test_an_unknown_quantize_choice_names_the_choices(iris):
    with pytest.raises(InvalidInputError) as info:
        _quick(*iris[:2], quantize="int4")
    assert info.value.expected == list(vocab.QUANTIZE_CHOICES) and info.value.received == "int4"
    assert "int8-dynamic" in info.value.hint


def test_the_magic_offers_the_same_quantize_choices():
    from nbdeploy.magics import build_parser

    action = next(a for a in build_parser()._actions if "--quantize" in a.option_strings)
    assert tuple(action.choices) == vocab.QUANTIZE_CHOICES


@pytest.mark.parametrize("value, methods", [
    ("shap,lime", ("shap", "lime")),
    (("shap", "lime"), ("shap", "lime")),
    ("tree", ("tree",)),                     # explain() takes it, so the pipeline does too
    (" Permutation , LIME ", ("permutation", "lime")),
    ("shap,tree", ("shap", "tree")),         # "shap" beside an algorithm means that algorithm
    ("shap,shap", ("shap",)),
    ("none", ()), (None, ()), (False, ()), ("", ()), ((), ()),
])
def test_explain_values_are_normalised(iris, value, methods):
    assert _quick(*iris[:2], explain=value).explain_methods == methods


@pytest.mark.parametrize("choice", vocab.EXPLAIN_CHOICES)
def test_every_explain_choice_is_accepted(iris, choice):
    assert _quick(*iris[:2], explain=choice).explain_methods == (choice,)


@pytest.mark.parametrize("value, fragment", [
    ("anchors", "anchors"),
    ("shap,magic", "magic"),
    ("none,shap", "none"),
    ("tree,permutation", "one SHAP algorithm"),
])
def test_bad_explain_values_are_refused_with_a_hint(iris, value, fragment):
    with pytest.raises(InvalidInputError) as info:
        _quick(*iris[:2], explain=value)
    assert fragment in info.value.message and "'shap,lime'" in info.value.hint


def test_explain_accepts_what_the_pipeline_accepts(iris):
    """One validation for both: the explain step reads the methods the pipeline kept."""
    from nbdeploy.convert import convert
    from nbdeploy.explain import explain

    model, X, _ = iris
    c = convert(model, X)
    for methods in (("anchors",), ("tree", "permutation")):
        with pytest.raises(InvalidInputError):
            vocab.parse_explain(methods)
        with pytest.raises(InvalidInputError):
            explain(c, methods=methods)


@pytest.mark.parametrize("name", ["Not A Name", "../up", "x" * 64, "-lead"])
def test_bad_names_are_refused(iris, name):
    with pytest.raises(InvalidNameError):
        _quick(*iris[:2], name=name)


def test_a_bad_device_is_refused(iris):
    with pytest.raises(InvalidInputError) as info:
        _quick(*iris[:2], device="tpu")
    assert info.value.expected == ["cpu", "cuda"]


def test_unknown_serving_overrides_are_refused_when_the_config_is_made(iris):
    d = _quick(*iris[:2], serving={"threads": 3, "colour": "red"})
    with pytest.raises(InvalidInputError) as info:
        d.serve_config()
    assert info.value.received == ["colour"] and "threads" in info.value.expected


def test_serving_overrides_win_over_the_policy(iris):
    d = _quick(*iris[:2], serving={"threads": 3, "batching": {"max_batch_size": 8,
                                                              "max_latency_ms": 4}})
    config = d.serve_config()            # nothing measured yet: the policy's defaults, overridden
    assert config.threads == 3 and config.batching == {"max_batch_size": 8, "max_latency_ms": 4}
    assert d.serving_reasons(config)["batching"] == "requested"   # asked for, not measured


# --- names -----------------------------------------------------------------------------------------

def test_default_name(iris, tmp_path):
    from nbdeploy.schema import validate_name

    assert default_name(iris[0]) == "logisticregression"
    assert default_name(tmp_path / "My Churn Model.onnx") == "my-churn-model"
    assert default_name("models/__v2__.onnx") == "v2"
    assert default_name("###.onnx") == "model"
    long = default_name("a" * 100 + ".onnx")
    assert len(long) == 63
    for n in (long, default_name("My Churn Model.onnx"), default_name(iris[0])):
        assert validate_name(n) == n
    assert _quick(*iris[:2]).name == "logisticregression"


# --- steps and events ------------------------------------------------------------------------------

def test_run_without_bundle_emits_events_in_step_order(iris):
    model, X, y = iris
    events: list[StepEvent] = []
    d = _quick(model, X, labels=y, progress=events.append)
    assert d.run(build=False) is d
    finished = [(e.step, e.state) for e in events if e.state != "running"]
    assert finished == [("detect", "done"), ("convert", "done"), ("verify", "done"),
                        ("benchmark", "done"), ("quantize", "done"), ("explain", "skipped"),
                        ("bundle", "skipped")]
    # each step that runs says so first, and its progress stays within 0..1
    for step in ("detect", "convert", "verify", "benchmark"):
        mine = [e for e in events if e.step == step]
        assert mine[0].state == "running" and mine[-1].state == "done"
        assert all(0.0 <= e.fraction <= 1.0 for e in mine if e.fraction is not None)
    assert d.steps["explain"].summary == "explain='none'"
    assert d.steps["bundle"].summary == "build=False"
    assert d.steps["serve"].state == d.steps["push"].state == "pending"
    assert d.chosen_variant == "fp32" and d.tag is None
    # the in-process prediction is the native model's
    np.testing.assert_array_equal(d.predict(X[:10])["predictions"], model.predict(X[:10]))


def test_a_broken_listener_does_not_break_the_deployment(iris):
    seen = []

    def broken(ev):
        raise RuntimeError("a view crashed")

    d = _quick(*iris[:2], progress=[broken, seen.append])
    d.run(build=False)
    assert d.steps["verify"].state == "done" and seen[-1].step == "bundle"


def test_a_failing_step_is_marked_failed_and_later_steps_stay_pending(iris):
    model, X, _ = iris
    events = []
    d = _quick(model, X[:, :2], progress=events.append)     # the model was fit on 4 features
    with pytest.raises(NbdeployError) as info:
        d.run()
    failed = [s for s, e in d.steps.items() if e.state == "failed"]
    assert len(failed) == 1 and d.error is info.value
    at = STEPS.index(failed[0])
    assert all(d.steps[s].state == "done" for s in STEPS[:at])
    assert all(d.steps[s].state == "pending" for s in STEPS[at + 1:])
    assert events[-1].state == "failed" and events[-1].summary == info.value.message
    assert d.to_dict(include_bundle=False)["error"]["message"] == info.value.message


def test_mark_skipped_is_public_and_checked(iris):
    events = []
    d = _quick(*iris[:2], progress=events.append)
    d.mark_skipped("push", "no registry here")
    assert d.steps["push"].state == "skipped" and d.steps["push"].summary == "no registry here"
    assert events[-1].to_dict() == {"step": "push", "state": "skipped", "elapsed_s": 0.0,
                                    "summary": "no registry here", "fraction": None}
    with pytest.raises(InvalidInputError):
        d.mark_skipped("deploy", "no such step")


def test_shown_in_cell_is_a_public_attribute(iris):
    d = _quick(*iris[:2])
    assert d.shown_in_cell is None
    d.shown_in_cell = 7
    assert d.shown_in_cell == 7


def test_deploy_builds_and_marks_serve_and_push_not_requested(iris):
    model, X, y = iris
    events = []
    d = deploy(model, X, labels=y, name="unit-pipeline", quantize="none", explain="none",
               benchmark_budget_s=1.0, progress=events.append)
    assert d.tag.startswith("unit-pipeline:") and d.steps["bundle"].state == "done"
    assert [(e.step, e.state, e.summary) for e in events[-2:]] == [
        ("serve", "skipped", "not requested"), ("push", "skipped", "not requested")]
    card = d.to_dict()
    assert [s["step"] for s in card["steps"]] == list(STEPS)
    assert card["tag"] == d.tag and card["server"] is None


# --- the serving policy ----------------------------------------------------------------------------

def _hints(*, enabled: bool, row_ms: float | None, threads: int = 4) -> dict:
    h = {"variant": "fp32", "provider": "CPUExecutionProvider", "threads": threads,
         "threads_reason": f"{threads} threads measured faster",
         "batching": {"enabled": enabled, "max_batch_size": 64 if enabled else 1,
                      "max_latency_ms": 12 if enabled else None,
                      "reason": "batch 64 is 5x cheaper per row" if enabled else "flat curve"}}
    if row_ms is not None:
        h["row_p50_ms"] = row_ms
    return h


def test_policy_without_a_benchmark():
    config, reasons = serving_policy({})
    assert config.threads == 1 and config.batching is None and config.device == "cpu"
    assert reasons["batching"] == "no benchmark: rows are served as they come"
    assert reasons["threads"] == "default" and "one worker per replica" in reasons["workers"]
    assert reasons["access_log"].startswith("off")


def test_policy_batches_when_it_pays_and_rows_are_not_cheap():
    config, reasons = serving_policy(_hints(enabled=True, row_ms=1.5), device="cuda",
                                     allow_cpu_fallback=True)
    assert config.batching == {"max_batch_size": 64, "max_latency_ms": 12.0}
    assert config.threads == 4 and config.device == "cuda" and config.allow_cpu_fallback
    assert reasons["batching"] == "batch 64 is 5x cheaper per row"
    assert reasons["threads"] == "4 threads measured faster"


def test_policy_serves_cheap_rows_one_at_a_time_on_one_thread():
    config, reasons = serving_policy(_hints(enabled=True, row_ms=CHEAP_ROW_MS / 4))
    assert config.batching is None and config.threads == 1
    assert "under 0.2 ms" in reasons["batching"] and "HTTP" in reasons["threads"]


def test_policy_follows_the_hints_when_batching_does_not_pay():
    config, reasons = serving_policy(_hints(enabled=False, row_ms=0.01, threads=2))
    assert config.batching is None and config.threads == 2      # cheap rows only matter for batching
    assert reasons == serving_reasons(_hints(enabled=False, row_ms=0.01, threads=2), config)
    assert reasons["batching"] == "flat curve" and reasons["threads"] == "2 threads measured faster"


def test_policy_applies_and_checks_overrides():
    config, reasons = serving_policy(_hints(enabled=True, row_ms=0.05),
                                     overrides={"batching": {"max_batch_size": 16, "max_latency_ms": 5},
                                                "access_log": True})
    assert config.batching == {"max_batch_size": 16, "max_latency_ms": 5} and config.access_log
    assert reasons["batching"] == "batch 64 is 5x cheaper per row" and reasons["access_log"] == "on"
    with pytest.raises(InvalidInputError, match="colour"):
        serving_policy({}, overrides={"colour": 1})


def _report(per_row_us: dict[int, float]) -> BenchReport:
    pts = [BenchPoint(b, 10, us * b / 1e3, us * b / 1e3 * 1.1, us * b / 1e3 * 1.2, us * b / 1e3,
                      1e6 / us, us) for b, us in per_row_us.items()]
    return BenchReport(entries=[BenchEntry("fp32", "CPUExecutionProvider", points=pts)],
                       batch_sizes=list(per_row_us), sample_rows=100, providers_available=[],
                       providers_skipped={}, threads={}, budget_s=1)


@pytest.mark.parametrize("row_us, batched", [(100.0, False), (1000.0, True)])
def test_policy_on_measured_hints(row_us, batched):
    """From a latency curve on which batching pays: a 0.1 ms row is still served unbatched, a
    1 ms row is batched."""
    hints = serving_hints(_report({1: row_us, 16: row_us / 10, 64: row_us / 30}), "fp32")
    assert hints["batching"]["enabled"] and hints["row_p50_ms"] == pytest.approx(row_us / 1e3)
    config, _ = serving_policy(hints)
    assert (config.batching is not None) is batched


def test_explain_tree_runs_through_the_pipeline(iris):
    """'tree' used to be refused by the pipeline although explain() takes it: now it reaches the
    explain step, which uses TreeSHAP, and its attributions add up to the model's output."""
    from sklearn.ensemble import RandomForestClassifier

    _, X, y = iris
    forest = RandomForestClassifier(n_estimators=10, max_depth=3, random_state=0).fit(X, y)
    d = _quick(forest, X, labels=y, explain="tree")
    d.run(build=False)
    assert d.steps["explain"].state == "done", d.steps["explain"].summary
    card = d.explanation.to_dict()
    assert card["explainer"] == "tree" and card["rows"]
    proba = forest.predict_proba(X)                       # the native model is the oracle
    for r in card["rows"][:20]:
        k = card["output_names"].index(r["explained_output"])
        assert r["base_value"] + sum(r["contributions"]) == pytest.approx(proba[r["row"], k], abs=1e-5)
