"""The rest of the command line, each command in a real subprocess against the real BentoML
store and real servers: report, list --json, serve --stable, rollout, stop, delete, prune.
The oracles are scikit-learn (predictions, accuracy), BentoML's own store API (which versions
exist) and the file system (sizes, plots), not nbdeploy's answers about itself."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nbdeploy import serve

pytestmark = pytest.mark.slow

NAME = "cli-roll"


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nbdeploy.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=timeout)


def bentoml_versions(name: str) -> set[str]:
    """What BentoML's own store says exists (not nbdeploy's listing)."""
    import bentoml

    try:
        return {str(b.tag) for b in bentoml.bentos.list(name)}
    except bentoml.exceptions.NotFound:
        return set()


def _dir_size(p: Path) -> int:
    total = 0
    for root, _, files in os.walk(p):
        for f in files:
            fp = Path(root) / f
            if fp.is_file() and not fp.is_symlink():
                total += fp.stat().st_size
    return total


def test_report_is_the_bundle_model_card(ref_deployment, rf_model, breast_cancer):
    from sklearn.metrics import accuracy_score

    from nbdeploy import store

    _, X_test, _, y_test = breast_cancer
    out = cli("report", ref_deployment.tag)
    assert out.returncode == 0, out.stderr
    card = json.loads(out.stdout)
    assert card["tag"] == ref_deployment.tag and card["framework"] == "sklearn"
    assert card["model_type"] == "sklearn.ensemble._forest.RandomForestClassifier"
    assert card["task"] == "classifier"
    assert card["input_schema"]["feature_names"] == list(X_test.columns)
    assert card["input_schema"]["n_features"] == X_test.shape[1]
    assert card["classes"] == [0, 1]
    # the native accuracy it reports is what scikit-learn computes on the same rows
    assert card["verify"]["native_metric"] == pytest.approx(
        accuracy_score(y_test, rf_model.predict(X_test)), abs=1e-12)
    plots = store.bundle_dir(ref_deployment.tag) / "plots"
    assert card["plots"] == sorted(p.name for p in plots.glob("*.png")) if plots.is_dir() else []
    missing = cli("report", "ref-rf:no-such-version")
    assert missing.returncode == 2 and missing.stderr.startswith("error:") and "hint:" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_list_json_matches_the_store_and_the_running_servers(ref_deployment, ref_server):
    out = cli("list", "--json")
    assert out.returncode == 0, out.stderr
    listing = json.loads(out.stdout)
    mine = [b for b in listing["bundles"] if b["tag"] == ref_deployment.tag]
    assert len(mine) == 1
    b = mine[0]
    assert b["tag"] in bentoml_versions("ref-rf")
    assert b["framework"] == "sklearn" and b["task"] == "classifier" and b["variant"] == "fp32"
    import bentoml

    bento_path = Path(bentoml.bentos.get(ref_deployment.tag).path)     # where BentoML keeps it
    assert Path(b["path"]) == bento_path
    assert b["size_bytes"] == _dir_size(bento_path)
    servers = {s["id"]: s for s in listing["servers"]}
    assert ref_server.id in servers
    s = servers[ref_server.id]
    assert s["tag"] == ref_deployment.tag and s["url"] == ref_server.url and s["pid"] == ref_server.pid
    # only this name's versions
    out = cli("list", "ref-rf", "--json")
    assert {b["tag"] for b in json.loads(out.stdout)["bundles"]} == bentoml_versions("ref-rf")
    out = cli("list", "no-such-name", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["bundles"] == []


def test_list_text_is_the_shared_table(ref_deployment, ref_server):
    """`nbdeploy list NAME` prints the rows %deploy list shows (nbdeploy.listing): one line per
    version with its size in the shared format, and this name's servers with their health."""
    from nbdeploy.formatting import size

    versions = {b["tag"]: b for b in json.loads(cli("list", "ref-rf", "--json").stdout)["bundles"]}
    out = cli("list", "ref-rf")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["BUNDLE", "FRAMEWORK", "TASK", "VARIANT", "SIZE", "CREATED"]
    rows = {ln.split()[0]: ln for ln in lines[1:len(versions) + 1]}
    assert set(rows) == set(versions) == bentoml_versions("ref-rf")
    row = rows[ref_deployment.tag]
    assert f" {size(versions[ref_deployment.tag]['size_bytes'])} " in row and "sklearn" in row
    server_lines = [ln for ln in lines if ln.startswith(ref_server.id)]
    assert len(server_lines) == 1
    assert server_lines[0].split()[1:] == [ref_deployment.tag, ref_server.url, str(ref_server.pid), "ready"]
    assert all(ln.split()[1].startswith("ref-rf:") for ln in lines[lines.index(next(
        ln for ln in lines if ln.startswith("SERVER"))) + 1:] if ln.strip())


