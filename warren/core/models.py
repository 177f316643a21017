"""Typed domain models. Frozen: an update is a new object (``dataclasses.replace``).

Immutability is what makes store snapshots cheap: a snapshot copies dicts of
references, never the objects.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import signal
from dataclasses import dataclass, field
from enum import StrEnum

from warren.core import flat_spec, shapes
from warren.core.constraints import parse_constraint
from warren.core.errors import InvalidArgument
from warren.core.formats import FIRST_FORMAT, since
from warren.core.networks import Endpoint, EndpointSpec, NetworkAttachment
from warren.core.states import DESIRED_STATES, TaskState
from warren.core.validation import (
    INT32_MAX,
    MAX_SECONDS,
    bounded,
    clean_text,
    show,
    validate,
)

# Used with fullmatch: `$` would also accept a trailing newline.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
LABEL_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./-]{0,127}")
ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Far above any sane service, low enough that a typo can't swamp the store.
MAX_REPLICAS = 1_000
# Per node or per task: above any machine, below what JSON's numbers carry exactly.
MAX_CPUS = 4096.0
MAX_MEMORY_BYTES = 2**50  # 1 PiB
MAX_IMAGE_LENGTH = 1024
MAX_PATH_LENGTH = 4096
MAX_HOSTNAME_LENGTH = 253
# Status texts come from runtimes and are cut, never refused.
MAX_STATUS_TEXT = 4096

_SECONDS = bounded(minimum=0, maximum=MAX_SECONDS)
# A WireGuard key: 32 bytes, in base64 (44 characters with its padding).
WIREGUARD_KEY_BYTES = 32
WIREGUARD_KEY_LENGTH = 44


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


def check_wireguard_key(key: str, what: str = "WireGuard public key") -> None:
    """A WireGuard key as WireGuard writes it (base64 of 32 bytes), or a one-line error."""
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != WIREGUARD_KEY_BYTES or len(key) != WIREGUARD_KEY_LENGTH:
        raise InvalidArgument(f"invalid {what} {show(key)}: expected 32 bytes in base64")


def _check_labels(labels: dict[str, str], what: str) -> None:
    for key in labels:
        if not LABEL_KEY_RE.fullmatch(key):
            raise InvalidArgument(f"invalid {what} key {show(key)}")


@dataclass(frozen=True)
class Resources:
    cpus: float = field(default=0.0, metadata=bounded(minimum=0, maximum=MAX_CPUS))
    memory_bytes: int = field(default=0, metadata=bounded(minimum=0, maximum=MAX_MEMORY_BYTES))

    def __post_init__(self) -> None:
        validate(self)

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpus + other.cpus, self.memory_bytes + other.memory_bytes)


@dataclass(frozen=True)
class Node:
    id: str
    role: NodeRole
    hostname: str = field(metadata=bounded(max_length=MAX_HOSTNAME_LENGTH))
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
    # The node's WireGuard identity in the mesh, as it registers it: its public
    # key (base64 of 32 bytes; "" until it serves networks) and the UDP port it
    # listens on at ``address`` (0: none).
    wireguard_public_key: str = field(
        default="", metadata={**since(2), **bounded(max_length=WIREGUARD_KEY_LENGTH)}
    )
    wireguard_port: int = field(
        default=0, metadata={**since(2), **bounded(minimum=0, maximum=65535)}
    )

    def __post_init__(self) -> None:
        validate(self)
        _check_labels(self.labels, "node label")
        if self.wireguard_public_key:
            check_wireguard_key(self.wireguard_public_key)

    @property
    def schedulable(self) -> bool:
        return self.status == NodeStatus.READY and self.availability == Availability.ACTIVE


@dataclass(frozen=True)
class RestartPolicy:
    condition: RestartCondition = RestartCondition.ANY
    delay: float = field(default=5.0, metadata=_SECONDS)
    # 0: unlimited
    max_attempts: int = field(default=0, metadata=bounded(minimum=0, maximum=INT32_MAX))
    # Seconds over which attempts are counted; 0: forever.
    window: float = field(default=0.0, metadata=_SECONDS)

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class HealthCheck:
    """Exactly one probe: a command in the container, an HTTP GET, or a TCP connect."""

    cmd: tuple[str, ...] = ()  # run in the container; exit 0 is healthy
    # "PORT/PATH": a 2xx or 3xx answer is healthy
    http: str = field(default="", metadata=bounded(max_length=MAX_PATH_LENGTH))
    # A port that accepts a connection is healthy.
    tcp: int = field(default=0, metadata=bounded(minimum=0, maximum=65535))
    interval: float = field(default=30.0, metadata=_SECONDS)
    timeout: float = field(default=30.0, metadata=_SECONDS)
    # Consecutive failures that make a task unhealthy.
    retries: int = field(default=3, metadata=bounded(minimum=1, maximum=INT32_MAX))
    # Failures in this time after start don't count.
    start_period: float = field(default=0.0, metadata=_SECONDS)

    def __post_init__(self) -> None:
        validate(self)
        probes = sum((bool(self.cmd), bool(self.http), bool(self.tcp)))
        if probes != 1:
            raise InvalidArgument("a health check needs exactly one of cmd, http or tcp")
        if self.http:
            self.http_target()
        if self.interval <= 0 or self.timeout <= 0:
            raise InvalidArgument("health check interval and timeout must be positive")

    def http_target(self) -> tuple[int, str]:
        port, _, path = self.http.partition("/")
        if not port.isdigit() or not 0 < int(port) <= 65535:
            raise InvalidArgument(
                f"invalid HTTP health check {show(self.http)}: expected PORT/PATH"
            )
        return int(port), "/" + path


@dataclass(frozen=True)
class ContainerSpec:
    """What runs in each task's container; empty values keep what the image says.

    Secrets, configs and mounts (what the container sees of the outside) come
    here with their features."""

    image: str = field(metadata=bounded(max_length=MAX_IMAGE_LENGTH))
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: tuple[str, ...] = ()
    workdir: str = field(default="", metadata=bounded(max_length=MAX_PATH_LENGTH))
    user: str = field(default="", metadata=bounded(max_length=MAX_HOSTNAME_LENGTH))
    read_only: bool = False
    init: bool = False
    network_mode: NetworkMode = NetworkMode.PRIVATE
    stop_signal: str = "SIGTERM"
    stop_grace_period: float = field(default=10.0, metadata=_SECONDS)
    health: HealthCheck | None = None

    def __post_init__(self) -> None:
        validate(self)
        if not self.image.strip():
            raise InvalidArgument("image must not be empty")
        for key in self.env:
            if not ENV_KEY_RE.fullmatch(key):
                raise InvalidArgument(f"invalid environment variable name {show(key)}")
        if self.stop_signal not in signal.Signals.__members__:
            raise InvalidArgument(f"unknown stop signal {show(self.stop_signal)} (e.g. SIGTERM)")
        if self.workdir and not self.workdir.startswith("/"):
            raise InvalidArgument(f"workdir must be an absolute path, not {show(self.workdir)}")


@dataclass(frozen=True)
class ResourceRequirements:
    # Counted against a node's capacity when placing a task.
    reservations: Resources = field(default_factory=Resources)
    # Enforced on the container (cgroups).
    limits: Resources = field(default_factory=Resources)

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class Placement:
    """Where tasks may run. Volume affinity comes here with volumes."""

    constraints: tuple[str, ...] = ()
    # 0: unlimited
    max_replicas_per_node: int = field(default=0, metadata=bounded(minimum=0, maximum=MAX_REPLICAS))

    def __post_init__(self) -> None:
        validate(self)
        for expr in self.constraints:
            parse_constraint(expr)


@dataclass(frozen=True)
class ServiceSpec:
    """A service as its owner describes it, grouped as Swarm's is.

    Coming features add their own groups here: ``networks`` and ``endpoint``
    (VIP mode, published ports) with networking, ``update`` and ``rollback``
    with deploy strategies. Command format 1 wrote this flat
    (``warren.core.flat_spec``); that form is still read everywhere."""

    name: str
    container: ContainerSpec
    mode: ServiceMode = ServiceMode.REPLICATED
    replicas: int = field(default=1, metadata=bounded(minimum=0, maximum=MAX_REPLICAS))
    labels: dict[str, str] = field(default_factory=dict)
    resources: ResourceRequirements = field(default_factory=ResourceRequirements)
    placement: Placement = field(default_factory=Placement)
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    # The IDs of the networks its tasks join (the API resolves names), in order:
    # the first gives a task its default route.
    networks: tuple[str, ...] = field(default=(), metadata=since(2))
    # How it is reached: VIP or DNS round robin, and published ports.
    endpoint: EndpointSpec = field(default=EndpointSpec(), metadata=since(2))

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_RE.fullmatch(self.name):
            raise InvalidArgument(
                f"invalid service name {show(self.name)}: use 1-63 letters, digits, '_', '.' or '-'"
            )
        validate(self)
        _check_labels(self.labels, "service label")
        if len(set(self.networks)) != len(self.networks):
            raise InvalidArgument("a service joins each network once")
        if self.container.network_mode == NetworkMode.HOST and (
            self.networks or self.endpoint.ports
        ):
            raise InvalidArgument(
                "a service with host networking joins no network and publishes no port "
                "(its containers use the host's)"
            )


shapes.register(
    ServiceSpec,
    shapes.Reshape(
        since=2,
        is_old=flat_spec.is_flat,
        upgrade=flat_spec.nest,
        downgrade=flat_spec.flatten,
    ),
)


@dataclass(frozen=True)
class Service:
    id: str
    spec: ServiceSpec
    # Bumped on every spec change; tasks record the spec version they run.
    spec_version: int = 1
    created_at: float = 0.0
    updated_at: float = 0.0
    version: int = 0
    # What the allocator gave it for its spec's networks and endpoint: a VIP per
    # network (endpoint mode vip) and every published port with its number.
    endpoint: Endpoint = field(default=Endpoint(), metadata=since(2))

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class TaskStatus:
    state: TaskState = TaskState.NEW
    message: str = ""
    err: str = ""
    exit_code: int | None = field(
        default=None, metadata=bounded(minimum=-INT32_MAX - 1, maximum=INT32_MAX)
    )
    container_id: str = ""
    timestamp: float = 0.0
    health: Health = Health.NONE

    def __post_init__(self) -> None:
        # Written by runtimes, not users: made valid rather than refused.
        object.__setattr__(self, "message", clean_text(self.message, MAX_STATUS_TEXT))
        object.__setattr__(self, "err", clean_text(self.err, MAX_STATUS_TEXT))
        validate(self)


@dataclass(frozen=True)
class Task:
    id: str
    service_id: str
    service_name: str
    spec: ServiceSpec
    spec_version: int
    # Replicated services number their replicas 1..N; a global task has slot 0
    # and is bound to its node.
    slot: int = field(default=0, metadata=bounded(minimum=0, maximum=INT32_MAX))
    node_id: str = ""
    desired_state: TaskState = TaskState.RUNNING
    status: TaskStatus = field(default_factory=TaskStatus)
    created_at: float = 0.0
    updated_at: float = 0.0
    version: int = 0
    # Its address on each of its spec's networks, given when it is placed.
    networks: tuple[NetworkAttachment, ...] = field(default=(), metadata=since(2))

    def __post_init__(self) -> None:
        validate(self)
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
class ManagerFormat:
    """The highest command format a manager's code reads."""

    node_id: str
    command_format: int = field(
        default=FIRST_FORMAT, metadata=bounded(minimum=FIRST_FORMAT, maximum=INT32_MAX)
    )


# Keyword-only: the fields changed, and a stale positional call must fail loudly.
@dataclass(frozen=True, kw_only=True)
class Cluster:
    id: str
    ca_fingerprint: str
    # The replicated state lands in files (Raft journal, snapshots, backups), so
    # join-token secrets are never kept here in plain text: their SHA-256 hash is
    # what checks a joiner, and the secret sealed under a key only managers can
    # derive (from the CA key) is what shows the token again (see
    # warren.security.tokens).
    worker_token_hash: str = ""
    manager_token_hash: str = ""
    worker_token_sealed: str = ""
    manager_token_sealed: str = ""
    created_at: float = 0.0
    version: int = 0
    # Plain-text secrets as clusters before the hashes stored them. Only read from
    # old backups: a restore seals them.
    worker_token_secret: str = ""
    manager_token_secret: str = ""
    # The command format every manager reads, so the one commands are written in
    # (warren.core.formats), and the highest each manager's code reads. Absent
    # (an older backup): format 1.
    command_format: int = field(
        default=FIRST_FORMAT, metadata=bounded(minimum=FIRST_FORMAT, maximum=INT32_MAX)
    )
    manager_formats: tuple[ManagerFormat, ...] = ()
