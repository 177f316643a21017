"""The WireGuard mesh between nodes: keys, inputs, the pure planner, the device protocol.

Every node peers with every other node; a peer's allowed IPs are that node's
container subnets, routed through the local WireGuard interface. A sync reads
the device, plans the smallest change (``plan_mesh``) and applies it, so peers
that did not change keep their sessions. The devices themselves (kernel module
or ``wireguard-go``) live in ``wg_kernel`` and ``wg_devices`` (which picks one);
``wg_fake`` is the one for unit tests. All calls are blocking and act in the
caller's network namespace.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from warren.core.errors import FailedPrecondition, InvalidArgument
from warren.security.private_files import make_private

KEY_FILE = "wireguard.key"
KEY_BYTES = 32
# Keeps NAT mappings open for nodes behind NAT (WireGuard's own advice: 25 s).
PERSISTENT_KEEPALIVE = 25
DEFAULT_LISTEN_PORT = 51820
# WireGuard's overhead over IPv4/IPv6 (the uncloud / flannel rule), and its clamp.
MTU_OVERHEAD = 80
MIN_MTU = 1280
MAX_MTU = 1420
# A session older than this is dead (WireGuard's REJECT_AFTER_TIME).
SESSION_LIFETIME = 180.0
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


# -- keys ------------------------------------------------------------------------------


def _decode_key(value: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise InvalidArgument(f"{what} is not a WireGuard key (32 bytes in base64)")
    return raw


def generate_private_key() -> str:
    """A fresh X25519 private key, base64 as WireGuard writes it."""
    raw = X25519PrivateKey.generate().private_bytes_raw()
    return base64.b64encode(raw).decode()


def public_key_of(private_key: str) -> str:
    """The base64 public key of a base64 private key (what ``wg pubkey`` prints)."""
    raw = _decode_key(private_key, "private key")
    public = X25519PrivateKey.from_private_bytes(raw).public_key()
    return base64.b64encode(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


@dataclass(frozen=True)
class NodeKey:
    """This node's key pair; only ``public_key`` is ever published."""

    private_key: str = field(repr=False)
    public_key: str


def load_or_create_key(directory: Path) -> NodeKey:
    """The node's key pair from ``directory/wireguard.key`` (0600, directory 0700),
    made on first use. A damaged file is an error, never silently replaced: peers
    know the old public key."""
    make_private(directory, recursive=False)
    path = directory / KEY_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = generate_private_key()
        try:
            _write_new_key(path, text)
        except FileExistsError:  # another process made it meanwhile: use theirs
            text = path.read_text().strip()
    try:
        return NodeKey(private_key=text, public_key=public_key_of(text))
    except InvalidArgument:
        raise FailedPrecondition(
            f"{path} does not hold a WireGuard private key; move it away to make a new one"
        ) from None


def _write_new_key(path: Path, private_key: str) -> None:
    # O_EXCL: two starting agents never overwrite each other's key.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(private_key + "\n")
        out.flush()
        os.fsync(out.fileno())


# -- inputs ----------------------------------------------------------------------------


