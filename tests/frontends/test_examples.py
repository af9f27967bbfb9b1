"""Every examples/*.ipynb, executed end to end on a real python3 kernel with nbclient.

The notebooks assert on their own served answers (served == native model, served explanation ==
notebook explanation), so an assertion failing in a cell fails the test.  The kernel inherits
this process's environment, hence conftest's temporary BENTOML_HOME / NBDEPLOY_HOME.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.ipynb"))


def test_there_are_examples_and_they_are_committed_without_outputs():
    import nbformat

    assert len(EXAMPLES) >= 3, EXAMPLES
    for path in EXAMPLES:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, (path.name, cell.source)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_end_to_end(path, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    # the kernel (a child process) imports this checkout's nbdeploy and inherits the test env
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    client = NotebookClient(nb, timeout=240, kernel_name="python3", cwd=str(tmp_path),
                            resources={"metadata": {"path": str(tmp_path)}})
    t0 = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as exc:
        pytest.fail(f"{path.name} failed:\n{exc}")
    finally:
        _stop_leftover_servers()
    took = time.perf_counter() - t0
    print(f"{path.name}: {took:.1f} s", file=sys.stderr)

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, errors
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "Traceback" not in text
    # %deploy rendered its live widget (a real widget view, not a text fallback)
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)


def _stop_leftover_servers():
    """A failed notebook may leave its server running: stop it so later tests start clean."""
    from nbdeploy.serve import list_servers

    for h in list_servers():
        h.stop()
