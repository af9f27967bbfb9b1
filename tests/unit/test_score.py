"""nbdeploy.score (issue 17): DataFrames, arrays and files scored with real bundles.

The oracle is always the native model (``predict`` / ``predict_proba``) and, for SHAP columns,
shap's own TreeExplainer on the native forest, never nbdeploy's numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import customers

import nbdeploy
from nbdeploy.errors import InvalidInputError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rf_bundle(rf_model, breast_cancer):
    """The breast-cancer forest deployed with nbdeploy's defaults (quantize auto, SHAP + LIME)."""
    _, X_test, _, y_test = breast_cancer
    return nbdeploy.deploy(rf_model, X_test, labels=y_test, name="score-rf")


def _native_proba(model, X):
    return model.predict_proba(X)


def _check_against_native(out, model, X):
    assert list(out.columns[:3]) == ["prediction", "proba_0", "proba_1"]
    assert len(out) == len(X)
    P = _native_proba(model, X)
    np.testing.assert_allclose(out[["proba_0", "proba_1"]].to_numpy(), P, atol=1e-5)
    # labels agree except on exact ties (0.5/0.5 from 20 trees): there float32 sums in
    # onnxruntime, whose order depends on the batch size, may tip either way
    decided = np.abs(P[:, 1] - P[:, 0]) > 1e-6
    assert decided.mean() > 0.9
    np.testing.assert_array_equal(out["prediction"].to_numpy()[decided], model.predict(X)[decided])


def test_dataframe_defaults_with_shap_against_native(rf_bundle, rf_model, breast_cancer):
    import shap

    X_train, _, _, _ = breast_cancer
    X = X_train.iloc[:150]
    out = nbdeploy.score(rf_bundle.tag, X, explain=True)
    _check_against_native(out, rf_model, X)
    assert list(out.index) == list(X.index)                 # the input's own index
    names = list(X.columns)
    shap_cols = [f"shap_{n}" for n in names]
    assert shap_cols == [c for c in out.columns if c.startswith("shap_") and
                         c not in ("shap_base", "shap_output")]
    phi = out[shap_cols].to_numpy()
    # additivity: base + sum(phi) = the explained output (P(class 1) for a binary classifier)
    assert set(out["shap_output"]) == {"1"}
    np.testing.assert_allclose(out["shap_base"].to_numpy() + phi.sum(axis=1),
                               _native_proba(rf_model, X)[:, 1], atol=1e-5)
    # shap run independently on the native forest
    sv = shap.TreeExplainer(rf_model).shap_values(X.to_numpy(dtype=np.float32))
    sv1 = sv[:, :, 1] if np.ndim(sv) == 3 else sv[1]
    np.testing.assert_allclose(phi, sv1, atol=1e-5)


def test_deployment_and_array_inputs(rf_bundle, rf_model, breast_cancer):
    _, X_test, _, _ = breast_cancer
    out = nbdeploy.score(rf_bundle, X_test.to_numpy(), batch_size=50, progress=False, threads=1)
    _check_against_native(out, rf_model, X_test)
    assert list(out.index) == list(range(len(X_test)))


def test_parquet_folder_and_csv_files_streamed(rf_bundle, rf_model, breast_cancer, tmp_path):
    import pandas as pd

    X_train, _, _, _ = breast_cancer
    X = X_train.reset_index(drop=True)
    X.insert(0, "customer_id", [f"c{i}" for i in range(len(X))])   # extra column, ignored
    pq = tmp_path / "x.parquet"
    X.to_parquet(pq)
    out = nbdeploy.score(rf_bundle.tag, pq, batch_size=64, progress=False)   # 7 chunks
    _check_against_native(out, rf_model, X_train)
    assert list(out.index) == list(range(len(X)))

    folder = tmp_path / "parts"
    folder.mkdir()
    X.iloc[:100].to_parquet(folder / "part-0.parquet")
    X.iloc[100:].to_parquet(folder / "part-1.parquet")
    res = nbdeploy.score(rf_bundle.tag, folder, output=tmp_path / "scored.parquet",
                         keep_columns=["customer_id"], progress=False)
    assert res.rows == len(X) and res.rejected == 0
    got = pd.read_parquet(tmp_path / "scored.parquet")
    assert list(got["customer_id"]) == list(X["customer_id"])
    _check_against_native(got.drop(columns=["customer_id"]), rf_model, X_train)

    csv = tmp_path / "x.csv"
    X.to_csv(csv, index=False)
    res = nbdeploy.score(rf_bundle.tag, csv, output=tmp_path / "scored.csv", batch_size=100,
                         progress=False)
    assert res.rows == len(X)
    got = pd.read_csv(tmp_path / "scored.csv")
    # CSV holds the decimal text pandas wrote; the native model reads the same text back
    Xcsv = pd.read_csv(csv).drop(columns=["customer_id"])
    _check_against_native(got, rf_model, Xcsv)


