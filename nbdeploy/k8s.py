"""Kubernetes manifests for a bundle image: Deployment, Service, HorizontalPodAutoscaler.

The Deployment probes BentoML's ``/readyz`` and ``/livez`` on port 3000, requests
resources, runs as the image's non-root user, and asks for ``nvidia.com/gpu`` when the
bundle needs a GPU. The autoscaler is ``autoscaling/v2`` on CPU utilisation.

Access control (``auth="key"`` or ``"oidc"``, see ``nbdeploy_runtime.auth``): with keys, a
Secret holds the salted key digests (never a key) and is mounted read-only into the pod, which
rereads it when Kubernetes updates it (rotation without a restart); with OIDC, the issuer,
audience and JWKS URL are plain env.  ``ingress_host`` adds an ``networking.k8s.io/v1`` Ingress,
with TLS from ``tls_secret`` (an existing ``kubernetes.io/tls`` Secret, e.g. cert-manager's).

HTTPS in the pod itself (``pod_tls_secret``, end-to-end TLS): an existing ``kubernetes.io/tls``
Secret is mounted read-only at ``/etc/nbdeploy/tls`` and ``NBDEPLOY_TLS_CERT``/``_KEY`` name its
``tls.crt``/``tls.key``, which the bundle's ``service.py`` hands to ``bentoml serve`` (the image's
entrypoint, unchanged): the container port then speaks HTTPS only, so the probes use
``scheme: HTTPS``, the Service port is ``https`` (443) and the Ingress talks HTTPS to it.  The
certificate is read at start: after renewing it, restart the pods (``kubectl rollout restart``).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

from .errors import InvalidInputError

PORT = 3000
KEYS_MOUNT = "/etc/nbdeploy/keys"
TLS_MOUNT = "/etc/nbdeploy/tls"
_SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_HOST = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$")


def k8s_name(tag: str) -> str:
    """A DNS-1035 label from a bento tag (``Iris_Model:v3`` -> ``iris-model``)."""
    name = str(tag).split(":", 1)[0].lower()
    name = re.sub(r"[^a-z0-9-]+", "-", name).strip("-")
    if not name or not name[0].isalpha():
        name = "nb-" + name
    return name[:63].rstrip("-")


def _quantity(value, what: str) -> str:
    s = str(value)
    if not _QUANTITY.match(s):
        raise InvalidInputError(f"{what} {s!r} is not a Kubernetes quantity.",
                                hint="Examples: cpu '500m' or '1'; memory '512Mi' or '2Gi'.")
    return s


def k8s_manifests(tag: str, image: str, *, name: str | None = None, namespace: str | None = None,
                  replicas: int = 1, gpu: bool | int = False,
                  cpu_request: str = "500m", memory_request: str = "512Mi",
                  cpu_limit: str | None = "2", memory_limit: str | None = "2Gi",
                  min_replicas: int = 1, max_replicas: int = 5, target_cpu: int = 70,
                  port: int = PORT, service_type: str = "ClusterIP",
                  env: dict[str, str] | None = None, auth: str | None = None,
                  key_hashes: list[str] | None = None, oidc: dict | None = None,
                  rate_limit: str | None = None, ingress_host: str | None = None,
                  tls_secret: str | None = None, ingress_class: str | None = None,
                  drain_s: int = 10, canary_tag: str | None = None, canary_image: str | None = None,
                  canary_weight: int = 10, gateway: str | None = None,
                  pod_tls_secret: str | None = None) -> list[dict]:
    """Manifests (as dicts) that run ``image`` (the bento ``tag``) on Kubernetes.

    ``auth="key"``: a Secret ``NAME-api-keys`` with ``key_hashes`` (lines of an ``nbdeploy keys``
    file: salted digests only; plain keys are refused here), mounted at ``/etc/nbdeploy/keys``.
    ``auth="oidc"``: ``oidc={"issuer", "audience", "jwks_url"?, "scopes"?}`` as env.
    ``rate_limit``: e.g. ``"100/min"`` per key or token subject.  ``ingress_host`` (+
    ``tls_secret``, ``ingress_class``): an Ingress to the Service, HTTPS with that certificate.
    ``pod_tls_secret``: a ``kubernetes.io/tls`` Secret mounted into the pod, so that the bundle
    itself serves HTTPS only (probes over HTTPS, Service port ``https`` 443; see the module doc).

    ``gpu``: True or a count adds an ``nvidia.com/gpu`` limit. ``image`` should be pinned
    (``ref@sha256:...``, as :func:`nbdeploy.publish.push` returns) so rollouts are exact.

    Rollouts drop nothing: RollingUpdate with ``maxUnavailable: 0, maxSurge: 1`` (a new pod is
    ready before an old one goes), a ``preStop`` pause of ``drain_s`` seconds (endpoints stop
    sending to a terminating pod before it stops listening), ``terminationGracePeriodSeconds``
    above that, and a PodDisruptionBudget (``maxUnavailable: 1``: node drains evict one pod at
    a time).

    Canary: ``canary_image`` (+ ``canary_tag``) adds a Deployment ``NAME-canary`` (one replica)
    and its Service, and a Gateway API ``HTTPRoute`` on ``gateway`` that sends
    ``canary_weight`` percent of requests to it and the rest to the Service ``NAME``.  Promote
    by setting ``image`` to the canary's and dropping the canary; roll back by dropping it.
    """
    if not image or not isinstance(image, str):
        raise InvalidInputError("An image reference is required.", hint="Push first: nbdeploy push TAG REF.")
    for label, v in (("replicas", replicas), ("min_replicas", min_replicas), ("max_replicas", max_replicas)):
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if label == "replicas" else 1):
            raise InvalidInputError(f"{label} must be a positive integer.", received=v)
    if min_replicas > max_replicas:
        raise InvalidInputError("min_replicas is larger than max_replicas.",
                                expected=f"<= {max_replicas}", received=min_replicas)
    if not (isinstance(target_cpu, int) and 1 <= target_cpu <= 100):
        raise InvalidInputError("target_cpu is a utilisation percentage between 1 and 100.", received=target_cpu)
    if service_type not in ("ClusterIP", "NodePort", "LoadBalancer"):
        raise InvalidInputError("Unknown service type.", expected=["ClusterIP", "NodePort", "LoadBalancer"],
                                received=service_type)
    if not (isinstance(drain_s, int) and not isinstance(drain_s, bool) and 0 <= drain_s <= 300):
        raise InvalidInputError("drain_s is a whole number of seconds between 0 and 300.", received=drain_s)
    if canary_image is not None or canary_tag is not None or gateway is not None:
        if not canary_image or not isinstance(canary_image, str) or not gateway or not isinstance(gateway, str):
            raise InvalidInputError("A canary needs its image and the Gateway to route through.",
                                    hint="Pass canary_image=REF@sha256:... and gateway=NAME "
                                         "(a Gateway API Gateway in the cluster).")
        if not (isinstance(canary_weight, int) and not isinstance(canary_weight, bool) and 0 < canary_weight < 100):
            raise InvalidInputError("canary_weight is a percentage between 1 and 99.", received=canary_weight)
        if not re.match(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", gateway):
            raise InvalidInputError(f"Invalid Gateway name {gateway[:80]!r}.")
        if pod_tls_secret:
            raise InvalidInputError("A canary through a Gateway cannot reach pods that serve HTTPS "
                                    "(that needs a BackendTLSPolicy, which is not generated).",
                                    hint="Drop pod_tls_secret and terminate TLS at the Gateway, or "
                                         "roll out without a canary.")
    if pod_tls_secret is not None and (not isinstance(pod_tls_secret, str)
                                       or not _SECRET_NAME.match(pod_tls_secret)):
        raise InvalidInputError(f"Invalid Secret name {str(pod_tls_secret)[:80]!r}.",
                                hint="pod_tls_secret: the name of a kubernetes.io/tls Secret in the same "
                                     "namespace (tls.crt and tls.key).")
    app = name or k8s_name(tag)
    if not re.match(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$", app):
        raise InvalidInputError(f"Invalid Kubernetes name {app!r}.",
                                hint="Lowercase letters, digits and '-', starting with a letter, at most 63.")
    version = str(tag).split(":", 1)[1] if ":" in str(tag) else "latest"
    labels = {"app.kubernetes.io/name": app, "app.kubernetes.io/managed-by": "nbdeploy"}
    version_label = re.sub(r"[^A-Za-z0-9_.-]", "-", version)[:63].strip("-_.")
    meta = {"name": app, "labels": dict(labels)}
    if namespace:
        meta["namespace"] = namespace
    requests = {"cpu": _quantity(cpu_request, "cpu_request"), "memory": _quantity(memory_request, "memory_request")}
    limits = {}
    if cpu_limit:
        limits["cpu"] = _quantity(cpu_limit, "cpu_limit")
    if memory_limit:
        limits["memory"] = _quantity(memory_limit, "memory_limit")
    if gpu:
        limits["nvidia.com/gpu"] = int(gpu)
    port_name = "https" if pod_tls_secret else "http"
    probe = lambda path, delay, period, fails: {  # noqa: E731
        "httpGet": {"path": path, "port": port_name, **({"scheme": "HTTPS"} if pod_tls_secret else {})},
        "initialDelaySeconds": delay, "periodSeconds": period, "timeoutSeconds": 3, "failureThreshold": fails}
    container = {
        "name": "bento",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": port_name, "containerPort": port, "protocol": "TCP"}],
        "env": [{"name": "BENTOML_PORT", "value": str(port)}]
               + [{"name": k, "value": str(v)} for k, v in sorted((env or {}).items())],
        "resources": {"requests": requests, **({"limits": limits} if limits else {})},
        "startupProbe": probe("/livez", 2, 2, 60),
        "readinessProbe": probe("/readyz", 0, 5, 3),
        "livenessProbe": probe("/livez", 0, 10, 3),
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                            "capabilities": {"drop": ["ALL"]}},
    }
    if drain_s:
        # python3 is in every bundle image (its entrypoint); the pause lets endpoint removal
        # reach every proxy before SIGTERM, so no request lands on a closed socket
        container["lifecycle"] = {"preStop": {"exec": {"command": [
            "python3", "-c", f"import time; time.sleep({drain_s})"]}}}
    pod_spec: dict = {"terminationGracePeriodSeconds": drain_s + 30, "containers": [container],
                      "securityContext": {"runAsUser": 1034, "runAsGroup": 1034, "fsGroup": 1034}}
    extra = _auth_parts(app, meta, container, pod_spec, auth=auth, key_hashes=key_hashes, oidc=oidc,
                        rate_limit=rate_limit)
    if pod_tls_secret:
        # the Secret's directory (no subPath), read-only, readable by the image's group (fsGroup)
        container["env"] += [{"name": "NBDEPLOY_TLS_CERT", "value": f"{TLS_MOUNT}/tls.crt"},
                             {"name": "NBDEPLOY_TLS_KEY", "value": f"{TLS_MOUNT}/tls.key"}]
        container.setdefault("volumeMounts", []).append({"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True})
        pod_spec.setdefault("volumes", []).append(
            {"name": "tls", "secret": {"secretName": pod_tls_secret, "defaultMode": 0o440}})
    if gpu:
        pod_spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
        "spec": {
            "replicas": replicas,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "selector": {"matchLabels": {"app.kubernetes.io/name": app}},
            "template": {"metadata": {"labels": {**labels, **({"app.kubernetes.io/version": version_label}
                                                              if version_label else {})},
                                      "annotations": {"nbdeploy/bento": str(tag)}},
                         "spec": pod_spec},
        },
    }
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": copy.deepcopy(meta),
        "spec": {"type": service_type, "selector": {"app.kubernetes.io/name": app},
                 "ports": [{"name": port_name, "port": 443 if pod_tls_secret else 80, "targetPort": port_name,
                            "protocol": "TCP"}]},
    }
    hpa = {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": copy.deepcopy(meta),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": app},
            "minReplicas": min_replicas, "maxReplicas": max_replicas,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                "type": "Utilization", "averageUtilization": target_cpu}}}],
        },
    }
    pdb = {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": copy.deepcopy(meta),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": app}}},
    }
    out = [*extra, deployment, service, hpa]
    if ingress_host or tls_secret or ingress_class:
        out.append(_ingress(app, meta, ingress_host, tls_secret, ingress_class, backend_https=bool(pod_tls_secret)))
    out.append(pdb)
    if canary_image:
        out += _canary(app, deployment, service, meta, canary_tag or tag, canary_image, canary_weight, gateway,
                       namespace)
    return out


def _canary(app: str, deployment: dict, service: dict, meta: dict, tag: str, image: str, weight: int,
            gateway: str, namespace: str | None) -> list[dict]:
    """A one-replica Deployment + Service of the canary (its own name label, so that the two
    Deployments' selectors never overlap and the stable Deployment's selector stays as applied
    before) and the HTTPRoute that splits traffic by weight."""
    name = f"{app}-canary"[:63].rstrip("-")
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "nbdeploy",
              "app.kubernetes.io/part-of": app}
    cmeta = {**copy.deepcopy(meta), "name": name, "labels": labels}
    dep = copy.deepcopy(deployment)
    dep["metadata"] = cmeta
    dep["spec"]["replicas"] = 1
    dep["spec"]["selector"] = {"matchLabels": {"app.kubernetes.io/name": name}}
    tmpl = dep["spec"]["template"]
    version = str(tag).split(":", 1)[1] if ":" in str(tag) else "latest"
    version_label = re.sub(r"[^A-Za-z0-9_.-]", "-", version)[:63].strip("-_.")
    tmpl["metadata"]["labels"] = {**labels, **({"app.kubernetes.io/version": version_label} if version_label else {})}
    tmpl["metadata"]["annotations"] = {"nbdeploy/bento": str(tag)}
    tmpl["spec"]["containers"][0]["image"] = image
    svc = copy.deepcopy(service)
    svc["metadata"] = copy.deepcopy(cmeta)
    svc["spec"] = {**svc["spec"], "type": "ClusterIP", "selector": {"app.kubernetes.io/name": name}}
    port = service["spec"]["ports"][0]["port"]
    parent = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway}
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {**copy.deepcopy(meta), "name": app},
        "spec": {"parentRefs": [parent],
                 "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                            "backendRefs": [
                                {"group": "", "kind": "Service", "name": app, "port": port, "weight": 100 - weight},
                                {"group": "", "kind": "Service", "name": name, "port": port, "weight": weight}]}]},
    }
    if namespace:
        route["metadata"]["namespace"] = namespace
    return [dep, svc, route]


def _auth_parts(app: str, meta: dict, container: dict, pod_spec: dict, *, auth, key_hashes, oidc,
                rate_limit) -> list[dict]:
    """Env, volumes and the keys Secret of the access-control settings (changes the container)."""
    from .runtime.auth import HASH_PREFIX, AuthConfigError, parse_rate

    if auth not in (None, "off", "key", "oidc"):
        raise InvalidInputError("Unknown auth mode.", expected=["key", "oidc"], received=str(auth)[:20])
    env = container["env"]
    if rate_limit:
        try:
            parse_rate(rate_limit)
        except AuthConfigError as exc:
            raise InvalidInputError(str(exc), hint="e.g. '100/min' or '5/s'.") from None
        env.append({"name": "NBDEPLOY_RATE_LIMIT", "value": str(rate_limit)})
    if auth == "oidc":
        o = dict(oidc or {})
        if not o.get("issuer") or not o.get("audience"):
            raise InvalidInputError("OIDC needs an issuer and an audience.",
                                    hint="oidc={'issuer': 'https://idp.example.com/realms/x', 'audience': 'my-api'}")
        env.append({"name": "NBDEPLOY_AUTH", "value": "oidc"})
        for k, var in (("issuer", "NBDEPLOY_OIDC_ISSUER"), ("audience", "NBDEPLOY_OIDC_AUDIENCE"),
                       ("jwks_url", "NBDEPLOY_OIDC_JWKS_URL"), ("algorithms", "NBDEPLOY_OIDC_ALGORITHMS")):
            if o.get(k):
                env.append({"name": var, "value": ",".join(o[k]) if isinstance(o[k], list) else str(o[k])})
        if o.get("scopes"):
            env.append({"name": "NBDEPLOY_AUTH_SCOPES",
                        "value": ",".join(f"{r}={sc}" for r, sc in sorted(dict(o["scopes"]).items()))})
        return []
    if auth != "key":
        if key_hashes:
            raise InvalidInputError("key_hashes given without auth='key'.", hint="Pass auth='key'.")
        return []
    lines = []
    for ln in key_hashes or []:
        ln = str(ln).strip()
        if not ln or ln.startswith("#"):
            continue
        if not ln.startswith(HASH_PREFIX):
            raise InvalidInputError("Only salted key digests go into manifests, never a key itself.",
                                    hint="Create keys with `nbdeploy keys create NAME --file F` and pass "
                                         "the lines of F.")
        lines.append(ln)
    secret_name = f"{app}-api-keys"[:253]
    secret = {"apiVersion": "v1", "kind": "Secret",
              "metadata": dict(copy.deepcopy(meta), name=secret_name), "type": "Opaque",
              "stringData": {"api_keys": "".join(ln + "\n" for ln in lines)}}
    env += [{"name": "NBDEPLOY_AUTH", "value": "key"},
            {"name": "NBDEPLOY_API_KEYS_FILE", "value": f"{KEYS_MOUNT}/api_keys"}]
    # a whole-directory mount (no subPath): Kubernetes swaps the file in place when the Secret
    # changes, and the bundle rereads it
    container["volumeMounts"] = [{"name": "api-keys", "mountPath": KEYS_MOUNT, "readOnly": True}]
    pod_spec["volumes"] = [{"name": "api-keys", "secret": {"secretName": secret_name, "defaultMode": 0o440}}]
    return [secret]


def _ingress(app: str, meta: dict, host: str | None, tls_secret: str | None,
             ingress_class: str | None, *, backend_https: bool = False) -> dict:
    if not host or not _HOST.match(str(host)) or len(str(host)) > 253:
        raise InvalidInputError(f"An Ingress needs a DNS host name, not {str(host)[:80]!r}.",
                                hint="e.g. ingress_host='model.example.com'.")
    if tls_secret is not None and not _SECRET_NAME.match(str(tls_secret)):
        raise InvalidInputError(f"Invalid Secret name {str(tls_secret)[:80]!r}.",
                                hint="The name of a kubernetes.io/tls Secret in the same namespace.")
    spec: dict = {"rules": [{"host": host, "http": {"paths": [{
        "path": "/", "pathType": "Prefix",
        "backend": {"service": {"name": app, "port": {"name": "https" if backend_https else "http"}}}}]}}]}
    if ingress_class:
        spec["ingressClassName"] = str(ingress_class)
    if tls_secret:
        spec["tls"] = [{"hosts": [host], "secretName": tls_secret}]
    imeta = copy.deepcopy(meta)
    if backend_https:  # the pods speak HTTPS only; ingress-nginx's way to say so (others: see their docs)
        imeta["annotations"] = {"nginx.ingress.kubernetes.io/backend-protocol": "HTTPS"}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": imeta, "spec": spec}


def to_yaml(manifests: list[dict]) -> str:
    """A multi-document YAML string (``kubectl apply -f`` reads it)."""
    import yaml

    return yaml.safe_dump_all(manifests, sort_keys=False, default_flow_style=False)


def write_manifests(manifests: list[dict], path: str | Path) -> Path:
    """Write all manifests to one YAML file (or ``DIR/<name>.yaml`` if ``path`` is a directory)."""
    p = Path(path)
    if p.is_dir():
        p = p / f"{manifests[0]['metadata']['name']}.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(to_yaml(manifests))
    return p


def bundle_needs_gpu(bento) -> bool:
    """True when a bundle was built for CUDA (its model config says ``device: cuda``, or BentoML
    resources ask for a GPU). ``bento``: a tag, a ``bentoml.Bento`` or a built bento directory."""
    import json

    import yaml

    from .image import bento_dir

    d = bento_dir(bento)
    cfg = d / "src" / "model" / "config.json"
    if cfg.exists():
        try:
            if json.loads(cfg.read_text()).get("device") == "cuda":
                return True
        except ValueError:
            pass
    try:
        meta = yaml.safe_load((d / "bento.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    for svc in meta.get("services") or []:
        res = ((svc or {}).get("config") or {}).get("resources") or {}
        if res.get("gpu"):
            return True
    return False
