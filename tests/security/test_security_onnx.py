"""Untrusted ONNX files: external data cannot reach outside the model folder (CVE-2024-27318
class), and a corrupted, truncated or loader-crashing file is an InvalidInputError, never the
death of the calling process (the notebook kernel or the Jupyter server)."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import nbdeploy
from nbdeploy.adapters import onnx_file
from nbdeploy.errors import InvalidInputError

SECRET = np.array([[7.0], [7.0], [7.0]], dtype=np.float32)


def _model(weights: np.ndarray):
    """y = x @ W with W an initializer: the smallest model that has a tensor to externalise."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(weights.astype(np.float32), name="W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])], initializer=[w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _with_external_location(model, location: str):
    """A copy of ``model`` whose W lives in external data at ``location`` (no raw data inline)."""
    from onnx.external_data_helper import set_external_data

    m = type(model)()
    m.CopyFrom(model)
    tensor = m.graph.initializer[0]
    set_external_data(tensor, location=location, offset=0, length=SECRET.nbytes)
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    return m


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "models" / "m"
    d.mkdir(parents=True)
    return d


def _write_attack(model_dir: Path, location: str) -> Path:
    """A model file whose external data points at ``location``, with a real 'secret' file
    there, so that a loader without the check would really read it."""
    target = Path(location) if os.path.isabs(location) else model_dir / location
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(SECRET.tobytes())
    path = model_dir / "model.onnx"
    path.write_bytes(_with_external_location(_model(np.ones((3, 1))), location).SerializeToString())
    return path


def _escapes(tmp_path: Path) -> list[str]:
    return ["../secret.bin", "a/../../secret.bin", "../../models/secret.bin",
            str(tmp_path / "abs-secret.bin")]


def test_external_data_inside_folder_loads(model_dir):
    """The positive control: plain file names next to the model are fine."""
    import onnx

    path = model_dir / "model.onnx"
    onnx.save_model(_model(SECRET), str(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    assert (model_dir / "weights.bin").is_file()
    m = onnx_file.load_onnx(path)
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(m.graph.initializer[0]), SECRET)


@pytest.mark.parametrize("which", range(4))
def test_external_data_escape_is_refused_on_load(model_dir, tmp_path, which):
    location = _escapes(tmp_path)[which]
    path = _write_attack(model_dir, location)
    for probe in (True, False):  # both the subprocess probe and the in-process check refuse
        with pytest.raises(InvalidInputError) as info:
            onnx_file.load_onnx(path, probe=probe)
        assert "outside the model folder" in str(info.value), str(info.value)
        assert location in str(info.value)


@pytest.mark.parametrize("which", [0, 1, 3])
def test_external_data_escape_is_refused_by_deploy(model_dir, tmp_path, which):
    location = _escapes(tmp_path)[which]
    path = _write_attack(model_dir, location)
    X = np.ones((20, 3), dtype=np.float32)
    with pytest.raises(InvalidInputError) as info:
        nbdeploy.deploy(str(path), X, name="escape", explain="none", quantize="none")
    assert "outside the model folder" in str(info.value)
    assert info.value.hint and ".." in info.value.hint


def test_external_data_symlink_escape_is_refused(model_dir, tmp_path):
    """A plain file name that is a symlink to a file outside the folder escapes as well."""
    outside = tmp_path / "outside.bin"
    outside.write_bytes(SECRET.tobytes())
    (model_dir / "weights.bin").symlink_to(outside)
    path = model_dir / "model.onnx"
    path.write_bytes(_with_external_location(_model(np.ones((3, 1))), "weights.bin").SerializeToString())
    with pytest.raises(InvalidInputError, match="outside the model folder"):
        onnx_file.load_onnx(path)


@pytest.mark.parametrize("location", ["../secret.bin", "a/../../secret.bin", "/etc/passwd"])
def test_external_data_escape_in_model_proto_is_refused(location):
    m = _with_external_location(_model(np.ones((3, 1))), location)
    X = np.ones((20, 3), dtype=np.float32)
    with pytest.raises(InvalidInputError, match="outside the model folder"):
        nbdeploy.deploy(m, X, name="escape-proto", explain="none", quantize="none")


# -- corrupt files ------------------------------------------------------------------------------
@pytest.fixture
def valid_file(model_dir):
    path = model_dir / "good.onnx"
    path.write_bytes(_model(SECRET).SerializeToString())
    return path


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "flipped", "not-a-graph"])
def test_corrupt_file_is_invalid_input(valid_file, damage):
    raw = valid_file.read_bytes()
    bad = valid_file.with_name(f"{damage}.onnx")
    if damage == "truncated":
        bad.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "flipped":
        flipped = bytearray(raw)
        for i in range(8, len(flipped), 7):
            flipped[i] ^= 0xFF
        bad.write_bytes(bytes(flipped))
    else:
        bad.write_text('{"this": "is json, not onnx"}')
    pid = os.getpid()
    with pytest.raises(InvalidInputError) as info:
        nbdeploy.deploy(str(bad), np.ones((10, 3), dtype=np.float32), name="corrupt",
                        explain="none", quantize="none")
    assert os.getpid() == pid
    assert "not a valid ONNX model" in str(info.value) or "crashed" in str(info.value), str(info.value)
    assert bad.name in str(info.value) and info.value.hint