def test_json_lines(rf_bundle, rf_model, breast_cancer, tmp_path):
    X_train, _, _, _ = breast_cancer
    X = X_train.iloc[:40]
    path = tmp_path / "x.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in X.to_dict("records")))
    out = nbdeploy.score(rf_bundle.tag, path, batch_size=16, progress=False)
    _check_against_native(out, rf_model, X)


def test_json_lines_keep_json_types_as_predict_does(rf_bundle, breast_cancer, tmp_path):
    X_train, _, _, _ = breast_cancer
    recs = X_train.iloc[:30].to_dict("records")
    recs[21]["mean area"] = "1001.0"              # a number in quotes: POST /predict refuses it
    path = tmp_path / "x.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    with pytest.raises(InvalidInputError, match=r"'1001.0' \(str\) at row 21") as ei:
        nbdeploy.score(rf_bundle.tag, path, batch_size=8, progress=False)
    assert ei.value.row == 21 and ei.value.column == "mean area"
    path.write_text(json.dumps(recs[0]) + "\n[1, 2, 3]\n")
    with pytest.raises(InvalidInputError, match=r"Row 1 \(x.jsonl line 2\) is not a JSON object"):
        nbdeploy.score(rf_bundle.tag, path, progress=False)


def test_bad_row_stops_with_its_row_number_and_writes_nothing(rf_bundle, breast_cancer, tmp_path):
    import pandas as pd

    X_train, _, _, _ = breast_cancer
    X = X_train.reset_index(drop=True)
    X["mean area"] = X["mean area"].astype(object)
    X.loc[230, "mean area"] = "1,250.5"          # text where a number belongs
    csv = tmp_path / "bad.csv"
    X.to_csv(csv, index=False)
    out = tmp_path / "scored.parquet"
    with pytest.raises(InvalidInputError) as ei:
        nbdeploy.score(rf_bundle.tag, csv, output=out, batch_size=100, progress=False)
    err = ei.value
    assert err.row == 230 and err.column == "mean area"          # row 30 of the third chunk
    assert "row 230" in err.message.lower() and "'1,250.5'" in err.message, err.message
    assert err.hint
    assert not out.exists() and not list(tmp_path.glob("*.partial"))
    # the same rule and wording as POST /predict for that row
    with pytest.raises(InvalidInputError, match=r"'1,250.5'.*row 230"):
        nbdeploy.score(rf_bundle.tag, X, progress=False)        # floats and one string
    # a DataFrame column of numbers as text is text: refused from its first cell, as in /predict
    with pytest.raises(InvalidInputError, match=r"row 0\b.*'mean area'"):
        nbdeploy.score(rf_bundle.tag, pd.read_csv(csv, dtype={"mean area": str}), progress=False)


def test_bad_rows_to_a_rejects_file(rf_bundle, rf_model, breast_cancer, tmp_path):
    import pandas as pd

    X_train, _, _, _ = breast_cancer
    X = X_train.reset_index(drop=True).iloc[:300]
    pq = tmp_path / "x.parquet"
    Xb = X.copy()
    Xb.loc[7, "mean radius"] = np.nan          # this model takes no missing values
    Xb.loc[250, "worst area"] = np.inf
    Xb.to_parquet(pq)
    res = nbdeploy.score(rf_bundle.tag, pq, output=tmp_path / "s.parquet", batch_size=128,
                         rejects=tmp_path / "rejects.jsonl", progress=False)
    assert (res.rows, res.rejected) == (298, 2)
    rejects = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [r["row"] for r in rejects] == [7, 250]
    assert [r["column"] for r in rejects] == ["mean radius", "worst area"]
    assert all(r["message"] and r["hint"] for r in rejects)
    assert rejects[0]["values"]["mean radius"] is None
    got = pd.read_parquet(tmp_path / "s.parquet")
    good = [i for i in range(300) if i not in (7, 250)]
    assert list(got["row"]) == good
    _check_against_native(got.drop(columns=["row"]), rf_model, X.iloc[good])


