"""The bridge library's pure parts: names, aliases, input validation, and the fake."""

from __future__ import annotations

import errno
import re
import struct
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyroute2.netlink.exceptions import NetlinkError

from warren.agent.network import links
from warren.agent.network.bridge import (
    FakeBridgeNetwork,
    NetworkAddress,
    NodeNetwork,
    TaskAttachment,
    bridge_mac,
    bridge_name,
    host_ifname,
    network_alias,
    parse_address,
    parse_network_alias,
    parse_task_alias,
    peer_ifname,
    task_alias,
)
from warren.agent.network.netlink import MAX_IFNAME, netlink_failure
from warren.core.errors import FailedPrecondition, InvalidArgument, RuntimeFailure
from warren.core.models import new_id

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True)
# What `ip link` accepts: not empty, no '/', ':' or whitespace, at most 15 bytes.
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


@given(ids)
def test_a_bridge_name_fits_the_kernel_limit(network_id: str) -> None:
    name = bridge_name(network_id)
    assert len(name) <= MAX_IFNAME
    assert IFNAME_RE.match(name)
    assert name == bridge_name(network_id)  # the same on every node, every run


@given(ids, ids, st.integers(min_value=0, max_value=999))
def test_veth_names_fit_the_kernel_limit(task_id: str, network_id: str, position: int) -> None:
    for name in (host_ifname(task_id, network_id), peer_ifname(position)):
        assert len(name) <= MAX_IFNAME
        assert IFNAME_RE.match(name)


@given(ids, ids, ids)
def test_names_differ_per_task_and_network(task: str, net_a: str, net_b: str) -> None:
    if net_a != net_b:
        assert host_ifname(task, net_a) != host_ifname(task, net_b)
        assert bridge_name(net_a) != bridge_name(net_b)
        assert host_ifname(net_a, task) != host_ifname(net_b, task)


def test_warren_ids_give_distinct_names() -> None:
    tasks = [new_id() for _ in range(2000)]
    assert len({host_ifname(task, "net1") for task in tasks}) == len(tasks)


@given(ids, ids)
def test_aliases_map_back_to_their_ids(task_id: str, network_id: str) -> None:
    assert parse_task_alias(task_alias(task_id, network_id)) == (task_id, network_id)
    assert parse_network_alias(network_alias(network_id)) == network_id
    assert parse_network_alias(task_alias(task_id, network_id)) is None
    assert parse_task_alias(network_alias(network_id)) is None


@pytest.mark.parametrize("alias", [None, "", "uplink", "warren:task:", "warren:task:a", "warren:x"])
def test_foreign_aliases_are_not_warrens(alias: str | None) -> None:
    assert parse_task_alias(alias) is None
    assert parse_network_alias(alias) is None


@given(ids)
def test_the_bridge_mac_is_unicast_and_locally_administered(network_id: str) -> None:
    first = int(bridge_mac(network_id).split(":")[0], 16)
    assert first & 0x01 == 0 and first & 0x02


