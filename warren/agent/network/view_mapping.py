"""From the manager's ``NetworkView`` to what each part of the data plane takes.

Pure functions, no I/O: the network controller calls them on every view and
hands the results to the bridges, the nftables proxy, the DNS server and the
WireGuard mesh. A piece of the view that cannot be served (an address that is
not one, a peer with a bad key) is left out with a one-line note, so that one
bad service does not take the node's whole data plane down with it.

How the view maps:

- bridges: one per network with a block on this node, holding each block's
  gateway (its first address); a task's gateway is its block's, and the
  network's whole subnet is routed through it inside tasks.
- VIPs: in VIP mode, one frontend per VIP on every TCP and UDP port (as Docker
  Swarm's: a service names no ports of its own), spread over the endpoints on
  the VIP's network with their weights; the port stays the one asked for.
- published ports: ingress ones on every node, to every endpoint in the
  cluster (one address per task); host ones only on nodes running a task of
  the service, to those tasks alone.
- container subnets (masquerade and hairpin): every network's subnet in the
  view, so that container-to-container traffic between nodes keeps its source.
- DNS: the view's networks and services (VIP, or task addresses in dnsrr
  mode); clients are the tasks attached on this node.
- WireGuard: every other node is a peer, its blocks and its own mesh address
  (``MESH_RANGE``, from its public key) its allowed IPs.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import TypeVar, cast

from warren.agent.network.bridge import NetworkAddress, NodeNetwork, TaskAttachment
from warren.agent.network.dns_view import DnsClient, DnsNetwork, DnsService, DnsView
from warren.agent.network.dns_view import ServiceOnNetwork as DnsEndpoint
from warren.agent.network.vip_rules import (
    Backend,
    DataPlane,
    L4Protocol,
    PublishedPort,
    VipBackend,
    VipFrontend,
)
from warren.agent.network.vip_rules import (
    PublishMode as NftPublishMode,
)
from warren.agent.network.wireguard import Peer
from warren.core.errors import FailedPrecondition, InvalidArgument
from warren.core.networks import (
    EndpointMode,
    NetworkAttachment,
    PortConfig,
    PublishMode,
)
from warren.core.node_view import NetworkView, ViewEndpoint, ViewNetwork, ViewService

Notes = list[str]
K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class LocalTask:
    """A task attached on this node and its addresses (it asks the DNS from them)."""

    task_id: str
    networks: tuple[NetworkAttachment, ...]


def _interface(text: str) -> IPv4Interface | None:
    try:
        return IPv4Interface(text)
    except (ipaddress.AddressValueError, ipaddress.NetmaskValueError, ValueError):
        return None


def _network(text: str) -> IPv4Network | None:
    try:
        return IPv4Network(text)
    except (ipaddress.AddressValueError, ipaddress.NetmaskValueError, ValueError):
        return None


# -- bridges -------------------------------------------------------------------------


def node_networks(
    view: NetworkView, mtu: int, notes: Notes | None = None
) -> tuple[NodeNetwork, ...]:
    """One bridge per network with a block on this node (its first block)."""
    found = []
    for network in view.networks:
        made = _node_network(network, mtu, notes)
        if made is not None:
            found.append(made)
    return tuple(found)


def _node_network(network: ViewNetwork, mtu: int, notes: Notes | None) -> NodeNetwork | None:
    if not network.blocks:
        return None
    subnet = _network(network.subnet)
    blocks = [_network(text) for text in network.blocks]
    try:
        if subnet is None or None in blocks:
            raise InvalidArgument(f"subnet {network.subnet} or a block of {network.blocks} is bad")
        # In address order: the first stays first as the node takes more.
        first, *more = sorted(b for b in blocks if b is not None)
        return NodeNetwork(network.id, first, mtu=mtu, subnet=subnet, more_blocks=tuple(more))
    except InvalidArgument as exc:
        _note(notes, f"network {network.name}: no bridge: {exc.message}")
        return None


def task_attachment(
    view: NetworkView, task_id: str, attachments: Sequence[NetworkAttachment], netns: str, mtu: int
) -> TaskAttachment:
    """A task's namespace on its networks, in the task's order; FailedPrecondition
    when the view does not (yet) hold one of its networks with the task's block."""
    bridges = {network.network_id: network for network in node_networks(view, mtu)}
    entries = []
    for attachment in attachments:
        bridge = bridges.get(attachment.network_id)
        address = _interface(attachment.address)
        if bridge is None or address is None or address.network not in bridge.blocks:
            raise FailedPrecondition(
                f"task {task_id}: network {attachment.network_id} with address "
                f"{attachment.address} is not served on this node (no such network, or "
                "its block is not this node's in the network view)"
            )
        entries.append(NetworkAddress(bridge, address))
    return TaskAttachment(task_id, Path(netns), tuple(entries))


