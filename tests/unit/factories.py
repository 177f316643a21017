"""Builders for domain objects in tests: sensible defaults, override by keyword."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from warren.core.models import (
    Availability,
    ContainerSpec,
    Node,
    NodeRole,
    NodeStatus,
    Placement,
    ResourceRequirements,
    Resources,
    RestartPolicy,
    Service,
    ServiceMode,
    ServiceSpec,
    Task,
    TaskStatus,
)
from warren.core.states import TaskState
from warren.manager.snapshot import Snapshot

GIB = 1024**3

_ids = itertools.count(1)


def _next_id(prefix: str) -> str:
    return f"{prefix}-{next(_ids):05d}"


def make_node(
    id: str | None = None,
    *,
    hostname: str | None = None,
    role: NodeRole = NodeRole.WORKER,
    labels: dict[str, str] | None = None,
    status: NodeStatus = NodeStatus.READY,
    availability: Availability = Availability.ACTIVE,
    cpus: float = 4.0,
    memory_bytes: int = 8 * GIB,
) -> Node:
    """A ready, active worker with 4 CPUs and 8 GiB unless told otherwise."""
    node_id = id or _next_id("node")
    return Node(
        id=node_id,
        role=role,
        hostname=hostname or node_id,
        labels=dict(labels or {}),
        status=status,
        availability=availability,
        resources=Resources(cpus, memory_bytes),
    )


def make_service(
    name: str = "web",
    *,
    id: str | None = None,
    mode: ServiceMode = ServiceMode.REPLICATED,
    replicas: int = 1,
    constraints: Iterable[str] = (),
    cpus: float = 0.0,
    memory_bytes: int = 0,
    restart_policy: RestartPolicy | None = None,
    max_replicas_per_node: int = 0,
    spec_version: int = 1,
) -> Service:
    """A replicated ``nginx`` service; ``cpus``/``memory_bytes`` are its reservations."""
    spec = ServiceSpec(
        name=name,
        container=ContainerSpec(image="nginx:1.27"),
        mode=mode,
        replicas=replicas,
        resources=ResourceRequirements(reservations=Resources(cpus, memory_bytes)),
        placement=Placement(
            constraints=tuple(constraints), max_replicas_per_node=max_replicas_per_node
        ),
        restart=restart_policy or RestartPolicy(),
    )
    return Service(id=id or f"svc-{name}", spec=spec, spec_version=spec_version)


def make_task(
    service: Service | None = None,
    *,
    id: str | None = None,
    slot: int = 1,
    node_id: str = "",
    state: TaskState = TaskState.NEW,
    desired_state: TaskState = TaskState.RUNNING,
    timestamp: float = 0.0,
    created_at: float = 0.0,
    spec_version: int | None = None,
) -> Task:
    """A task of ``service`` (default: ``make_service()``) running its current spec.

    ``spec_version`` only labels the task; its spec stays the service's.
    """
    service = service or make_service()
    return Task(
        id=id or _next_id("task"),
        service_id=service.id,
        service_name=service.spec.name,
        spec=service.spec,
        spec_version=service.spec_version if spec_version is None else spec_version,
        slot=slot,
        node_id=node_id,
        desired_state=desired_state,
        status=TaskStatus(state=state, timestamp=timestamp),
        created_at=created_at,
    )


def make_snapshot(
    nodes: Iterable[Node] = (),
    services: Iterable[Service] = (),
    tasks: Iterable[Task] = (),
) -> Snapshot:
    return Snapshot.build(
        nodes={n.id: n for n in nodes},
        services={s.id: s for s in services},
        tasks={t.id: t for t in tasks},
    )
