"""The network doctor's findings (``warren network doctor``), as pure data.

The leader sends every node a ``DoctorRequest`` over its session; each node
answers one ``DoctorReport``: a row per check it ran from its own namespace
(WireGuard handshakes, round trips and path MTU to its peers, service names
asked from a container, connections to VIPs and published ports). The leader
adds a failed ``NODE`` row for a node that did not answer in time.

Only pure data lives here (``warren.manager`` gathers it, ``warren.agent``
makes it; neither imports the other).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from warren.core.errors import InvalidArgument
from warren.core.validation import bounded, validate

# How long the leader waits for the nodes' reports unless told otherwise.
DEFAULT_TIMEOUT = 8.0
MAX_TIMEOUT = 120.0
# A WireGuard session is renewed every 2 minutes while in use; older than this
# (the protocol's reject-after time) it carries nothing.
HANDSHAKE_MAX_AGE = 180.0

_TEXT = bounded(max_length=1000)


class CheckKind(StrEnum):
    NODE = "node"  # the node answered the doctor at all
    HANDSHAKE = "handshake"  # WireGuard handshake age with a peer
    ROUND_TRIP = "round-trip"  # a ping to a peer's gateway through the tunnel
    PATH_MTU = "path-mtu"  # a ping of the mesh MTU with don't-fragment set
    DNS = "dns"  # a service's name asked from a container's namespace
    VIP = "vip"  # a TCP connection to a service's VIP
    PUBLISHED = "published"  # a TCP connection to a published port on this node


class CheckResult(StrEnum):
    OK = "ok"
    FAIL = "fail"
    # Not run, and why in the detail (e.g. a simulated data plane, no port to try).
    SKIP = "skip"


@dataclass(frozen=True)
class DoctorCheck:
    """One row of the doctor's matrix; a failure says why and what to look at."""

    kind: CheckKind
    target: str = field(metadata=_TEXT)  # e.g. "peer n2", "web on front", "10.32.0.2:80"
    result: CheckResult
    detail: str = field(default="", metadata=_TEXT)  # a measurement, or the reason it failed
    hint: str = field(default="", metadata=_TEXT)  # failures: what to check next

    def __post_init__(self) -> None:
        validate(self)

    @property
    def failed(self) -> bool:
        return self.result is CheckResult.FAIL


@dataclass(frozen=True)
class DoctorRequest:
    """Run the checks; ``service`` (a service name, "" for all) limits the service checks."""

    request_id: str = field(metadata=bounded(max_length=64))
    service: str = field(default="", metadata=bounded(max_length=63))

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class DoctorReport:
    """A node's answer to one ``DoctorRequest``."""

    request_id: str = field(metadata=bounded(max_length=64))
    node_id: str = field(metadata=bounded(max_length=64))
    checks: tuple[DoctorCheck, ...] = ()
    # The node's hostname, as the leader knows it ("" from the node itself).
    hostname: str = field(default="", metadata=bounded(max_length=253))

    def __post_init__(self) -> None:
        validate(self)

    @property
    def failed(self) -> bool:
        return any(check.failed for check in self.checks)


def doctor_timeout(seconds: float) -> float:
    """How long the leader waits for the nodes: ``seconds``, or the default for 0."""
    if seconds == 0:
        return DEFAULT_TIMEOUT
    if not 0 < seconds <= MAX_TIMEOUT:
        raise InvalidArgument(f"doctor timeout must be 0 (default) to {MAX_TIMEOUT:g} seconds")
    return seconds


NO_ANSWER_HINT = "is it down? see 'warren node ls' and the node's agent log"


def no_answer(
    request_id: str, node_id: str, reason: str, hint: str = NO_ANSWER_HINT
) -> DoctorReport:
    """The leader's report for a node that gave none (or none it could read)."""
    check = DoctorCheck(CheckKind.NODE, f"node {node_id}", CheckResult.FAIL, reason, hint)
    return DoctorReport(request_id, node_id, (check,))
