"""Kubernetes manifests, validated against the Kubernetes OpenAPI schemas by kubernetes-validate."""

from __future__ import annotations

import json

import pytest
import yaml

from nbdeploy.errors import InvalidInputError
from nbdeploy.k8s import k8s_manifests, k8s_name, to_yaml, write_manifests

IMAGE = "registry.example.com/team/iris:v3@sha256:" + "ab" * 32
K8S_VERSIONS = ["1.29.0", "1.33.0"]


@pytest.fixture(scope="module")
def kv():
    from containers.fixtures import need

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
    assert [m["kind"] for m in ms] == ["Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"]
    for m in ms:
        kv.validate(m, version, strict=True)  # raises ValidationError on any schema violation


def test_written_yaml_validates_as_a_file(kv, tmp_path):
    path = write_manifests(k8s_manifests("tiny:v1", IMAGE), tmp_path)
    assert path.name == "tiny.yaml"
    text = path.read_text()
    assert "&id" not in text and "*id" not in text  # no YAML aliases: kubectl users read this
    docs = list(yaml.safe_load_all(text))
    assert len(docs) == 4   # Deployment, Service, HPA, PodDisruptionBudget
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
        (d / "src" / "model" / "config.json").write_text(json.dumps({"device": device}))
    assert bundle_needs_gpu(cpu) is False and bundle_needs_gpu(gpu) is True
    (cpu / "bento.yaml").write_text("name: m\nservices:\n- name: S\n  config: {resources: {gpu: 1}}\n")
    assert bundle_needs_gpu(cpu) is True


# -- access control and TLS (issue 19) -----------------------------------------------------------

