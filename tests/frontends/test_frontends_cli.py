"""The push / k8s / export / import front ends (API and CLI) over the core modules."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import nbdeploy


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nbdeploy.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), timeout=600)


@pytest.fixture(scope="module")
def small_deployment(rf_model, breast_cancer):
    return nbdeploy.deploy(rf_model, breast_cancer[1], name="frontends", explain="none", quantize="none")


def test_export_delete_import_roundtrip(small_deployment, tmp_path):
    from nbdeploy import store

    archive = small_deployment.export(str(tmp_path / "bundle.bento"))
    assert archive.is_file()
    out = _cli("export", small_deployment.tag, str(tmp_path / "bundle.bento"))
    assert out.returncode == 2 and "overwrite" in out.stderr.lower()
    store.delete(small_deployment.tag)
    out = _cli("import", str(archive))
    assert out.returncode == 0, out.stderr
    assert small_deployment.tag in out.stdout
    assert store.read_report(small_deployment.tag)["tag"] == small_deployment.tag


def test_k8s_manifests_from_cli_and_api(small_deployment, tmp_path):
    import kubernetes_validate
    import yaml

    out = _cli("k8s", small_deployment.tag, "--image", "registry.example.com/frontends:1",
               "-o", str(tmp_path / "k8s.yaml"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"wrote {tmp_path / 'k8s.yaml'}"
    docs = [d for d in yaml.safe_load_all((tmp_path / "k8s.yaml").read_text()) if d]
    assert {d["kind"] for d in docs} == {"Deployment", "Service", "HorizontalPodAutoscaler",
                                         "PodDisruptionBudget"}
    for d in docs:
        kubernetes_validate.validate(d, "1.29", strict=True)
    # the API and the CLI give the same manifests for the same bundle and image
    api = small_deployment.k8s("registry.example.com/frontends:1")
    assert api == docs


@pytest.mark.slow
def test_push_from_api_and_cli(small_deployment, registry, base_image_ref, nbdeploy_home):
    from containers.fixtures import need_root

    need_root()
    ref = f"{registry.host}/models/frontends:1"
    events = []
    small_deployment.add_listener(lambda ev: events.append(ev) if ev.step == "push" else None)
    result = small_deployment.push(ref, base=base_image_ref, home=nbdeploy_home)
    assert str(result).startswith(ref + "@sha256:")
    assert events[-1].state == "done" and events[-1].summary == str(result)
    assert small_deployment.to_dict()["pushed"]["digest"] == result.digest
    out = _cli("push", small_deployment.tag, ref, "--base", base_image_ref,
               env={"NBDEPLOY_HOME": str(nbdeploy_home)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(result)     # same bundle, same base: the same image digest
