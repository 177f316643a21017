"""Typed domain models. Frozen: an update is a new object (``dataclasses.replace``).

Immutability is what makes store snapshots cheap: a snapshot copies dicts of
references, never the objects.
"""

from __future__ import annotations

import math
import re
import secrets
import signal
from dataclasses import dataclass, field
from enum import StrEnum

from warren.core.constraints import parse_constraint
from warren.core.errors import InvalidArgument
from warren.core.states import DESIRED_STATES, TaskState

# Used with fullmatch: `$` would also accept a trailing newline.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
LABEL_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./-]{0,127}")
ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Far above any sane service, low enough that a typo can't swamp the store.
MAX_REPLICAS = 100_000


_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def new_id() -> str:
    """A random 25-character ID (base 36, like Swarm's): 128 random bits."""
    number = int.from_bytes(secrets.token_bytes(16), "big")
    digits = []
    for _ in range(25):
        number, digit = divmod(number, 36)
        digits.append(_BASE36[digit])
    return "".join(digits)


class NodeRole(StrEnum):
    MANAGER = "manager"
    WORKER = "worker"


class NodeStatus(StrEnum):
    UNKNOWN = "unknown"
    READY = "ready"
    DOWN = "down"


class Availability(StrEnum):
    ACTIVE = "active"
    PAUSE = "pause"
    DRAIN = "drain"


class ServiceMode(StrEnum):
    REPLICATED = "replicated"
    GLOBAL = "global"


class NetworkMode(StrEnum):
    PRIVATE = "private"  # its own network namespace (loopback until overlays exist)
    HOST = "host"  # the node's network namespace


class Health(StrEnum):
    NONE = ""  # no health check
    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class RestartCondition(StrEnum):
    NONE = "none"
    ON_FAILURE = "on-failure"
    ANY = "any"


def _check_labels(labels: dict[str, str], what: str) -> None:
    for key in labels:
        if not LABEL_KEY_RE.fullmatch(key):
            raise InvalidArgument(f"invalid {what} key '{key}'")


@dataclass(frozen=True)
class Resources:
    cpus: float = 0.0
    memory_bytes: int = 0

    def __post_init__(self) -> None:
        if not math.isfinite(self.cpus) or self.cpus < 0 or self.memory_bytes < 0:
            raise InvalidArgument("resources must be finite and not negative")

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpus + other.cpus, self.memory_bytes + other.memory_bytes)


@dataclass(frozen=True)
class Node:
    id: str
    role: NodeRole
    hostname: str
    address: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    availability: Availability = Availability.ACTIVE
    status: NodeStatus = NodeStatus.UNKNOWN
    status_message: str = ""
    resources: Resources = field(default_factory=Resources)
    # Where a manager serves its API and takes part in Raft; empty for workers.
    api_address: str = ""
    raft_address: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    version: int = 0
    # Filled in when read, never stored: leader, reachable or unreachable.
    manager_status: str = ""
    # MANAGER while a promotion waits for the node to take it up (node promote).
    desired_role: NodeRole | None = None

    def __post_init__(self) -> None:
        _check_labels(self.labels, "node label")

    @property
    def schedulable(self) -> bool:
        return self.status == NodeStatus.READY and self.availability == Availability.ACTIVE


@dataclass(frozen=True)
class RestartPolicy:
    condition: RestartCondition = RestartCondition.ANY
    delay: float = 5.0
    max_attempts: int = 0  # 0: unlimited
    window: float = 0.0  # seconds over which attempts are counted; 0: forever

    def __post_init__(self) -> None:
        if self.delay < 0 or self.window < 0:
            raise InvalidArgument("restart delay and window cannot be negative")
        if self.max_attempts < 0:
            raise InvalidArgument("restart max attempts cannot be negative")


