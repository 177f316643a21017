"""A task's network namespace on the node's per-network bridges.

Each network a node takes part in is a Linux bridge on the node holding the
gateways (the first address of each of the node's blocks of the network's
subnet, where Warren's DNS listens too). A task joins it through a veth pair: the host end on
the bridge, the peer created straight inside the task's namespace as ``eth0``,
``eth1``, ... in the order of the task's networks, with its address, the
network's MTU, and (for the first network) the default route via its gateway.
The runtime then starts the container in that prepared namespace.

Changes go through pyroute2; lookups through ``links.LinkReader``, which
decodes only what is needed (pyroute2 took about 1 ms per interface listed).
What is Warren's is told by the interface alias (``ip link show`` prints it):
``warren:network:<id>`` on bridges, ``warren:task:<task id>:<network id>`` on
host ends. Interface names come from a digest of the IDs (at most 15
characters, the kernel's limit); the aliases map them back, so listing and
detaching need nothing but the kernel's state, also after an agent restart.

Everything here converges rather than recreates: ``ensure_network`` and
``attach`` check what exists and change only what differs, so running them
again (an agent restarting) leaves a working attachment untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import re
import socket
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any, Protocol, TypeVar

from warren.agent.network.links import Link, LinkReader
from warren.agent.network.netlink import is_missing, netlink_failure, open_rtnl
from warren.core.errors import FailedPrecondition, InvalidArgument, NotFound

MIN_MTU = 576  # the smallest datagram every IPv4 host must accept
MAX_MTU = 65535
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_NETWORK_ALIAS = "warren:network:"
_TASK_ALIAS = "warren:task:"
_MAIN_TABLE = 254
_DIGEST_CHARS = 12  # 48 bits: a clash needs ~16 million interfaces on one node

T = TypeVar("T")


# -- names (pure) ------------------------------------------------------------------


def _check_id(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise InvalidArgument(
            f"{kind} {value!r} is not a valid ID (letters, digits, '_', '.', '-'; at most 64)"
        )
    return value


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:_DIGEST_CHARS]


def bridge_name(network_id: str) -> str:
    """The bridge of a network on every node: ``wn-`` and 12 hex digits (15 chars)."""
    return "wn-" + _digest(_check_id("network", network_id))


def host_ifname(task_id: str, network_id: str) -> str:
    """The host end of a task's veth on a network: ``wv-`` and 12 hex digits."""
    _check_id("task", task_id)
    _check_id("network", network_id)
    return "wv-" + _digest(f"{task_id}/{network_id}")


def peer_ifname(position: int) -> str:
    """The interface a task sees for its network at ``position`` (0: eth0)."""
    return f"eth{position}"


def bridge_mac(network_id: str) -> str:
    """A fixed, locally administered MAC for the bridge.

    A bridge without one takes the lowest MAC of its ports, so the gateway's
    MAC would change as tasks come and go, and tasks' ARP entries go stale."""
    digest = hashlib.sha256(f"mac/{network_id}".encode()).digest()
    return ":".join(f"{byte:02x}" for byte in (0x02, *digest[:5]))


def network_alias(network_id: str) -> str:
    return _NETWORK_ALIAS + network_id


def task_alias(task_id: str, network_id: str) -> str:
    return f"{_TASK_ALIAS}{task_id}:{network_id}"


def parse_network_alias(alias: str | None) -> str | None:
    """The network ID of a Warren bridge's alias, None for anything else."""
    if not alias or not alias.startswith(_NETWORK_ALIAS):
        return None
    network_id = alias[len(_NETWORK_ALIAS) :]
    return network_id if _ID_RE.match(network_id) else None


def parse_task_alias(alias: str | None) -> tuple[str, str] | None:
    """(task ID, network ID) of a Warren host end's alias, None for anything else."""
    if not alias or not alias.startswith(_TASK_ALIAS):
        return None
    task_id, _, network_id = alias[len(_TASK_ALIAS) :].partition(":")
    if _ID_RE.match(task_id) and _ID_RE.match(network_id):
        return task_id, network_id
    return None


