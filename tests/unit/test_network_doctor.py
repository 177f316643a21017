"""The network doctor on a node (warren/agent/network/doctor.py): what it checks
of a view, what a result means, the checks run through fake probes on a real
NetworkController over fakes, and the real probes' socket parts on loopback."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from factories import make_task
from test_dns_server import free_port

from warren.agent.agent import Agent
from warren.agent.network.bridge import FakeBridgeNetwork
from warren.agent.network.controller import MeshSettings, NetworkController
from warren.agent.network.dns import DnsSettings, EmbeddedDnsServer, FakeDnsServer, Upstream
from warren.agent.network.dns_view import DnsClient, DnsNetwork, DnsService, DnsView
from warren.agent.network.dns_view import ServiceOnNetwork as DnsEndpoint
from warren.agent.network.doctor import (
    SIMULATED,
    FakeProbes,
    NodeDoctor,
    PeerTarget,
    ProbeFailed,
    SystemProbes,
    dns_query,
    doctor_for,
    doctor_plan,
    echo_request,
    handshake_check,
    icmp_checksum,
    icmp_echo,
    is_echo_reply,
    tcp_connect,
)
from warren.agent.network.nftables import FakePacketFilter, ServiceProxy
from warren.agent.network.view_mapping import mesh_addresses
from warren.agent.network.wg_fake import FakeDevice
from warren.agent.network.wireguard import NodeKey, generate_private_key, public_key_of
from warren.agent.sim import SimRuntime
from warren.core.doctor import CheckKind, CheckResult, DoctorCheck, DoctorReport, DoctorRequest
from warren.core.networks import NetworkAttachment, PortConfig, PortProtocol, PublishMode, VirtualIP
from warren.core.node_view import NetworkView, ViewEndpoint, ViewNetwork, ViewPeer, ViewService
from warren.security.tls import IdentityFiles

ME, OTHER, THIRD = "node-1", "node-2", "node-3"
IFACE = "wgdoc0"
MTU = 1400
FRONT = ViewNetwork("net-front", "front", "10.32.0.0/16", blocks=("10.32.64.0/24",))
BACK = ViewNetwork("net-back", "back", "10.33.0.0/16")  # no block here
OTHER_KEY = public_key_of(generate_private_key())
THIRD_KEY = public_key_of(generate_private_key())
PEER = ViewPeer(OTHER, OTHER_KEY, "192.0.2.2:51820", ("10.32.65.0/24",))
BARE_PEER = ViewPeer(THIRD, THIRD_KEY, "192.0.2.3:51999")  # holds no block
WEB = ViewService(
    "svc-web",
    "web",
    networks=("net-front", "net-back"),
    vips=(VirtualIP("net-front", "10.32.0.2/16"), VirtualIP("net-back", "10.33.0.2/16")),
    ports=(
        PortConfig(target=80, published=8080),
        PortConfig(target=53, published=5353, protocol=PortProtocol.UDP),
    ),
    endpoints=(
        ViewEndpoint("t1", ME, "net-front", "10.32.64.2/24"),
        ViewEndpoint("t2", OTHER, "net-front", "10.32.65.2/24"),
    ),
)
DB = ViewService(
    "svc-db",
    "db",
    networks=("net-front",),
    vips=(VirtualIP("net-front", "10.32.0.3/16"),),
    ports=(PortConfig(target=5432, published=5432, mode=PublishMode.HOST),),
    endpoints=(ViewEndpoint("t3", OTHER, "net-front", "10.32.65.3/24"),),
)
VIEW = NetworkView(revision=3, networks=(FRONT, BACK), services=(WEB, DB), peers=(PEER, BARE_PEER))
NETNS = {"t1": "/run/netns/task-t1"}
GATEWAY = "10.32.64.1"
MY_PRIVATE = generate_private_key()
MY_KEY = public_key_of(MY_PRIVATE)
# The peers' mesh addresses, as the mesh gives them.
MESH = mesh_addresses([(OTHER, OTHER_KEY), (THIRD, THIRD_KEY), (ME, MY_KEY)])
OTHER_MESH, THIRD_MESH = MESH[OTHER], MESH[THIRD]


def healthy_probes() -> FakeProbes:
    """Everything the view promises answers."""
    return FakeProbes(
        ages={OTHER_KEY: 12.0, THIRD_KEY: 30.0},
        round_trips={OTHER_MESH: 0.0015, THIRD_MESH: 0.002},
        names={
            (GATEWAY, "web.front"): ("10.32.0.2",),
            (GATEWAY, "db.front"): ("10.32.0.3",),
        },
        open_ports={("10.32.0.2", 80), ("10.32.0.3", 5432), ("127.0.0.1", 8080)},
    )


@dataclass
class Node:
    controller: NetworkController
    device: FakeDevice


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    device = FakeDevice()
    mesh = MeshSettings(device, NodeKey(MY_PRIVATE, MY_KEY), IFACE, 51820)
    controller = NetworkController(
        ME, FakeBridgeNetwork(), ServiceProxy(FakePacketFilter()), FakeDnsServer(), mesh, mtu=MTU
    )
    await controller.start()
    await controller.apply_view(VIEW)
    task = make_task(id="t1", node_id=ME)
    task = replace(task, networks=(NetworkAttachment("net-front", "10.32.64.2/24"),))
    await controller.attach(task, NETNS["t1"])
    try:
        yield Node(controller, device)
    finally:
        await controller.close()


def doctor(node: Node, probes: FakeProbes | None) -> NodeDoctor:
    return NodeDoctor(node.controller, NETNS.get, probes)


def rows(checks: list[DoctorCheck]) -> list[tuple[str, str, str]]:
    return [(str(c.kind), c.target, str(c.result)) for c in checks]


def only(checks: list[DoctorCheck], kind: CheckKind, target_start: str) -> DoctorCheck:
    found = [c for c in checks if c.kind is kind and c.target.startswith(target_start)]
    assert len(found) == 1, rows(checks)
    return found[0]


# -- what to check ---------------------------------------------------------------------


def test_the_plan_covers_every_peer_the_services_on_held_networks_and_published_ports() -> None:
    plan = doctor_plan(VIEW, ME, MY_KEY)
    # Each peer by its mesh address, blocks or not; this node is no peer of itself.
    assert plan.peers == (
        PeerTarget(OTHER, OTHER_KEY, "192.0.2.2:51820", OTHER_MESH),
        PeerTarget(THIRD, THIRD_KEY, "192.0.2.3:51999", THIRD_MESH),
    )
    with_me = replace(VIEW, peers=(*VIEW.peers, ViewPeer(ME, MY_KEY, "192.0.2.1:1")))
    assert doctor_plan(with_me, ME, MY_KEY).peers == plan.peers
    # net-back has no block here: only net-front's entries.
    assert [(t.service, t.network, t.gateway, t.expected) for t in plan.services] == [
        ("web", "front", GATEWAY, ("10.32.0.2",)),
        ("db", "front", GATEWAY, ("10.32.0.3",)),
    ]
    web = plan.services[0]
    assert (web.tcp_ports, web.udp_ports, web.endpoints) == ((80,), (53,), 2)
    assert [(p.service, p.port, p.listens_here, p.address) for p in plan.published] == [
        ("web", 8080, True, "127.0.0.1"),
        ("web", 5353, True, "127.0.0.1"),
        # Host mode: its task runs on node-2, and is tried at a gateway where it runs.
        ("db", 5432, False, GATEWAY),
    ]


def test_a_dnsrr_service_expects_its_tasks_and_a_filter_keeps_one_service() -> None:
    dnsrr = replace(WEB, mode="dnsrr", vips=())
    plan = doctor_plan(replace(VIEW, services=(dnsrr,)), ME, service="web")
    assert [(t.expected, t.vip) for t in plan.services] == [(("10.32.64.2", "10.32.65.2"), None)]
    assert doctor_plan(VIEW, ME, service="db").services[0].service == "db"
    missing = doctor_plan(VIEW, ME, service="nope")
    assert (missing.services, missing.published, missing.absent) == ((), (), ("nope",))


@pytest.mark.parametrize(
    ("ages", "result", "detail"),
    [
        ({OTHER_KEY: 5.0}, CheckResult.OK, "5s ago"),
        ({OTHER_KEY: None}, CheckResult.FAIL, "no handshake yet"),
        ({OTHER_KEY: 181.0}, CheckResult.FAIL, "last handshake 181s ago"),
        ({}, CheckResult.FAIL, "not a peer of this node's WireGuard interface"),
    ],
)
def test_a_handshake_fails_when_never_made_or_older_than_180_seconds(
    ages: dict[str, float | None], result: CheckResult, detail: str
) -> None:
    peer = PeerTarget(OTHER, OTHER_KEY, "192.0.2.2:51820", OTHER_MESH)
    check = handshake_check(peer, ages)
    assert (check.result, check.detail) == (result, detail)
    if result is CheckResult.FAIL and ages:
        assert check.hint.startswith("check UDP port 51820 is open between the nodes")


# -- the checks on a node ---------------------------------------------------------------


async def test_a_healthy_node_reports_every_check_ok(node: Node) -> None:
    probes = healthy_probes()
    report = await doctor(node, probes)(DoctorRequest("r1"))
    assert report.request_id == "r1" and report.node_id == ME
    checks = list(report.checks)
    assert not report.failed, rows(checks)
    assert rows(checks) == [
        ("handshake", f"peer {OTHER}", "ok"),
        ("round-trip", f"peer {OTHER} ({OTHER_MESH})", "ok"),
        ("path-mtu", f"peer {OTHER} ({OTHER_MESH})", "ok"),
        ("handshake", f"peer {THIRD}", "ok"),
        ("round-trip", f"peer {THIRD} ({THIRD_MESH})", "ok"),
        ("path-mtu", f"peer {THIRD} ({THIRD_MESH})", "ok"),
        ("dns", f"web.front @ {GATEWAY}", "ok"),
        ("vip", "web VIP 10.32.0.2:80", "ok"),
        ("dns", f"db.front @ {GATEWAY}", "ok"),
        ("vip", "db VIP 10.32.0.3:5432", "ok"),
        ("published", "web 127.0.0.1:8080 (ingress)", "ok"),
        ("published", "web 127.0.0.1:5353 (ingress)", "skip"),
        ("published", f"db {GATEWAY}:5432 (host)", "skip"),
    ]
    assert only(checks, CheckKind.ROUND_TRIP, f"peer {OTHER}").detail == "1.5 ms"
    # Names are asked, and VIPs reached, from the local task's namespace; the
    # path MTU with a packet of the mesh MTU.
    assert ("resolve", NETNS["t1"], f"web.front@{GATEWAY}") in probes.calls
    assert ("connect", NETNS["t1"], "10.32.0.2:80") in probes.calls
    assert ("connect", "", "127.0.0.1:8080") in probes.calls
    assert ("ping", "", f"{OTHER_MESH}/{MTU}") in probes.calls


async def test_failures_say_why_and_what_to_check(node: Node) -> None:
    probes = healthy_probes()
    probes.ages[OTHER_KEY] = None
    probes.max_size = MTU - 1
    probes.names[(GATEWAY, "web.front")] = ("10.32.0.9",)
    probes.open_ports.discard(("10.32.0.2", 80))
    del probes.names[(GATEWAY, "db.front")]
    report = await doctor(node, probes)(DoctorRequest("r2"))
    checks = list(report.checks)
    assert report.failed

    handshake = only(checks, CheckKind.HANDSHAKE, f"peer {OTHER}")
    assert (handshake.result, handshake.detail) == (CheckResult.FAIL, "no handshake yet")
    assert "check UDP port 51820 is open between the nodes" in handshake.hint

    mtu = only(checks, CheckKind.PATH_MTU, f"peer {OTHER}")
    assert mtu.result is CheckResult.FAIL
    assert mtu.detail.startswith(f"{MTU}-byte packets with don't-fragment set")
    assert f"carries less than {MTU + 80} bytes" in mtu.hint

    dns = only(checks, CheckKind.DNS, "web.front")
    assert (dns.result, dns.detail) == (
        CheckResult.FAIL,
        "answered 10.32.0.9, the view says 10.32.0.2",
    )
    assert only(checks, CheckKind.DNS, "db.front").detail == "NXDOMAIN for db.front"

    vip = only(checks, CheckKind.VIP, "web VIP")
    assert vip.result is CheckResult.FAIL
    assert vip.detail == "connection to 10.32.0.2:80 refused"
    assert "warren service ps web" in vip.hint
    assert all(c.hint for c in checks if c.failed)


async def test_no_round_trip_skips_the_path_mtu_and_an_unreadable_device_fails_each_peer(
    node: Node,
) -> None:
    probes = healthy_probes()
    probes.round_trips.clear()
    probes.ages_error = "cannot read WireGuard interface wgdoc0: gone"
    checks = list((await doctor(node, probes)(DoctorRequest("r3"))).checks)
    assert only(checks, CheckKind.ROUND_TRIP, f"peer {OTHER}").detail == (
        f"no reply from {OTHER_MESH} within 1s"
    )
    assert only(checks, CheckKind.PATH_MTU, f"peer {OTHER}").result is CheckResult.SKIP
    for peer in (OTHER, THIRD):
        handshake = only(checks, CheckKind.HANDSHAKE, f"peer {peer}")
        assert (handshake.result, handshake.detail) == (CheckResult.FAIL, probes.ages_error)


async def test_without_a_local_task_on_the_network_dns_and_vips_are_skipped(node: Node) -> None:
    # Names and VIPs are served to containers: the node's own namespace reaches
    # neither (a real node's VIP connect from there fails), so nothing is asked.
    await node.controller.detach("t1")
    probes = healthy_probes()
    checks = list((await doctor(node, probes)(DoctorRequest("r4", service="web"))).checks)
    for kind in (CheckKind.DNS, CheckKind.VIP):
        row = only(checks, kind, "web")
        assert row.result is CheckResult.SKIP and "no container to ask from" in row.detail
    assert not [call for call in probes.calls if call[2].startswith("10.32.0.2:")]
    # The filter keeps web's rows only.
    assert not [c for c in checks if "db" in c.target]


async def test_a_host_mode_port_is_tried_at_the_nodes_gateway_where_its_task_runs(
    node: Node,
) -> None:
    # A host-mode task's reply to 127.0.0.1 would stay in its own namespace.
    db_here = replace(DB, endpoints=(ViewEndpoint("t3", ME, "net-front", "10.32.64.3/24"),))
    await node.controller.apply_view(replace(VIEW, revision=4, services=(WEB, db_here)))
    probes = healthy_probes()
    probes.open_ports.add((GATEWAY, 5432))
    checks = list((await doctor(node, probes)(DoctorRequest("r11", "db"))).checks)
    published = only(checks, CheckKind.PUBLISHED, "db")
    assert (published.target, published.result) == (f"db {GATEWAY}:5432 (host)", CheckResult.OK)
    assert ("connect", "", f"{GATEWAY}:5432") in probes.calls


async def test_a_service_the_node_serves_nothing_of_is_a_skipped_row(node: Node) -> None:
    checks = list((await doctor(node, healthy_probes())(DoctorRequest("r5", "nope"))).checks)
    assert (CheckKind.NODE, "service nope", CheckResult.SKIP) in [
        (c.kind, c.target, c.result) for c in checks
    ]


async def test_a_simulated_plane_reports_what_it_would_check_as_skipped(node: Node) -> None:
    report = await doctor(node, None)(DoctorRequest("r6"))
    assert report.checks and not report.failed
    assert {c.result for c in report.checks} == {CheckResult.SKIP}
    assert {c.detail for c in report.checks if c.kind is not CheckKind.ROUND_TRIP} >= {SIMULATED}
    # doctor_for on the sim plane builds no probes.
    on_doctor = doctor_for(node.controller, NETNS.get, simulated=True)
    assert isinstance(on_doctor, NodeDoctor) and on_doctor.probes is None


async def test_parts_that_failed_to_converge_and_a_missing_view_are_failures() -> None:
    controller = NetworkController(
        ME, FakeBridgeNetwork(), ServiceProxy(FakePacketFilter()), FakeDnsServer(), None
    )
    none_yet = await NodeDoctor(controller, NETNS.get, FakeProbes())(DoctorRequest("r7"))
    assert [(c.kind, c.result, c.detail) for c in none_yet.checks] == [
        (CheckKind.NODE, CheckResult.FAIL, "no network view from the managers yet")
    ]
    await controller.apply_view(VIEW)
    controller.failures["nftables"] = "table busy"
    checks = list(
        (await NodeDoctor(controller, NETNS.get, FakeProbes())(DoctorRequest("r8"))).checks
    )
    part = only(checks, CheckKind.NODE, f"node {ME} nftables")
    assert (part.result, part.detail) == (CheckResult.FAIL, "table busy")
    # No mesh on this node: its peers cannot be probed.
    assert only(checks, CheckKind.HANDSHAKE, f"peer {OTHER}").detail == (
        "this node is in no WireGuard mesh"
    )
    await controller.close()


# -- the agent's end ------------------------------------------------------------------------


def _agent(tmp_path: Path, on_doctor: object = None) -> Agent:
    return Agent(
        ME,
        ["127.0.0.1:1"],
        IdentityFiles(tmp_path / "certs"),
        SimRuntime(),
        tmp_path / "agent",
        on_doctor=on_doctor,  # type: ignore[arg-type]
    )


async def test_an_agent_without_networks_or_with_a_failing_doctor_still_answers(
    tmp_path: Path,
) -> None:
    plain = await _agent(tmp_path).doctor_report(DoctorRequest("r9"))
    assert [(c.kind, c.result, c.detail) for c in plain.checks] == [
        (CheckKind.NODE, CheckResult.SKIP, "serves no networks")
    ]

    async def broken(request: DoctorRequest) -> DoctorReport:
        raise RuntimeError("boom")

    failed = await _agent(tmp_path, broken).doctor_report(DoctorRequest("r10"))
    assert failed.request_id == "r10" and failed.failed
    assert failed.checks[0].detail == "the doctor failed on this node: boom"


# -- the real probes' parts ------------------------------------------------------------------


async def test_system_probes_read_handshake_ages_from_the_device(node: Node) -> None:
    assert node.controller.mesh_settings is not None
    node.device.handshake(IFACE, OTHER_KEY, time.time() - 42)
    ages = await SystemProbes(node.controller.mesh_settings).handshake_ages()
    other_age = ages[OTHER_KEY]
    assert other_age is not None and 41 <= other_age <= 44
    assert ages[THIRD_KEY] is None


def test_tcp_connect_times_an_open_port_and_explains_a_closed_one() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert tcp_connect("127.0.0.1", port, 1.0) < 1.0
    with pytest.raises(
        ProbeFailed, match=rf"TCP connection to 127.0.0.1:{port}: Connection refused"
    ):
        tcp_connect("127.0.0.1", port, 1.0)


async def test_dns_query_asks_the_embedded_server_as_its_client() -> None:
    port = free_port("127.0.0.1")
    settings = DnsSettings(port=port, upstreams=(Upstream("127.0.0.1", 9),))
    view = DnsView(
        networks=(DnsNetwork("net-front", "front"),),
        services=(DnsService("web", (DnsEndpoint("net-front", "10.32.0.2"),)),),
        clients=(DnsClient(("127.0.0.1",), frozenset({"net-front"})),),
    )
    server = EmbeddedDnsServer(view, settings)
    await server.start()
    try:
        await server.add_address("127.0.0.1")
        answer = await asyncio.to_thread(dns_query, "127.0.0.1", "web.front", 1.0, port)
        assert answer == ("10.32.0.2",)
        with pytest.raises(ProbeFailed, match=re.escape("NXDOMAIN for nope.warren.internal")):
            await asyncio.to_thread(dns_query, "127.0.0.1", "nope.warren.internal", 1.0, port)
    finally:
        await server.stop()


def test_an_icmp_echo_request_is_well_formed_and_its_reply_recognised() -> None:
    request = echo_request(0x1234, 7, b"abc")
    assert icmp_checksum(request) == 0  # a packet with its checksum sums to zero
    reply = bytearray(request)
    reply[0] = 0  # echo reply
    ip_header = bytes([0x45]) + bytes(19)
    assert is_echo_reply(ip_header + bytes(reply), 0x1234, 7)
    assert not is_echo_reply(ip_header + bytes(reply), 0x1234, 8)
    assert not is_echo_reply(ip_header + request, 0x1234, 7)


@pytest.mark.skipif(os.geteuid() != 0, reason="ICMP needs a raw socket (root)")
def test_icmp_echo_reaches_loopback_and_a_packet_too_large_to_send_fails_with_its_reason() -> None:
    assert icmp_echo("127.0.0.1", 64, True, 1.0) < 1.0
    with pytest.raises(
        ProbeFailed, match=re.escape("ping 127.0.0.1 (70000 bytes): Message too long")
    ):
        icmp_echo("127.0.0.1", 70000, True, 1.0)