def test_progress_callback_and_errors_for_bad_arguments(rf_bundle, breast_cancer, tmp_path):
    X_train, _, _, _ = breast_cancer
    events = []
    nbdeploy.score(rf_bundle.tag, X_train, batch_size=100, progress=events.append)
    assert [e.step for e in events] == ["score"] * len(events)
    running = [e for e in events if e.state == "running"]
    assert len(running) == -(-len(X_train) // 100)
    assert running[-1].fraction == 1.0 and events[-1].state == "done"
    with pytest.raises(InvalidInputError, match="lacks 1 of the model's 30 columns"):
        nbdeploy.score(rf_bundle.tag, X_train.drop(columns=["mean radius"]), progress=False)
    with pytest.raises(InvalidInputError, match="batch_size"):
        nbdeploy.score(rf_bundle.tag, X_train, batch_size=0)
    with pytest.raises(InvalidInputError, match="threads"):
        nbdeploy.score(rf_bundle.tag, X_train, threads=0)
    with pytest.raises(InvalidInputError, match="suffix"):
        nbdeploy.score(rf_bundle.tag, X_train, output=tmp_path / "x.xlsx")
    (tmp_path / "exists.csv").write_text("keep me")
    with pytest.raises(InvalidInputError, match="already exists"):
        nbdeploy.score(rf_bundle.tag, X_train, output=tmp_path / "exists.csv")
    assert (tmp_path / "exists.csv").read_text() == "keep me"
    with pytest.raises(nbdeploy.NbdeployError, match="No bundle"):
        nbdeploy.score("no-such-bundle", X_train)


def test_exported_archive(rf_bundle, rf_model, breast_cancer, tmp_path):
    _, X_test, _, _ = breast_cancer
    archive = rf_bundle.export(str(tmp_path / "rf.bento"))
    out = nbdeploy.score(str(archive), X_test, progress=False)   # already in the store: same tag
    _check_against_native(out, rf_model, X_test)
    assert out.attrs["nbdeploy"]["tag"] == rf_bundle.tag


# --- a table model: strings and missing values (issue 16 contract) ---------------------------------

@pytest.fixture(scope="module")
def table_model(customer_table):
    return customer_table


def test_table_bundle_csv_with_strings_and_missing_values(table_model, tmp_path):
    import pandas as pd

    model, d = table_model
    X, _ = customers(500, 3)
    csv = tmp_path / "customers.csv"
    X.to_csv(csv, index=False)
    res = nbdeploy.score(d.tag, csv, output=tmp_path / "s.parquet", batch_size=128, progress=False)
    assert res.rows == 500
    got = pd.read_parquet(tmp_path / "s.parquet")
    Xcsv = pd.read_csv(csv)
    np.testing.assert_array_equal(got["prediction"].to_numpy(), model.predict(Xcsv))
    np.testing.assert_allclose(got[["proba_churn", "proba_stay"]].to_numpy(),
                               model.predict_proba(Xcsv), atol=1e-5)
    # a number where the model expects a category is refused, as POST /predict refuses it
    bad = X.astype({"city": object})
    bad.loc[321, "city"] = 7
    with pytest.raises(InvalidInputError, match=r"Column 'city'.*row 321") as ei:
        nbdeploy.score(d.tag, bad, batch_size=100, progress=False)
    assert ei.value.row == 321 and ei.value.column == "city"


# --- front ends ---------------------------------------------------------------------------------

def test_cli_score_file_and_bad_row(rf_bundle, rf_model, breast_cancer, tmp_path, capsys):
    import pandas as pd

    from nbdeploy.cli import main

    X_train, _, _, _ = breast_cancer
    X = X_train.reset_index(drop=True)
    X.to_parquet(tmp_path / "in.parquet")
    rc = main(["score", rf_bundle.tag, str(tmp_path / "in.parquet"), str(tmp_path / "out.csv"),
               "--batch-size", "100", "--explain"])
    assert rc == 0, capsys.readouterr().err
    assert f"scored {len(X)} rows" in capsys.readouterr().out
    got = pd.read_csv(tmp_path / "out.csv")
    _check_against_native(got, rf_model, X)
    phi = got[[f"shap_{c}" for c in X.columns]].to_numpy()
    np.testing.assert_allclose(got["shap_base"] + phi.sum(axis=1), rf_model.predict_proba(X)[:, 1],
                               atol=1e-5)
    X.loc[123, "worst radius"] = np.nan
    X.to_parquet(tmp_path / "bad.parquet")
    rc = main(["score", rf_bundle.tag, str(tmp_path / "bad.parquet"), str(tmp_path / "o2.parquet")])
    err = capsys.readouterr().err
    assert rc == 2 and "Row 123" in err and "worst radius" in err and "hint:" in err
    assert not (tmp_path / "o2.parquet").exists()


def test_magic_score(rf_bundle, rf_model, breast_cancer, capsys):
    from IPython.testing import globalipapp

    globalipapp.start_ipython()          # once per process; later calls return None
    shell = globalipapp.get_ipython()
    shell.run_line_magic("load_ext", "nbdeploy")
    _, X_test, _, _ = breast_cancer
    shell.user_ns["X_new"] = X_test
    out = shell.run_line_magic("deploy", f"score {rf_bundle.tag} X_new[:60]")
    _check_against_native(out, rf_model, X_test[:60])
    assert shell.run_line_magic("deploy", f"score {rf_bundle.tag} X_nwe") is None
    assert "did you mean x_new" in capsys.readouterr().err.lower()


def test_score_stays_the_function_after_the_modules_load():
    """``import nbdeploy.spark`` (which imports the scoring module) must not replace
    ``nbdeploy.score`` with a module, and none of it imports pandas, pyarrow or pyspark."""
    import subprocess
    import sys

    code = ("import nbdeploy.spark, nbdeploy.scoring, nbdeploy, sys; "
            "assert nbdeploy.score.__module__ == 'nbdeploy.scoring', nbdeploy.score; "
            "heavy = [m for m in ('pandas', 'pyarrow', 'pyspark', 'bentoml') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- progress as a user sees it -----------------------------------------------------------------

def test_progress_default_on_a_terminal_is_a_bar(rf_bundle, breast_cancer, tmp_path):
    """``progress=True`` (the default) draws a bar on stderr when stderr is a terminal."""
    import os
    import pty
    import subprocess
    import sys

    X_train, _, _, _ = breast_cancer
    X_train.to_parquet(tmp_path / "x.parquet")
    code = (f"import nbdeploy; r = nbdeploy.score({rf_bundle.tag!r}, {str(tmp_path / 'x.parquet')!r}, "
            f"output={str(tmp_path / 'o.parquet')!r}, batch_size=50); print('RESULT', r.rows)")
    import threading

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=slave,
                            env=os.environ)
    os.close(slave)
    chunks: list[bytes] = []

    def drain():        # read while it runs: a pty's buffer is small
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    out, _ = proc.communicate(timeout=300)
    reader.join(timeout=10)
    os.close(master)
    tty = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, tty[-2000:]
    assert f"RESULT {len(X_train)}" in out.decode()
    assert "nbdeploy score" in tty and f"{len(X_train)}/{len(X_train)}" in tty.replace(",", ""), tty[-500:]


@pytest.mark.timeout(300)
def test_progress_default_in_a_notebook_is_nbdeploys_step_row(rf_bundle, rf_model, breast_cancer,
                                                               tmp_path, monkeypatch):
    """In a Jupyter kernel the default progress is nbdeploy's widget step row."""
    import os
    from pathlib import Path

    import nbformat
    from nbclient import NotebookClient

    _, X_test, _, _ = breast_cancer
    X_test.to_parquet(tmp_path / "x.parquet")
    root = Path(__file__).resolve().parents[2]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(root), os.environ.get("PYTHONPATH")) if p))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import nbdeploy\n"
        f"out = nbdeploy.score({rf_bundle.tag!r}, {str(tmp_path / 'x.parquet')!r})\n"
        "print('PRED', ''.join(str(int(v)) for v in out['prediction']))")])
    NotebookClient(nb, timeout=240, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = nb.cells[0].outputs
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    pred = np.array([int(c) for c in text.split("PRED ")[1].split()[0]])
    P = rf_model.predict_proba(X_test)
    d = np.abs(P[:, 1] - P[:, 0]) > 1e-6
    np.testing.assert_array_equal(pred[d], rf_model.predict(X_test)[d])


def test_regressor_array_and_csv(regression_data, tmp_path):
    import pandas as pd
    from sklearn.ensemble import GradientBoostingRegressor

    X, y = regression_data
    model = GradientBoostingRegressor(n_estimators=50, random_state=0).fit(X, y)
    d = nbdeploy.deploy(model, X[:100], name="score-reg", explain="none", quantize="none")
    out = nbdeploy.score(d.tag, X, progress=False)
    assert list(out.columns) == ["prediction"]
    np.testing.assert_allclose(out["prediction"].to_numpy(), model.predict(X), rtol=1e-5, atol=1e-3)
    pd.DataFrame(X).to_csv(tmp_path / "x.csv", index=False)        # header "0".."7": by position
    res = nbdeploy.score(d.tag, tmp_path / "x.csv", output=tmp_path / "o.csv", progress=False)
    assert res.rows == len(X)
    np.testing.assert_allclose(pd.read_csv(tmp_path / "o.csv")["prediction"].to_numpy(),
                               model.predict(pd.read_csv(tmp_path / "x.csv").to_numpy()),
                               rtol=1e-5, atol=1e-3)