def covers(view: NetworkView, attachments: Sequence[NetworkAttachment], mtu: int) -> bool:
    """Whether the view serves every one of these addresses on this node."""
    try:
        task_attachment(view, "probe", attachments, "/", mtu)
    except (FailedPrecondition, InvalidArgument):
        return False
    return True


# -- nftables ------------------------------------------------------------------------


def data_plane(view: NetworkView, node_id: str, notes: Notes | None = None) -> DataPlane:
    """Service VIPs and published ports of the view as this node serves them."""
    vips: dict[tuple[str], VipFrontend] = {}
    published: dict[tuple[str, int], PublishedPort] = {}
    for service in view.services:
        try:
            for frontend in _vip_frontends(service):
                _keep(vips, frontend.key, frontend, f"VIP {frontend.vip}", notes)
            for port in _published_ports(service, node_id):
                _keep(published, port.key, port, f"published port {port.port}", notes)
        except InvalidArgument as exc:
            _note(notes, f"service {service.name}: not served: {exc.message}")
    subnets = []
    for network in view.networks:
        subnet = _network(network.subnet)
        if subnet is None:
            _note(notes, f"network {network.name}: subnet {network.subnet!r} is not one")
        elif str(subnet) not in subnets:
            subnets.append(str(subnet))
    return DataPlane(
        published=tuple(published.values()),
        container_subnets=tuple(subnets),
        vips=tuple(vips.values()),
    )


def _keep(into: dict[K, V], key: K, value: V, what: str, notes: Notes | None) -> None:
    if key in into:
        _note(notes, f"{what} is claimed twice: the first one is served")
        return
    into[key] = value


def _backends(endpoints: Iterable[ViewEndpoint], port: int) -> tuple[Backend, ...]:
    """One backend per address (a task listed twice counts once)."""
    found: dict[str, Backend] = {}
    for endpoint in endpoints:
        address = _interface(endpoint.address)
        if address is None:
            raise InvalidArgument(f"endpoint {endpoint.address!r} is not an address")
        found.setdefault(str(address.ip), Backend(str(address.ip), port, endpoint.weight))
    return tuple(found.values())


def _vip_frontends(service: ViewService) -> list[VipFrontend]:
    if service.mode != EndpointMode.VIP:
        return []
    frontends = []
    for vip in service.vips:
        address = _interface(vip.address)
        if address is None:
            raise InvalidArgument(f"VIP {vip.address!r} is not an address")
        on_network = [e for e in service.endpoints if e.network_id == vip.network_id]
        backends = tuple(VipBackend(b.address, b.weight) for b in _backends(on_network, 1))
        frontends.append(VipFrontend(str(address.ip), backends))
    return frontends


def _one_per_task(service: ViewService) -> list[ViewEndpoint]:
    """A task's endpoint on the first of the service's networks it has one on."""
    order = {network_id: index for index, network_id in enumerate(service.networks)}
    chosen: dict[str, ViewEndpoint] = {}
    for endpoint in sorted(service.endpoints, key=lambda e: order.get(e.network_id, len(order))):
        chosen.setdefault(endpoint.task_id, endpoint)
    return list(chosen.values())


def _published_ports(service: ViewService, node_id: str) -> list[PublishedPort]:
    ports = []
    for port in service.ports:
        if not port.published:
            continue  # not allocated yet: nothing to listen on
        endpoints = _one_per_task(service)
        if port.mode == PublishMode.HOST:
            endpoints = [e for e in endpoints if e.node_id == node_id]
            if not endpoints:
                continue  # only nodes running a task listen
        ports.append(_published(port, _backends(endpoints, port.target)))
    return ports


