"""The suite's own CI rule (tests/conftest.py): under CI every skip is a failure, except tests
marked ``gpu``; ``CI=false`` is not CI.  Run on a throwaway test file in a real pytest process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

SAMPLE = '''
import pytest

def test_plain_skip():
    pytest.skip("tool missing")

@pytest.mark.gpu
def test_gpu_skip():
    pytest.skip("no GPU here")

@pytest.mark.skipif(True, reason="marker skip")
def test_marker_skip():
    pass

@pytest.mark.xfail(strict=True, reason="known product bug")
def test_known_bug():
    assert False

def test_passes():
    pass
'''

MODULE_SKIP = '''
import pytest
pytest.importorskip("no_such_module_nbdeploy_ci_rule")

def test_hidden():
    pass
'''


def _run(tmp_path: Path, ci: str | None, source: str) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text((HERE.parent / "conftest.py").read_text())
    (tmp_path / "containers").mkdir(exist_ok=True)      # the plugin the suite's conftest registers
    (tmp_path / "containers" / "fixtures.py").write_text(
        (HERE.parent / "containers" / "fixtures.py").read_text())
    (tmp_path / "test_sample.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"     # only the rule under test, and fast
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                           "-p", "no:randomly", "test_sample.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def _outcomes(out: str) -> dict[str, str]:
    res = {}
    for line in out.splitlines():
        for word in ("PASSED", "FAILED", "XFAIL", "ERROR"):
            if line.startswith(word + " test_sample.py::"):
                res[line.split("::")[1].split(" ")[0]] = word
    return res


@pytest.mark.parametrize("ci", ["true", "1", "YES"])
def test_under_ci_a_skip_fails_except_gpu(tmp_path, ci):
    r = _run(tmp_path, ci, SAMPLE)
    got = _outcomes(r.stdout)
    assert got.get("test_plain_skip") == "FAILED", r.stdout
    assert got.get("test_marker_skip") in ("FAILED", "ERROR"), r.stdout   # skipped in setup
    assert "SKIPPED [1] test_sample.py" in r.stdout and "no GPU here" in r.stdout
    assert "1 skipped" in r.stdout and "marker skip" in r.stdout
    assert got.get("test_known_bug") == "XFAIL", r.stdout
    assert got.get("test_passes") == "PASSED", r.stdout
    assert "skipped under CI" in r.stdout and "tool missing" in r.stdout
    assert r.returncode == 1


@pytest.mark.parametrize("ci", [None, "false", "0", ""])
def test_outside_ci_a_skip_stays_a_skip(tmp_path, ci):
    r = _run(tmp_path, ci, SAMPLE)
    assert "3 skipped" in r.stdout and "1 passed" in r.stdout and "1 xfailed" in r.stdout, r.stdout
    assert "skipped under CI" not in r.stdout
    assert r.returncode == 0, r.stdout


def test_a_module_level_skip_fails_under_ci(tmp_path):
    r = _run(tmp_path, "true", MODULE_SKIP)
    assert r.returncode != 0 and "skipped under CI" in r.stdout, r.stdout
    r = _run(tmp_path, "false", MODULE_SKIP)
    assert r.returncode in (0, 5) and "1 skipped" in r.stdout, r.stdout   # 5: nothing ran
