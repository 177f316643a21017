"""The network doctor's checks on this node (``warren network doctor``).

The leader asks every node over its session; each node answers one
``DoctorReport`` (``warren.core.doctor``) with a row per check, run from the
node's own network namespace:

- per peer of the mesh: the WireGuard handshake's age (FAIL when there was none
  or it is older than 180 s), the round trip of a ping through the tunnel to
  the peer's mesh address (``view_mapping.mesh_addresses``), and the path MTU:
  a ping as large as the mesh MTU with don't-fragment set;
- per service on a network this node holds a block of: its name
  (``NAME.NETWORK``) asked of the node's DNS at the gateway from a local task's
  namespace, as a container asks (the DNS answers only its clients; without a
  local task on the network there is no one to ask as, and the row is
  skipped), and a TCP connection to the VIP on each TCP port the service
  publishes, from that namespace too (else from the node's);
- per published TCP port: a connection to it on 127.0.0.1, as the quick start's
  curl (host mode: at the node's first gateway, as a host-mode task's reply to
  127.0.0.1 would stay in its own namespace; only on nodes running one of the
  service's tasks, as only they listen).

``doctor_plan`` (what to check, from the view) and the ``*_check`` functions
(what a result means, with a hint for a failure) are pure; the probes that
touch the network are behind ``Probes`` (``SystemProbes``, ``FakeProbes``).
A node on the simulated plane has no data plane to probe: it reports the rows
it would check as SKIP, "simulated network plane".
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from dnslib import QTYPE, RCODE, DNSError, DNSRecord  # type: ignore[import-untyped]

from warren.agent.network.controller import MeshSettings, NetworkController
from warren.agent.network.dns import DNS_PORT
from warren.agent.network.netlink import run_in_netns
from warren.agent.network.view_mapping import mesh_addresses
from warren.agent.network.wireguard import MTU_OVERHEAD
from warren.core.doctor import (
    HANDSHAKE_MAX_AGE,
    CheckKind,
    CheckResult,
    DoctorCheck,
    DoctorReport,
    DoctorRequest,
)
from warren.core.errors import RuntimeFailure, WarrenError
from warren.core.networks import EndpointMode, PortProtocol, PublishMode
from warren.core.node_view import NetworkView, ViewService

# Every probe gives up after this long: a report must reach the leader in time.
PROBE_TIMEOUT = 1.0
# Probes in flight at once (each holds a thread while it waits).
PROBE_CONCURRENCY = 16
# IPv4 and ICMP headers: a ping of the mesh MTU carries this much less payload.
ICMP_OVERHEAD = 28
SIMULATED = "simulated network plane: not probed"
LOOPBACK = "127.0.0.1"
_DETAIL_LENGTH = 300

T = TypeVar("T")


class ProbeFailed(RuntimeFailure):
    """A probe got no (good) answer; the message is the one-line reason."""


# -- what to check (pure) ---------------------------------------------------------------


@dataclass(frozen=True)
class PeerTarget:
    node_id: str
    public_key: str
    endpoint: str  # host:port of its underlay
    address: str  # its mesh address: what a ping through the tunnel reaches


@dataclass(frozen=True)
class ServiceTarget:
    """A service on a network this node holds a block of."""

    service: str
    network: str  # its name
    network_id: str
    gateway: str  # this node's gateway on the network: where its DNS listens
    expected: tuple[str, ...]  # what NAME.NETWORK resolves to (the VIP, or the tasks)
    vip: str | None
    tcp_ports: tuple[int, ...]  # target ports reached through the VIP
    udp_ports: tuple[int, ...]  # not probed (a UDP service need not answer)
    endpoints: int  # healthy tasks on the network


@dataclass(frozen=True)
class PublishedTarget:
    service: str
    port: int
    protocol: PortProtocol
    mode: PublishMode
    listens_here: bool  # ingress: always; host mode: a task of the service runs here
    address: str  # this node's address to connect to ("": it has none to try)

    @property
    def name(self) -> str:
        return f"{self.service} {self.address or 'this node'}:{self.port} ({self.mode})"


@dataclass(frozen=True)
class DoctorPlan:
    peers: tuple[PeerTarget, ...] = ()
    services: tuple[ServiceTarget, ...] = ()
    published: tuple[PublishedTarget, ...] = ()
    # Services the filter names that this node serves nothing of.
    absent: tuple[str, ...] = ()


def first_address(block: str) -> str:
    """A block's gateway: its first usable address (as the bridges give it)."""
    return str(ipaddress.ip_network(block, strict=False).network_address + 1)


