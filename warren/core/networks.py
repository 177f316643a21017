"""Networks, published ports and the addresses tasks and services hold on them.

Plain frozen models, validated like the others (``validate(self)`` in
``__post_init__``). What is *asked for* (``NetworkSpec``, ``EndpointSpec``,
``PortConfig``) is kept apart from what the allocator *gave*
(``Network.subnet`` and its node blocks, ``NetworkAttachment``,
``VirtualIP``, ``Endpoint``): the choices are made once, by the leader, in
``warren.manager.allocator``, and then replicated as data.

The address plan of a network (the allocator relies on it; nodes read it):

- ``subnet``: the whole network, IPv4, a /8 to a /24.
- the VIP range: its first quarter, where services' virtual IPs come from;
  containers route the whole subnet through their node, so VIPs need no
  route of their own.
- node blocks of ``block_prefix`` bits: each node running a task of the
  network holds one or more, and the WireGuard mesh routes a block to its
  node (as flannel's and k3s' per-node pod CIDRs). A block's first address
  is the gateway (the node's bridge); its network and broadcast addresses
  and the gateway are never given to a task. A task's address carries the
  block's prefix (``10.32.64.7/24``); the rest of the subnet (other nodes'
  blocks, the VIP range) is routed through the gateway.

This module imports nothing else of Warren's models: ``models`` will import it
(``ServiceSpec.endpoint``, ``Task`` attachments).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from enum import StrEnum

from warren.core.errors import InvalidArgument
from warren.core.validation import bounded, show, validate

# The same rule as warren.core.models.NAME_RE (a test holds them equal); not
# imported from there because models imports this module.
NETWORK_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_LABEL_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./-]{0,127}")

# A /8 is far above any cluster; past a /24 the blocks get too small to be of use.
MIN_SUBNET_PREFIX = 8
MAX_SUBNET_PREFIX = 24
# Node blocks: a /24 (253 tasks) unless the subnet is small, then 16 per subnet.
DEFAULT_BLOCK_PREFIX = 24
MIN_BLOCK_BITS = 4  # at least 2**4 blocks: 4 make the VIP range, 12 go to nodes
MAX_BLOCK_PREFIX = MAX_SUBNET_PREFIX + MIN_BLOCK_BITS  # a /28: 13 tasks
# The VIP range is the first 1/2**VIP_RANGE_BITS of the subnet (a quarter).
VIP_RANGE_BITS = 2
# Where `published=0` picks a port, as Docker Swarm and Kubernetes' NodePorts.
DYNAMIC_PORTS = range(30000, 32768)
MAX_ID_LENGTH = 64
_ADDRESS_LENGTH = len("255.255.255.255/32")


class PortProtocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"


class PublishMode(StrEnum):
    INGRESS = "ingress"  # every node accepts and forwards anywhere (the routing mesh)
    HOST = "host"  # only nodes running a task; the task sees the client's address


class EndpointMode(StrEnum):
    VIP = "vip"  # one virtual IP per network, balanced over the tasks
    DNSRR = "dnsrr"  # no VIP: the name resolves to the tasks' addresses


def parse_subnet(text: str, what: str = "subnet") -> ipaddress.IPv4Network:
    """``text`` as an IPv4 network a Warren network may use, or a one-line error."""
    net = _parse_network(text, what)
    if not MIN_SUBNET_PREFIX <= net.prefixlen <= MAX_SUBNET_PREFIX:
        raise InvalidArgument(
            f"{what} {net} is a /{net.prefixlen}: use a /{MIN_SUBNET_PREFIX} to a "
            f"/{MAX_SUBNET_PREFIX}"
        )
    kind = _special_range(net)
    if kind:
        raise InvalidArgument(
            f"{what} {net} is in the {kind} range: use a private range such as 10.0.0.0/8"
        )
    return net


def _parse_network(text: str, what: str) -> ipaddress.IPv4Network:
    if not isinstance(text, str) or "/" not in text:
        raise InvalidArgument(f"invalid {what} {show(text)}: expected a CIDR such as 10.32.0.0/16")
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise InvalidArgument(
            f"invalid {what} {show(text)}: expected a CIDR such as 10.32.0.0/16"
        ) from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise InvalidArgument(f"{what} {show(text)} is IPv6: only IPv4 subnets are supported")
    if str(net) != text:
        given = ipaddress.ip_interface(text).ip
        fault = "has host bits set" if given != net.network_address else "is not a plain CIDR"
        raise InvalidArgument(f"{what} {show(text)} {fault}: did you mean {net}?")
    return net


def _special_range(net: ipaddress.IPv4Network) -> str:
    checks = (
        ("loopback", net.is_loopback),
        ("link-local", net.is_link_local),
        ("multicast", net.is_multicast),
        ("unspecified", net.network_address.is_unspecified),
        ("reserved", net.is_reserved),
    )
    return next((kind for kind, hit in checks if hit), "")


def parse_interface(text: str, what: str = "address") -> ipaddress.IPv4Interface:
    """``a.b.c.d/prefix`` as an IPv4 interface, or a one-line error."""
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        iface = None
    # Written as Python writes it: a.b.c.d/prefix, no netmask, no leading zeros.
    if not isinstance(iface, ipaddress.IPv4Interface) or str(iface) != text:
        raise InvalidArgument(f"invalid {what} {show(text)}: expected a.b.c.d/prefix")
    return iface


def block_prefix_for(subnet: ipaddress.IPv4Network) -> int:
    """Node block size of a subnet: a /24, or 1/16 of the subnet when that is smaller."""
    return max(DEFAULT_BLOCK_PREFIX, subnet.prefixlen + MIN_BLOCK_BITS)


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not NETWORK_NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"invalid network name {show(name)}: use 1-63 letters, digits, '_', '.' or '-'"
        )


def _check_id(value: str, what: str) -> None:
    if not value:
        raise InvalidArgument(f"{what} must not be empty")


@dataclass(frozen=True)
class NetworkSpec:
    name: str
    # Empty: the allocator picks a free subnet from its pool.
    subnet: str = field(default="", metadata=bounded(max_length=_ADDRESS_LENGTH))
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_name(self.name)
        if self.subnet:
            parse_subnet(self.subnet)
        validate(self)
        for key in self.labels:
            if not _LABEL_KEY_RE.fullmatch(key):
                raise InvalidArgument(f"invalid network label key {show(key)}")


@dataclass(frozen=True)
class NodeBlock:
    """A node's share of a network: tasks on the node take addresses from it."""

    node_id: str = field(metadata=bounded(max_length=MAX_ID_LENGTH))
    subnet: str = field(metadata=bounded(max_length=_ADDRESS_LENGTH))

    def __post_init__(self) -> None:
        validate(self)
        _check_id(self.node_id, "node block node_id")
        _parse_network(self.subnet, "node block")

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gateway(self) -> str:
        """The block's first address: the node's bridge, the tasks' next hop."""
        return str(self.network.network_address + 1)


