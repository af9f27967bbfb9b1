"""nbdeploy: from a notebook model to a verified, explained, served BentoML bundle.

``import nbdeploy`` is cheap: frameworks, BentoML and shap load only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import NbdeployError

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import Deployment, deploy
    from .scoring import score
    from .verify import Tolerance

__all__ = ["__version__", "deploy", "Deployment", "Tolerance", "NbdeployError", "load",
           "list_bundles", "list_servers", "score", "ImagePreprocess"]

_LAZY = {
    "deploy": ("pipeline", "deploy"),
    "Deployment": ("pipeline", "Deployment"),
    "load": ("pipeline", "load"),
    "Tolerance": ("verify", "Tolerance"),
    "list_bundles": ("store", "list_bundles"),
    "list_servers": ("serve", "list_servers"),
    "score": ("scoring", "score"),
    "ImagePreprocess": ("images", "ImagePreprocess"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{mod}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nbdeploy' has no attribute {name!r}")


# --- Jupyter hooks (kept tiny; the real work is imported on use) -------------------------------

def load_ipython_extension(ipython) -> None:
    """``%load_ext nbdeploy``"""
    from .magics import load_ipython_extension as _load

    _load(ipython)


def _jupyter_server_extension_points():
    return [{"module": "nbdeploy.server"}]


def _jupyter_labextension_paths():
    return [{"src": "labextension", "dest": "nbdeploy"}]
