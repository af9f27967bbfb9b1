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


# --- listing: the one table behind `nbdeploy list` and `%deploy list/status` ----------------------

def _bundles(n: int = 2):
    from nbdeploy.store import BundleSummary

    return [BundleSummary(name="churn", version=f"2026120{i}-101500-abcdef", tag=f"churn:2026120{i}-101500-abcdef",
                          created=f"2026-12-0{i}T10:15:00.123456+00:00", path=f"/store/churn/{i}",
                          size_bytes=866_000 * i, variant="int8-dynamic" if i % 2 else None,
                          framework="sklearn", task="classifier") for i in range(1, n + 1)]


def _servers():
    from nbdeploy.serve import ServerHandle

    return [ServerHandle(id="churn-3000-ab12", tag="churn:20261201-101500-abcdef", host="127.0.0.1",
                         port=3000, pid=4242, log_path="/tmp/log", started=0.0)]


def test_listing_rows_use_the_shared_number_format():
    from nbdeploy.listing import bundle_table, server_table

    t = bundle_table(_bundles())
    assert t.columns == ("BUNDLE", "FRAMEWORK", "TASK", "VARIANT", "SIZE", "CREATED")
    assert t.rows[0] == ("churn:20261201-101500-abcdef", "sklearn", "classifier", "int8-dynamic",
                         F.size(866_000), "2026-12-01 10:15:00")
    assert t.rows[1][3] == "-"                      # no variant recorded
    s = server_table(_servers(), health=False)
    assert s.rows == [("churn-3000-ab12", "churn:20261201-101500-abcdef", "http://127.0.0.1:3000", "4242")]


def test_listing_text_is_aligned_and_says_when_empty():
    from nbdeploy.listing import Table, bundle_table, render_text

    t = bundle_table(_bundles())
    lines = t.text().splitlines()
    assert lines[0].split() == ["BUNDLE", "FRAMEWORK", "TASK", "VARIANT", "SIZE", "CREATED"]
    # SIZE is right-aligned: every line ends its size where the header ends "SIZE"
    sizes = ["SIZE"] + [r[4] for r in t.rows]
    assert len({ln.index(f" {v}  ") + len(v) + 1 for ln, v in zip(lines, sizes)}) == 1
    assert {r[4] for r in t.rows} == {"846 KiB", "1.65 MiB"}
    assert Table("Servers", ("SERVER",), empty="No servers running.").text() == "No servers running."
    out = render_text([bundle_table([], empty="nothing yet"), Table("x", ("A",), [("1",)], note="… more")])
    assert out == "nothing yet\n\nA\n1\n… more"


def test_listing_html_escapes_links_urls_and_lets_tags_break():
    from nbdeploy.listing import Table, mimebundle, server_table

    bundle = mimebundle([server_table(_servers(), health=False),
                         Table("Odd <names>", ("BUNDLE",), [("<b>x</b>:1",)])])
    html, text = bundle["text/html"], bundle["text/plain"]
    assert "<table" in html and "<a href='http://127.0.0.1:3000'" in html
    assert "churn:<wbr>20261201-101500-abcdef" in html      # breaks after "name:" when narrow
    assert "<b>x" not in html and "&lt;b&gt;x&lt;/b&gt;:<wbr>1" in html and "Odd &lt;names&gt;" in html
    assert "http://127.0.0.1:3000" in text and text.endswith("<b>x</b>:1")   # plain text, as is
