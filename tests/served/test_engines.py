"""The served-API suite under both engines: stock `bentoml serve` and the direct engine (the
bundle's own ASGI app on uvicorn).  The checks are tests/served/test_served_api.py's and
tests/served/test_drift_served.py's own, collected here again with their ``served`` / ``fresh_server``
fixtures parametrized by engine; then what only the direct engine does itself (/livez,
/readyz, /metrics) and how `bentoml serve` (the image's entrypoint) hands over to it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

# the served-API checks, unchanged (pytest runs them here with this module's fixtures)
from test_drift_served import (  # noqa: F401  (a fixture those checks use)
    sample,
    test_replaying_the_sample_is_zero_psi,
    test_shifted_stream_flags_exactly_the_shifted_features,
)
from test_served_api import (
    test_client_mistakes_get_400,
    test_health_endpoints,
    test_metadata_is_a_model_card,
    test_nan_and_bad_json_get_400,
    test_openapi_document,
    test_predict_lists_and_records,
    test_wrong_content_type_and_too_many_rows,
)

from nbdeploy import serve
from nbdeploy.errors import InvalidInputError

pytestmark = pytest.mark.slow

__all__ = ["test_client_mistakes_get_400", "test_health_endpoints", "test_metadata_is_a_model_card",
           "test_nan_and_bad_json_get_400", "test_openapi_document", "test_predict_lists_and_records",
           "test_wrong_content_type_and_too_many_rows", "test_replaying_the_sample_is_zero_psi",
           "test_shifted_stream_flags_exactly_the_shifted_features", "sample"]


@pytest.fixture(scope="module")
def direct_server(ref_deployment):
    h = serve.start(ref_deployment.tag, engine="direct")
    yield h
    h.stop()


@pytest.fixture(params=["bentoml", "direct"])
def served(request, ref_deployment, breast_cancer):
    if request.param == "bentoml":
        server = request.getfixturevalue("ref_server")
    else:
        server = request.getfixturevalue("direct_server")
    return ref_deployment, server, breast_cancer[1]


@pytest.fixture(params=["bentoml", "direct"])
def fresh_server(request, ref_deployment):
    """A server of its own (drift counts start at zero), under each engine."""
    h = serve.start(ref_deployment.tag, engine=request.param)
    yield h
    h.stop()


# --- what the direct engine answers itself --------------------------------------------------

def test_direct_metadata_names_engine_and_limit(direct_server, get):
    status, meta = get(direct_server.url + "/metadata")
    assert status == 200
    serving = meta["serving"]
    assert serving["engine"] == "direct"
    limit = serving["concurrency_limit"]
    assert limit["source"] == "benchmark" and limit["limit"] >= 4 and "ms" in limit["reason"]
    assert serving["memory"]["rss_mb"] > 0
    # nothing was explained: the explainer stack is not in this replica
    assert serving["explainer"]["loaded"] is False and serving["explainer"]["shap_imported"] is False


def test_direct_metrics_count_requests(direct_server, post, get, breast_cancer):
    before = _count(get(direct_server.url + "/metrics")[1], "/predict", "200")
    for _ in range(3):
        assert post(direct_server.url + "/predict", {"inputs": breast_cancer[1].values[:2].tolist()})[0] == 200
    assert post(direct_server.url + "/predict", {"inputs": [[1.0]]})[0] == 400
    text = get(direct_server.url + "/metrics")[1]
    assert _count(text, "/predict", "200") == before + 3
    assert _count(text, "/predict", "400") >= 1
    assert "# TYPE bentoml_service_request_duration_seconds histogram" in text.decode()
    assert "nbdeploy_drift_psi{" in text.decode()


def _count(text: bytes, route: str, code: str) -> int:
    prefix = f'bentoml_service_request_total{{endpoint="{route}",http_response_code="{code}"'
    for line in text.decode().splitlines():
        if line.startswith(prefix):
            return int(float(line.split()[-1]))
    return 0


def test_direct_engine_fails_fast_on_a_broken_bundle(ref_deployment, tmp_path):
    """A model that cannot load: /readyz never says 200 and the process exits with the cause."""
    import shutil

    from nbdeploy import store

    src = store.bundle_dir(ref_deployment.tag)
    copy = tmp_path / "bundle"
    shutil.copytree(src, copy)
    (copy / "model" / "model.onnx").write_bytes(b"not an onnx model")
    port = serve.free_port()
    log = tmp_path / "log.txt"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "nbdeploy_runtime.engine", "--port", str(port)],
                                cwd=copy, stdout=out, stderr=subprocess.STDOUT)
    try:
        assert proc.wait(60) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Application startup failed" in log.read_text()
    assert serve._http_status(f"http://127.0.0.1:{port}/readyz") is None


def test_bentoml_serve_hands_over_to_the_direct_engine(ref_deployment, get, post, breast_cancer, tmp_path):
    """NBDEPLOY_ENGINE=direct is the image's setting: its entrypoint (`bentoml serve BUNDLE`) then
    becomes the direct engine on the same port, in the same process."""
    port = serve.free_port()
    env = dict(os.environ, NBDEPLOY_ENGINE="direct", BENTOML_DO_NOT_TRACK="true")
    proc = subprocess.Popen([*serve.bentoml_executable(), "serve", ref_deployment.tag, "--port", str(port),
                             "--host", "127.0.0.1"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while serve._http_status(url + "/readyz") != 200:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        status, meta = get(url + "/metadata")
        assert meta["serving"]["engine"] == "direct" and meta["serving"]["memory"]["process"] == proc.pid
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            assert b"nbdeploy_runtime.engine" in f.read()
        status, body = post(url + "/predict", {"inputs": breast_cancer[1].values[:1].tolist()})
        assert status == 200 and len(body["predictions"]) == 1
    finally:
        proc.terminate()
        proc.wait(20)


def test_unknown_engine_is_a_clear_error(ref_deployment):
    with pytest.raises(InvalidInputError) as info:
        serve.start(ref_deployment.tag, engine="gunicorn")
    assert "gunicorn" in info.value.message and "direct" in info.value.hint


def test_server_record_keeps_its_engine(direct_server):
    found = [h for h in serve.list_servers() if h.id == direct_server.id]
    assert found and found[0].engine == "direct"
    assert json.loads(json.dumps(found[0].to_dict()))["engine"] == "direct"
