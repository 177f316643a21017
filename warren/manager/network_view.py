"""The ``NetworkView`` each node serves from, built from the replicated state.

Pure: a snapshot in, a view out; equal state gives an equal view (everything
is sorted). Most of a view is the same for every node (services, their
endpoints, the mesh's peers): ``shared_view`` builds that once, and
``view_for`` adds a node's own part (its blocks, the peers but itself), so the
dispatcher pays for the cluster once per change, not once per node. A
``ViewCache`` carried from one build to the next rebuilds only what changed
(store objects are immutable: a changed task or service is a new object).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from warren.core.errors import InvalidArgument
from warren.core.models import Health, Node, Service, Task
from warren.core.networks import Network, NodeBlock
from warren.core.node_view import NetworkView, ViewEndpoint, ViewNetwork, ViewPeer, ViewService
from warren.core.states import TaskState
from warren.manager.snapshot import Snapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SharedView:
    """The part of every node's view that does not depend on the node."""

    revision: int
    networks: tuple[Network, ...]  # by ID
    services: tuple[ViewService, ...]  # by ID
    peers: tuple[ViewPeer, ...]  # every node of the mesh, by node ID


class ViewCache:
    """What the last build made of each task and service, reused while the
    object is the same one (held here, so its identity cannot be reused).
    Only the last build's objects are kept."""

    def __init__(self) -> None:
        self._tasks: dict[str, tuple[Task, tuple[ViewEndpoint, ...]]] = {}
        self._services: dict[str, tuple[Service, tuple[ViewEndpoint, ...], ViewService]] = {}
        self._next_tasks: dict[str, tuple[Task, tuple[ViewEndpoint, ...]]] = {}
        self._next_services: dict[str, tuple[Service, tuple[ViewEndpoint, ...], ViewService]] = {}

    def endpoints(self, task: Task) -> tuple[ViewEndpoint, ...]:
        hit = self._tasks.get(task.id)
        built = hit[1] if hit is not None and hit[0] is task else _task_endpoints(task)
        self._next_tasks[task.id] = (task, built)
        return built

    def service(self, service: Service, tasks: Iterable[Task]) -> ViewService:
        endpoints = _service_endpoints(service, (self.endpoints(t) for t in tasks))
        hit = self._services.get(service.id)
        if hit is not None and hit[0] is service and hit[1] == endpoints:
            built = hit[2]
        else:
            built = _view_service(service, endpoints)
        self._next_services[service.id] = (service, endpoints, built)
        return built

    def end_build(self) -> None:
        self._tasks, self._next_tasks = self._next_tasks, {}
        self._services, self._next_services = self._next_services, {}


def network_view(snapshot: Snapshot, node_id: str) -> NetworkView:
    """What ``node_id`` serves of the cluster's networks at ``snapshot``."""
    return view_for(shared_view(snapshot), node_id)


def shared_view(snapshot: Snapshot, cache: ViewCache | None = None) -> SharedView:
    cache = cache or ViewCache()
    networks = tuple(sorted(snapshot.networks.values(), key=lambda n: n.id))
    services = tuple(
        cache.service(service, snapshot.tasks_of_service(service.id))
        for service in sorted(snapshot.services.values(), key=lambda s: s.id)
        if _served(service)
    )
    cache.end_build()
    nodes = sorted(snapshot.nodes.values(), key=lambda n: n.id)
    peers = tuple(peer for peer in (_view_peer(n, networks) for n in nodes) if peer is not None)
    return SharedView(snapshot.revision, networks, services, peers)


def view_for(shared: SharedView, node_id: str) -> NetworkView:
    networks = tuple(
        ViewNetwork(
            id=network.id,
            name=network.spec.name,
            subnet=network.subnet,
            blocks=_sorted_blocks(network.blocks_of(node_id)),
        )
        for network in shared.networks
    )
    peers = tuple(peer for peer in shared.peers if peer.node_id != node_id)
    return NetworkView(shared.revision, networks, shared.services, peers)


def _served(service: Service) -> bool:
    return bool(service.spec.networks or service.endpoint.ports)


def _view_service(service: Service, endpoints: tuple[ViewEndpoint, ...]) -> ViewService:
    return ViewService(
        id=service.id,
        name=service.spec.name,
        mode=service.spec.endpoint.mode,
        networks=service.spec.networks,
        vips=service.endpoint.vips,
        ports=service.endpoint.ports,
        endpoints=endpoints,
    )


def _service_endpoints(
    service: Service, per_task: Iterable[tuple[ViewEndpoint, ...]]
) -> tuple[ViewEndpoint, ...]:
    # Only on the service's current networks: a task placed before the service
    # left a network keeps that address until it is replaced, but no VIP or
    # name of the service is served there any more.
    networks = frozenset(service.spec.networks)
    endpoints = [e for task in per_task for e in task if e.network_id in networks]
    endpoints.sort(key=lambda e: (e.task_id, e.network_id))
    return tuple(endpoints)


def _task_endpoints(task: Task) -> tuple[ViewEndpoint, ...]:
    if not task.networks or not is_endpoint(task):
        return ()
    return tuple(
        ViewEndpoint(
            task_id=task.id,
            node_id=task.node_id,
            network_id=attachment.network_id,
            address=attachment.address,
        )
        for attachment in task.networks
    )


def is_endpoint(task: Task) -> bool:
    """A task that may receive its service's traffic: running, meant to run,
    and healthy if its container has a health check (not yet checked is not
    healthy)."""
    if task.status.state != TaskState.RUNNING or task.desired_state != TaskState.RUNNING:
        return False
    if task.spec.container.health is None:
        return task.status.health in (Health.NONE, Health.HEALTHY)
    return task.status.health == Health.HEALTHY


def _view_peer(node: Node, networks: tuple[Network, ...]) -> ViewPeer | None:
    # A node that is down stays a peer: it may still run its tasks, cut off
    # from the managers only. A removed node is no longer in the state.
    if not node.wireguard_public_key or not node.wireguard_port or not node.address:
        return None
    blocks = _sorted_blocks(b for network in networks for b in network.blocks_of(node.id))
    try:
        return ViewPeer(
            node_id=node.id,
            public_key=node.wireguard_public_key,
            endpoint=underlay_endpoint(node.address, node.wireguard_port),
            blocks=blocks,
        )
    except InvalidArgument as exc:
        # Never seen from a node that registered through the API; one odd
        # node must not take the mesh away from every other.
        log.error("node %s left out of the mesh: %s", node.id, exc)
        return None


def underlay_endpoint(address: str, port: int) -> str:
    """``host:port`` for WireGuard (an IPv6 address in brackets)."""
    host = f"[{address}]" if ":" in address else address
    return f"{host}:{port}"


def _sorted_blocks(blocks: Iterable[NodeBlock]) -> tuple[str, ...]:
    return tuple(sorted(block.subnet for block in blocks))
