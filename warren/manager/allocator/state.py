"""What the allocator reads: the networks and the addresses and ports in use.

A small frozen view the caller builds from the store (a mapping, nothing
more), so the allocation functions stay pure and are tested without a store.
An address or a port is *in use* exactly while something here holds it:
freeing is the caller no longer listing a task or a service.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

from warren.core.errors import InvalidArgument, NotFound
from warren.core.networks import Endpoint, EndpointSpec, Network, NetworkAttachment
from warren.core.validation import show


@dataclass(frozen=True)
class TaskHolding:
    """A task whose addresses may be in use: list every task until its node has
    stopped it (``Task.holds_resources``) or it is deleted, not only running ones."""

    task_id: str
    node_id: str
    attachments: tuple[NetworkAttachment, ...] = ()


@dataclass(frozen=True)
class ServiceHolding:
    """A service's networks and what it was given on them."""

    service_id: str
    name: str
    network_ids: tuple[str, ...] = ()
    endpoint: Endpoint = field(default_factory=Endpoint)


@dataclass(frozen=True)
class ServiceRequest:
    """What a service asks for: its networks (by id) and its endpoint spec."""

    service_id: str
    name: str
    network_ids: tuple[str, ...] = ()
    endpoint: EndpointSpec = field(default_factory=EndpointSpec)

    def __post_init__(self) -> None:
        check_network_ids(self.network_ids, f"service {self.name}")


@dataclass(frozen=True)
class TaskAllocation:
    """A task's addresses, and the networks that changed to give them (a node
    block taken): write both in the same store transaction (one Raft entry)."""

    task_id: str
    node_id: str
    attachments: tuple[NetworkAttachment, ...]
    networks: tuple[Network, ...] = ()


class TaskView(Protocol):
    """What giving a task its addresses reads: ``AllocatorState``, or the
    working copy a batch (``allocate_tasks``) updates in place."""

    @property
    def task_addresses(self) -> Mapping[int, str]: ...

    def network(self, network_id: str) -> Network: ...

    def task(self, task_id: str) -> TaskHolding | None: ...