# -- inputs -------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeNetwork:
    """A network as this node holds it: its ID, the node's block of the network's
    subnet (e.g. 10.32.5.0/24 of 10.32.0.0/16) and the MTU of its interfaces.
    ``subnet`` (the whole network), when given, is routed via the gateway inside
    tasks for which it is not the first network (the first one has the default
    route): other nodes' blocks and the VIPs are reached through this node.
    ``more_blocks``: the node's other blocks of the network (it takes another when
    one is full); the bridge holds the gateway of each, a task's is its block's."""

    network_id: str
    block: IPv4Network
    mtu: int = 1420  # a 1500-byte underlay minus WireGuard's 80 bytes
    subnet: IPv4Network | None = None
    more_blocks: tuple[IPv4Network, ...] = ()

    def __post_init__(self) -> None:
        _check_id("network", self.network_id)
        object.__setattr__(self, "more_blocks", tuple(self.more_blocks))
        for block in self.blocks:
            self._check_block(block)
        if not isinstance(self.mtu, int) or not MIN_MTU <= self.mtu <= MAX_MTU:
            raise InvalidArgument(
                f"network {self.network_id}: MTU {self.mtu!r} is outside {MIN_MTU}-{MAX_MTU}"
            )
        if len(set(self.blocks)) != len(self.blocks):
            raise InvalidArgument(f"network {self.network_id}: a block is listed twice")

    def _check_block(self, block: IPv4Network) -> None:
        if not isinstance(block, IPv4Network):
            raise InvalidArgument(f"network {self.network_id}: block must be an IPv4 network")
        if block.prefixlen > 30:
            raise InvalidArgument(
                f"network {self.network_id}: block {block} is too small "
                "(a /30 or larger holds the gateway and a task)"
            )
        if self.subnet is not None and (
            not isinstance(self.subnet, IPv4Network) or not block.subnet_of(self.subnet)
        ):
            raise InvalidArgument(
                f"network {self.network_id}: block {block} is not part of subnet {self.subnet}"
            )

    @property
    def bridge(self) -> str:
        return bridge_name(self.network_id)

    @property
    def blocks(self) -> tuple[IPv4Network, ...]:
        return (self.block, *self.more_blocks)

    @property
    def gateway(self) -> IPv4Interface:
        """The bridge's address in ``block``: its first usable address, with its prefix."""
        return block_gateway(self.block)

    @property
    def gateways(self) -> tuple[IPv4Interface, ...]:
        """The bridge's addresses: one per block."""
        return tuple(block_gateway(block) for block in self.blocks)


def block_gateway(block: IPv4Network) -> IPv4Interface:
    """A block's gateway: its first usable address, with its prefix."""
    return IPv4Interface(f"{block.network_address + 1}/{block.prefixlen}")


@dataclass(frozen=True)
class NetworkAddress:
    """One of a task's networks and its address there (inside the node's block)."""

    network: NodeNetwork
    address: IPv4Interface

    def __post_init__(self) -> None:
        net = self.network
        if not isinstance(self.address, IPv4Interface):
            raise InvalidArgument(f"network {net.network_id}: the address must be IPv4")
        # The block's prefix, not the cluster subnet's: other nodes' tasks are
        # then reached through the gateway, not by ARP on a bridge they are not on.
        block = self.address.network
        if block not in net.blocks:
            blocks = ", ".join(map(str, net.blocks))
            raise InvalidArgument(
                f"address {self.address} is not in network {net.network_id}'s block "
                f"{blocks} with its prefix"
            )
        reserved = {block.network_address, block.broadcast_address, self.gateway.ip}
        if self.address.ip in reserved:
            raise InvalidArgument(
                f"address {self.address.ip} is reserved in network {net.network_id} "
                "(the block's network, broadcast or gateway address)"
            )

    @property
    def gateway(self) -> IPv4Interface:
        """The task's next hop on this network: the gateway of its address's block."""
        return block_gateway(self.address.network)


@dataclass(frozen=True)
class TaskAttachment:
    """A task's namespace and its networks, in order: the first one's gateway is
    the default route (and the DNS server)."""

    task_id: str
    netns: Path
    networks: tuple[NetworkAddress, ...]

    def __post_init__(self) -> None:
        _check_id("task", self.task_id)
        if not isinstance(self.netns, Path) or not self.netns.is_absolute():
            raise InvalidArgument(f"task {self.task_id}: the namespace must be an absolute path")
        if not self.networks:
            raise InvalidArgument(f"task {self.task_id}: at least one network is needed")
        ids = [entry.network.network_id for entry in self.networks]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise InvalidArgument(
                f"task {self.task_id}: network {', '.join(duplicates)} is listed twice"
            )

    @property
    def gateway(self) -> IPv4Address:
        return self.networks[0].gateway.ip


