"""The manager's NetworkView mapped to the node's data plane (view_mapping.py), no I/O."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warren.agent.network.dns_view import QTYPE_A, Outcome, answer
from warren.agent.network.view_mapping import (
    MESH_RANGE,
    LocalTask,
    covers,
    data_plane,
    dns_view,
    mesh_addresses,
    mesh_plan,
    node_networks,
    task_attachment,
)
from warren.agent.network.vip_rules import Backend, PublishedPort, VipBackend, VipFrontend
from warren.agent.network.wireguard import generate_private_key, public_key_of
from warren.core.errors import FailedPrecondition
from warren.core.networks import (
    EndpointMode,
    NetworkAttachment,
    PortConfig,
    PortProtocol,
    PublishMode,
    VirtualIP,
)
from warren.core.node_view import NetworkView, ViewEndpoint, ViewNetwork, ViewPeer, ViewService

ME, OTHER = "node-1", "node-2"
FRONT = ViewNetwork("net-front", "front", "10.32.0.0/16", blocks=("10.32.64.0/24",))
BACK = ViewNetwork("net-back", "back", "10.33.0.0/16", blocks=("10.33.64.0/24",))
# A network with no task on this node: no bridge here.
ELSEWHERE = ViewNetwork("net-far", "far", "10.34.0.0/16")
KEY_2 = public_key_of(generate_private_key())


def _endpoint(task: str, node: str, network: str, address: str, weight: int = 1) -> ViewEndpoint:
    return ViewEndpoint(task, node, network, address, weight)


WEB = ViewService(
    "svc-web",
    "web",
    networks=("net-front",),
    vips=(VirtualIP("net-front", "10.32.0.2/16"),),
    ports=(PortConfig(target=80, published=8080),),
    endpoints=(
        _endpoint("t1", ME, "net-front", "10.32.64.2/24", weight=3),
        _endpoint("t2", OTHER, "net-front", "10.32.65.2/24"),
    ),
)
PEER_2 = ViewPeer(OTHER, KEY_2, "192.0.2.2:51820", ("10.32.65.0/24",))
VIEW = NetworkView(
    revision=7,
    networks=(FRONT, BACK, ELSEWHERE),
    services=(WEB,),
    peers=(PEER_2,),
)


# -- bridges ---------------------------------------------------------------------------


def test_a_bridge_per_network_with_a_local_block_its_gateway_the_first_address() -> None:
    networks = node_networks(VIEW, mtu=1400)
    assert [n.network_id for n in networks] == ["net-front", "net-back"]
    front = networks[0]
    assert front.block == IPv4Network("10.32.64.0/24")
    assert str(front.gateway) == "10.32.64.1/24"
    assert front.subnet == IPv4Network("10.32.0.0/16")
    assert front.mtu == 1400


def test_a_task_attachment_keeps_the_tasks_order_and_addresses() -> None:
    attachments = (
        NetworkAttachment("net-back", "10.33.64.9/24"),
        NetworkAttachment("net-front", "10.32.64.9/24"),
    )
    attached = task_attachment(VIEW, "t9", attachments, "/run/netns/t9", 1420)
    assert [e.network.network_id for e in attached.networks] == ["net-back", "net-front"]
    assert attached.networks[0].address == IPv4Interface("10.33.64.9/24")
    assert str(attached.gateway) == "10.33.64.1"


@pytest.mark.parametrize(
    "attachment",
    [
        NetworkAttachment("net-unknown", "10.32.64.9/24"),  # not in the view
        NetworkAttachment("net-front", "10.32.65.9/24"),  # another node's block
        NetworkAttachment("net-far", "10.34.64.9/24"),  # no block here
    ],
)
def test_a_task_the_view_does_not_serve_here_is_refused(attachment: NetworkAttachment) -> None:
    with pytest.raises(FailedPrecondition, match="not served on this node"):
        task_attachment(VIEW, "t9", (attachment,), "/run/netns/t9", 1420)
    assert not covers(VIEW, (attachment,), 1420)


# -- nftables ----------------------------------------------------------------------------


def test_a_vip_spreads_every_port_over_the_endpoints_on_its_network_with_weights() -> None:
    plane = data_plane(VIEW, ME)
    assert plane.services == ()
    assert plane.vips == (
        VipFrontend("10.32.0.2", (VipBackend("10.32.64.2", 3), VipBackend("10.32.65.2", 1))),
    )


def test_a_service_on_two_networks_has_a_vip_on_each_with_that_networks_endpoints() -> None:
    both = _with(
        WEB,
        networks=("net-front", "net-back"),
        vips=(VirtualIP("net-front", "10.32.0.2/16"), VirtualIP("net-back", "10.33.0.2/16")),
        endpoints=(
            _endpoint("t1", ME, "net-front", "10.32.64.2/24"),
            _endpoint("t1", ME, "net-back", "10.33.64.2/24"),
        ),
    )
    plane = data_plane(NetworkView(networks=VIEW.networks, services=(both,)), ME)
    assert {v.vip: [b.address for b in v.backends] for v in plane.vips} == {
        "10.32.0.2": ["10.32.64.2"],
        "10.33.0.2": ["10.33.64.2"],
    }


def test_an_ingress_port_is_served_on_every_node_towards_every_endpoint() -> None:
    for node in (ME, OTHER, "node-without-tasks"):
        plane = data_plane(VIEW, node)
        assert plane.published == (
            PublishedPort(
                8080, "tcp", "ingress", (Backend("10.32.64.2", 80, 3), Backend("10.32.65.2", 80))
            ),
        )


def test_a_host_port_is_served_only_where_a_task_runs_and_only_towards_it() -> None:
    host = PortConfig(target=80, published=9090, mode=PublishMode.HOST)
    view = NetworkView(networks=VIEW.networks, services=(_with(WEB, ports=(host,)),))
    assert data_plane(view, ME).published == (
        PublishedPort(9090, "tcp", "host", (Backend("10.32.64.2", 80, 3),)),
    )
    assert data_plane(view, "node-without-tasks").published == ()


def test_every_network_subnet_is_a_container_subnet() -> None:
    assert data_plane(VIEW, ME).container_subnets == (
        "10.32.0.0/16",
        "10.33.0.0/16",
        "10.34.0.0/16",
    )


def test_a_dnsrr_service_has_no_vip_frontend_but_keeps_its_published_port() -> None:
    view = NetworkView(networks=VIEW.networks, services=(_with(WEB, mode=EndpointMode.DNSRR),))
    plane = data_plane(view, ME)
    assert plane.vips == ()
    assert [p.port for p in plane.published] == [8080]


def test_a_task_on_two_networks_of_a_service_is_one_published_backend() -> None:
    both = _with(
        WEB,
        networks=("net-front", "net-back"),
        endpoints=(
            _endpoint("t1", ME, "net-back", "10.33.64.2/24"),
            _endpoint("t1", ME, "net-front", "10.32.64.2/24"),
        ),
    )
    plane = data_plane(NetworkView(networks=VIEW.networks, services=(both,)), ME)
    # The service's first network wins.
    assert plane.published[0].backends == (Backend("10.32.64.2", 80),)


def test_a_port_claimed_twice_is_served_once_and_noted() -> None:
    twin = _with(WEB, id="svc-twin", name="twin", vips=())
    notes: list[str] = []
    plane = data_plane(NetworkView(networks=VIEW.networks, services=(WEB, twin)), ME, notes)
    assert len(plane.published) == 1
    assert notes == ["published port 8080 is claimed twice: the first one is served"]


def test_a_service_with_a_bad_address_is_left_out_the_others_are_served() -> None:
    bad = _with(
        WEB,
        id="svc-bad",
        name="bad",
        vips=(VirtualIP("net-front", "10.32.0.3/16"),),
        ports=(PortConfig(target=81, published=8081),),
        endpoints=(_endpoint("t5", ME, "net-front", "not-an-address"),),
    )
    notes: list[str] = []
    plane = data_plane(NetworkView(networks=VIEW.networks, services=(bad, WEB)), ME, notes)
    assert [v.vip for v in plane.vips] == ["10.32.0.2"]
    assert notes and notes[0].startswith("service bad: not served")


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(st.integers(1, 50), min_size=0, max_size=6),
    protocols=st.lists(st.sampled_from(PortProtocol), min_size=1, max_size=2, unique=True),
)
def test_every_endpoint_is_a_backend_of_every_frontend_with_its_weight(
    weights: list[int], protocols: list[PortProtocol]
) -> None:
    endpoints = tuple(
        _endpoint(f"t{i}", ME if i % 2 else OTHER, "net-front", f"10.32.{64 + i % 2}.{i + 2}/24", w)
        for i, w in enumerate(weights)
    )
    ports = tuple(
        PortConfig(target=80, published=8000 + index, protocol=protocol)
        for index, protocol in enumerate(protocols)
    )
    plane = data_plane(
        NetworkView(
            networks=VIEW.networks, services=(_with(WEB, ports=ports, endpoints=endpoints),)
        ),
        ME,
    )
    expected = {(e.address.split("/")[0], e.weight) for e in endpoints}
    assert len(plane.vips) == 1
    assert len(plane.published) == len(protocols)
    for frontend in (*plane.vips, *plane.published):
        assert {(b.address, b.weight) for b in frontend.backends} == expected


# -- DNS ---------------------------------------------------------------------------------


def test_dns_gives_the_vip_to_a_local_task_on_the_network_and_nothing_to_others() -> None:
    local = [
        LocalTask("t1", (NetworkAttachment("net-front", "10.32.64.2/24"),)),
        LocalTask("t3", (NetworkAttachment("net-back", "10.33.64.3/24"),)),
    ]
    view = dns_view(VIEW, local)
    found = answer(view, "web", QTYPE_A, "10.32.64.2")
    assert (found.outcome, found.addresses) == (Outcome.ANSWER, ("10.32.0.2",))
    tasks = answer(view, "tasks.web", QTYPE_A, "10.32.64.2")
    assert set(tasks.addresses) == {"10.32.64.2", "10.32.65.2"}
    # t3 shares no network with web.
    assert answer(view, "web.warren.internal", QTYPE_A, "10.33.64.3").outcome == Outcome.NXDOMAIN


def test_dns_gives_task_addresses_for_a_dnsrr_service() -> None:
    view = NetworkView(networks=VIEW.networks, services=(_with(WEB, mode=EndpointMode.DNSRR),))
    local = [LocalTask("t1", (NetworkAttachment("net-front", "10.32.64.2/24"),))]
    found = answer(dns_view(view, local), "web", QTYPE_A, "10.32.64.2")
    assert set(found.addresses) == {"10.32.64.2", "10.32.65.2"}


# -- WireGuard -----------------------------------------------------------------------------


MY_KEY = public_key_of(generate_private_key())


def test_every_other_node_is_a_peer_routing_its_blocks_and_mesh_address() -> None:
    mine = ViewPeer(ME, MY_KEY, "192.0.2.1:51820", ("10.32.64.0/24",))
    view = NetworkView(networks=VIEW.networks, peers=(*VIEW.peers, mine))
    address, (peer,) = mesh_plan(view, ME, MY_KEY)
    theirs = mesh_addresses([(ME, MY_KEY), (OTHER, KEY_2)])
    assert address == theirs[ME]
    assert (peer.public_key, peer.endpoint, peer.allowed_ips) == (
        KEY_2,
        "192.0.2.2:51820",
        tuple(sorted(("10.32.65.0/24", f"{theirs[OTHER]}/32"), key=lambda n: IPv4Network(n))),
    )


def test_a_node_without_blocks_is_in_the_mesh_with_its_address() -> None:
    bare = ViewPeer("node-3", public_key_of(generate_private_key()), "192.0.2.3:51820")
    address, peers = mesh_plan(NetworkView(peers=(PEER_2, bare)), ME, MY_KEY)
    assert IPv4Address(address) in MESH_RANGE
    everyone = mesh_addresses([(ME, MY_KEY), (OTHER, KEY_2), ("node-3", bare.public_key)])
    assert peers[1].allowed_ips == (f"{everyone['node-3']}/32",)


def test_a_peer_with_a_bad_key_is_left_out_with_a_note() -> None:
    bad = ViewPeer("node-3", "not-a-key", "192.0.2.3:51820", ("10.32.66.0/24",))
    notes: list[str] = []
    _, peers = mesh_plan(NetworkView(peers=(*VIEW.peers, bad)), ME, MY_KEY, notes)
    assert [p.public_key for p in peers] == [KEY_2]
    assert notes[0].startswith("peer node node-3: left out")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=8), min_size=1, max_size=40, unique=True))
def test_mesh_addresses_are_distinct_in_the_range_and_the_same_on_every_node(
    keys: list[bytes],
) -> None:
    members = [(f"node-{i}", key.hex()) for i, key in enumerate(keys)]
    found = mesh_addresses(members)
    assert len(set(found.values())) == len(members)
    assert all(IPv4Address(a) in MESH_RANGE for a in found.values())
    assert mesh_addresses(reversed(members)) == found


def test_a_clash_takes_the_next_address_in_node_id_order() -> None:
    # Two nodes with the same key digest: the same start, the later ID moves on.
    found = mesh_addresses([("node-b", "same"), ("node-a", "same")])
    assert int(IPv4Address(found["node-b"])) == int(IPv4Address(found["node-a"])) + 1


def _with(service: ViewService, **changes: object) -> ViewService:
    return replace(service, **changes)  # type: ignore[arg-type]


def test_a_network_with_several_blocks_here_has_one_bridge_with_a_gateway_each() -> None:
    # The view lists blocks as text: 10.32.100.0 sorts before 10.32.64.0 there.
    two = replace(FRONT, blocks=("10.32.100.0/24", "10.32.64.0/24"))
    (network,) = node_networks(NetworkView(networks=(two,)), 1420)
    assert network.block == IPv4Network("10.32.64.0/24")  # the lowest stays first
    assert [str(g) for g in network.gateways] == ["10.32.64.1/24", "10.32.100.1/24"]
    attached = task_attachment(
        NetworkView(networks=(two,)),
        "t9",
        (NetworkAttachment("net-front", "10.32.100.7/24"),),
        "/run/netns/t9",
        1420,
    )
    assert str(attached.gateway) == "10.32.100.1"


def test_a_network_in_the_mesh_range_keeps_the_mesh_working_for_its_blocks() -> None:
    inside = ViewNetwork("net-cgnat", "cgnat", "100.64.0.0/10")
    notes: list[str] = []
    _, (peer,) = mesh_plan(NetworkView(networks=(inside,), peers=(PEER_2,)), ME, MY_KEY, notes)
    assert peer.allowed_ips == ("10.32.65.0/24",)
    theirs = mesh_addresses([(ME, MY_KEY), (OTHER, KEY_2)])[OTHER]
    assert notes == [f"peer node {OTHER}: mesh address {theirs} is in a network"]
