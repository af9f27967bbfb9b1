#!/usr/bin/env bash
# Install everything the test suite needs, the way a new machine gets it, then run the suite.
# Used by the README's quick start and by CI (.ci/run) alike.
#
# By default every run builds a FRESH virtual environment (.venv-test, or $NBDEPLOY_TEST_VENV)
# with `python3 -m venv --clear` and installs the package into it with a regular
# `pip install ".[test]"`: the newest versions the pins allow, the wheel build (with its
# JupyterLab-extension build hook) exercised, nothing reused from an older environment.
#
#   NBDEPLOY_TEST_ENV=current bash scripts/test.sh [pytest args]
# runs the suite against the Python environment you already have (`python3` on PATH, or
# $PYTHON) and installs no Python packages; the system packages below are still installed.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/containers/test_image.py -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
# This script installs every tool the suite needs, so a missing one is a failure, not a skip.
export CI="${CI:-true}"
t_start=$(date +%s)

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

# System packages: a real registry, OCI tools and a base-image builder for the container
# tests, Chromium for the browser test, Node.js for the JupyterLab extension build, wrk for
# load tests, Java for Spark.
APT_PACKAGES="docker-registry skopeo umoci debootstrap apache2-utils chromium chromium-driver nodejs npm wrk
openjdk-17-jre-headless"
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

# the JupyterLab extension's build tools (TypeScript, JupyterLab builder) and playwright-core
# for the browser test; the package build below compiles the extension into the wheel
(cd labextension && npm ci --no-audit --no-fund --loglevel=error)

case "${NBDEPLOY_TEST_ENV:-fresh}" in
  current)
    PY="${PYTHON:-python3}"
    echo "== NBDEPLOY_TEST_ENV=current: testing the environment of $(command -v "$PY"), installing nothing into it"
    ;;
  fresh)
    VENV="${NBDEPLOY_TEST_VENV:-.venv-test}"
    echo "== fresh virtual environment $VENV"
    t0=$(date +%s)
    python3 -m venv --clear "$VENV"
    VIRTUAL_ENV="$(cd "$VENV" && pwd)"
    export VIRTUAL_ENV
    # the venv's tools (bentoml, nbdeploy, jupyter) come first on PATH for tests that run them
    export PATH="$VIRTUAL_ENV/bin:$PATH"
    PY="$VIRTUAL_ENV/bin/python"
    "$PY" -m pip install -q --upgrade pip || echo "(could not upgrade pip; using the venv's own)"
    # PyTorch: torch==2.13.0 exactly as pip's configuration resolves it. On the CI machine
    # that configuration (`pip config list`: a constraints file and a local find-links folder)
    # supplies the CPU build from local disk; a bare `torch` from the package index is a
    # multi-GB CUDA build. Elsewhere, set TORCH_INDEX_URL to a CPU wheel index. The line
    # printed below says which build was installed.
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
      "$PY" -m pip install -q "torch==2.13.0" --index-url "$TORCH_INDEX_URL"
    else
      "$PY" -m pip install -q "torch==2.13.0"
    fi
    "$PY" -c 'import torch; print("torch", torch.__version__, "CPU build" if torch.version.cuda is None else f"CUDA {torch.version.cuda} build")'
    # A regular (not editable) install: pip builds the wheel as it would for a user.
    "$PY" -m pip install -q ".[test]"
    echo "== fresh install took $(( $(date +%s) - t0 )) s"
    ;;
  *)
    echo "NBDEPLOY_TEST_ENV must be 'fresh' (default) or 'current', not '${NBDEPLOY_TEST_ENV}'" >&2
    exit 2
    ;;
esac
export PYTHON="$PY"
NBDEPLOY_TEST_ENV="${NBDEPLOY_TEST_ENV:-fresh}" "$PY" - <<'EOF'
import os
import importlib.metadata as md
import sys
from pathlib import Path

print("python", sys.version.split()[0], "at", sys.prefix)
print(", ".join(f"{d} {md.version(d)}" for d in ("nbdeploy", "bentoml", "onnxruntime", "numpy", "pandas",
                                                 "scikit-learn", "shap", "lime")))
# the wheel must carry the JupyterLab sidebar (built by hatch_build.py)
ext = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "nbdeploy"
if not any((ext / "static").glob("remoteEntry.*.js")):
    msg = f"the installed package has no JupyterLab extension under {ext}"
    if os.environ["NBDEPLOY_TEST_ENV"] == "fresh":
        sys.exit(msg)  # the wheel build lost the sidebar
    print("WARNING:", msg, "(an editable install, or one built without Node.js)")
EOF

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
          "the package index's JSON API or the OSV service is reachable." >&2 ;;
esac

echo "== ruff (lint; configuration in pyproject.toml)"
if [ "$#" = "0" ]; then
  # the whole tree on a full run; a partial run (pytest arguments given) skips the lint
  "$PY" -m ruff check nbdeploy tests benchmarks scripts hatch_build.py
fi

echo "== pytest"
set +e
"$PY" -m pytest -p no:cacheprovider -ra --durations=15 "$@"
rc=$?
set -e
echo "== total $(( $(date +%s) - t_start )) s"
if [ "$rc" = "5" ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$rc"