@dataclass(frozen=True)
class AttachedInterface:
    """What ``attach`` made (or found) for one network of a task."""

    network_id: str
    host_ifname: str
    host_index: int
    ifname: str
    index: int  # inside the task's namespace
    address: IPv4Interface


class BridgeNetwork(Protocol):
    """The node's bridges and the tasks' veths on them."""

    async def ensure_network(self, network: NodeNetwork) -> None:
        """The bridge exists, is up, has the gateway address and the MTU."""

    async def remove_network(self, network_id: str) -> None:
        """Delete the bridge (nothing if it is gone); refused while tasks are attached."""

    async def attach(self, task: TaskAttachment) -> tuple[AttachedInterface, ...]:
        """Attach the task's namespace to each of its networks (ensuring the bridges).

        A task's networks are fixed for its life (a changed service makes new
        tasks): attaching again with fewer leaves the others attached; ``detach``
        removes them all."""

    async def detach(self, task_id: str) -> None:
        """Remove the task's host ends (their peers go with them); nothing if none."""

    async def networks(self) -> frozenset[str]:
        """The IDs of the networks with a bridge on this node."""

    async def attachments(self) -> dict[str, frozenset[str]]:
        """Task ID to the IDs of the networks it is attached to on this node."""


# -- the kernel's side ----------------------------------------------------------------


@dataclass(frozen=True)
class _Side:
    """One namespace: pyroute2 to change things, a lean reader to look."""

    ipr: Any
    reader: LinkReader


def _find(side: _Side, name: str) -> Link | None:
    return side.reader.get(name)


async def _links(side: _Side) -> list[Link]:
    return await asyncio.to_thread(side.reader.dump)


async def _netlink(action: str, call: Awaitable[T]) -> T:
    try:
        return await call
    except Exception as exc:
        raise netlink_failure(action, exc) from exc


async def _addresses(ipr: Any, index: int) -> set[IPv4Interface]:
    try:
        return {
            IPv4Interface(f"{message.get('address')}/{message['prefixlen']}")
            async for message in await ipr.addr("dump", family=socket.AF_INET)
            if message["index"] == index
        }
    except Exception as exc:
        raise netlink_failure("list addresses", exc) from exc


async def _ensure_address(ipr: Any, link: Link, wanted: IPv4Interface) -> None:
    """``wanted`` is the interface's only IPv4 address."""
    await _ensure_addresses(ipr, link, {wanted})


async def _ensure_addresses(ipr: Any, link: Link, wanted: set[IPv4Interface]) -> None:
    """``wanted`` are the interface's only IPv4 addresses.

    Others go first: removing a primary address also removes the secondaries of
    its subnet, so one added before would vanish with it."""
    present = await _addresses(ipr, link.index)
    for stale in sorted(present - wanted):
        await _netlink(
            f"remove address {stale} from {link.name}",
            ipr.addr(
                "del", index=link.index, address=str(stale.ip), prefixlen=stale.network.prefixlen
            ),
        )
    for missing in sorted(wanted - present):
        await _netlink(
            f"add address {missing} to {link.name}",
            ipr.addr(
                "add",
                index=link.index,
                address=str(missing.ip),
                prefixlen=missing.network.prefixlen,
            ),
        )


async def _ensure_link_settings(ipr: Any, link: Link, mtu: int, master: int | None) -> None:
    changes: dict[str, Any] = {}
    if link.mtu != mtu:
        changes["mtu"] = mtu
    if master is not None and link.master != master:
        changes["master"] = master
    if not link.up:
        changes["state"] = "up"
    if changes:
        await _netlink(f"configure {link.name}", ipr.link("set", index=link.index, **changes))


async def _hairpin(ipr: Any, port: Link) -> None:
    """Let the bridge send a frame back out of the port it came in on: with
    br_netfilter loaded (as on most Docker and Kubernetes hosts), a task reaching
    its own service's VIP is DNATed on the bridge back to itself, which without
    hairpin mode is dropped (Docker and kubenet set it for the same reason)."""
    await _netlink(f"hairpin mode on {port.name}", ipr.brport("set", index=port.index, mode=1))