@dataclass(frozen=True)
class Network:
    id: str = field(metadata=bounded(max_length=MAX_ID_LENGTH))
    spec: NetworkSpec
    # What the allocator chose (spec.subnet when one was asked for).
    subnet: str = field(metadata=bounded(max_length=_ADDRESS_LENGTH))
    block_prefix: int = field(metadata=bounded(minimum=MIN_SUBNET_PREFIX, maximum=32))
    blocks: tuple[NodeBlock, ...] = ()
    created_at: float = 0.0
    updated_at: float = 0.0
    version: int = 0

    def __post_init__(self) -> None:
        validate(self)
        _check_id(self.id, "network id")
        net = parse_subnet(self.subnet, f"network {self.spec.name} subnet")
        if self.spec.subnet and self.spec.subnet != self.subnet:
            raise InvalidArgument(
                f"network {self.spec.name} asked for {self.spec.subnet} but holds {self.subnet}"
            )
        low, high = net.prefixlen + MIN_BLOCK_BITS, MAX_BLOCK_PREFIX
        if not low <= self.block_prefix <= high:
            raise InvalidArgument(
                f"network {self.spec.name}: node blocks of {net} must be a /{low} to a /{high}, "
                f"not a /{self.block_prefix}"
            )
        self._check_blocks(net)

    def _check_blocks(self, net: ipaddress.IPv4Network) -> None:
        seen: set[str] = set()
        for block in self.blocks:
            where = block.network
            if where.prefixlen != self.block_prefix or not where.subnet_of(net):
                raise InvalidArgument(
                    f"network {self.spec.name}: node block {block.subnet} is not a "
                    f"/{self.block_prefix} of {net}"
                )
            if where.subnet_of(self.vip_range):
                raise InvalidArgument(
                    f"network {self.spec.name}: node block {block.subnet} is in the VIP range "
                    f"{self.vip_range}"
                )
            if block.subnet in seen:
                raise InvalidArgument(
                    f"network {self.spec.name}: node block {block.subnet} is held twice"
                )
            seen.add(block.subnet)

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def vip_range(self) -> ipaddress.IPv4Network:
        """Where services' virtual IPs come from: the subnet's first quarter."""
        net = self.network
        return next(net.subnets(prefixlen_diff=VIP_RANGE_BITS))

    def blocks_of(self, node_id: str) -> tuple[NodeBlock, ...]:
        return tuple(block for block in self.blocks if block.node_id == node_id)


