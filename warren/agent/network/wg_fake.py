"""An in-memory WireGuard device for unit tests, with WireGuard's own set semantics
(add, remove, update_only, replace_allowed_ips, an allowed IP moving between peers)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from warren.agent.network.wireguard import (
    AddPeer,
    DeviceState,
    InterfaceConfig,
    MeshPlan,
    PeerChange,
    PeerState,
    RemovePeer,
    UpdatePeer,
    public_key_of,
)
from warren.core.errors import AlreadyExists, NotFound


@dataclass
class FakeInterface:
    config: InterfaceConfig
    public_key: str
    listen_port: int
    mtu: int
    peers: dict[str, PeerState] = field(default_factory=dict)
    routes: set[str] = field(default_factory=set)


class FakeDevice:
    """Records every call in ``calls`` (name of the method, interface) and every plan."""

    def __init__(self) -> None:
        self.interfaces: dict[str, FakeInterface] = {}
        self.calls: list[tuple[str, str]] = []
        self.plans: list[MeshPlan] = []

    def exists(self, name: str) -> bool:
        return name in self.interfaces

    def create(self, config: InterfaceConfig) -> None:
        self.calls.append(("create", config.name))
        if config.name in self.interfaces:
            raise AlreadyExists(f"interface {config.name} exists already")
        self.interfaces[config.name] = FakeInterface(
            config, config.public_key, config.listen_port, config.mtu
        )

    def _get(self, name: str) -> FakeInterface:
        try:
            return self.interfaces[name]
        except KeyError:
            raise NotFound(f"interface {name} does not exist") from None

    def apply(self, name: str, plan: MeshPlan) -> None:
        self.calls.append(("apply", name))
        self.plans.append(plan)
        link = self._get(name)
        if plan.private_key:
            link.public_key = public_key_of(plan.private_key)
        if plan.listen_port is not None:
            link.listen_port = plan.listen_port
        if plan.mtu is not None:
            link.mtu = plan.mtu
        for change in plan.peer_changes:
            _apply_change(link, change)
        link.routes -= set(plan.routes_to_remove)
        link.routes |= set(plan.routes_to_add)

    def state(self, name: str) -> DeviceState:
        link = self._get(name)
        return DeviceState(
            name=name,
            public_key=link.public_key,
            listen_port=link.listen_port,
            mtu=link.mtu,
            peers=tuple(link.peers.values()),
            routes=tuple(sorted(link.routes)),
        )

    def delete(self, name: str) -> None:
        self.calls.append(("delete", name))
        self.interfaces.pop(name, None)

    def handshake(self, name: str, public_key: str, at: float, endpoint: str | None = None) -> None:
        """What a handshake from a peer does: its time, and its endpoint if it roamed."""
        link = self._get(name)
        peer = link.peers[public_key]
        link.peers[public_key] = replace(
            peer, last_handshake=at, endpoint=endpoint or peer.endpoint
        )


def _apply_change(link: FakeInterface, change: PeerChange) -> None:
    if isinstance(change, RemovePeer):
        link.peers.pop(change.public_key, None)
        return
    if isinstance(change, AddPeer):
        peer = change.peer
        state = PeerState(peer.public_key, peer.endpoint, (), peer.persistent_keepalive)
        link.peers[peer.public_key] = state
        _give_allowed_ips(link, peer.public_key, peer.allowed_ips)
        return
    _update(link, change)


def _update(link: FakeInterface, change: UpdatePeer) -> None:
    have = link.peers.get(change.public_key)
    if have is None:  # update_only
        return
    if change.endpoint is not None:
        have = replace(have, endpoint=change.endpoint)
    if change.persistent_keepalive is not None:
        have = replace(have, persistent_keepalive=change.persistent_keepalive)
    link.peers[change.public_key] = have
    if change.allowed_ips is not None:  # replace_allowed_ips
        _give_allowed_ips(link, change.public_key, change.allowed_ips)


def _give_allowed_ips(link: FakeInterface, owner: str, nets: tuple[str, ...]) -> None:
    # As in WireGuard, a subnet belongs to one peer: giving it to one takes it from another.
    for key, peer in list(link.peers.items()):
        if key != owner and set(peer.allowed_ips) & set(nets):
            kept = tuple(n for n in peer.allowed_ips if n not in nets)
            link.peers[key] = replace(peer, allowed_ips=kept)
    link.peers[owner] = replace(link.peers[owner], allowed_ips=tuple(sorted(nets)))