def test_probe_runs_outside_the_calling_process(valid_file, monkeypatch):
    """Loading in this process would hit these traps; the probe must not."""
    import onnx
    import onnxruntime

    def trap(*a, **k):
        raise AssertionError("the untrusted file was parsed in the calling process")

    monkeypatch.setattr(onnx, "load", trap)
    monkeypatch.setattr(onnx, "load_model", trap)
    monkeypatch.setattr(onnx, "load_model_from_string", trap)
    monkeypatch.setattr(onnx.checker, "check_model", trap)
    monkeypatch.setattr(onnxruntime, "InferenceSession", trap)
    onnx_file.probe_onnx_file(valid_file)


def _child_hook(tmp_path: Path, body: str, monkeypatch) -> None:
    """Make every Python child of this test run ``body`` at start-up (via sitecustomize), the
    way a crafted file would make the parser or onnxruntime misbehave."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent(body))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hook), *sys.path]))


def test_loader_crash_is_reported_not_fatal(valid_file, tmp_path, monkeypatch):
    _child_hook(tmp_path, """
        import os, signal
        os.kill(os.getpid(), signal.SIGSEGV)   # what a parser bug on a crafted file does
    """, monkeypatch)
    with pytest.raises(InvalidInputError) as info:
        onnx_file.load_onnx(valid_file)
    assert f"signal {int(signal.SIGSEGV)}" in str(info.value) and "crashed" in str(info.value)
    assert valid_file.name in str(info.value)


def test_loader_hang_is_bounded(valid_file, tmp_path, monkeypatch):
    _child_hook(tmp_path, """
        import time
        time.sleep(60)
    """, monkeypatch)
    with pytest.raises(InvalidInputError, match="took longer"):
        onnx_file.probe_onnx_file(valid_file, timeout=3)


def test_load_onnx_probes_before_parsing(valid_file, monkeypatch):
    calls = []
    monkeypatch.setattr(onnx_file, "probe_onnx_file", lambda p, **k: calls.append(Path(p)))
    onnx_file.load_onnx(valid_file)
    assert calls == [valid_file]


def test_probe_does_not_import_code_planted_next_to_the_model(valid_file, tmp_path, monkeypatch):
    """A model shipped with an ``onnx.py`` (or ``nbdeploy/``) beside it, opened from that
    folder as the notebook's working directory: the probe's fresh interpreter must not import
    them (``python -c`` puts the working directory first on ``sys.path``)."""
    marker = tmp_path / "PLANTED-CODE-RAN"
    folder = valid_file.parent
    for mod in ("onnx.py", "numpy.py", "onnxruntime.py"):
        (folder / mod).write_text(f"open({str(marker)!r}, 'w').close()\nraise ImportError('planted')\n")
    monkeypatch.chdir(folder)
    # the planted modules raise ImportError: the probe succeeds only if it never imports them
    assert onnx_file.probe_onnx_file(valid_file.name) is None
    assert not marker.exists()


# -- memory bombs -------------------------------------------------------------------------------
def _memory_bomb(n: int = 60000):
    """y = x @ W + sum(ConstantOfShape([n, n])): a few hundred bytes on disk that ask for
    n * n * 4 bytes (14.4 GB for n = 60000) at their first inference."""
    from onnx import TensorProto, helper, numpy_helper

    shape = numpy_helper.from_array(np.array([n, n], dtype=np.int64), name="shape")
    w = numpy_helper.from_array(np.ones((3, 1), dtype=np.float32), name="W")
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"],
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])),
             helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
             helper.make_node("MatMul", ["x", "W"], ["xw"]),
             helper.make_node("Add", ["xw", "s"], ["y"])]
    graph = helper.make_graph(nodes, "bomb", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
                              initializer=[shape, w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def test_memory_bomb_fails_in_the_probe_not_here(model_dir):
    path = model_dir / "bomb.onnx"
    path.write_bytes(_memory_bomb().SerializeToString())
    assert path.stat().st_size < 1000
    X = np.ones((20, 3), dtype=np.float32)
    # once to load every module deploy needs, so the measured call shows only the model's cost
    with pytest.raises(InvalidInputError):
        nbdeploy.deploy(str(path), X, name="bomb", explain="none", quantize="none")
    before = _peak_rss_mb()
    with pytest.raises(InvalidInputError) as info:
        nbdeploy.deploy(str(path), X, name="bomb", explain="none", quantize="none")
    grew = _peak_rss_mb() - before
    msg = str(info.value)
    assert "bomb.onnx" in msg and "first inference" in msg and "throw-away process" in msg, msg
    assert "GiB of memory" in msg and info.value.hint and onnx_file.MEMORY_ENV in info.value.hint
    assert len(msg) < 1500
    # the 14.4 GB never touched this process: its peak RSS did not move by more than noise
    assert grew < 150, f"peak RSS grew by {grew:.0f} MB"


def test_memory_bomb_as_model_proto_is_probed_too():
    X = np.ones((5, 3), dtype=np.float32)
    before = _peak_rss_mb()
    with pytest.raises(InvalidInputError, match="first inference") as info:
        nbdeploy.deploy(_memory_bomb(), X, name="bomb-proto", explain="none", quantize="none")
    assert _peak_rss_mb() - before < 500, info.value


def test_same_graph_of_harmless_size_deploys(model_dir):
    """The positive control: the same graph asking for 40 KB passes the probe and verifies."""
    path = model_dir / "small.onnx"
    path.write_bytes(_memory_bomb(100).SerializeToString())
    X = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    d = nbdeploy.deploy(str(path), X, name="not-a-bomb", explain="none", quantize="none")
    np.testing.assert_allclose(d.predict(X[:4])["predictions"], X[:4].sum(axis=1), rtol=1e-5)


def test_probe_memory_limit_is_configurable(monkeypatch):
    monkeypatch.setenv(onnx_file.MEMORY_ENV, "6144")
    assert onnx_file.probe_memory_limit() == 6144 << 20
    monkeypatch.setenv(onnx_file.MEMORY_ENV, "lots")
    with pytest.raises(InvalidInputError, match=onnx_file.MEMORY_ENV):
        onnx_file.probe_memory_limit()
    monkeypatch.delenv(onnx_file.MEMORY_ENV)
    assert onnx_file.probe_memory_limit() >= 4 << 30
