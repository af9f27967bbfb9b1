"""Hatch build hook: build the JupyterLab extension into ``nbdeploy/labextension`` for the wheel.

The wheel ships it as shared data (``share/jupyter/labextensions/nbdeploy``, see
pyproject.toml), so ``pip install`` is all a user does.  The build runs ``npm ci``/``npm install``,
``tsc`` and JupyterLab's ``build-labextension.js`` directly (``jupyter labextension build`` goes
through ``jupyter_builder``, which needs network access to fetch core metadata).

It only runs when the output is missing or older than the TypeScript/CSS sources.
Environment:
  NBDEPLOY_SKIP_LABEXTENSION=1   never build (the wheel then has no sidebar unless already built)
  CI=true                        a failed or impossible build fails the wheel build (elsewhere: a warning)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCES = ("src", "style", "package.json", "package-lock.json", "tsconfig.json", "build.js")


def _newest(paths) -> float:
    newest = 0.0
    for p in paths:
        if p.is_file():
            newest = max(newest, p.stat().st_mtime)
        elif p.is_dir():
            for f in p.rglob("*"):
                if f.is_file():
                    newest = max(newest, f.stat().st_mtime)
    return newest


def labextension_is_stale(root: Path) -> bool:
    src = root / "labextension"
    out = root / "nbdeploy" / "labextension" / "package.json"
    if not src.is_dir():  # e.g. a wheel built from an sdist that already carries the output
        return False
    if not out.is_file() or not any((out.parent / "static").glob("remoteEntry.*.js")):
        return True
    return _newest(src / s for s in SOURCES) > out.stat().st_mtime


def _outer_path() -> str:
    """PATH without pip's build-env bin folders."""
    parts = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(p for p in parts if "pip-build-env" not in p)


def _staging_dir() -> str | None:
    """JupyterLab's staging folder (its core package.json) from the building or running Python."""
    try:
        import jupyterlab  # present when building in the target environment (no isolation)

        return str(Path(jupyterlab.__file__).parent / "staging")
    except ImportError:
        pass
    # pip's isolated build env hides the target environment through PYTHONPATH; look past it
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONNOUSERSITE")}
    for py in (os.environ.get("PYTHON"), shutil.which("python3", path=_outer_path()),
               shutil.which("python", path=_outer_path())):
        if not py:
            continue
        r = subprocess.run([py, "-c", "import jupyterlab, os; print(os.path.join("
                            "os.path.dirname(jupyterlab.__file__), 'staging'))"],
                           capture_output=True, text=True, env=env)
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout.strip()
    return None


def build_labextension(root: Path, log=print) -> None:
    ext = root / "labextension"
    npm = shutil.which("npm")
    node = shutil.which("node")
    if not npm or not node:
        raise RuntimeError("node and npm are needed to build the nbdeploy JupyterLab extension")
    staging = os.environ.get("JUPYTERLAB_STAGING") or _staging_dir()
    if not staging or not (Path(staging) / "package.json").is_file():
        raise RuntimeError("JupyterLab (>=4) must be importable to build the extension against its core "
                           "packages; set JUPYTERLAB_STAGING to <site-packages>/jupyterlab/staging")
    env = dict(os.environ, JUPYTERLAB_STAGING=staging)
    if not (ext / "node_modules" / "@jupyterlab" / "builder").is_dir():
        cmd = [npm, "ci"] if (ext / "package-lock.json").is_file() else [npm, "install"]
        log(f"nbdeploy: {' '.join(cmd)} in {ext}")
        subprocess.run(cmd + ["--no-audit", "--no-fund"], cwd=ext, env=env, check=True)
    log("nbdeploy: building the JupyterLab extension (tsc + build-labextension)")
    subprocess.run([npm, "run", "build"], cwd=ext, env=env, check=True)


class LabextensionBuildHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def dependencies(self) -> list[str]:
        # In an isolated build (pip's default) the target environment's JupyterLab is usually not
        # installed yet; the extension is built against JupyterLab's core packages, so ask for it.
        if self.target_name != "wheel" or os.environ.get("NBDEPLOY_SKIP_LABEXTENSION"):
            return []
        if labextension_is_stale(Path(self.root)) and not os.environ.get("JUPYTERLAB_STAGING"):
            return ["jupyterlab>=4.2,<5"]
        return []

    def initialize(self, version: str, build_data: dict) -> None:
        if self.target_name != "wheel":
            return
        root = Path(self.root)
        if os.environ.get("NBDEPLOY_SKIP_LABEXTENSION", "").lower() in ("1", "true", "yes"):
            self.app.display_warning("nbdeploy: NBDEPLOY_SKIP_LABEXTENSION set; not building the JupyterLab extension")
            return
        if not labextension_is_stale(root):
            return
        try:
            build_labextension(root, log=self.app.display_info)
        except Exception as exc:  # noqa: BLE001 - decide below whether this is fatal
            if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                raise
            self.app.display_warning(
                f"nbdeploy: the JupyterLab extension was not built ({exc}); the Python package works, "
                f"but the JupyterLab sidebar is missing. Install node/npm and reinstall to get it.")


if __name__ == "__main__":  # `python hatch_build.py` rebuilds by hand
    here = Path(__file__).resolve().parent
    if "--force" in sys.argv or labextension_is_stale(here):
        build_labextension(here)
    else:
        print("nbdeploy/labextension is up to date")
