"""What a node must know of the cluster's networks to serve them.

The leader's dispatcher builds one ``NetworkView`` per node from the
replicated state and pushes it over the node's session whenever it changes;
the agent's network controller turns it into bridges, nftables rules, DNS
answers and WireGuard peers. Nodes keep serving from the last view they got
while cut off from the managers, so the view is complete (not a diff) and
self-contained: nothing in it needs another lookup.

Only pure data lives here (``warren.manager`` builds it, ``warren.agent``
reads it; neither imports the other).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from warren.core.networks import EndpointMode, PortConfig, VirtualIP
from warren.core.validation import bounded, validate

_ID = bounded(max_length=64)
_ADDRESS = bounded(max_length=len("255.255.255.255/32"))
_HOST_PORT_LENGTH = 253 + len("[]:65535")


@dataclass(frozen=True)
class ViewNetwork:
    """A network, with this node's share of it (empty ``blocks``: no task of
    the network runs here, so the node needs no bridge for it)."""

    id: str = field(metadata=_ID)
    name: str = field(metadata=bounded(max_length=63))
    subnet: str = field(metadata=_ADDRESS)  # the whole network, e.g. 10.32.0.0/16
    # This node's blocks (e.g. 10.32.64.0/24); the first address of each is
    # the bridge's, and the tasks' gateway.
    blocks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class ViewEndpoint:
    """A task that may receive a service's traffic on one network: running,
    and healthy when the service has a health check."""

    task_id: str = field(metadata=_ID)
    node_id: str = field(metadata=_ID)
    network_id: str = field(metadata=_ID)
    address: str = field(metadata=_ADDRESS)  # a.b.c.d/prefix, as the task holds it
    # Share of new connections relative to the service's other endpoints
    # (weighted splits for canaries); 1 for every task today.
    weight: int = field(default=1, metadata=bounded(minimum=1, maximum=10_000))

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class ViewService:
    """A service on at least one network, or publishing a port."""

    id: str = field(metadata=_ID)
    name: str = field(metadata=bounded(max_length=63))
    mode: EndpointMode = EndpointMode.VIP
    networks: tuple[str, ...] = ()  # network IDs
    vips: tuple[VirtualIP, ...] = ()  # one per network in VIP mode
    ports: tuple[PortConfig, ...] = ()  # published ports, as allocated
    endpoints: tuple[ViewEndpoint, ...] = ()

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class ViewPeer:
    """Another node of the mesh: where to reach it, and what it routes."""

    node_id: str = field(metadata=_ID)
    public_key: str = field(metadata=bounded(max_length=64))  # WireGuard, base64
    # host:port of its underlay; the host is the node's address, which may be a
    # DNS name (up to 253 characters) or an IPv6 address in brackets.
    endpoint: str = field(metadata=bounded(max_length=_HOST_PORT_LENGTH))
    # Its node blocks across every network: the container subnets behind it.
    blocks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class NetworkView:
    """Everything a node serves, at one store revision (newer replaces older)."""

    revision: int = 0
    networks: tuple[ViewNetwork, ...] = ()
    services: tuple[ViewService, ...] = ()
    peers: tuple[ViewPeer, ...] = ()

    def __post_init__(self) -> None:
        validate(self)