def normalize_endpoint(endpoint: str) -> str:
    """``ip:port`` (IPv6 as ``[ip]:port``) in canonical form; names are refused
    because WireGuard takes addresses only (resolving is the caller's job)."""
    host, sep, port_text = endpoint.rpartition(":")
    if not sep or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise InvalidArgument(f"endpoint {endpoint!r} is not ADDRESS:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidArgument(f"endpoint {endpoint!r} needs an IP address, not a name") from None
    if address.version == 6:
        return f"[{address.compressed}]:{int(port_text)}"
    return f"{address.compressed}:{int(port_text)}"


def normalize_networks(networks: Iterable[str]) -> tuple[str, ...]:
    """Sorted, deduplicated CIDRs; host bits set are refused (a typo, not a subnet)."""
    parsed: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
    for text in networks:
        try:
            parsed.add(ipaddress.ip_network(text, strict=True))
        except ValueError:
            raise InvalidArgument(f"{text!r} is not a subnet in CIDR form") from None
    ordered = sorted(parsed, key=lambda net: (net.version, net.network_address, net.prefixlen))
    return tuple(str(net) for net in ordered)


def _check_port(port: int, what: str) -> None:
    if not 1 <= port <= 65535:
        raise InvalidArgument(f"{what} {port} is not a port (1-65535)")


@dataclass(frozen=True)
class InterfaceConfig:
    """The local end: interface ``name`` (at most 15 characters; with wireguard-go
    also unique across network namespaces), this node's key, UDP ``listen_port``,
    ``address`` on the mesh (a plain IP, put on the interface as a /32 or /128;
    best inside this node's own container subnet, so peers route replies to it)
    and ``mtu`` (see ``mesh_mtu``)."""

    name: str
    private_key: str = field(repr=False)
    listen_port: int
    address: str
    mtu: int

    def __post_init__(self) -> None:
        if not _IFNAME.match(self.name):
            raise InvalidArgument(f"interface name {self.name!r} is not 1-15 of [A-Za-z0-9_.-]")
        _decode_key(self.private_key, "private key")
        _check_port(self.listen_port, "listen port")
        try:
            address = ipaddress.ip_address(self.address)
        except ValueError:
            raise InvalidArgument(f"mesh address {self.address!r} is not an IP address") from None
        object.__setattr__(self, "address", address.compressed)
        if not MIN_MTU <= self.mtu <= 65535:
            raise InvalidArgument(f"MTU {self.mtu} is below {MIN_MTU} (or not a size)")

    @property
    def public_key(self) -> str:
        return public_key_of(self.private_key)


@dataclass(frozen=True)
class Peer:
    """Another node: its ``public_key``, UDP ``endpoint`` (``ip:port``), its
    container subnets as ``allowed_ips``, and ``persistent_keepalive`` seconds
    (0 turns it off)."""

    public_key: str
    endpoint: str
    allowed_ips: tuple[str, ...] = ()
    persistent_keepalive: int = PERSISTENT_KEEPALIVE

    def __post_init__(self) -> None:
        _decode_key(self.public_key, "peer public key")
        object.__setattr__(self, "endpoint", normalize_endpoint(self.endpoint))
        object.__setattr__(self, "allowed_ips", normalize_networks(self.allowed_ips))
        if not 0 <= self.persistent_keepalive <= 65535:
            raise InvalidArgument(f"keepalive {self.persistent_keepalive} is not 0-65535 seconds")


# -- what a device reports -------------------------------------------------------------


@dataclass(frozen=True)
class PeerState:
    """A peer as the device has it; ``last_handshake`` is a Unix time (0: never)."""

    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    persistent_keepalive: int
    last_handshake: float = 0.0
    rx_bytes: int = 0
    tx_bytes: int = 0

    def handshake_age(self, now: float | None = None) -> float | None:
        """Seconds since the last handshake, or None if there was none."""
        if self.last_handshake <= 0:
            return None
        return max(0.0, (time.time() if now is None else now) - self.last_handshake)


@dataclass(frozen=True)
class DeviceState:
    """The interface as it is: key, port, MTU, peers and the routes through it."""

    name: str
    public_key: str
    listen_port: int
    mtu: int
    peers: tuple[PeerState, ...]
    routes: tuple[str, ...]

    def peer(self, public_key: str) -> PeerState | None:
        return next((p for p in self.peers if p.public_key == public_key), None)


# -- the plan --------------------------------------------------------------------------


@dataclass(frozen=True)
class AddPeer:
    peer: Peer


@dataclass(frozen=True)
class RemovePeer:
    public_key: str


@dataclass(frozen=True)
class UpdatePeer:
    """Only what changed; ``allowed_ips`` replaces the whole set when given."""

    public_key: str
    endpoint: str | None = None
    persistent_keepalive: int | None = None
    allowed_ips: tuple[str, ...] | None = None


PeerChange = AddPeer | RemovePeer | UpdatePeer


@dataclass(frozen=True)
class MeshPlan:
    """What to change on one interface; fields left None/empty stay as they are."""

    private_key: str | None = field(default=None, repr=False)
    listen_port: int | None = None
    mtu: int | None = None
    peer_changes: tuple[PeerChange, ...] = ()
    routes_to_add: tuple[str, ...] = ()
    routes_to_remove: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return self == MeshPlan()

    @property
    def touches_wireguard(self) -> bool:
        """Whether the WireGuard configuration itself changes (not only links/routes)."""
        return bool(self.private_key or self.listen_port is not None or self.peer_changes)


def mesh_mtu(egress_mtu: int) -> int:
    """The interface MTU for an egress route MTU: minus WireGuard's 80 bytes,
    clamped to 1280..1420."""
    return max(MIN_MTU, min(MAX_MTU, egress_mtu - MTU_OVERHEAD))


def check_peers(config: InterfaceConfig, peers: Sequence[Peer]) -> None:
    """Refuse what WireGuard would accept and get wrong: the same key twice, this
    node itself, or one subnet on two peers (WireGuard moves it to the last one)."""
    own = config.public_key
    seen: dict[str, Peer] = {}
    for peer in peers:
        if peer.public_key == own:
            raise InvalidArgument(f"peer {peer.endpoint} has this node's own public key")
        if peer.public_key in seen:
            raise InvalidArgument(f"public key {peer.public_key} is given for two peers")
        seen[peer.public_key] = peer
    owners: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, Peer] = {}
    for peer in peers:
        for text in peer.allowed_ips:
            net = ipaddress.ip_network(text)
            for other_net, other in owners.items():
                if other is not peer and _overlap(net, other_net):
                    raise InvalidArgument(
                        f"subnet {net} of peer {peer.endpoint} overlaps {other_net} "
                        f"of peer {other.endpoint}"
                    )
            owners[net] = peer