# Keyword-only: ``--publish 8080:80`` names the ports the other way round from
# the fields, and a positional call would swap them silently.
@dataclass(frozen=True, kw_only=True)
class PortConfig:
    """``--publish published:target``; ``published=0`` lets the allocator pick one."""

    target: int = field(metadata=bounded(minimum=1, maximum=65535))
    published: int = field(default=0, metadata=bounded(minimum=0, maximum=65535))
    protocol: PortProtocol = PortProtocol.TCP
    mode: PublishMode = PublishMode.INGRESS

    def __post_init__(self) -> None:
        _check_port(self.target, "target port", 1)
        _check_port(self.published, "published port", 0)
        validate(self)

    @property
    def key(self) -> tuple[int, PortProtocol]:
        """What must be unique cluster-wide once published."""
        return self.published, self.protocol

    def __str__(self) -> str:
        return f"{self.published}/{self.protocol}"


def _check_port(value: int, what: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 65535:
        hint = " (or 0 to let Warren pick one)" if low == 0 else ""
        raise InvalidArgument(f"{what} must be between 1 and 65535{hint}, not {show(value)}")


def check_unique_ports(ports: tuple[PortConfig, ...]) -> None:
    """One service may not publish the same port and protocol twice."""
    seen: set[tuple[int, PortProtocol]] = set()
    for port in ports:
        if port.published and port.key in seen:
            raise InvalidArgument(f"published port {port} is listed twice")
        seen.add(port.key)


@dataclass(frozen=True)
class EndpointSpec:
    """How a service is reached: ``--endpoint-mode`` and ``--publish``."""

    mode: EndpointMode = EndpointMode.VIP
    ports: tuple[PortConfig, ...] = ()

    def __post_init__(self) -> None:
        validate(self)
        check_unique_ports(self.ports)


@dataclass(frozen=True)
class NetworkAttachment:
    """A task's address on one network: ``a.b.c.d/prefix`` of its node's block."""

    network_id: str = field(metadata=bounded(max_length=MAX_ID_LENGTH))
    address: str = field(metadata=bounded(max_length=_ADDRESS_LENGTH))

    def __post_init__(self) -> None:
        _check_id(self.network_id, "attachment network_id")
        parse_interface(self.address, "task address")
        validate(self)

    @property
    def ip(self) -> str:
        return str(parse_interface(self.address).ip)


@dataclass(frozen=True)
class VirtualIP:
    """A service's VIP on one network: ``a.b.c.d/prefix`` with the network's prefix."""

    network_id: str = field(metadata=bounded(max_length=MAX_ID_LENGTH))
    address: str = field(metadata=bounded(max_length=_ADDRESS_LENGTH))

    def __post_init__(self) -> None:
        _check_id(self.network_id, "virtual IP network_id")
        parse_interface(self.address, "virtual IP")
        validate(self)

    @property
    def ip(self) -> str:
        return str(parse_interface(self.address).ip)


@dataclass(frozen=True)
class Endpoint:
    """What a service holds once allocated: its VIPs and its ports, all published."""

    vips: tuple[VirtualIP, ...] = ()
    ports: tuple[PortConfig, ...] = ()

    def __post_init__(self) -> None:
        validate(self)
        for port in self.ports:
            if not port.published:
                raise InvalidArgument(f"allocated port for target {port.target} has no number")
        check_unique_ports(self.ports)
        networks = [vip.network_id for vip in self.vips]
        if len(set(networks)) != len(networks):
            raise InvalidArgument("a service holds one virtual IP per network")