def _predict(url: str, rows: np.ndarray, post) -> np.ndarray:
    status, body = post(url + "/predict", {"inputs": rows.tolist()})
    assert status == 200, body
    return np.asarray(body["probabilities"])


def test_serve_stable_rollout_prune_stop_delete(ref_copy, rf_model, breast_cancer, post, get):
    from sklearn.ensemble import RandomForestClassifier

    import nbdeploy

    X_train, X_test, y_train, _ = breast_cancer
    rows = X_test.values[:6]

    v1 = ref_copy(NAME)                                   # rf_model's answers
    model2 = RandomForestClassifier(n_estimators=5, max_depth=2, random_state=1).fit(X_train, y_train)
    v2 = nbdeploy.deploy(model2, X_test, name=NAME, explain="none", quantize="none").tag
    assert not np.allclose(rf_model.predict_proba(X_test.iloc[:6]), model2.predict_proba(X_test.iloc[:6]))
    port = serve.free_port()
    try:
        out = cli("serve", v1, "--stable", "--port", str(port))
        assert out.returncode == 0, out.stderr
        url = f"http://127.0.0.1:{port}"
        assert f"serving {v1} at {url}" in out.stdout
        np.testing.assert_allclose(_predict(url, rows, post), rf_model.predict_proba(X_test.iloc[:6]),
                                   atol=1e-5)
        listed = [s for s in json.loads(cli("list", "--json").stdout)["servers"] if s["tag"] == v1]
        assert len(listed) == 1 and listed[0]["port"] == port and listed[0]["backend_port"] not in (None, port)

        out = cli("rollout", NAME, v2)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"{url} now serves {v2}"
        # the same address now answers with model2's probabilities, and says so
        np.testing.assert_allclose(_predict(url, rows, post), model2.predict_proba(X_test.iloc[:6]),
                                   atol=1e-5)
        assert get(url + "/metadata")[1]["tag"] == v2
        assert [s.tag for s in serve.find(NAME)] == [v2]

        out = cli("delete", v2)                                  # served: refused
        assert out.returncode == 2 and "stop it first" in out.stderr and v2 in bentoml_versions(NAME)

        time.sleep(0.01)
        v3 = ref_copy(NAME)
        v4 = ref_copy(NAME)
        assert bentoml_versions(NAME) == {v1, v2, v3, v4}
        out = cli("prune", NAME, "--keep", "1")
        assert out.returncode == 0, out.stderr
        assert set(re.findall(r"deleted (\S+)", out.stdout)) == {v1, v3}
        assert bentoml_versions(NAME) == {v2, v4}           # the newest, and the served one
        out = cli("prune", NAME, "--keep", "0")
        assert out.returncode == 2 and "keep must be at least 1" in out.stderr

        out = cli("stop", NAME)
        assert out.returncode == 0 and f"stopped {v2} at {url}" in out.stdout
        with pytest.raises(OSError):
            import urllib.request

            urllib.request.urlopen(url + "/readyz", timeout=2)
        assert serve.find(NAME) == []
    finally:
        for h in serve.find(NAME):
            h.stop()
    out = cli("delete", v2)
    assert out.returncode == 0 and out.stdout.strip() == f"deleted {v2}"
    assert bentoml_versions(NAME) == {v4}
    out = cli("delete", NAME)                                  # no version: refused, says how
    assert out.returncode == 2 and "Give the version" in out.stderr
    out = cli("delete", v4)
    assert out.returncode == 0 and bentoml_versions(NAME) == set()
    out = cli("report", v4)
    assert out.returncode == 2 and "hint:" in out.stderr