def _overlap(
    one: ipaddress.IPv4Network | ipaddress.IPv6Network,
    other: ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> bool:
    if isinstance(one, ipaddress.IPv4Network) and isinstance(other, ipaddress.IPv4Network):
        return one.overlaps(other)
    if isinstance(one, ipaddress.IPv6Network) and isinstance(other, ipaddress.IPv6Network):
        return one.overlaps(other)
    return False


def plan_mesh(
    config: InterfaceConfig, state: DeviceState, desired: Sequence[Peer], now: float
) -> MeshPlan:
    """The smallest change taking ``state`` to ``config`` with ``desired`` peers.

    A peer with a live session (handshake within 180 s) keeps the endpoint
    WireGuard learned from its packets: it roamed or sits behind NAT, and the
    published endpoint may not reach it. Raises InvalidArgument (changing
    nothing) for inconsistent peers.
    """
    check_peers(config, desired)
    wanted = {peer.public_key: peer for peer in desired}
    current = {peer.public_key: peer for peer in state.peers}
    changes: list[PeerChange] = [RemovePeer(key) for key in sorted(current) if key not in wanted]
    for key, peer in wanted.items():
        have = current.get(key)
        if have is None:
            changes.append(AddPeer(peer))
            continue
        update = _peer_update(peer, have, now)
        if update is not None:
            changes.append(update)
    wanted_routes = {net for peer in desired for net in peer.allowed_ips}
    have_routes = set(state.routes)
    return MeshPlan(
        private_key=config.private_key if state.public_key != config.public_key else None,
        listen_port=config.listen_port if state.listen_port != config.listen_port else None,
        mtu=config.mtu if state.mtu != config.mtu else None,
        peer_changes=tuple(changes),
        routes_to_add=normalize_networks(wanted_routes - have_routes),
        routes_to_remove=normalize_networks(have_routes - wanted_routes),
    )


def _peer_update(peer: Peer, have: PeerState, now: float) -> UpdatePeer | None:
    age = have.handshake_age(now)
    roamed = age is not None and age < SESSION_LIFETIME
    endpoint = None if have.endpoint == peer.endpoint or roamed else peer.endpoint
    keepalive = (
        None
        if have.persistent_keepalive == peer.persistent_keepalive
        else peer.persistent_keepalive
    )
    allowed = None if set(have.allowed_ips) == set(peer.allowed_ips) else peer.allowed_ips
    if endpoint is None and keepalive is None and allowed is None:
        return None
    return UpdatePeer(peer.public_key, endpoint, keepalive, allowed)


# -- the device ------------------------------------------------------------------------


class WireGuardDevice(Protocol):
    """One WireGuard implementation, acting in the caller's network namespace."""

    def exists(self, name: str) -> bool:
        """Whether the interface exists and can be configured."""
        ...

    def create(self, config: InterfaceConfig) -> None:
        """Create the interface with its key, port, address and MTU, up, no peers."""
        ...

    def apply(self, name: str, plan: MeshPlan) -> None:
        """Apply a plan: WireGuard settings and peers, then MTU and routes."""
        ...

    def state(self, name: str) -> DeviceState:
        """Read the interface: peers with handshake time and byte counters, routes."""
        ...

    def delete(self, name: str) -> None:
        """Remove the interface and whatever runs it; a missing one is no error."""
        ...


class Mesh:
    """Keeps one interface in line with the desired peers."""

    def __init__(self, device: WireGuardDevice, config: InterfaceConfig) -> None:
        self.device = device
        self.config = config

    def sync(self, peers: Sequence[Peer], now: float | None = None) -> MeshPlan:
        """Create the interface if needed, then apply the smallest change; returns it."""
        check_peers(self.config, peers)
        if not self.device.exists(self.config.name):
            self.device.create(self.config)
        state = self.device.state(self.config.name)
        plan = plan_mesh(self.config, state, peers, time.time() if now is None else now)
        if not plan.empty:
            self.device.apply(self.config.name, plan)
        return plan

    def state(self) -> DeviceState:
        return self.device.state(self.config.name)

    def close(self) -> None:
        """Remove the interface (peers, routes and any wireguard-go process go with it)."""
        self.device.delete(self.config.name)