async def _delete(ipr: Any, link: Link) -> None:
    try:
        await ipr.link("del", index=link.index)
    except Exception as exc:
        if not is_missing(exc):
            raise netlink_failure(f"delete interface {link.name}", exc) from exc


class PyrouteBridgeNetwork:
    """``BridgeNetwork`` on the kernel through pyroute2.

    ``node_netns`` is where the bridges live: None for this process's namespace
    (the agent), a namespace path for tests. Calls are serialised: two attaches
    ensuring one bridge must not both create it."""

    def __init__(self, node_netns: Path | None = None) -> None:
        self._node_netns = node_netns
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def _rtnl(self, netns: Path | None) -> AsyncIterator[_Side]:
        reader = await asyncio.to_thread(LinkReader, netns)
        try:
            ipr = await open_rtnl(netns)
            try:
                yield _Side(ipr, reader)
            finally:
                ipr.close()
        finally:
            reader.close()

    async def ensure_network(self, network: NodeNetwork) -> None:
        async with self._lock, self._rtnl(self._node_netns) as node:
            await self._ensure_bridge(node, network)

    async def remove_network(self, network_id: str) -> None:
        name = bridge_name(network_id)
        async with self._lock, self._rtnl(self._node_netns) as node:
            links = await _links(node)
            bridge = next((link for link in links if link.name == name), None)
            if bridge is None:
                return
            if parse_network_alias(bridge.alias) != network_id:
                raise FailedPrecondition(
                    f"interface {name} is not Warren's bridge for network {network_id}: left alone"
                )
            ports = [link.name for link in links if link.master == bridge.index]
            if ports:
                raise FailedPrecondition(
                    f"network {network_id} still has {len(ports)} task interface(s) on this "
                    f"node ({', '.join(sorted(ports))}): detach those tasks first"
                )
            await _delete(node.ipr, bridge)

    async def attach(self, task: TaskAttachment) -> tuple[AttachedInterface, ...]:
        async with (
            self._lock,
            self._rtnl(self._node_netns) as node,
            self._rtnl(task.netns) as inside,
        ):
            created: list[Link] = []
            try:
                attached = [
                    await self._attach_one(node, inside, task, position, entry, created)
                    for position, entry in enumerate(task.networks)
                ]
                await self._ensure_default_route(inside, task, attached[0])
                await self._ensure_subnet_routes(inside, task, attached)
            except BaseException:
                # Undo only what this call made: an attachment that was already
                # there keeps working.
                for link in created:
                    with contextlib.suppress(Exception):
                        await _delete(node.ipr, link)
                raise
        return tuple(attached)

    async def detach(self, task_id: str) -> None:
        _check_id("task", task_id)
        async with self._lock, self._rtnl(self._node_netns) as node:
            for link in await _links(node):
                owner = parse_task_alias(link.alias)
                if owner is not None and owner[0] == task_id:
                    await _delete(node.ipr, link)

    async def networks(self) -> frozenset[str]:
        async with self._lock, self._rtnl(self._node_netns) as node:
            links = await _links(node)
        found = (parse_network_alias(link.alias) for link in links if link.kind == "bridge")
        return frozenset(network_id for network_id in found if network_id is not None)

    async def attachments(self) -> dict[str, frozenset[str]]:
        async with self._lock, self._rtnl(self._node_netns) as node:
            links = await _links(node)
        result: dict[str, set[str]] = {}
        for link in links:
            owner = parse_task_alias(link.alias) if link.kind == "veth" else None
            if owner is not None:
                result.setdefault(owner[0], set()).add(owner[1])
        return {task_id: frozenset(ids) for task_id, ids in result.items()}

    # -- steps ------------------------------------------------------------------------

    async def _ensure_bridge(self, node: _Side, network: NodeNetwork) -> Link:
        name = network.bridge
        bridge = _find(node, name)
        if bridge is None:
            await _netlink(
                f"create bridge {name} for network {network.network_id}",
                node.ipr.link(
                    "add",
                    ifname=name,
                    kind="bridge",
                    mtu=network.mtu,
                    address=bridge_mac(network.network_id),
                ),
            )
            bridge = await self._label(node, name, network_alias(network.network_id))
        elif bridge.kind != "bridge" or parse_network_alias(bridge.alias) != network.network_id:
            raise FailedPrecondition(
                f"interface {name} exists and is not Warren's bridge for network "
                f"{network.network_id}: remove it (ip link del {name})"
            )
        await _ensure_link_settings(node.ipr, bridge, network.mtu, master=None)
        await _ensure_addresses(node.ipr, bridge, set(network.gateways))
        return bridge

    async def _label(self, side: _Side, name: str, alias: str) -> Link:
        # The kernel ignores an alias given with the creation request.
        link = _find(side, name)
        if link is None:
            raise NotFound(f"interface {name} vanished right after it was created")
        await _netlink(f"label {name}", side.ipr.link("set", index=link.index, ifalias=alias))
        return link

    async def _attach_one(
        self,
        node: _Side,
        inside: _Side,
        task: TaskAttachment,
        position: int,
        entry: NetworkAddress,
        created: list[Link],
    ) -> AttachedInterface:
        network = entry.network
        bridge = await self._ensure_bridge(node, network)
        host_name = host_ifname(task.task_id, network.network_id)
        peer_name = peer_ifname(position)
        host = _find(node, host_name)
        peer = _find(inside, peer_name)
        if host is not None and parse_task_alias(host.alias) != (task.task_id, network.network_id):
            raise FailedPrecondition(
                f"interface {host_name} exists and is not Warren's veth for task "
                f"{task.task_id} on network {network.network_id}"
            )
        if host is not None and not _is_pair(host, peer):
            # Half a pair (its peer elsewhere): start again; the peer goes with it.
            await _delete(node.ipr, host)
            host, peer = None, _find(inside, peer_name)
        if host is None:
            if peer is not None:
                raise FailedPrecondition(
                    f"task {task.task_id}'s namespace already has {peer_name}, which is not "
                    f"its veth for network {network.network_id}"
                )
            host, peer = await self._create_pair(node, inside, task, network, peer_name, bridge)
            created.append(host)
        else:
            await _ensure_link_settings(node.ipr, host, network.mtu, master=bridge.index)
        await _hairpin(node.ipr, host)
        assert peer is not None
        await _ensure_address(inside.ipr, peer, entry.address)
        await _ensure_link_settings(inside.ipr, peer, network.mtu, master=None)
        return AttachedInterface(
            network_id=network.network_id,
            host_ifname=host.name,
            host_index=host.index,
            ifname=peer_name,
            index=peer.index,
            address=entry.address,
        )

    async def _create_pair(
        self,
        node: _Side,
        inside: _Side,
        task: TaskAttachment,
        network: NodeNetwork,
        peer_name: str,
        bridge: Link,
    ) -> tuple[Link, Link]:
        host_name = host_ifname(task.task_id, network.network_id)
        await _netlink(
            f"create veth {host_name} for task {task.task_id} on network {network.network_id}",
            node.ipr.link(
                "add",
                ifname=host_name,
                kind="veth",
                mtu=network.mtu,
                master=bridge.index,
                state="up",
                # Made inside the task's namespace: it never appears on the node.
                peer={"ifname": peer_name, "net_ns_fd": str(task.netns), "mtu": network.mtu},
            ),
        )
        host = await self._label(node, host_name, task_alias(task.task_id, network.network_id))
        peer = _find(inside, peer_name)
        if peer is None:
            raise NotFound(f"{peer_name} did not appear in task {task.task_id}'s namespace")
        return host, peer

    async def _ensure_default_route(
        self, inside: _Side, task: TaskAttachment, eth0: AttachedInterface
    ) -> None:
        try:
            defaults = [
                (message.get("gateway"), message.get("oif"))
                async for message in await inside.ipr.route("dump", family=socket.AF_INET)
                if message["dst_len"] == 0 and message.get("table") == _MAIN_TABLE
            ]
        except Exception as exc:
            raise netlink_failure(f"list task {task.task_id}'s routes", exc) from exc
        if defaults == [(str(task.gateway), eth0.index)]:
            return
        await _netlink(
            f"set task {task.task_id}'s default route via {task.gateway}",
            inside.ipr.route(
                "replace",
                dst="0.0.0.0/0",
                gateway=str(task.gateway),
                oif=eth0.index,
                table=_MAIN_TABLE,
            ),
        )

    async def _ensure_subnet_routes(
        self, inside: _Side, task: TaskAttachment, attached: list[AttachedInterface]
    ) -> None:
        # "replace" changes nothing when the route is already there.
        for entry, interface in list(zip(task.networks, attached, strict=True))[1:]:
            network = entry.network
            if network.subnet is None:
                continue
            await _netlink(
                f"route {network.subnet} via {entry.gateway.ip} in task {task.task_id}",
                inside.ipr.route(
                    "replace",
                    dst=str(network.subnet),
                    gateway=str(entry.gateway.ip),
                    oif=interface.index,
                    table=_MAIN_TABLE,
                ),
            )