def _ip(address: str) -> str:
    return str(ipaddress.ip_interface(address).ip)


def doctor_plan(
    view: NetworkView, node_id: str, public_key: str = "", service: str = ""
) -> DoctorPlan:
    """What this node checks of ``view`` (``public_key``: this node's in the mesh, which
    settles mesh address clashes as the mesh does; ``service``: only its rows)."""
    others = [p for p in view.peers if p.node_id != node_id]
    members = [(p.node_id, p.public_key) for p in others]
    addresses = mesh_addresses([*members, (node_id, public_key)] if public_key else members)
    peers = tuple(
        PeerTarget(p.node_id, p.public_key, p.endpoint, addresses[p.node_id]) for p in others
    )
    held = {n.id: n for n in view.networks if n.blocks}
    # A local address a host-mode task can answer: the node's first gateway.
    gateway = next((first_address(n.blocks[0]) for n in held.values()), "")
    services = [s for s in view.services if not service or s.name == service]
    targets: list[ServiceTarget] = []
    published: list[PublishedTarget] = []
    for svc in services:
        for network_id in svc.networks:
            network = held.get(network_id)
            if network is not None:
                own = first_address(network.blocks[0])
                targets.append(_service_target(svc, network.name, network_id, own))
        published.extend(_published_targets(svc, node_id, gateway))
    absent = (service,) if service and not services else ()
    return DoctorPlan(peers, tuple(targets), tuple(published), absent)


def _service_target(svc: ViewService, network: str, network_id: str, gateway: str) -> ServiceTarget:
    vip = next((_ip(v.address) for v in svc.vips if v.network_id == network_id), None)
    if svc.mode != EndpointMode.VIP:
        vip = None
    tasks = tuple(
        dict.fromkeys(_ip(e.address) for e in svc.endpoints if e.network_id == network_id)
    )
    ports = sorted({(p.target, p.protocol) for p in svc.ports})
    return ServiceTarget(
        service=svc.name,
        network=network,
        network_id=network_id,
        gateway=gateway,
        expected=(vip,) if vip is not None else tasks,
        vip=vip,
        tcp_ports=tuple(port for port, proto in ports if proto == PortProtocol.TCP),
        udp_ports=tuple(port for port, proto in ports if proto == PortProtocol.UDP),
        endpoints=len(tasks),
    )


def _published_targets(svc: ViewService, node_id: str, gateway: str) -> list[PublishedTarget]:
    local = any(e.node_id == node_id for e in svc.endpoints)
    targets = []
    for port in svc.ports:
        if not port.published:
            continue  # not allocated yet: nothing listens
        if port.mode == PublishMode.INGRESS:
            targets.append(
                PublishedTarget(svc.name, port.published, port.protocol, port.mode, True, LOOPBACK)
            )
        else:
            targets.append(
                PublishedTarget(svc.name, port.published, port.protocol, port.mode, local, gateway)
            )
    return targets


# -- what a result means (pure) -----------------------------------------------------------


