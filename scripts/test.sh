#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian/Ubuntu machine, then run it.
# Used by the README's quick start and by CI (.ci/run) alike.
set -euo pipefail
cd "$(dirname "$0")/.."
# This script installs every tool the suite needs, so a missing one is a failure, not a skip.
export CI="${CI:-true}"

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

# System packages: a real registry, OCI tools and a base-image builder for the container
# tests, Chromium for the browser test, Node.js for the JupyterLab extension build.
APT_PACKAGES="docker-registry skopeo umoci debootstrap apache2-utils chromium chromium-driver nodejs npm wrk"
missing=""
for p in $APT_PACKAGES; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
# node/npm may already come from elsewhere (e.g. nodesource); don't fight it
if command -v node >/dev/null && command -v npm >/dev/null; then
  missing="$(echo "$missing" | sed 's/ nodejs//; s/ npm//')"
fi
if [ -n "$(echo "$missing" | tr -d ' ')" ] && command -v apt-get >/dev/null; then
  echo "== apt-get install$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
fi

echo "== pip install"
python3 -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# CPU build of PyTorch (a bare 'torch' can pull a multi-GB CUDA build)
python3 -m pip install -q "torch==2.13.0"
# the JupyterLab extension's build tools (TypeScript, JupyterLab builder) and playwright-core
# for the browser test; the package build below compiles the extension into the wheel
(cd labextension && npm ci --no-audit --no-fund --loglevel=error)
# a `jupyter labextension develop` link in the way of the wheel's shared data breaks pip
link="$(python3 -c 'import sys; print(sys.prefix)')/share/jupyter/labextensions/nbdeploy"
if [ -L "$link" ]; then echo "removing development link $link"; rm -f "$link"; fi
python3 -m pip install -q -e ".[test]"

echo "== supply-chain audit (scripts/audit.sh)"
set +e
bash scripts/audit.sh
audit_rc=$?
set -e
case "$audit_rc" in
  0) ;;
  1) echo "audit: a known vulnerability or a minimum version below a CVE fix (see above)" >&2; exit 1 ;;
  *) echo "audit: WARNING: pip-audit could not reach a vulnerability database from this machine;" \
          "only the CVE minimum-version checks ran (they passed). Run scripts/audit.sh where" \
          "pypi.org's JSON API or api.osv.dev is reachable." >&2 ;;
esac

echo "== pytest"
set +e
python3 -m pytest -p no:cacheprovider -ra --durations=15 "$@"
rc=$?
set -e
if [ "$rc" = "5" ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$rc"
