"""Where nbdeploy keeps its own state (servers, caches).  Bundles live in BentoML's store."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """``$NBDEPLOY_HOME`` or ``~/.nbdeploy``."""
    p = Path(os.environ.get("NBDEPLOY_HOME") or Path.home() / ".nbdeploy")
    p.mkdir(parents=True, exist_ok=True)
    return p


def servers_dir() -> Path:
    p = home() / "servers"
    p.mkdir(parents=True, exist_ok=True)
    return p