def _clip(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _DETAIL_LENGTH else line[: _DETAIL_LENGTH - 3] + "..."


def ok(kind: CheckKind, target: str, detail: str = "") -> DoctorCheck:
    return DoctorCheck(kind, target, CheckResult.OK, _clip(detail))


def fail(kind: CheckKind, target: str, reason: str, hint: str) -> DoctorCheck:
    return DoctorCheck(kind, target, CheckResult.FAIL, _clip(reason), _clip(hint))


def skip(kind: CheckKind, target: str, why: str) -> DoctorCheck:
    return DoctorCheck(kind, target, CheckResult.SKIP, _clip(why))


def _peer_name(peer: PeerTarget) -> str:
    return f"peer {peer.node_id}"


def _udp_port(endpoint: str) -> str:
    return endpoint.rpartition(":")[2] or "?"


def handshake_check(peer: PeerTarget, ages: dict[str, float | None]) -> DoctorCheck:
    """``ages``: handshake age by public key of the peers the interface has (None: never)."""
    target = _peer_name(peer)
    hint = (
        f"check UDP port {_udp_port(peer.endpoint)} is open between the nodes "
        f"(this node reaches {peer.node_id} at {peer.endpoint})"
    )
    if peer.public_key not in ages:
        return fail(
            CheckKind.HANDSHAKE,
            target,
            "not a peer of this node's WireGuard interface",
            "the node has not applied its network view: see the agent's log (WireGuard)",
        )
    age = ages[peer.public_key]
    if age is None:
        return fail(CheckKind.HANDSHAKE, target, "no handshake yet", hint)
    if age > HANDSHAKE_MAX_AGE:
        return fail(CheckKind.HANDSHAKE, target, f"last handshake {age:.0f}s ago", hint)
    return ok(CheckKind.HANDSHAKE, target, f"{age:.0f}s ago")


def round_trip_check(peer: PeerTarget, outcome: float | ProbeFailed) -> DoctorCheck:
    target = f"{_peer_name(peer)} ({peer.address})"
    if isinstance(outcome, ProbeFailed):
        return fail(
            CheckKind.ROUND_TRIP,
            target,
            str(outcome),
            f"nothing crosses the tunnel to {peer.node_id}: see its handshake row, "
            "and that its agent runs",
        )
    return ok(CheckKind.ROUND_TRIP, target, f"{outcome * 1000:.1f} ms")


def path_mtu_check(peer: PeerTarget, mtu: int, outcome: float | ProbeFailed) -> DoctorCheck:
    target = f"{_peer_name(peer)} ({peer.address})"
    if isinstance(outcome, ProbeFailed):
        return fail(
            CheckKind.PATH_MTU,
            target,
            f"{mtu}-byte packets with don't-fragment set: {outcome}",
            f"the underlay between the nodes carries less than {mtu + MTU_OVERHEAD} bytes "
            "(a tunnel or PPPoE on the way?) or drops ICMP 'fragmentation needed'",
        )
    return ok(CheckKind.PATH_MTU, target, f"{mtu} bytes pass unfragmented")


def _dns_target(target: ServiceTarget) -> str:
    return f"{target.service}.{target.network} @ {target.gateway}"


def dns_check(target: ServiceTarget, outcome: tuple[str, ...] | ProbeFailed) -> DoctorCheck:
    name = _dns_target(target)
    if isinstance(outcome, ProbeFailed):
        return fail(
            CheckKind.DNS,
            name,
            str(outcome),
            "the node's DNS does not serve this network: see the agent's log (DNS) and "
            "that the service is on the network ('warren service inspect')",
        )
    if set(outcome) != set(target.expected):
        got = ", ".join(outcome) or "no address"
        want = ", ".join(target.expected) or "no address"
        return fail(
            CheckKind.DNS,
            name,
            f"answered {got}, the view says {want}",
            "the node's DNS serves an older view: see the agent's log",
        )
    if not outcome:
        return ok(CheckKind.DNS, name, "no address (no healthy task)")
    return ok(CheckKind.DNS, name, ", ".join(outcome))


def vip_check(target: ServiceTarget, port: int, outcome: float | ProbeFailed) -> DoctorCheck:
    name = f"{target.service} VIP {target.vip}:{port}"
    if isinstance(outcome, ProbeFailed):
        if target.endpoints == 0:
            hint = f"{target.service} has no healthy task: see 'warren service ps {target.service}'"
        else:
            hint = (
                f"the VIP rules or a task do not answer on port {port}: see the agent's log "
                f"(nftables) and 'warren service ps {target.service}'"
            )
        return fail(CheckKind.VIP, name, str(outcome), hint)
    return ok(CheckKind.VIP, name, f"connected in {outcome * 1000:.1f} ms")


def published_check(target: PublishedTarget, outcome: float | ProbeFailed) -> DoctorCheck:
    name = target.name
    if isinstance(outcome, ProbeFailed):
        return fail(
            CheckKind.PUBLISHED,
            name,
            str(outcome),
            f"no healthy task of {target.service} answers, or the node's published-port "
            "rules are missing: see the agent's log (nftables)",
        )
    return ok(CheckKind.PUBLISHED, name, f"connected in {outcome * 1000:.1f} ms")


# -- probes ----------------------------------------------------------------------------


class Probes(Protocol):
    """What touches the network; every method gives up after ``PROBE_TIMEOUT``."""

    async def handshake_ages(self) -> dict[str, float | None]:
        """Handshake age by public key of the WireGuard interface's peers (None: never)."""
        ...

    async def ping(self, address: str, size: int, dont_fragment: bool) -> float:
        """The round trip of an ICMP echo of ``size`` bytes (IP header included)."""
        ...

    async def resolve(self, netns: str | None, server: str, name: str) -> tuple[str, ...]:
        """The A records ``server`` answers for ``name``, asked from ``netns``."""
        ...

    async def connect(self, netns: str | None, address: str, port: int) -> float:
        """The time a TCP connection to ``address:port`` from ``netns`` takes."""
        ...


@dataclass
class FakeProbes:
    """Answers from tables; anything not in them fails (as an unreachable target)."""

    ages: dict[str, float | None] = field(default_factory=dict)
    ages_error: str = ""
    round_trips: dict[str, float] = field(default_factory=dict)  # address -> seconds
    max_size: int = 1500  # larger pings with don't-fragment set get no reply
    names: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)  # (server, name)
    open_ports: set[tuple[str, int]] = field(default_factory=set)
    # Every probe as made: (probe, netns or "", target).
    calls: list[tuple[str, str, str]] = field(default_factory=list)

    async def handshake_ages(self) -> dict[str, float | None]:
        if self.ages_error:
            raise ProbeFailed(self.ages_error)
        return dict(self.ages)

    async def ping(self, address: str, size: int, dont_fragment: bool) -> float:
        self.calls.append(("ping", "", f"{address}/{size}"))
        if address not in self.round_trips or (dont_fragment and size > self.max_size):
            raise ProbeFailed(f"no reply from {address} within {PROBE_TIMEOUT:g}s")
        return self.round_trips[address]

    async def resolve(self, netns: str | None, server: str, name: str) -> tuple[str, ...]:
        self.calls.append(("resolve", netns or "", f"{name}@{server}"))
        if (server, name) not in self.names:
            raise ProbeFailed(f"NXDOMAIN for {name}")
        return self.names[(server, name)]

    async def connect(self, netns: str | None, address: str, port: int) -> float:
        self.calls.append(("connect", netns or "", f"{address}:{port}"))
        if (address, port) not in self.open_ports:
            raise ProbeFailed(f"connection to {address}:{port} refused")
        return 0.001


