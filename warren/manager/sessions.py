"""What a node's session carries, as domain events: the dispatcher reads and
writes these; the gRPC adapter (``grpc_api``) turns them into protobuf and back.
"""

from __future__ import annotations

from dataclasses import dataclass

from warren.core.doctor import DoctorReport, DoctorRequest
from warren.core.models import NodeRole, Resources, Task, TaskStatus
from warren.core.node_view import NetworkView

# -- from the node ---------------------------------------------------------------


@dataclass(frozen=True)
class Registration:
    """The first event of every session."""

    hostname: str
    # The address the node asks to be shown at ("": where its session comes from).
    address: str
    resources: Resources
    # Its WireGuard identity in the mesh ("" and 0: it serves no network yet).
    wireguard_public_key: str = ""
    wireguard_port: int = 0


@dataclass(frozen=True)
class Heartbeat:
    """The node is alive (every event says so; this one says nothing else)."""


@dataclass(frozen=True)
class StatusReport:
    statuses: dict[str, TaskStatus]  # task ID -> its latest status


@dataclass(frozen=True)
class LogEntry:
    timestamp: float
    stream: str
    line: bytes


@dataclass(frozen=True)
class LogsChunk:
    """Part of the answer to a ``LogsRequest``."""

    request_id: str
    entries: list[LogEntry]
    done: bool
    error: str = ""


# A ``DoctorReport`` (warren.core.doctor) answers a ``DoctorRequest``.
NodeEvent = Registration | Heartbeat | StatusReport | LogsChunk | DoctorReport


# -- to the node ------------------------------------------------------------------


@dataclass(frozen=True)
class SessionStarted:
    node_id: str
    heartbeat_period: float
    managers: list[str]  # API addresses of every manager


@dataclass(frozen=True)
class Assignments:
    """A ``full`` set replaces what the node had; otherwise ``tasks`` are new or
    changed and ``removed`` are no longer the node's (it stops them)."""

    tasks: list[Task]
    removed: list[str]
    full: bool


@dataclass(frozen=True)
class LogsRequest:
    request_id: str
    task_id: str
    follow: bool
    tail: int


@dataclass(frozen=True)
class CancelLogs:
    request_id: str


# A ``NetworkView`` (warren.core.node_view) is what the node serves of the
# networks: sent after ``SessionStarted`` and again whenever it changes. A
# ``DoctorRequest`` asks for the network doctor's checks.
ManagerEvent = SessionStarted | Assignments | LogsRequest | CancelLogs | NetworkView | DoctorRequest


@dataclass(frozen=True)
class RoleUpdate:
    """The role the cluster wants for a node (its own stream, not its session)."""

    role: NodeRole
    desired_role: NodeRole | None  # MANAGER: a promotion waits for the node
    managers: list[str]