@dataclass(frozen=True)
class AllocatorState:
    networks: tuple[Network, ...] = ()
    services: tuple[ServiceHolding, ...] = ()
    tasks: tuple[TaskHolding, ...] = ()

    # Indexes, built on first use (a frozen dataclass keeps them in __dict__).
    @cached_property
    def _networks_by_id(self) -> dict[str, Network]:
        return {net.id: net for net in self.networks}

    @cached_property
    def _services_by_id(self) -> dict[str, ServiceHolding]:
        return {svc.service_id: svc for svc in self.services}

    @cached_property
    def _tasks_by_id(self) -> dict[str, TaskHolding]:
        return {task.task_id: task for task in self.tasks}

    @cached_property
    def task_addresses(self) -> dict[int, str]:
        """Every address a task holds (as an int) and the task holding it."""
        return {
            address_int(att.address): task.task_id
            for task in self.tasks
            for att in task.attachments
        }

    @cached_property
    def virtual_ips(self) -> dict[int, str]:
        """Every VIP a service holds (as an int) and the service holding it."""
        return {
            address_int(vip.address): svc.service_id
            for svc in self.services
            for vip in svc.endpoint.vips
        }

    def network(self, network_id: str) -> Network:
        net = self._networks_by_id.get(network_id)
        if net is None:
            raise NotFound(f"network {show(network_id)} not found")
        return net

    def service(self, service_id: str) -> ServiceHolding | None:
        return self._services_by_id.get(service_id)

    def task(self, task_id: str) -> TaskHolding | None:
        return self._tasks_by_id.get(task_id)

    # Folding decisions back in, for a caller that allocates several things in
    # one pass: each call must see what the previous ones handed out.
    def with_network(self, network: Network) -> AllocatorState:
        others = tuple(net for net in self.networks if net.id != network.id)
        return dataclasses.replace(self, networks=(*others, network))

    def without_network(self, network_id: str) -> AllocatorState:
        return dataclasses.replace(
            self, networks=tuple(net for net in self.networks if net.id != network_id)
        )

    def with_service(self, holding: ServiceHolding) -> AllocatorState:
        others = tuple(svc for svc in self.services if svc.service_id != holding.service_id)
        return dataclasses.replace(self, services=(*others, holding))

    def without_service(self, service_id: str) -> AllocatorState:
        kept = tuple(svc for svc in self.services if svc.service_id != service_id)
        return dataclasses.replace(self, services=kept)

    def with_task(self, allocation: TaskAllocation) -> AllocatorState:
        """This state with the task holding what ``allocation`` gave it. The task
        indexes are carried over rather than rebuilt: a controller folding
        thousands of allocations in one pass pays a dict copy for each."""
        state = self
        for net in allocation.networks:
            state = state.with_network(net)
        holding = TaskHolding(allocation.task_id, allocation.node_id, allocation.attachments)
        old = state.task(holding.task_id)
        if old is None:
            tasks = (*state.tasks, holding)
        else:
            tasks = tuple(holding if task is old else task for task in state.tasks)
        by_id = dict(state._tasks_by_id)
        by_id[holding.task_id] = holding
        addresses = dict(state.task_addresses)
        for att in old.attachments if old is not None else ():
            addresses.pop(address_int(att.address), None)
        for att in holding.attachments:
            addresses[address_int(att.address)] = holding.task_id
        new = dataclasses.replace(state, tasks=tasks)
        new.__dict__.update(_tasks_by_id=by_id, task_addresses=addresses)
        return new

    def without_task(self, task_id: str) -> AllocatorState:
        kept = tuple(task for task in self.tasks if task.task_id != task_id)
        return dataclasses.replace(self, tasks=kept)


class WorkingState:
    """A mutable copy of an ``AllocatorState``'s networks and tasks: a batch of
    task allocations folds each one in at the cost of what it changed, where
    ``AllocatorState.with_task`` copies the whole state each time."""

    def __init__(self, state: AllocatorState) -> None:
        self._base = state
        self._networks = {net.id: net for net in state.networks}
        self._tasks = dict(state._tasks_by_id)
        self._addresses = dict(state.task_addresses)

    @property
    def task_addresses(self) -> Mapping[int, str]:
        return self._addresses

    def network(self, network_id: str) -> Network:
        net = self._networks.get(network_id)
        return net if net is not None else self._base.network(network_id)

    def task(self, task_id: str) -> TaskHolding | None:
        return self._tasks.get(task_id)

    def fold(self, allocation: TaskAllocation) -> None:
        for net in allocation.networks:
            self._networks[net.id] = net
        old = self._tasks.get(allocation.task_id)
        for att in old.attachments if old is not None else ():
            self._addresses.pop(address_int(att.address), None)
        holding = TaskHolding(allocation.task_id, allocation.node_id, allocation.attachments)
        self._tasks[holding.task_id] = holding
        for att in holding.attachments:
            self._addresses[address_int(att.address)] = holding.task_id

    def freeze(self) -> AllocatorState:
        return dataclasses.replace(
            self._base,
            networks=tuple(self._networks.values()),
            tasks=tuple(self._tasks.values()),
        )


def address_int(address: str) -> int:
    """``a.b.c.d/prefix`` (already validated by its model) as an int, without
    ``ipaddress``'s cost: indexes parse every address in the cluster."""
    a, b, c, d = address.partition("/")[0].split(".")
    return (int(a) << 24) | (int(b) << 16) | (int(c) << 8) | int(d)


def check_network_ids(network_ids: tuple[str, ...], who: str) -> None:
    seen: set[str] = set()
    for network_id in network_ids:
        if network_id in seen:
            raise InvalidArgument(f"{who} lists network {show(network_id)} twice")
        seen.add(network_id)