class SystemProbes:
    """The real probes, from this process's namespace or a task's (entered by a
    throwaway thread, see ``netlink.run_in_netns``). ICMP needs a raw socket:
    the agent runs as root on the kernel plane."""

    def __init__(self, mesh: MeshSettings | None, timeout: float = PROBE_TIMEOUT) -> None:
        self.mesh = mesh
        self.timeout = timeout
        self._executor = ThreadPoolExecutor(PROBE_CONCURRENCY, thread_name_prefix="warren-doctor")

    async def _blocking(self, netns: str | None, action: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        if netns is None:
            return await loop.run_in_executor(self._executor, action)
        path = Path(netns)
        return await loop.run_in_executor(self._executor, lambda: run_in_netns(path, action))

    async def handshake_ages(self) -> dict[str, float | None]:
        mesh = self.mesh
        if mesh is None:
            return {}
        try:
            state = await self._blocking(None, lambda: mesh.device.state(mesh.interface))
        except WarrenError as exc:
            raise ProbeFailed(f"cannot read WireGuard interface {mesh.interface}: {exc}") from exc
        now = time.time()
        return {peer.public_key: peer.handshake_age(now) for peer in state.peers}

    async def ping(self, address: str, size: int, dont_fragment: bool) -> float:
        return await self._blocking(
            None, lambda: icmp_echo(address, size, dont_fragment, self.timeout)
        )

    async def resolve(self, netns: str | None, server: str, name: str) -> tuple[str, ...]:
        return await self._blocking(netns, lambda: dns_query(server, name, self.timeout))

    async def connect(self, netns: str | None, address: str, port: int) -> float:
        return await self._blocking(netns, lambda: tcp_connect(address, port, self.timeout))


def _probe_error(what: str, exc: OSError) -> ProbeFailed:
    if isinstance(exc, TimeoutError):
        return ProbeFailed(f"{what}: no answer within the timeout")
    return ProbeFailed(f"{what}: {exc.strerror or exc}")


def tcp_connect(address: str, port: int, timeout: float) -> float:
    started = time.monotonic()
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return time.monotonic() - started
    except OSError as exc:
        raise _probe_error(f"TCP connection to {address}:{port}", exc) from None


def dns_query(server: str, name: str, timeout: float, port: int = DNS_PORT) -> tuple[str, ...]:
    """``name``'s A records as ``server`` answers over UDP (ProbeFailed otherwise)."""
    query = DNSRecord.question(name, "A")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.connect((server, port))
            sock.send(query.pack())
            while True:
                reply = DNSRecord.parse(sock.recv(4096))
                if reply.header.id == query.header.id:
                    break
    except OSError as exc:
        raise _probe_error(f"DNS at {server}", exc) from None
    except DNSError as exc:
        raise ProbeFailed(f"DNS at {server}: unreadable reply: {exc}") from None
    if reply.header.rcode != RCODE.NOERROR:
        raise ProbeFailed(f"{RCODE.get(reply.header.rcode)} for {name} from {server}")
    return tuple(str(record.rdata) for record in reply.rr if record.rtype == QTYPE.A)


_ICMP_ECHO_REQUEST = 8
_ICMP_ECHO_REPLY = 0
_IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
_IP_PMTUDISC_DO = getattr(socket, "IP_PMTUDISC_DO", 2)


def icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(identifier: int, sequence: int, payload: bytes) -> bytes:
    header = struct.pack("!BBHHH", _ICMP_ECHO_REQUEST, 0, 0, identifier, sequence)
    checksum = icmp_checksum(header + payload)
    return struct.pack("!BBHHH", _ICMP_ECHO_REQUEST, 0, checksum, identifier, sequence) + payload


def is_echo_reply(packet: bytes, identifier: int, sequence: int) -> bool:
    """``packet`` (an IPv4 packet, as a raw socket reads it) answers our echo."""
    if len(packet) < 20:
        return False
    header_length = (packet[0] & 0x0F) * 4
    icmp = packet[header_length : header_length + 8]
    if len(icmp) < 8:
        return False
    kind, _, _, got_id, got_sequence = struct.unpack("!BBHHH", icmp)
    return kind == _ICMP_ECHO_REPLY and (got_id, got_sequence) == (identifier, sequence)


def icmp_echo(address: str, size: int, dont_fragment: bool, timeout: float) -> float:
    """One ICMP echo of ``size`` bytes in all (IP header included); its round trip."""
    what = f"ping {address} ({size} bytes)"
    identifier = os.getpid() & 0xFFFF
    sequence = int.from_bytes(os.urandom(2), "big")
    payload = bytes(max(0, size - ICMP_OVERHEAD))
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    except PermissionError as exc:
        raise ProbeFailed(f"{what}: ICMP needs root ({exc.strerror})") from None
    with sock:
        try:
            if dont_fragment:
                sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DO)
            sock.settimeout(timeout)
            started = time.monotonic()
            sock.sendto(echo_request(identifier, sequence, payload), (address, 0))
            while True:
                left = timeout - (time.monotonic() - started)
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                packet, source = sock.recvfrom(65535)
                if source[0] == address and is_echo_reply(packet, identifier, sequence):
                    return time.monotonic() - started
        except OSError as exc:
            raise _probe_error(what, exc) from None


