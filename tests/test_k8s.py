"""Kubernetes manifests, validated against the Kubernetes OpenAPI schemas by kubernetes-validate."""

from __future__ import annotations

import pytest
import yaml

from nbdeploy.errors import InvalidInputError
from nbdeploy.k8s import k8s_manifests, k8s_name, to_yaml, write_manifests

pytest_plugins = ["conftest_containers"]

IMAGE = "registry.example.com/team/iris:v3@sha256:" + "ab" * 32
K8S_VERSIONS = ["1.29.0", "1.33.0"]


@pytest.fixture(scope="module")
def kv():
    from conftest_containers import need

    try:
        import kubernetes_validate
    except ImportError:
        need(False, "kubernetes-validate is not installed (pip install kubernetes-validate)")
    return kubernetes_validate


def _by_kind(ms):
    return {m["kind"]: m for m in ms}


@pytest.mark.parametrize("gpu", [False, True])
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_against_kubernetes_schemas(kv, gpu, version):
    ms = k8s_manifests("Iris_Model:v3", IMAGE, gpu=gpu, replicas=2, min_replicas=2, max_replicas=8,
                       target_cpu=60, namespace="ml")
    assert [m["kind"] for m in ms] == ["Deployment", "Service", "HorizontalPodAutoscaler"]
    for m in ms:
        kv.validate(m, version, strict=True)  # raises ValidationError on any schema violation


def test_written_yaml_validates_as_a_file(kv, tmp_path):
    path = write_manifests(k8s_manifests("tiny:v1", IMAGE), tmp_path)
    assert path.name == "tiny.yaml"
    text = path.read_text()
    assert "&id" not in text and "*id" not in text  # no YAML aliases: kubectl users read this
    docs = list(yaml.safe_load_all(text))
    assert len(docs) == 3
    assert kv.validate_file(str(path), K8S_VERSIONS[-1], strict=True, quiet=True, no_warn=True) == 0


def test_validator_really_rejects_bad_manifests(kv):
    dep = _by_kind(k8s_manifests("tiny:v1", IMAGE))["Deployment"]
    dep["spec"]["replicas"] = "two"
    with pytest.raises(kv.ValidationError):
        kv.validate(dep, K8S_VERSIONS[-1], strict=True)
    hpa = _by_kind(k8s_manifests("tiny:v1", IMAGE))["HorizontalPodAutoscaler"]
    hpa["spec"]["targetCPUUtilizationPercentage"] = 50  # autoscaling/v1 field, not v2
    with pytest.raises(kv.ValidationError):
        kv.validate(hpa, K8S_VERSIONS[-1], strict=True)


def test_deployment_contents():
    ms = _by_kind(k8s_manifests("tiny:v1", IMAGE, gpu=True, cpu_request="250m", memory_request="1Gi",
                                cpu_limit=None, memory_limit="4Gi"))
    dep, svc, hpa = ms["Deployment"], ms["Service"], ms["HorizontalPodAutoscaler"]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == IMAGE
    assert c["ports"][0]["containerPort"] == 3000
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert c["resources"]["requests"] == {"cpu": "250m", "memory": "1Gi"}
    assert c["resources"]["limits"] == {"memory": "4Gi", "nvidia.com/gpu": 1}
    assert dep["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"] == "tiny"
    assert hpa["apiVersion"] == "autoscaling/v2"
    cpu = _by_kind(k8s_manifests("tiny:v1", IMAGE))["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]


def test_names_and_bad_input():
    assert k8s_name("Iris_Model:v3") == "iris-model"
    assert k8s_name("123:x").startswith("nb-")
    with pytest.raises(InvalidInputError):
        k8s_manifests("tiny:v1", "")
    with pytest.raises(InvalidInputError):
        k8s_manifests("tiny:v1", IMAGE, min_replicas=5, max_replicas=2)
    with pytest.raises(InvalidInputError):
        k8s_manifests("tiny:v1", IMAGE, memory_request="lots")
    with pytest.raises(InvalidInputError):
        k8s_manifests("tiny:v1", IMAGE, target_cpu=150)
    assert "kind: HorizontalPodAutoscaler" in to_yaml(k8s_manifests("tiny:v1", IMAGE))


def test_bundle_needs_gpu(tmp_path):
    from nbdeploy.k8s import bundle_needs_gpu

    cpu, gpu = tmp_path / "cpu", tmp_path / "gpu"
    for d, device in ((cpu, "cpu"), (gpu, "cuda")):
        (d / "src" / "model").mkdir(parents=True)
        (d / "bento.yaml").write_text("name: m\nversion: v1\nservices:\n- name: S\n  config: {}\n")
        (d / "src" / "model" / "config.json").write_text('{"device": "%s"}' % device)
    assert bundle_needs_gpu(cpu) is False and bundle_needs_gpu(gpu) is True
    (cpu / "bento.yaml").write_text("name: m\nservices:\n- name: S\n  config: {resources: {gpu: 1}}\n")
    assert bundle_needs_gpu(cpu) is True