@dataclass(frozen=True)
class HealthCheck:
    """Exactly one probe: a command in the container, an HTTP GET, or a TCP connect."""

    cmd: tuple[str, ...] = ()  # run in the container; exit 0 is healthy
    http: str = ""  # "PORT/PATH": a 2xx or 3xx answer is healthy
    tcp: int = 0  # a port that accepts a connection is healthy
    interval: float = 30.0
    timeout: float = 30.0
    retries: int = 3  # consecutive failures that make a task unhealthy
    start_period: float = 0.0  # failures in this time after start don't count

    def __post_init__(self) -> None:
        probes = sum((bool(self.cmd), bool(self.http), bool(self.tcp)))
        if probes != 1:
            raise InvalidArgument("a health check needs exactly one of cmd, http or tcp")
        if self.http:
            self.http_target()
        if not 0 <= self.tcp <= 65535:
            raise InvalidArgument(f"invalid health check port {self.tcp}")
        if self.interval <= 0 or self.timeout <= 0:
            raise InvalidArgument("health check interval and timeout must be positive")
        if self.retries < 1 or self.start_period < 0:
            raise InvalidArgument("health check retries must be 1 or more, start period 0 or more")

    def http_target(self) -> tuple[int, str]:
        port, _, path = self.http.partition("/")
        if not port.isdigit() or not 0 < int(port) <= 65535:
            raise InvalidArgument(f"invalid HTTP health check '{self.http}': expected PORT/PATH")
        return int(port), "/" + path


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    image: str
    mode: ServiceMode = ServiceMode.REPLICATED
    replicas: int = 1
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    constraints: tuple[str, ...] = ()
    reservations: Resources = field(default_factory=Resources)
    limits: Resources = field(default_factory=Resources)
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)
    max_replicas_per_node: int = 0  # 0: unlimited
    # The container: empty values keep what the image says.
    entrypoint: tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""
    read_only: bool = False
    init: bool = False
    network_mode: NetworkMode = NetworkMode.PRIVATE
    stop_signal: str = "SIGTERM"
    stop_grace_period: float = 10.0
    health: HealthCheck | None = None

    def __post_init__(self) -> None:
        if not NAME_RE.fullmatch(self.name):
            raise InvalidArgument(
                f"invalid service name '{self.name}': use 1-63 letters, digits, '_', '.' or '-'"
            )
        if not self.image.strip():
            raise InvalidArgument("image must not be empty")
        if not 0 <= self.replicas <= MAX_REPLICAS:
            raise InvalidArgument(
                f"replicas must be between 0 and {MAX_REPLICAS}, not {self.replicas}"
            )
        if self.max_replicas_per_node < 0:
            raise InvalidArgument("max replicas per node cannot be negative")
        for key in self.env:
            if not ENV_KEY_RE.fullmatch(key):
                raise InvalidArgument(f"invalid environment variable name '{key}'")
        _check_labels(self.labels, "service label")
        for expr in self.constraints:
            parse_constraint(expr)
        if self.stop_signal not in signal.Signals.__members__:
            raise InvalidArgument(f"unknown stop signal '{self.stop_signal}' (e.g. SIGTERM)")
        if self.stop_grace_period < 0:
            raise InvalidArgument("stop grace period cannot be negative")
        if self.workdir and not self.workdir.startswith("/"):
            raise InvalidArgument(f"workdir must be an absolute path, not '{self.workdir}'")


@dataclass(frozen=True)
class Service:
    id: str
    spec: ServiceSpec
    # Bumped on every spec change; tasks record the spec version they run.
    spec_version: int = 1
    created_at: float = 0.0
    updated_at: float = 0.0
    version: int = 0


@dataclass(frozen=True)
class TaskStatus:
    state: TaskState = TaskState.NEW
    message: str = ""
    err: str = ""
    exit_code: int | None = None
    container_id: str = ""
    timestamp: float = 0.0
    health: Health = Health.NONE


@dataclass(frozen=True)
class Task:
    id: str
    service_id: str
    service_name: str
    spec: ServiceSpec
    spec_version: int
    # Replicated services number their replicas 1..N; a global task has slot 0
    # and is bound to its node.
    slot: int = 0
    node_id: str = ""
    desired_state: TaskState = TaskState.RUNNING
    status: TaskStatus = field(default_factory=TaskStatus)
    created_at: float = 0.0
    updated_at: float = 0.0
    version: int = 0

    def __post_init__(self) -> None:
        if self.desired_state not in DESIRED_STATES:
            raise InvalidArgument(
                f"desired state must be running or shutdown, not {self.desired_state}"
            )

    @property
    def name(self) -> str:
        suffix = self.slot if self.slot else self.node_id[:12]
        return f"{self.service_name}.{suffix}"

    @property
    def holds_resources(self) -> bool:
        """Counts against its node: assigned and not yet known to be stopped."""
        return bool(self.node_id) and self.status.state.is_active


@dataclass(frozen=True)
class Cluster:
    id: str
    worker_token_secret: str
    manager_token_secret: str
    ca_fingerprint: str
    created_at: float = 0.0
    version: int = 0