def _published(port: PortConfig, backends: tuple[Backend, ...]) -> PublishedPort:
    protocol = cast(L4Protocol, str(port.protocol))
    return PublishedPort(port.published, protocol, cast(NftPublishMode, str(port.mode)), backends)


# -- DNS -----------------------------------------------------------------------------


def dns_view(
    view: NetworkView, local_tasks: Iterable[LocalTask], notes: Notes | None = None
) -> DnsView:
    """What the node's DNS answers: the view's services, asked by the local tasks."""
    networks = {network.id: DnsNetwork(network.id, network.name) for network in view.networks}
    services = []
    for service in view.services:
        made = _dns_service(service, networks, notes)
        if made is not None:
            services.append(made)
    clients = []
    for task in local_tasks:
        on = [a for a in task.networks if a.network_id in networks]
        addresses = [i for i in (_interface(a.address) for a in on) if i is not None]
        if addresses:
            clients.append(
                DnsClient(tuple(str(a.ip) for a in addresses), frozenset(a.network_id for a in on))
            )
    return DnsView(tuple(networks.values()), tuple(services), tuple(clients))


def _dns_service(
    service: ViewService, networks: dict[str, DnsNetwork], notes: Notes | None
) -> DnsService | None:
    vips = {vip.network_id: _interface(vip.address) for vip in service.vips}
    endpoints = []
    for network_id in service.networks:
        if network_id not in networks:
            continue
        vip = vips.get(network_id) if service.mode == EndpointMode.VIP else None
        addresses = [_interface(e.address) for e in service.endpoints if e.network_id == network_id]
        if any(a is None for a in addresses):
            _note(notes, f"service {service.name}: an endpoint address is not one; not in DNS")
            return None
        tasks = tuple(dict.fromkeys(str(a.ip) for a in addresses if a is not None))
        endpoints.append(DnsEndpoint(network_id, None if vip is None else str(vip.ip), tasks))
    if not endpoints:
        return None
    return DnsService(service.name, tuple(endpoints))


# -- WireGuard -----------------------------------------------------------------------


# Each node's own address on the mesh, apart from every network: a node holding
# no block (a drained manager) still forwards published ports to other nodes'
# tasks, and they must route its replies back. RFC 6598's shared address space.
MESH_RANGE = IPv4Network("100.64.0.0/10")


def mesh_addresses(members: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Node ID to its mesh address, from (node ID, WireGuard public key) pairs: a
    digest of the key picks one, the next free one settles a clash. Taken in node
    ID order, so every node that sees the same members gives the same answer."""
    size = MESH_RANGE.num_addresses - 2  # neither the range's first nor last address
    taken: set[int] = set()
    found: dict[str, str] = {}
    for node_id, public_key in sorted(dict(members).items()):
        offset = int.from_bytes(hashlib.sha256(public_key.encode()).digest()[:8], "big") % size
        while offset in taken:
            offset = (offset + 1) % size
        taken.add(offset)
        found[node_id] = str(MESH_RANGE.network_address + 1 + offset)
    return found


def mesh_plan(
    view: NetworkView, node_id: str, public_key: str, notes: Notes | None = None
) -> tuple[str, tuple[Peer, ...]]:
    """This node's mesh address, and every other node of the view as a peer: its
    blocks and its mesh address routed to it."""
    members = [(p.node_id, p.public_key) for p in view.peers if p.node_id != node_id]
    addresses = mesh_addresses([*members, (node_id, public_key)])
    subnets = [n for n in (_network(net.subnet) for net in view.networks) if n is not None]
    peers = []
    for peer in view.peers:
        if peer.node_id == node_id:
            continue
        address = IPv4Address(addresses[peer.node_id])
        routed: tuple[str, ...] = tuple(peer.blocks)
        if any(address in subnet for subnet in subnets):
            # A network took that part of the mesh range: its blocks are routed.
            _note(notes, f"peer node {peer.node_id}: mesh address {address} is in a network")
        else:
            routed = (*routed, f"{address}/32")
        try:
            peers.append(Peer(peer.public_key, peer.endpoint, routed))
        except InvalidArgument as exc:
            _note(notes, f"peer node {peer.node_id}: left out: {exc.message}")
    return addresses[node_id], tuple(peers)


def _note(notes: Notes | None, line: str) -> None:
    if notes is not None:
        notes.append(line)
