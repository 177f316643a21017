"""Warren errors on the wire: gRPC status codes, HTTP statuses, and back."""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from warren.core.errors import Unavailable, WarrenError, error_from_code

# Trailing metadata key that carries Warren's own error code.
ERROR_CODE_KEY = "warren-error-code"
# ... and the leader's API address, when a follower cannot serve a request.
LEADER_KEY = "warren-leader"
# Request metadata: "linearizable" makes a read see every write committed
# before it started, wherever it is served.
CONSISTENCY_KEY = "warren-consistency"
LINEARIZABLE = "linearizable"

GRPC_STATUS: dict[str, grpc.StatusCode] = {
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "already_exists": grpc.StatusCode.ALREADY_EXISTS,
    "conflict": grpc.StatusCode.ABORTED,
    "failed_precondition": grpc.StatusCode.FAILED_PRECONDITION,
    "permission_denied": grpc.StatusCode.PERMISSION_DENIED,
    "unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "runtime_failure": grpc.StatusCode.INTERNAL,
    "image_not_found": grpc.StatusCode.NOT_FOUND,
    "internal": grpc.StatusCode.INTERNAL,
}

HTTP_STATUS: dict[str, int] = {
    "invalid_argument": 400,
    "not_found": 404,
    "already_exists": 409,
    "conflict": 409,
    "failed_precondition": 412,
    "permission_denied": 403,
    "unauthenticated": 401,
    "unavailable": 503,
    "runtime_failure": 500,
    "image_not_found": 404,
    "internal": 500,
}


def trailing_metadata(exc: grpc.RpcError) -> dict[str, str]:
    """The text entries of the error's trailing metadata (the last value of a key wins)."""
    # Typed as objects with key/value attributes, grpc's entries are really
    # (key, value) tuples (a namedtuple from sync calls): check, not assume.
    entries: Iterable[object] = exc.trailing_metadata() or ()
    text: dict[str, str] = {}
    for entry in entries:
        if isinstance(entry, tuple) and len(entry) == 2:
            key, value = entry
            if isinstance(key, str) and isinstance(value, str):
                text[key] = value
    return text


def error_from_rpc(exc: grpc.RpcError) -> WarrenError:
    """Rebuild the Warren error a server raised, or describe a transport failure."""
    code = trailing_metadata(exc).get(ERROR_CODE_KEY)
    details = exc.details() or str(exc.code())
    if code is not None:
        return error_from_code(code, details)
    status = exc.code()
    if status in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return Unavailable(_first_line(details))
    return error_from_code(_code_of(status), _first_line(details))


def leader_hint(exc: grpc.RpcError) -> str | None:
    """The leader's API address a follower named in its refusal, if any."""
    return trailing_metadata(exc).get(LEADER_KEY) or None


def _code_of(status: grpc.StatusCode) -> str:
    for code, mapped in GRPC_STATUS.items():
        if mapped == status:
            return code
    return "internal"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unknown error"
