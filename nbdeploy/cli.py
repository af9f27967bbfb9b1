"""The ``nbdeploy`` command line: a thin front end over the Python API."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .errors import NbdeployError


def _print_event(ev) -> None:
    if ev.state == "running" and ev.fraction is None:
        print(f"  {ev.step:<9} ...", flush=True)
    elif ev.state in ("done", "failed", "skipped"):
        mark = {"done": "ok", "failed": "FAILED", "skipped": "skip"}[ev.state]
        print(f"  {ev.step:<9} {mark:<6} {ev.elapsed_s:6.2f}s  {ev.summary}", flush=True)


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(port=args.port, keep_serving=args.keep_serving, progress=_print_event)


def cmd_list(args) -> int:
    if args.json:
        from .serve import list_servers
        from .store import list_bundles

        print(json.dumps({"bundles": [b.to_dict() for b in list_bundles(args.name)],
                          "servers": [s.to_dict() for s in list_servers()]}, indent=1))
        return 0
    from .listing import list_tables, render_text

    print(render_text(list_tables(args.name, build_hint="`nbdeploy demo`")))
    return 0


def cmd_serve(args) -> int:
    from .serve import start

    if args.auth == "key":  # the local key file (nbdeploy keys create); reread when it changes
        from . import keys

        if not keys.list_keys():
            print(f"created API key 'default' (shown once, keep it): {keys.create('default')}")
    h = start(args.tag, port=args.port, host=args.host, stable=args.stable, engine=args.engine,
              tls_cert=args.tls_cert, tls_key=args.tls_key, auth=args.auth)
    print(f"serving {h.tag} at {h.url} (pid {h.pid}); stop with: nbdeploy stop {h.name}")
    return 0


def cmd_keys(args) -> int:
    from . import keys
    from .errors import InvalidInputError

    if args.action != "list" and not args.name:
        raise InvalidInputError(f"`nbdeploy keys {args.action}` needs the key's name.",
                                hint=f"e.g. nbdeploy keys {args.action} ci")
    if args.action == "create":
        key = keys.create(args.name, args.file)
        print(f"API key {args.name!r} (shown once; only its salted hash is kept in "
              f"{keys.keys_file(args.file)}):\n{key}")
    elif args.action == "revoke":
        keys.revoke(args.name, args.file)
        print(f"revoked {args.name!r}; servers reading {keys.keys_file(args.file)} refuse it within a second")
    else:
        found = keys.list_keys(args.file)
        for k in found:
            print(f"{k.name}\tcreated {k.created}")
        if not found:
            print("(no API keys)")
    return 0


def cmd_rollout(args) -> int:
    from .serve import rollout

    guard = {k: v for k, v in (("max_error_rate", args.guard_error_rate),
                               ("max_latency_ratio", args.guard_latency_ratio)) if v is not None}
    h = rollout(args.name, args.tag, canary=args.canary, guard=guard or None)
    if args.canary is None:
        print(f"{h.url} now serves {h.tag}")
    else:
        print(f"{h.url} sends {args.canary:g}% of requests to {args.tag} (canary); "
              f"finish with: nbdeploy promote {h.name} | nbdeploy rollback {h.name}")
    return 0


def cmd_promote(args) -> int:
    from .serve import promote

    h = promote(args.name)
    print(f"{h.url} now serves {h.tag}")
    return 0


def cmd_rollback(args) -> int:
    from .serve import rollback

    h = rollback(args.name)
    print(f"{h.url} now serves {h.tag}")
    return 0


def cmd_rollout_status(args) -> int:
    from .serve import rollout_status

    st = rollout_status(args.name)
    if args.json:
        print(json.dumps(st, indent=1))
        return 0
    for role in ("primary", "canary"):
        v = st.get(role)
        if v:
            share = st["weight"] if role == "canary" else 1 - st["weight"]
            print(f"{role}\t{v['tag']}\t{share:.0%} of requests\t{v['requests']} answered\t"
                  f"errors {v['error_rate']:.2%}\tmean {v['mean_ms']:.2f} ms"
                  + (f"\tpredictions differing from the primary: {v['differ_share']:.1%} of "
                     f"{v['compared_rows']} rows" if v.get("differ_share") is not None else "")
                  + ("\tdrift: " + (", ".join(v["drift"]["drifted_features"]) or "none")
                     if (v.get("drift") or {}).get("drifted_features") is not None else ""))
    for e in st.get("events", [])[-5:]:
        print(f"event\t{e.get('op')} {e.get('tag')}" + (f" ({e['reason']})" if e.get("reason") else ""))
    return 0


def cmd_stop(args) -> int:
    from .serve import stop

    for h in stop(args.name):
        print(f"stopped {h.tag} at {h.url}")
    return 0


def cmd_logs(args) -> int:
    from .serve import require

    for h in require(args.name):
        print(h.logs(tail=args.tail))
    return 0


def cmd_delete(args) -> int:
    from .store import delete

    print(f"deleted {delete(args.tag)}")
    return 0


def cmd_prune(args) -> int:
    from .store import prune

    removed = prune(args.name, keep=args.keep)
    print("\n".join(f"deleted {t}" for t in removed) or "nothing to delete")
    return 0


def cmd_report(args) -> int:
    from .store import read_report

    report = read_report(args.tag)
    if getattr(args, "columns", False):
        from .report import column_rows

        columns = (report.get("input_schema") or {}).get("columns") or []
        rows = [["COLUMN", "KIND", "DTYPE", "NULL", "CATEGORIES"]] + [
            [str(x) for x in r] for r in column_rows(columns)]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            print("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4])
        return 0
    print(json.dumps(report, indent=1, default=str))
    return 0


def cmd_push(args) -> int:
    from .publish import push

    result = push(args.tag, args.ref, builder=args.builder, base=args.base,
                  insecure=True if args.insecure else None)
    print(result.pinned)
    return 0


def cmd_k8s(args) -> int:
    from .k8s import bundle_needs_gpu, k8s_manifests, to_yaml, write_manifests
    from .store import get

    bento = get(args.tag)
    hashes = None
    if args.auth == "key":  # only the salted digests of the key file go into the Secret
        from .keys import keys_file

        hashes = keys_file(args.keys_file).read_text(encoding="utf-8").splitlines() \
            if keys_file(args.keys_file).exists() else []
    oidc = {"issuer": args.oidc_issuer, "audience": args.oidc_audience} if args.auth == "oidc" else None
    manifests = k8s_manifests(str(bento.tag), args.image, replicas=args.replicas,
                              min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                              gpu=bundle_needs_gpu(bento), auth=args.auth, key_hashes=hashes,
                              oidc=oidc, rate_limit=args.rate_limit, ingress_host=args.ingress_host,
                              tls_secret=args.tls_secret, pod_tls_secret=args.pod_tls_secret,
                              drain_s=args.drain_s,
                              canary_image=args.canary_image, canary_tag=args.canary_tag,
                              canary_weight=args.canary_weight, gateway=args.gateway)
    if args.output:
        print(f"wrote {write_manifests(manifests, args.output)}")
    else:
        print(to_yaml(manifests))
    return 0


def cmd_export(args) -> int:
    from .export import export_bundle

    print(f"exported to {export_bundle(args.tag, args.path, overwrite=args.overwrite, sign_key=args.sign)}")
    return 0


def cmd_import(args) -> int:
    from .archive import import_bundle

    print(f"imported {import_bundle(args.path, trust=args.trust, trusted_keys=args.trusted_key)}")
    return 0


def cmd_score(args) -> int:
    from .scoring import score

    result = score(args.tag, args.input, output=args.output, explain=args.explain,
                   batch_size=args.batch_size, rejects=args.rejects, overwrite=args.overwrite,
                   keep_columns=args.keep or None, progress=True)
    print(result)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    p = argparse.ArgumentParser(prog="nbdeploy",
                                description="Deploy notebook models as verified, explained BentoML bundles.")
    p.add_argument("--version", action="version", version=f"nbdeploy {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("demo", help="train a RandomForest on breast-cancer data, deploy, serve, query, stop")
    s.add_argument("--port", type=int, default=None)
    s.add_argument("--keep-serving", action="store_true", help="leave the server running")
    s.set_defaults(fn=cmd_demo)

    s = sub.add_parser("list", help="bundles in the store and running servers")
    s.add_argument("name", nargs="?", help="only this bundle's versions")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_list)

    s = sub.add_parser("serve", help="serve a bundle in the background with `bentoml serve`")
    s.add_argument("tag", help="NAME or NAME:VERSION")
    s.add_argument("--port", type=int, default=None)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--stable", action="store_true",
                   help="keep this address across versions (versions hot-swapped in one process), "
                        "for `nbdeploy rollout`")
    s.add_argument("--engine", choices=["bentoml", "direct"], default="bentoml",
                   help="bentoml: stock `bentoml serve` (default); direct: the bundle's own app on uvicorn "
                        "(same API, faster, lighter)")
    s.add_argument("--tls-cert", default=None, help="PEM certificate: serve HTTPS only (with --tls-key)")
    s.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    s.add_argument("--auth", choices=["off", "key", "oidc"], default="off",
                   help="key: require an API key from `nbdeploy keys` (Authorization: Bearer KEY); "
                        "oidc: a JWT from $NBDEPLOY_OIDC_ISSUER for $NBDEPLOY_OIDC_AUDIENCE")
    s.set_defaults(fn=cmd_serve)

    s = sub.add_parser("keys", help="API keys for servers started with --auth key (create, list, revoke)")
    s.add_argument("action", choices=["create", "list", "revoke"])
    s.add_argument("name", nargs="?", default=None, help="the key's name (create, revoke)")
    s.add_argument("--file", default=None, help="key file (default: $NBDEPLOY_HOME/api_keys)")
    s.set_defaults(fn=cmd_keys)

    s = sub.add_parser("rollout", help="switch a --stable server to another version with no failed request")
    s.add_argument("name", help="server id or bundle name")
    s.add_argument("tag", help="NAME:VERSION (or NAME for the latest)")
    s.add_argument("--canary", type=float, default=None, metavar="PERCENT",
                   help="send only this share of requests to the new version until promote/rollback")
    s.add_argument("--guard-error-rate", type=float, default=None, metavar="MARGIN",
                   help="with --canary: roll back by itself when the canary's error rate passes the "
                        "primary's by this margin (e.g. 0.05)")
    s.add_argument("--guard-latency-ratio", type=float, default=None, metavar="RATIO",
                   help="with --canary: roll back by itself when the canary's mean latency passes "
                        "RATIO x the primary's")
    s.set_defaults(fn=cmd_rollout)

    s = sub.add_parser("promote", help="give a canary in progress all requests")
    s.add_argument("name", help="server id or bundle name")
    s.set_defaults(fn=cmd_promote)

    s = sub.add_parser("rollback", help="stop a canary, or return to the version served before")
    s.add_argument("name", help="server id or bundle name")
    s.set_defaults(fn=cmd_rollback)

    s = sub.add_parser("status", help="a --stable server's versions, canary share and "
                                              "per-version error rate and latency")
    s.add_argument("name", help="server id or bundle name")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_rollout_status)

    s = sub.add_parser("stop", help="stop the servers of a bundle (name, tag or server id)")
    s.add_argument("name")
    s.set_defaults(fn=cmd_stop)

    s = sub.add_parser("logs", help="print a running server's log")
    s.add_argument("name")
    s.add_argument("--tail", type=int, default=200)
    s.set_defaults(fn=cmd_logs)

    s = sub.add_parser("delete", help="delete one bundle version")
    s.add_argument("tag", help="NAME:VERSION")
    s.set_defaults(fn=cmd_delete)

    s = sub.add_parser("prune", help="delete old versions of a bundle")
    s.add_argument("name")
    s.add_argument("--keep", type=int, default=3)
    s.set_defaults(fn=cmd_prune)

    s = sub.add_parser("push", help="build an OCI image of a bundle (no Docker daemon) and push it")
    s.add_argument("tag", help="NAME or NAME:VERSION")
    s.add_argument("ref", help="registry/repository:tag, e.g. registry.example.com/me/churn:1")
    s.add_argument("--builder", default="oci", choices=["oci", "auto", "bentoml", "docker", "podman", "buildah"])
    s.add_argument("--base", default=None,
                   help="base image with Python 3.11, e.g. a mirror reachable from here "
                        "(default: $NBDEPLOY_BASE_IMAGE, else python:3.11-slim from Docker Hub)")
    s.add_argument("--insecure", action="store_true", help="allow plain HTTP to a non-loopback registry")
    s.set_defaults(fn=cmd_push)

    s = sub.add_parser("k8s", help="write Kubernetes manifests (Deployment, Service, HPA) for a pushed image")
    s.add_argument("tag")
    s.add_argument("--image", required=True, help="the pushed image reference")
    s.add_argument("-o", "--output", help="file or folder to write (default: print YAML)")
    s.add_argument("--replicas", type=int, default=1)
    s.add_argument("--min-replicas", type=int, default=1)
    s.add_argument("--max-replicas", type=int, default=5)
    s.add_argument("--auth", choices=["key", "oidc"], default=None,
                   help="key: a Secret with the key hashes of --keys-file; oidc: --oidc-issuer/--oidc-audience")
    s.add_argument("--keys-file", default=None, help="an `nbdeploy keys` file (default: $NBDEPLOY_HOME/api_keys)")
    s.add_argument("--oidc-issuer", default=None)
    s.add_argument("--oidc-audience", default=None)
    s.add_argument("--rate-limit", default=None, help="e.g. 100/min per key or token subject")
    s.add_argument("--ingress-host", default=None, help="add an Ingress for this host name")
    s.add_argument("--tls-secret", default=None, help="kubernetes.io/tls Secret for the Ingress (HTTPS)")
    s.add_argument("--pod-tls-secret", default=None,
                   help="kubernetes.io/tls Secret mounted into the pod: the bundle serves HTTPS itself")
    s.add_argument("--drain-s", type=int, default=10, help="preStop pause before a pod stops (seconds)")
    s.add_argument("--canary-image", default=None, help="a canary Deployment of this image, behind --gateway")
    s.add_argument("--canary-tag", default=None, help="the canary image's bundle tag (recorded on its pods)")
    s.add_argument("--canary-weight", type=int, default=10, help="percent of requests to the canary")
    s.add_argument("--gateway", default=None, help="Gateway API Gateway for the canary's weighted HTTPRoute")
    s.set_defaults(fn=cmd_k8s)

    s = sub.add_parser("export", help="write a bundle as one archive that `bentoml import` reads")
    s.add_argument("tag")
    s.add_argument("path")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--sign", metavar="KEY", default=None,
                   help="sign the archive's manifest with this Ed25519 private key (PEM or OpenSSH)")
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("import", help="import a bundle archive written by `nbdeploy export` "
                                      "(checked: layout, links, pickles, manifest, code)")
    s.add_argument("path")
    s.add_argument("--trust", action="store_true",
                   help="accept code (service.py, nbdeploy_runtime/) that differs from this "
                        "nbdeploy release's, and archives without a manifest: serving runs it")
    s.add_argument("--trusted-key", metavar="PUBKEY", action="append", default=None,
                   help="require a signature by this Ed25519 public key (repeatable); a bundle "
                        "so signed may carry code from another nbdeploy release")
    s.set_defaults(fn=cmd_import)

    s = sub.add_parser("score", help="score a Parquet, CSV or JSON-lines file (or folder) with a "
                                     "bundle, in chunks; writes Parquet or CSV")
    s.add_argument("tag", help="NAME, NAME:VERSION or an exported archive")
    s.add_argument("input", help="a .parquet, .csv or .jsonl file, or a folder of them")
    s.add_argument("output", help="a .parquet or .csv file to write")
    s.add_argument("--explain", action="store_true", help="add SHAP columns (shap_<column>, shap_base)")
    s.add_argument("--batch-size", type=int, default=None, metavar="N", help="rows per chunk (default 20000)")
    s.add_argument("--rejects", metavar="PATH",
                   help="write bad rows to this JSON-lines file and score the rest (default: stop at "
                        "the first bad row)")
    s.add_argument("--keep", action="append", metavar="COLUMN", help="copy this input column to the output")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(fn=cmd_score)

    s = sub.add_parser("report", help="print a bundle's model card (JSON)")
    s.add_argument("tag")
    s.add_argument("--columns", action="store_true",
                   help="print only the input columns: kind, dtype, whether null is accepted, categories")
    s.set_defaults(fn=cmd_report)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "fn", None):
        parser.print_help()
        return 1
    try:
        return int(args.fn(args) or 0)
    except NbdeployError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