# -- the doctor --------------------------------------------------------------------------

# A task's network namespace by its ID (the runtime's ``network_namespace``).
NamespaceOf = Callable[[str], str | None]


class NodeDoctor:
    """Runs the checks of one request on this node; ``probes`` None: the node's
    plane is simulated, and every row it would check is reported as SKIP."""

    def __init__(
        self,
        controller: NetworkController,
        namespace_of: NamespaceOf,
        probes: Probes | None,
    ) -> None:
        self.controller = controller
        self.namespace_of = namespace_of
        self.probes = probes
        self._limit = asyncio.Semaphore(PROBE_CONCURRENCY)

    async def __call__(self, request: DoctorRequest) -> DoctorReport:
        checks = await self.checks(request.service)
        return DoctorReport(request.request_id, self.controller.node_id, tuple(checks))

    async def checks(self, service: str = "") -> list[DoctorCheck]:
        controller = self.controller
        node = f"node {controller.node_id}"
        view = controller.view
        if view is None:
            return [
                fail(
                    CheckKind.NODE,
                    node,
                    "no network view from the managers yet",
                    "the node has not served its networks since it started: see the agent's log",
                )
            ]
        rows = [
            fail(
                CheckKind.NODE,
                f"{node} {part}",
                reason,
                "retried every few seconds; see the agent's log",
            )
            for part, reason in sorted(controller.failures.items())
        ]
        mesh = controller.mesh_settings
        public_key = mesh.key.public_key if mesh is not None else ""
        plan = doctor_plan(view, controller.node_id, public_key, service)
        rows += [
            skip(CheckKind.NODE, f"service {name}", "this node serves nothing of it")
            for name in plan.absent
        ]
        groups = await asyncio.gather(
            self._peer_checks(plan),
            *(self._service_checks(target) for target in plan.services),
            *(self._published_check(target) for target in plan.published),
        )
        return rows + [check for group in groups for check in group]

    async def _run(self, probe: Awaitable[T]) -> T | ProbeFailed:
        async with self._limit:
            try:
                return await probe
            except ProbeFailed as exc:
                return exc
            except WarrenError as exc:  # e.g. the task's namespace went meanwhile
                return ProbeFailed(str(exc))

    # -- peers --

    async def _peer_checks(self, plan: DoctorPlan) -> list[DoctorCheck]:
        if not plan.peers:
            return []
        probes = self.probes
        why = self._no_mesh_probes()
        if probes is None or why:
            return [
                skip(kind, _peer_name(peer), why)
                for peer in plan.peers
                for kind in (CheckKind.HANDSHAKE, CheckKind.ROUND_TRIP, CheckKind.PATH_MTU)
            ]
        # The pings first: a tunnel idle since it was set up makes its handshake
        # on the first packet, so the ages read after them are current.
        round_trips = await asyncio.gather(
            *(self._run(probes.ping(peer.address, 64, False)) for peer in plan.peers)
        )
        ages = await self._run(probes.handshake_ages())
        groups = await asyncio.gather(
            *(
                self._one_peer(probes, peer, ages, round_trip)
                for peer, round_trip in zip(plan.peers, round_trips, strict=True)
            )
        )
        return [check for group in groups for check in group]

    def _no_mesh_probes(self) -> str:
        """Why the mesh cannot be probed from this node ("": it can)."""
        if self.probes is None:
            return SIMULATED
        if self.controller.mesh_settings is None:
            return "this node is in no WireGuard mesh"
        return ""

    async def _one_peer(
        self,
        probes: Probes,
        peer: PeerTarget,
        ages: dict[str, float | None] | ProbeFailed,
        round_trip: float | ProbeFailed,
    ) -> list[DoctorCheck]:
        name = _peer_name(peer)
        if isinstance(ages, ProbeFailed):
            rows = [fail(CheckKind.HANDSHAKE, name, str(ages), "see the agent's log (WireGuard)")]
        else:
            rows = [handshake_check(peer, ages)]
        rows.append(round_trip_check(peer, round_trip))
        if isinstance(round_trip, ProbeFailed):
            rows.append(skip(CheckKind.PATH_MTU, name, "no round trip at all"))
            return rows
        mtu = self.controller.mtu
        rows.append(
            path_mtu_check(peer, mtu, await self._run(probes.ping(peer.address, mtu, True)))
        )
        return rows

    # -- services --

    async def _client_namespace(self, network_id: str) -> str | None:
        """The namespace of a local task on the network (None: no such task)."""
        attached = await self.controller.bridges.attachments()
        for task_id in sorted(attached):
            if network_id in attached[task_id]:
                netns = self.namespace_of(task_id)
                if netns is not None:
                    return netns
        return None

    async def _service_checks(self, target: ServiceTarget) -> list[DoctorCheck]:
        probes = self.probes
        vip_targets = [f"{target.service} VIP {target.vip}:{port}" for port in target.tcp_ports]
        if probes is None:
            return [skip(CheckKind.DNS, _dns_target(target), SIMULATED)] + [
                skip(CheckKind.VIP, name, SIMULATED) for name in vip_targets
            ]
        netns = await self._client_namespace(target.network_id)
        rows: list[DoctorCheck] = []
        if netns is None:
            # VIPs, like names, are served to containers: none here to ask from.
            why = f"no task on {target.network} runs on this node: no container to ask from"
            rows.append(skip(CheckKind.DNS, _dns_target(target), why))
            rows += [skip(CheckKind.VIP, name, why) for name in vip_targets]
            return rows
        name = f"{target.service}.{target.network}"
        rows.append(dns_check(target, await self._run(probes.resolve(netns, target.gateway, name))))
        rows += await self._vip_checks(probes, target, netns)
        return rows

    async def _vip_checks(
        self, probes: Probes, target: ServiceTarget, netns: str
    ) -> list[DoctorCheck]:
        vip = target.vip
        if vip is None:
            return []  # dnsrr: the DNS row covers its addresses
        if not target.tcp_ports:
            why = "publishes no TCP port: no port known to connect to"
            if target.udp_ports:
                why = "publishes only UDP ports: not probed"
            return [skip(CheckKind.VIP, f"{target.service} VIP {vip}", why)]
        outcomes = await asyncio.gather(
            *(self._run(probes.connect(netns, vip, port)) for port in target.tcp_ports)
        )
        return [
            vip_check(target, port, outcome)
            for port, outcome in zip(target.tcp_ports, outcomes, strict=True)
        ]

    async def _published_check(self, target: PublishedTarget) -> list[DoctorCheck]:
        name = target.name
        if self.probes is None:
            return [skip(CheckKind.PUBLISHED, name, SIMULATED)]
        if target.protocol != PortProtocol.TCP:
            return [skip(CheckKind.PUBLISHED, name, "UDP: not probed")]
        if not target.listens_here:
            return [skip(CheckKind.PUBLISHED, name, "host mode: no task of it runs here")]
        if not target.address:
            return [skip(CheckKind.PUBLISHED, name, "this node holds no block: no address to try")]
        outcome = await self._run(self.probes.connect(None, target.address, target.port))
        return [published_check(target, outcome)]


def doctor_for(
    controller: NetworkController, namespace_of: NamespaceOf, simulated: bool
) -> Callable[[DoctorRequest], Awaitable[DoctorReport]]:
    """The agent's ``on_doctor`` for a node served by ``controller``."""
    probes = None if simulated else SystemProbes(controller.mesh_settings)
    return NodeDoctor(controller, namespace_of, probes)
