#!/usr/bin/env bash
# Supply-chain audit, run by CI and by hand:
#   1. pyproject.toml's minimum versions are past the known CVEs of the packages nbdeploy
#      trusts with untrusted input (bentoml, onnx, jupyter-server, torch, ...);
#   2. the installed environment has those versions too;
#   3. pip-audit finds no known vulnerability in the installed environment.
# It fails loudly when pip-audit could not actually look packages up (no route to the
# vulnerability service, unknown packages): an audit that checked nothing must never pass.
#
# Environment: PYTHON (default python3), PIP_AUDIT_SERVICE (which vulnerability service:
# "pypi" = the package index's JSON API, the default; "osv" = the OSV service),
# AUDIT_ALLOW_SKIP (space-separated packages that may be un-auditable, e.g. local builds such
# as "torch"), AUDIT_OFFLINE=1 (only steps 1-2; says so and exits 3 so nobody mistakes it
# for a full pass).
# Exit codes: 0 clean, 1 vulnerability or pin too low, 2 pip-audit could not audit, 3 offline.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
SERVICE="${PIP_AUDIT_SERVICE:-pypi}"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

echo "== 1-2. minimum versions (pyproject.toml and installed) past known CVEs"
pins_rc=0
"$PY" - <<'EOF' || pins_rc=$?
import sys
from importlib import metadata

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from packaging.requirements import Requirement
from packaging.version import Version

# package: (first safe version, why).  "hard" ones fail the audit; "advice" ones warn.
HARD = {
    "bentoml": ("1.4.19", "CVE-2024-2912 (1.2.5), CVE-2025-27520 (1.4.3), CVE-2025-32375 (1.4.8): "
                          "pickle RCE; CVE-2025-54381 (1.4.19): SSRF in file inputs"),
    "onnx": ("1.17.0", "CVE-2024-27318 / CVE-2024-27319 (1.16.0): external-data traversal and "
                       "out-of-bounds read; CVE-2024-5187 (1.17.0): file overwrite in hub download"),
    "jupyter-server": ("2.14.1", "CVE-2024-35178: NTLM hash leak via /files on Windows"),
    "torch": ("2.6.0", "CVE-2025-32434: torch.load(weights_only=True) RCE"),
}
ADVICE = {
    "onnx": ("1.21.0", "CVE-2025-51480 (save_external_data traversal), CVE-2026-27489 (symlink "
                       "traversal), CVE-2026-34445 (ExternalDataInfo injection); verify against "
                       "the onnx advisories"),
    "jupyterlab": ("4.2.5", "CVE-2024-43805: XSS in Markdown preview"),
    "jupyter-lsp": ("2.2.2", "CVE-2024-22415: unauthenticated file access"),
    "starlette": ("0.47.2", "CVE-2024-47874 (0.40.0), CVE-2025-54121 (0.47.2): multipart DoS; "
                            "serves every bundle's HTTP API"),
}

def norm(name: str) -> str:
    return name.lower().replace("_", "-")

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = list(project.get("dependencies", []))
for extra in project.get("optional-dependencies", {}).values():
    reqs += extra
declared: dict[str, list[Requirement]] = {}
for r in map(Requirement, reqs):
    declared.setdefault(norm(r.name), []).append(r)

def minimum(req: Requirement) -> Version | None:
    lows = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=", ">")]
    return max(lows) if lows else None

failed = False
for table, fatal in ((HARD, True), (ADVICE, False)):
    for pkg, (safe, why) in table.items():
        level = "FAIL" if fatal else "WARN"
        for req in declared.get(pkg, []):
            low = minimum(req)
            if low is None or low < Version(safe):
                print(f"{level} pyproject: {req} allows versions before {safe}: {why}")
                failed |= fatal
            else:
                print(f"ok   pyproject: {req} (>= {safe})")
        try:
            have = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
        if Version(have).release < Version(safe).release:
            print(f"{level} installed: {pkg} {have} < {safe}: {why}")
            failed |= fatal
        else:
            print(f"ok   installed: {pkg} {have}")
sys.exit(1 if failed else 0)
EOF

if [ "${AUDIT_OFFLINE:-0}" = "1" ]; then
  echo "AUDIT_OFFLINE=1: pip-audit skipped; this is NOT a full audit." >&2
  [ "$pins_rc" != 0 ] && exit "$pins_rc"
  exit 3
fi

echo "== 3. pip-audit (service: $SERVICE)"
if ! "$PY" -m pip_audit --version >/dev/null 2>&1; then
  "$PY" -m pip install -q pip-audit
fi
set +e
"$PY" -m pip_audit --local --skip-editable --progress-spinner off --timeout 30 \
  --vulnerability-service "$SERVICE" --format json --output "$OUT/audit.json" 2>"$OUT/stderr"
audit_rc=$?
set -e
if [ ! -s "$OUT/audit.json" ]; then
  echo "FAIL pip-audit produced no report (exit $audit_rc):" >&2
  tail -20 "$OUT/stderr" >&2
  exit 2
fi

vuln_rc=0
"$PY" - "$OUT/audit.json" <<'EOF' || vuln_rc=$?
import json
import os
import sys

report = json.load(open(sys.argv[1]))
deps = report.get("dependencies", [])
allowed = set(os.environ.get("AUDIT_ALLOW_SKIP", "").lower().split())
try:  # the package under test is built here, not published: nothing to look up
    import tomllib
    allowed.add(tomllib.load(open("pyproject.toml", "rb"))["project"]["name"].lower())
except Exception:
    allowed.add("nbdeploy")
skipped = [d for d in deps if d.get("skip_reason") and d["name"].lower() not in allowed
           and "editable" not in d["skip_reason"]]   # nbdeploy itself, when installed with -e
vulnerable = [d for d in deps if d.get("vulns")]
audited = len(deps) - len([d for d in deps if d.get("skip_reason")])
print(f"pip-audit looked at {len(deps)} packages: {audited} audited, "
      f"{len(deps) - audited} skipped, {len(vulnerable)} with known vulnerabilities")
for d in vulnerable:
    for v in d["vulns"]:
        fixes = ", ".join(v.get("fix_versions") or []) or "no fix yet"
        print(f"VULN {d['name']} {d['version']}: {v['id']} {' '.join(v.get('aliases') or [])} "
              f"(fixed in: {fixes})")
if skipped:
    reasons = sorted({d["skip_reason"].split(":")[0] for d in skipped})
    print(f"FAIL {len(skipped)} packages could not be audited, e.g. "
          f"{', '.join(d['name'] for d in skipped[:8])}; reasons: {reasons}", file=sys.stderr)
    print("     The vulnerability service is probably unreachable from here (pip-audit's 'pypi' "
          "service needs the package index's JSON API, 'osv' needs the OSV service; choose "
          "with PIP_AUDIT_SERVICE). Run where it is reachable, or set AUDIT_ALLOW_SKIP for "
          "packages that are local builds.", file=sys.stderr)
    sys.exit(2)
sys.exit(1 if vulnerable else 0)
EOF
if [ "$vuln_rc" != 0 ]; then exit "$vuln_rc"; fi
exit "$pins_rc"
