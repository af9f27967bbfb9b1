"""keys: API keys for local serving (``nbdeploy keys create/list/revoke``).

The key file (``$NBDEPLOY_HOME/api_keys``, mode 0600) holds one salted SHA-256 digest per
line, ``nbd-sha256$SALT$DIGEST NAME  # created ...``: the format the served bundle's
``nbdeploy_runtime.auth`` reads from ``$NBDEPLOY_API_KEYS_FILE``.  A key is shown once, when
it is created, and never stored.  A server started with ``--auth key`` rereads the file when it
changes, so a revoked key stops working within a second, without a restart.

For a deployment, mount the same kind of file as a Kubernetes Secret (``nbdeploy k8s
--auth key``) and point ``$NBDEPLOY_API_KEYS_FILE`` at it.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidInputError, NotFoundError
from .paths import home
from .runtime.auth import HASH_PREFIX, hash_key, new_key

ENV_VAR = "NBDEPLOY_API_KEYS_FILE"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class KeyInfo:
    name: str
    created: str

    def to_dict(self) -> dict:
        return {"name": self.name, "created": self.created}


def keys_file(path: str | os.PathLike | None = None) -> Path:
    return Path(path) if path else home() / "api_keys"


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    os.replace(tmp, path)  # atomic: a server rereading it never sees half a file


def list_keys(path: str | os.PathLike | None = None) -> list[KeyInfo]:
    out = []
    for line in _lines(keys_file(path)):
        body, _, comment = line.partition("#")
        parts = body.split()
        if len(parts) >= 2 and parts[0].startswith(HASH_PREFIX):
            out.append(KeyInfo(parts[1], comment.replace("created", "").strip()))
    return out


def create(name: str, path: str | os.PathLike | None = None) -> str:
    """Add a key named ``name``; returns the key itself (shown once, never stored)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInputError(f"Invalid key name {str(name)[:80]!r}.",
                                hint="Letters, digits, '_', '.', '-'; at most 63; e.g. 'ci' or 'alice'.")
    p = keys_file(path)
    if any(k.name == name for k in list_keys(p)):
        raise InvalidInputError(f"A key named {name!r} exists already.",
                                hint=f"Revoke it first (nbdeploy keys revoke {name}) or pick another name.")
    key = new_key()
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    _write(p, _lines(p) + [f"{hash_key(key)} {name}  # created {now}"])
    return key


def revoke(name: str, path: str | os.PathLike | None = None) -> None:
    p = keys_file(path)
    lines = _lines(p)
    keep = [ln for ln in lines if not (ln.split("#")[0].split()[1:2] == [name]
                                       and ln.startswith(HASH_PREFIX))]
    if len(keep) == len(lines):
        raise NotFoundError(f"No key named {str(name)[:80]!r}.",
                            hint="`nbdeploy keys list` shows the key names.")
    _write(p, keep)


def snippet_auth(server) -> tuple[str, str, str]:
    """What the curl/Python snippets of a local server add when it requires a bearer key or
    token: ``(curl header line, Python import line, requests keyword)``.  The key itself is never
    written into a snippet (snippets end up in notebooks and reports): it is read from
    ``$NBDEPLOY_API_KEY`` (or ``$NBDEPLOY_TOKEN`` for an OIDC access token)."""
    auth = getattr(server, "auth", "off") if server is not None else "off"
    if auth not in ("key", "oidc"):
        return "", "", ""
    var = "NBDEPLOY_TOKEN" if auth == "oidc" else "NBDEPLOY_API_KEY"
    return (f'  -H "Authorization: Bearer ${var}" \\\n', "import os\n",
            ', headers={"Authorization": f"Bearer {os.environ[\'' + var + '\']}"}')
