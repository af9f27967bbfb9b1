"""What every request parser in the served bundle shares: :class:`ClientError` (a client
mistake, answered with a 4xx and a JSON body) and the float32 bound.

A leaf module: ``validation`` (rows), ``images`` (N-D tensors, image files) and ``text`` (strings)
import it, and ``validation`` dispatches to the other two, so imports point one way
(validation -> images/text -> clienterror), with no cycle.
"""

from __future__ import annotations

from typing import Any

F32_MAX = 3.4028234663852886e38  # float(np.finfo(np.float32).max)


class ClientError(Exception):
    """A client mistake: answered with ``status`` and a JSON body, never a 500."""

    def __init__(self, status: int, message: str, *, hint: str | None = None,
                 expected: Any = None, received: Any = None, column: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.hint = hint
        self.expected = expected
        self.received = received
        self.column = column

    def to_dict(self) -> dict:
        body = {"error": "invalid_request" if self.status == 400 else _REASONS.get(self.status, "error"),
                "message": self.message}
        if self.hint:
            body["hint"] = self.hint
        if self.expected is not None:
            body["expected"] = self.expected
        if self.received is not None:
            body["received"] = self.received
        if self.column is not None:
            body["column"] = self.column
        return body


_REASONS = {413: "too_large", 415: "unsupported_media_type", 404: "not_found",
            405: "method_not_allowed", 429: "overloaded", 503: "unavailable"}