def subnet_routes(task: TaskAttachment) -> frozenset[tuple[str, str]]:
    """(subnet, gateway) routed inside the task besides its default route."""
    return frozenset(
        (str(entry.network.subnet), str(entry.gateway.ip))
        for entry in task.networks[1:]
        if entry.network.subnet is not None
    )


def _is_pair(host: Link, peer: Link | None) -> bool:
    return peer is not None and peer.kind == "veth" and peer.peer_index == host.index


# -- the fake -------------------------------------------------------------------------


@dataclass
class _FakeBridge:
    network: NodeNetwork
    index: int


class FakeBridgeNetwork:
    """``BridgeNetwork`` in memory, with the real one's rules: IDs and inputs
    validated alike, re-attaching keeps the interfaces (and their indexes),
    removing a network with attached tasks is refused. Namespaces are not
    checked: there are none."""

    def __init__(self) -> None:
        self.bridges: dict[str, _FakeBridge] = {}
        # task ID -> network ID -> the interface made for it
        self.attached: dict[str, dict[str, AttachedInterface]] = {}
        # task ID -> (subnet, gateway) routed inside it besides the default route
        self.routes: dict[str, frozenset[tuple[str, str]]] = {}
        self.created = 0  # veth pairs made so far
        self._next_index = 100

    def _index(self) -> int:
        self._next_index += 1
        return self._next_index

    async def ensure_network(self, network: NodeNetwork) -> None:
        current = self.bridges.get(network.network_id)
        index = current.index if current is not None else self._index()
        self.bridges[network.network_id] = _FakeBridge(network, index)

    async def remove_network(self, network_id: str) -> None:
        bridge_name(network_id)  # validates
        users = sorted(t for t, nets in self.attached.items() if network_id in nets)
        if users:
            raise FailedPrecondition(
                f"network {network_id} still has {len(users)} task interface(s) on this "
                f"node: detach those tasks first"
            )
        self.bridges.pop(network_id, None)

    async def attach(self, task: TaskAttachment) -> tuple[AttachedInterface, ...]:
        current = self.attached.get(task.task_id, {})
        result: dict[str, AttachedInterface] = {}
        for position, entry in enumerate(task.networks):
            network_id = entry.network.network_id
            await self.ensure_network(entry.network)
            kept = current.get(network_id)
            if kept is not None and kept.ifname == peer_ifname(position):
                result[network_id] = AttachedInterface(
                    network_id,
                    kept.host_ifname,
                    kept.host_index,
                    kept.ifname,
                    kept.index,
                    entry.address,
                )
                continue
            self.created += 1
            result[network_id] = AttachedInterface(
                network_id,
                host_ifname(task.task_id, network_id),
                self._index(),
                peer_ifname(position),
                self._index(),
                entry.address,
            )
        self.attached[task.task_id] = {**current, **result}
        self.routes[task.task_id] = self.routes.get(task.task_id, frozenset()) | subnet_routes(task)
        return tuple(result.values())

    async def detach(self, task_id: str) -> None:
        _check_id("task", task_id)
        self.attached.pop(task_id, None)
        self.routes.pop(task_id, None)

    async def networks(self) -> frozenset[str]:
        return frozenset(self.bridges)

    async def attachments(self) -> dict[str, frozenset[str]]:
        return {task_id: frozenset(nets) for task_id, nets in self.attached.items()}


def parse_address(text: str) -> IPv4Interface:
    """``10.32.5.7/24`` as an IPv4 interface, or a one-line InvalidArgument."""
    try:
        return IPv4Interface(text)
    except (ipaddress.AddressValueError, ipaddress.NetmaskValueError, ValueError) as exc:
        raise InvalidArgument(f"{text!r} is not an IPv4 address with a prefix: {exc}") from None
