"""Warren's own errors. Adapters convert third-party errors into these.

Each error carries a stable ``code`` that the gRPC and REST layers map to a
status, so one place decides what a client sees.
"""

from __future__ import annotations

# A message past this many characters keeps its head and its tail (the advice
# usually comes last); echoed values are bounded already (validation.show).
MAX_MESSAGE = 1024
_ELLIPSIS = "\u2026"


def safe_message(message: str, limit: int = MAX_MESSAGE) -> str:
    """A message fit for the wire: one line, control characters escaped, at most
    ``limit`` characters, cut in the middle so its start and end both stay."""
    text = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in message.strip())
    if not text:
        return "unknown error"
    if len(text) <= limit:
        return text
    tail = limit // 3
    head = limit - tail - 3
    return f"{text[:head]} {_ELLIPSIS} {text[-tail:]}"


class WarrenError(Exception):
    """Base class; ``code`` is stable and machine-readable."""

    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgument(WarrenError):
    code = "invalid_argument"


class NotFound(WarrenError):
    code = "not_found"


class AlreadyExists(WarrenError):
    code = "already_exists"


class Conflict(WarrenError):
    """A compare-and-swap lost: the object changed since it was read."""

    code = "conflict"


class FailedPrecondition(WarrenError):
    code = "failed_precondition"


class PermissionDenied(WarrenError):
    code = "permission_denied"


class Unauthenticated(WarrenError):
    code = "unauthenticated"


class Unavailable(WarrenError):
    """No leader, a timeout on consensus, or a manager that cannot be reached."""

    code = "unavailable"


class NotLeader(Unavailable):
    """This manager cannot serve the request; ``leader`` is where to go (API address)."""

    def __init__(self, message: str, leader: str = "") -> None:
        super().__init__(message)
        self.leader = leader


class RuntimeFailure(WarrenError):
    """A container runtime operation failed."""

    code = "runtime_failure"


class ImageNotFound(RuntimeFailure):
    code = "image_not_found"


ERRORS_BY_CODE: dict[str, type[WarrenError]] = {
    cls.code: cls
    for cls in (
        WarrenError,
        InvalidArgument,
        NotFound,
        AlreadyExists,
        Conflict,
        FailedPrecondition,
        PermissionDenied,
        Unauthenticated,
        Unavailable,
        RuntimeFailure,
        ImageNotFound,
    )
}


def error_from_code(code: str, message: str) -> WarrenError:
    """Rebuild a Warren error from its wire form (code + message)."""
    return ERRORS_BY_CODE.get(code, WarrenError)(message)
