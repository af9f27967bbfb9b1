"""One number format for every front end (issue 23): the cases the issue names, and the edges."""

from __future__ import annotations

import math

from nbdeploy import formatting as F


def test_rates_sizes_times_percentages():
    # the example: 1412474 rows/s in one table, 1.41e+06 in another -> one spelling
    assert F.rate(1412474) == "1.41 M rows/s"
    assert F.rate(342.4) == "342 rows/s" and F.rate(15_321) == "15.3 k rows/s"
    assert F.rate(2.5e9, "req/s") == "2.5 G req/s"
    assert F.size(900) == "900 B" and F.size(13_220) == "12.9 KiB" and F.size(5 * 2**20) == "5 MiB"
    assert F.duration(10.7e-6) == "10.7 µs" and F.duration(0.0032) == "3.2 ms"
    assert F.duration(1.84) == "1.84 s" and F.duration(125) == "2 min 5 s" and F.duration(3720) == "1 h 2 min"
    assert F.ms(0.00581) == "5.81 µs" and F.ms(25.3) == "25.3 ms"
    assert F.percent(0.965) == "96.5 %" and F.percent(1.0) == "100 %" and F.percent(0.5, 0) == "50 %"


def test_missing_values_read_as_a_dash_never_nan():
    for fn in (F.rate, F.size, F.duration, F.ms, F.percent, F.number):
        assert fn(None) == "—" and fn(math.nan) == "—" and fn(math.inf) == "—"


def test_providers_and_metrics_are_named():
    assert {F.provider(p) for p in ("CPUExecutionProvider", "CPU")} == {"CPU"}
    assert F.provider("native") == F.provider("python") == "Python (native)"
    assert F.provider("CUDAExecutionProvider") == "CUDA"
    assert F.metric_name(None, "classifier") == "accuracy" and F.metric_name("rmse") == "RMSE"
    assert F.metric_name("r2") == "R²"
    assert F.metric("accuracy", 0.965) == "accuracy 96.5 %"
    assert F.metric("rmse", 0.41234, "regressor") == "RMSE 0.4123"


def test_numbers_keep_a_few_digits_and_no_exponent_in_the_usual_range():
    assert F.number(3.14159) == "3.14" and F.number(1412474.2) == "1 412 474"
    assert F.number(0) == "0" and F.number(7) == "7" and F.number(True) == "yes"
    assert "e" in F.number(1.2e-4)          # tiny differences keep their exponent
