"""One error hierarchy for every front end.

Every error carries a one-line ``message`` (what went wrong, with the numbers),
and an optional ``hint`` (what to do about it).  Front ends show both; the
traceback stays available through the usual ``__cause__`` chain.
"""

from __future__ import annotations


class NbdeployError(Exception):
    """Base class of every error nbdeploy raises on purpose."""

    #: HTTP status a web front end should answer with for this error.
    http_status: int = 500

    def __init__(self, message: str, *, hint: str | None = None, expected=None, received=None):
        self.message = message
        self.hint = hint
        self.expected = expected
        self.received = received
        super().__init__(message)

    def __str__(self) -> str:
        text = self.message
        if self.hint:
            text += f"\nHint: {self.hint}"
        return text

    def to_dict(self) -> dict:
        out = {"error": type(self).__name__, "message": self.message}
        if self.hint:
            out["hint"] = self.hint
        if self.expected is not None:
            out["expected"] = self.expected
        if self.received is not None:
            out["received"] = self.received
        return out


class InvalidInputError(NbdeployError, ValueError):
    """The caller gave something of the wrong shape, type or value (a client mistake)."""

    http_status = 400


class InvalidNameError(InvalidInputError):
    """A bundle name, tag or path that is not allowed."""


class UnsupportedModelError(NbdeployError, TypeError):
    """nbdeploy does not know how to convert this model."""

    http_status = 422


class MissingDependencyError(NbdeployError, ImportError):
    """An optional package is needed for this model or action."""

    http_status = 500


class ConversionError(NbdeployError):
    """The converter failed on a model nbdeploy claims to support."""

    http_status = 422


class VerificationError(NbdeployError):
    """The ONNX model does not agree with the native model on the sample."""

    http_status = 422


class BudgetExceededError(InvalidInputError):
    """A request asks for more work than the configured budget allows."""

    http_status = 413


class NotFoundError(NbdeployError, LookupError):
    """A bundle, version or server that does not exist."""

    http_status = 404


class BundleError(NbdeployError):
    """Building or reading a bundle failed."""


class ServeError(NbdeployError):
    """Starting, probing or stopping a server failed."""


class RegistryError(NbdeployError):
    """Pushing to or reading from a container registry failed."""

    http_status = 502


class RegistryUnreachableError(RegistryError):
    """The registry did not answer at all (connection errors after the client's retries)."""


def http_status(exc: BaseException) -> int:
    """The one place that maps exceptions to HTTP status codes."""
    if isinstance(exc, NbdeployError):
        return exc.http_status
    return 500


def missing(package: str, extra: str | None = None, why: str = "") -> MissingDependencyError:
    """Build the error for a missing optional package, naming the exact install command."""
    cmd = f"pip install 'nbdeploy[{extra}]'" if extra else f"pip install {package}"
    return MissingDependencyError(
        f"The package '{package}' is required{(' ' + why) if why else ''} but is not installed.",
        hint=f"Install it with: {cmd}",
    )


def brief(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line`` of an exception, at most ``limit`` characters: converters embed whole
    graphs in their messages (skl2onnx once put 659,120 characters of tree nodes in one)."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    line = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    if len(line) > limit:
        line = line[: limit - 3] + "..."
    return line
