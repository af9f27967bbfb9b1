"""JSON parsing with a nesting-depth bound, for request bodies from untrusted clients.

``json.loads`` recurses once per level: a body nested a few thousand levels deep (about
10 KB) raises ``RecursionError``, which web frameworks answer with a 500.  Anything a
little shallower still parses, and then breaks whatever walks it next (``repr``, numpy).
:func:`loads_bounded` refuses depth above a fixed bound *before* parsing, so a client
mistake stays a client error.  Pure standard library: it runs inside served bundles and in
the Jupyter server extension alike.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: far more than any nbdeploy request needs ({"inputs": [[...]]} is 3 levels deep) and well
#: under Python's recursion limit, so whatever walks the parsed value cannot recurse out
MAX_JSON_DEPTH = 64

# a JSON string, escapes included (only needed when the body has backslashes)
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_KEEP_QUOTES_BRACKETS = bytes(b for b in range(256) if b not in b'"[]{}')
_OPEN = frozenset(b"[{")


class JsonTooDeep(ValueError):
    """The body nests arrays/objects deeper than the bound."""

    def __init__(self, limit: int):
        super().__init__(f"the JSON nests arrays/objects more than {limit} levels deep")
        self.limit = limit


def json_depth_exceeds(raw: bytes | str, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when ``raw`` opens more than ``limit`` nested arrays/objects at some point."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if raw.count(b"[") + raw.count(b"{") <= limit:  # the common case costs two C scans
        return False
    if b"\\" in raw:  # escaped quotes: drop whole strings with a regex (slower, exact)
        raw = _STRING.sub(b"", raw)
    # Keep only quotes and brackets.  Without escapes, a bracket is inside a string exactly
    # when an odd number of quotes precede it; dropping adjacent quote pairs keeps that parity
    # and leaves, for typical bodies (keys and labels without brackets), brackets alone.
    kept = raw.translate(None, _KEEP_QUOTES_BRACKETS).replace(b'""', b"")
    depth, in_string = 0, False
    for c in kept:
        if c == 34:  # '"'
            in_string = not in_string
        elif in_string:
            continue
        elif c in _OPEN:
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def loads_bounded(raw: bytes | str, limit: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` that raises :class:`JsonTooDeep` (a ``ValueError``) for deep nesting.

    Other malformed input raises ``ValueError``/``UnicodeDecodeError`` as ``json.loads`` does.
    """
    if json_depth_exceeds(raw, limit):
        raise JsonTooDeep(limit)
    try:
        return json.loads(raw)
    except RecursionError as exc:  # cannot happen below the bound; kept as a last guard
        raise JsonTooDeep(limit) from exc
