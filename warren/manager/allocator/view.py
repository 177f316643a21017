"""The allocator's input, read from stored objects (pure: no store access)."""

from __future__ import annotations

from collections.abc import Iterable

from warren.core.models import Service, ServiceSpec, Task
from warren.core.networks import Network
from warren.manager.allocator.state import (
    AllocatorState,
    ServiceHolding,
    ServiceRequest,
    TaskHolding,
)


def allocator_state(
    networks: Iterable[Network], services: Iterable[Service], tasks: Iterable[Task]
) -> AllocatorState:
    """What the cluster holds: every network, every service's endpoint, and the
    addresses of every task its node has not stopped yet (freed after)."""
    return AllocatorState(
        networks=tuple(networks),
        services=tuple(service_holding(s) for s in services),
        tasks=tuple(
            TaskHolding(t.id, t.node_id, t.networks)
            for t in tasks
            if t.networks and t.holds_resources
        ),
    )


def service_holding(service: Service) -> ServiceHolding:
    return ServiceHolding(service.id, service.spec.name, service.spec.networks, service.endpoint)


def service_request(service_id: str, spec: ServiceSpec) -> ServiceRequest:
    return ServiceRequest(service_id, spec.name, spec.networks, spec.endpoint)