@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_keys_secret_and_tls_ingress_validate(kv, version, tmp_path):
    from nbdeploy import keys

    kf = tmp_path / "api_keys"
    key = keys.create("ci", kf)
    ms = k8s_manifests("Iris_Model:v3", IMAGE, namespace="ml", auth="key",
                       key_hashes=kf.read_text().splitlines(), rate_limit="100/min",
                       ingress_host="iris.example.com", tls_secret="iris-tls", ingress_class="nginx")
    assert [m["kind"] for m in ms] == ["Secret", "Deployment", "Service", "HorizontalPodAutoscaler", "Ingress",
                                         "PodDisruptionBudget"]
    for m in ms:
        kv.validate(m, version, strict=True)
    by = _by_kind(ms)
    secret, dep, ing = by["Secret"], by["Deployment"], by["Ingress"]
    assert secret["metadata"]["namespace"] == "ml" and secret["type"] == "Opaque"
    assert key not in to_yaml(ms) and secret["stringData"]["api_keys"].startswith("nbd-sha256$")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["NBDEPLOY_AUTH"] == "key" and env["NBDEPLOY_RATE_LIMIT"] == "100/min"
    mount = c["volumeMounts"][0]
    assert mount["readOnly"] and "subPath" not in mount  # subPath mounts never see a rotated Secret
    assert env["NBDEPLOY_API_KEYS_FILE"] == mount["mountPath"] + "/api_keys"
    assert pod["volumes"][0]["secret"]["secretName"] == secret["metadata"]["name"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"  # probes need no key
    assert ing["spec"]["tls"] == [{"hosts": ["iris.example.com"], "secretName": "iris-tls"}]
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == by["Service"]["metadata"]["name"]
    assert backend["port"]["name"] == by["Service"]["spec"]["ports"][0]["name"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_pod_tls_secret_mounts_the_certificate_and_probes_over_https(kv, version, tmp_path):
    """pod_tls_secret: the bundle itself serves HTTPS (tests/security/test_tls_image.py runs the
    image with exactly this mount and env); probes, Service and Ingress follow the port."""
    from nbdeploy import keys

    kf = tmp_path / "api_keys"
    keys.create("ci", kf)
    ms = k8s_manifests("Iris_Model:v3", IMAGE, namespace="ml", auth="key", key_hashes=kf.read_text().splitlines(),
                       ingress_host="iris.example.com", tls_secret="iris-tls", pod_tls_secret="iris-pod-tls")
    for m in ms:
        kv.validate(m, version, strict=True)
    by = _by_kind(ms)
    pod = by["Deployment"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["NBDEPLOY_TLS_CERT"] == "/etc/nbdeploy/tls/tls.crt"
    assert env["NBDEPLOY_TLS_KEY"] == "/etc/nbdeploy/tls/tls.key"
    assert env["NBDEPLOY_AUTH"] == "key"                       # the keys' Secret is still mounted too
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert set(mounts) == set(vols) == {"api-keys", "tls"}
    assert mounts["tls"] == {"name": "tls", "mountPath": "/etc/nbdeploy/tls", "readOnly": True}
    assert vols["tls"]["secret"] == {"secretName": "iris-pod-tls", "defaultMode": 0o440}
    assert c["ports"] == [{"name": "https", "containerPort": 3000, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["scheme"] == "HTTPS" and c[probe]["httpGet"]["port"] == "https", probe
    assert by["Service"]["spec"]["ports"] == [{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}]
    ing = by["Ingress"]
    assert ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"] == {"name": "https"}
    assert ing["metadata"]["annotations"] == {"nginx.ingress.kubernetes.io/backend-protocol": "HTTPS"}
    assert ing["spec"]["tls"] == [{"hosts": ["iris.example.com"], "secretName": "iris-tls"}]
    text = to_yaml(ms)
    assert "BEGIN" not in text and "tls.key" in text         # a path to the key, never a key

    plain = _by_kind(k8s_manifests("Iris_Model:v3", IMAGE))   # the default: plain HTTP, as before
    pc = plain["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert "scheme" not in pc["readinessProbe"]["httpGet"] and pc["ports"][0]["name"] == "http"
    assert not any(e["name"].startswith("NBDEPLOY_TLS") for e in pc["env"]) and "volumes" not in \
        plain["Deployment"]["spec"]["template"]["spec"]
    assert plain["Service"]["spec"]["ports"][0]["port"] == 80


def test_pod_tls_secret_refusals():
    for bad in ("Bad Name", "", "-x", "a" * 300, 3):
        with pytest.raises(InvalidInputError, match="Secret name"):
            k8s_manifests("tiny:v1", IMAGE, pod_tls_secret=bad)
    with pytest.raises(InvalidInputError, match="BackendTLSPolicy"):
        k8s_manifests("tiny:v1", IMAGE, pod_tls_secret="t", canary_image=IMAGE, gateway="gw")


def test_oidc_env_and_refusals(kv):
    ms = k8s_manifests("tiny:v1", IMAGE, auth="oidc",
                       oidc={"issuer": "https://idp.example.com/realms/ml", "audience": "tiny",
                             "scopes": {"predict": "model:predict"}})
    for m in ms:
        kv.validate(m, K8S_VERSIONS[-1], strict=True)
    env = {e["name"]: e["value"] for e in _by_kind(ms)["Deployment"]["spec"]["template"]["spec"]
           ["containers"][0]["env"]}
    assert env["NBDEPLOY_OIDC_ISSUER"] == "https://idp.example.com/realms/ml"
    assert env["NBDEPLOY_AUTH_SCOPES"] == "predict=model:predict"
    assert "Secret" not in _by_kind(ms)
    with pytest.raises(InvalidInputError, match="never a key"):
        k8s_manifests("tiny:v1", IMAGE, auth="key", key_hashes=["nbd_a-plain-key-in-a-manifest"])
    with pytest.raises(InvalidInputError, match="audience"):
        k8s_manifests("tiny:v1", IMAGE, auth="oidc", oidc={"issuer": "https://idp.example.com"})
    with pytest.raises(InvalidInputError, match="host"):
        k8s_manifests("tiny:v1", IMAGE, tls_secret="t")
    with pytest.raises(InvalidInputError):
        k8s_manifests("tiny:v1", IMAGE, rate_limit="fast")
    with pytest.raises(InvalidInputError):
        k8s_manifests("tiny:v1", IMAGE, auth="basic")


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rolling_update_drains_and_disruption_budget(kv, version):
    """Issue 20: a rollout never has fewer ready pods than wanted, a terminating pod pauses
    before it stops listening (within its grace period), and node drains evict one at a time."""
    ms = k8s_manifests("tiny:v1", IMAGE, replicas=3, drain_s=7)
    for m in ms:
        kv.validate(m, version, strict=True)
    by = _by_kind(ms)
    dep, pdb = by["Deployment"], by["PodDisruptionBudget"]
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate",
                                       "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    pod = dep["spec"]["template"]["spec"]
    pre = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert pre[0] == "python3" and "sleep(7)" in pre[-1]
    assert pod["terminationGracePeriodSeconds"] > 7
    assert pdb["apiVersion"] == "policy/v1" and pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    no_pause = _by_kind(k8s_manifests("tiny:v1", IMAGE, drain_s=0))["Deployment"]["spec"]["template"]["spec"]
    assert "lifecycle" not in no_pause["containers"][0] and no_pause["terminationGracePeriodSeconds"] == 30


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_canary_deployment_and_weighted_httproute(kv, version):
    """The canary's Deployment/Service/PDB validate against the Kubernetes schemas.  HTTPRoute
    is a Gateway API CRD that kubernetes-validate has no schema for: its shape is checked here
    against the Gateway API v1 spec's required fields and the manifests it points at."""
    canary_image = "registry.example.com/team/iris:v4@sha256:" + "cd" * 32
    ms = k8s_manifests("iris:v3", IMAGE, namespace="ml", canary_tag="iris:v4", canary_image=canary_image,
                       canary_weight=15, gateway="public-gw", auth="oidc",
                       oidc={"issuer": "https://id.example.com", "audience": "iris"})
    route = [m for m in ms if m["kind"] == "HTTPRoute"]
    assert len(route) == 1
    route = route[0]
    for m in ms:
        if m is not route:
            kv.validate(m, version, strict=True)
    deps = {m["metadata"]["name"]: m for m in ms if m["kind"] == "Deployment"}
    svcs = {m["metadata"]["name"]: m for m in ms if m["kind"] == "Service"}
    assert set(deps) == {"iris", "iris-canary"} and set(svcs) == {"iris", "iris-canary"}
    stable, canary = deps["iris"], deps["iris-canary"]
    assert canary["spec"]["template"]["spec"]["containers"][0]["image"] == canary_image
    assert stable["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE
    assert canary["spec"]["template"]["metadata"]["annotations"]["nbdeploy/bento"] == "iris:v4"
    assert canary["spec"]["replicas"] == 1
    # selectors never overlap: each Service/Deployment selects only its own pods
    for name, dep in deps.items():
        sel = dep["spec"]["selector"]["matchLabels"]
        assert svcs[name]["spec"]["selector"] == sel
        for other, od in deps.items():
            labels = od["spec"]["template"]["metadata"]["labels"]
            assert all(labels.get(k) == v for k, v in sel.items()) == (other == name)
    # the canary runs with the same access control
    envs = {d: {e["name"] for e in deps[d]["spec"]["template"]["spec"]["containers"][0]["env"]} for d in deps}
    assert envs["iris"] == envs["iris-canary"] and "NBDEPLOY_AUTH" in envs["iris"]
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["metadata"]["namespace"] == "ml"
    assert route["spec"]["parentRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                            "name": "public-gw"}]
    (rule,) = route["spec"]["rules"]
    refs = {r["name"]: r for r in rule["backendRefs"]}
    assert {n: r["weight"] for n, r in refs.items()} == {"iris": 85, "iris-canary": 15}
    for n, r in refs.items():
        assert r["kind"] == "Service" and r["port"] in [p["port"] for p in svcs[n]["spec"]["ports"]]
    assert "kind: HTTPRoute" in to_yaml(ms)


def test_canary_and_drain_bad_input():
    for kw in ({"canary_image": IMAGE}, {"gateway": "gw"}, {"canary_image": IMAGE, "gateway": "gw", "canary_weight": 0},
               {"canary_image": IMAGE, "gateway": "gw", "canary_weight": 100},
               {"canary_image": IMAGE, "gateway": "Bad Name!"}, {"drain_s": -1}, {"drain_s": 3600},
               {"drain_s": True}):
        with pytest.raises(InvalidInputError):
            k8s_manifests("tiny:v1", IMAGE, **kw)