@pytest.mark.parametrize("bad", ["", "a:b", "a b", "-a", "x" * 65, "ä"])
def test_bad_ids_are_refused_in_one_line(bad: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        bridge_name(bad)
    assert "\n" not in str(raised.value)
    with pytest.raises(InvalidArgument):
        host_ifname(bad, "net")


def _net(block: str = "10.32.5.0/24", network_id: str = "net1", mtu: int = 1420) -> NodeNetwork:
    return NodeNetwork(network_id, IPv4Network(block), mtu)


def test_the_gateway_is_the_blocks_first_address() -> None:
    network = _net()
    assert network.gateway == IPv4Interface("10.32.5.1/24")
    assert network.bridge == bridge_name("net1")


@pytest.mark.parametrize(
    ("block", "mtu", "message"),
    [
        ("10.32.5.0/31", 1420, "too small"),
        ("10.32.5.0/24", 100, "MTU"),
        ("10.32.5.0/24", 70000, "MTU"),
    ],
)
def test_bad_networks_are_refused(block: str, mtu: int, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        _net(block, mtu=mtu)


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("10.32.6.2/24", "not in network"),
        ("10.32.5.2/16", "not in network"),  # the cluster subnet's prefix, not the block's
        ("10.32.5.1/24", "reserved"),
        ("10.32.5.0/24", "reserved"),
        ("10.32.5.255/24", "reserved"),
    ],
)
def test_bad_task_addresses_are_refused(address: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        NetworkAddress(_net(), IPv4Interface(address))


def test_bad_attachments_are_refused() -> None:
    entry = NetworkAddress(_net(), IPv4Interface("10.32.5.2/24"))
    with pytest.raises(InvalidArgument, match="at least one network"):
        TaskAttachment("t1", Path("/run/netns/x"), ())
    with pytest.raises(InvalidArgument, match="listed twice"):
        TaskAttachment("t1", Path("/run/netns/x"), (entry, entry))
    with pytest.raises(InvalidArgument, match="absolute"):
        TaskAttachment("t1", Path("netns/x"), (entry,))
    with pytest.raises(InvalidArgument, match="task"):
        TaskAttachment("t:1", Path("/run/netns/x"), (entry,))


def test_parse_address() -> None:
    assert parse_address("10.32.5.7/24") == IPv4Interface("10.32.5.7/24")
    with pytest.raises(InvalidArgument, match="not an IPv4 address"):
        parse_address("10.32.5.300/24")


def test_netlink_errors_become_one_line_warren_errors() -> None:
    failure = netlink_failure("create bridge wn-x", NetlinkError(errno.EPERM, "denied"))
    assert isinstance(failure, RuntimeFailure)
    assert str(failure) == (
        "create bridge wn-x: Operation not permitted "
        "(the agent needs CAP_NET_ADMIN (run it as root))"
    )
    assert str(netlink_failure("add", NetlinkError(errno.EEXIST))) == "add: File exists"


def _task(task_id: str, *entries: tuple[NodeNetwork, str]) -> TaskAttachment:
    networks = tuple(NetworkAddress(net, IPv4Interface(addr)) for net, addr in entries)
    return TaskAttachment(task_id, Path(f"/run/netns/warren-{task_id}"), networks)


async def test_the_fake_keeps_an_attachment_on_reattach() -> None:
    fake = FakeBridgeNetwork()
    net_a, net_b = _net(network_id="a"), _net("10.33.5.0/24", "b")
    task = _task("t1", (net_a, "10.32.5.2/24"), (net_b, "10.33.5.2/24"))
    first = await fake.attach(task)
    assert [(i.network_id, i.ifname) for i in first] == [("a", "eth0"), ("b", "eth1")]
    assert await fake.attach(task) == first
    assert fake.created == 2
    assert await fake.networks() == {"a", "b"}
    assert await fake.attachments() == {"t1": {"a", "b"}}

    # A task's networks are fixed for its life: listing fewer changes nothing.
    kept = await fake.attach(_task("t1", (net_a, "10.32.5.2/24")))
    assert kept == first[:1]
    assert await fake.attachments() == {"t1": {"a", "b"}}
    assert fake.created == 2


async def test_the_fake_refuses_to_remove_a_network_in_use() -> None:
    fake = FakeBridgeNetwork()
    net = _net()
    await fake.attach(_task("t1", (net, "10.32.5.2/24")))
    with pytest.raises(FailedPrecondition, match="detach those tasks first"):
        await fake.remove_network("net1")
    await fake.detach("t1")
    await fake.detach("t1")
    await fake.remove_network("net1")
    await fake.remove_network("net1")
    assert await fake.networks() == frozenset()
    assert await fake.attachments() == {}


def _attribute(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def test_the_lean_reader_decodes_only_what_it_needs() -> None:
    linkinfo = _attribute(links.IFLA_INFO_KIND, b"veth\0")
    body = (
        struct.pack("=BxHiII", 0, 1, 7, links.IFF_UP, 0)
        + _attribute(links.IFLA_IFNAME, b"wv-0123456789ab\0")
        + _attribute(links.IFLA_MTU, struct.pack("=I", 1400))
        + _attribute(99, b"statistics the reader skips")
        + _attribute(links.IFLA_LINKINFO | 0x8000, linkinfo)  # NLA_F_NESTED
        + _attribute(links.IFLA_IFALIAS, b"warren:task:t1:net1\0")
        + _attribute(links.IFLA_MASTER, struct.pack("=I", 3))
        + _attribute(links.IFLA_LINK, struct.pack("=I", 2))
    )
    message = struct.pack("=IHHII", 16 + len(body), links.RTM_NEWLINK, 0, 1, 0) + body
    assert links._decode(message) == links.Link(
        index=7,
        name="wv-0123456789ab",
        kind="veth",
        alias="warren:task:t1:net1",
        master=3,
        peer_index=2,
        mtu=1400,
        up=True,
    )
