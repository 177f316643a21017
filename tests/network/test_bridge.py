"""Tasks' namespaces on per-network bridges, with the kernel's real networking.

A "node" is a network namespace holding the bridges (nothing is made in the
root namespace); tasks are namespaces as the runtime makes them (loopback up).
Each test removes every namespace it made, also when it fails; deleting a
namespace takes its interfaces along.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from warren.agent.network.bridge import (
    NetworkAddress,
    NodeNetwork,
    PyrouteBridgeNetwork,
    TaskAttachment,
    bridge_name,
    host_ifname,
)
from warren.agent.network.checks import SystemProber, enable_ip_forwarding, problems
from warren.agent.network.links import LinkReader
from warren.agent.network.netlink import run_in_netns
from warren.core.errors import FailedPrecondition

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and ip"
)

NETNS_DIR = Path("/run/netns")
NET_A = NodeNetwork("neta", IPv4Network("10.32.5.0/24"), mtu=1400)
NET_B = NodeNetwork("netb", IPv4Network("10.33.5.0/24"), mtu=1400)


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"ip {' '.join(args)}: {done.stderr}"
    return done.stdout


class Namespaces:
    """Named namespaces unique to this run; ``close`` deletes them all."""

    def __init__(self) -> None:
        self.prefix = f"wbr-{os.getpid()}-{secrets.token_hex(3)}"
        self.made: list[str] = []

    def make(self, tag: str) -> Path:
        name = f"{self.prefix}-{tag}"
        self.made.append(name)
        _ip("netns", "add", name)
        _ip("-n", name, "link", "set", "lo", "up")
        return NETNS_DIR / name

    def close(self) -> None:
        for name in reversed(self.made):
            if (NETNS_DIR / name).exists():
                subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30)
        left = [name for name in self.made if (NETNS_DIR / name).exists()]
        assert not left, f"namespaces left behind: {left}"


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    made = Namespaces()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def node(namespaces: Namespaces) -> Path:
    made = namespaces.make("node")
    # A new namespace copies IPv4 forwarding from the root one (devconf_inherit_init_net
    # 0): off here whatever the machine has, the tests that need it turn it on.
    _ip("netns", "exec", made.name, "sysctl", "-qw", "net.ipv4.ip_forward=0")
    return made


def _task(
    namespaces: Namespaces, task_id: str, *entries: tuple[NodeNetwork, str]
) -> TaskAttachment:
    netns = namespaces.make(task_id)
    networks = tuple(NetworkAddress(net, IPv4Interface(address)) for net, address in entries)
    return TaskAttachment(task_id, netns, networks)


def _checksum(data: bytes) -> int:
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def _pings(netns: Path, address: str, timeout: float = 1.0) -> bool:
    """An ICMP echo from inside netns to address is answered (no ping binary here)."""
    ident = secrets.randbelow(0xFFFF)
    header = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
    payload = b"warren-bridge-test"
    packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, 1) + payload
    raw = run_in_netns(
        netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    )
    with raw:
        try:
            raw.sendto(packet, (address, 0))
        except OSError:  # no route: unreachable
            return False
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            raw.settimeout(left)
            try:
                reply, (source, _) = raw.recvfrom(1024)
            except TimeoutError:
                return False
            icmp = reply[(reply[0] & 0x0F) * 4 :]
            if source == address and icmp[0] == 0 and icmp[4:6] == ident.to_bytes(2, "big"):
                return True
    return False


def _tcp_roundtrip(server_ns: Path, client_ns: Path, address: str) -> bytes:
    """Connect from client_ns to a listener in server_ns; the server echoes one message."""
    server = run_in_netns(server_ns, lambda: socket.create_server(("0.0.0.0", 0)))
    with server:
        port = server.getsockname()[1]
        client = run_in_netns(
            client_ns, lambda: socket.create_connection((address, port), timeout=5)
        )
        with client:
            server.settimeout(5)
            accepted, _ = server.accept()
            with accepted:
                client.sendall(b"marker")
                accepted.sendall(accepted.recv(64))
                return client.recv(64)


def _links(netns: Path) -> dict[str, dict[str, Any]]:
    return {link["ifname"]: link for link in json.loads(_ip("-n", netns.name, "-j", "-d", "link"))}


def _default_route(netns: Path) -> str:
    """The default route, without its ``proto`` (pyroute2 says static, ip says boot)."""
    return _ip("-n", netns.name, "route", "show", "default").split(" proto ")[0].strip()


async def test_tasks_on_one_network_reach_each_other(namespaces: Namespaces, node: Path) -> None:
    bridges = PyrouteBridgeNetwork(node)
    one = _task(namespaces, "t1", (NET_A, "10.32.5.2/24"))
    two = _task(namespaces, "t2", (NET_A, "10.32.5.3/24"))
    await bridges.ensure_network(NET_A)
    await bridges.attach(one)
    await bridges.attach(two)

    assert _pings(one.netns, "10.32.5.3")
    assert _pings(two.netns, "10.32.5.2")
    assert _pings(one.netns, "10.32.5.1")  # the gateway, where the DNS will listen
    assert _tcp_roundtrip(one.netns, two.netns, "10.32.5.2") == b"marker"

    inside = _links(one.netns)["eth0"]
    assert inside["mtu"] == 1400 and "UP" in inside["flags"]
    assert _default_route(one.netns) == "default via 10.32.5.1 dev eth0"
    bridge = _links(node)[bridge_name("neta")]
    assert bridge["mtu"] == 1400 and bridge["ifalias"] == "warren:network:neta"
    assert await bridges.attachments() == {"t1": {"neta"}, "t2": {"neta"}}
    # A task reaching its own service's VIP is sent back out of its own port.
    for host_side in (host_ifname("t1", "neta"), host_ifname("t2", "neta")):
        assert "hairpin on" in _ip("-n", node.name, "-d", "link", "show", host_side)


async def test_networks_are_separate_at_layer_2(namespaces: Namespaces, node: Path) -> None:
    bridges = PyrouteBridgeNetwork(node)
    on_a = _task(namespaces, "ta", (NET_A, "10.32.5.2/24"))
    on_b = _task(namespaces, "tb", (NET_B, "10.33.5.2/24"))
    on_both = _task(namespaces, "tab", (NET_B, "10.33.5.3/24"), (NET_A, "10.32.5.3/24"))
    for task in (on_a, on_b, on_both):
        await bridges.attach(task)

    # Forwarding is off in the node: without routing, A and B do not meet.
    assert not _pings(on_a.netns, "10.33.5.2")
    # Even told B's block is on its link, A's task finds nobody: ARP stays on A's bridge.
    _ip("-n", on_a.netns.name, "route", "add", "10.33.5.0/24", "dev", "eth0")
    assert not _pings(on_a.netns, "10.33.5.2")
    assert not _pings(on_b.netns, "10.32.5.2")

    assert _pings(on_both.netns, "10.32.5.2")
    assert _pings(on_both.netns, "10.33.5.2")
    assert _tcp_roundtrip(on_a.netns, on_both.netns, "10.32.5.2") == b"marker"
    assert _tcp_roundtrip(on_b.netns, on_both.netns, "10.33.5.2") == b"marker"
    # The first network listed (B) is eth0 and has the default route.
    assert _default_route(on_both.netns) == "default via 10.33.5.1 dev eth0"
    addresses = _ip("-n", on_both.netns.name, "-4", "-br", "addr").split("\n")
    assert any(line.startswith("eth0@") and "10.33.5.3/24" in line for line in addresses)
    assert any(line.startswith("eth1@") and "10.32.5.3/24" in line for line in addresses)
    assert await bridges.networks() == {"neta", "netb"}


async def test_with_forwarding_the_node_routes_between_networks(
    namespaces: Namespaces, node: Path
) -> None:
    # What isolates networks on a forwarding node is nftables (not this module):
    # here the gateway routes, as it must for other nodes' tasks and the VIPs.
    bridges = PyrouteBridgeNetwork(node)
    await enable_ip_forwarding(node)
    on_a = _task(namespaces, "ra", (NET_A, "10.32.5.2/24"))
    on_b = _task(namespaces, "rb", (NET_B, "10.33.5.2/24"))
    await bridges.attach(on_a)
    await bridges.attach(on_b)
    assert _pings(on_a.netns, "10.33.5.2")


async def test_reattach_changes_nothing_and_keeps_connections(
    namespaces: Namespaces, node: Path
) -> None:
    one = _task(namespaces, "k1", (NET_A, "10.32.5.2/24"), (NET_B, "10.33.5.2/24"))
    two = _task(namespaces, "k2", (NET_A, "10.32.5.3/24"))
    first = await PyrouteBridgeNetwork(node).attach(one)
    await PyrouteBridgeNetwork(node).attach(two)
    before = (_links(node), _links(one.netns))

    server = run_in_netns(one.netns, lambda: socket.create_server(("0.0.0.0", 0)))
    with server:
        port = server.getsockname()[1]
        client = run_in_netns(
            two.netns, lambda: socket.create_connection(("10.32.5.2", port), timeout=5)
        )
        server.settimeout(5)
        accepted, _ = server.accept()
        with client, accepted:
            # A new instance: the agent restarted.
            again = await PyrouteBridgeNetwork(node).attach(one)
            client.sendall(b"still there")
            assert accepted.recv(64) == b"still there"

    assert again == first
    after = (_links(node), _links(one.netns))
    for side_before, side_after in zip(before, after, strict=True):
        assert {n: link["ifindex"] for n, link in side_before.items()} == {
            n: link["ifindex"] for n, link in side_after.items()
        }


async def test_reattach_repairs_what_was_changed(namespaces: Namespaces, node: Path) -> None:
    bridges = PyrouteBridgeNetwork(node)
    task = _task(namespaces, "r1", (NET_A, "10.32.5.2/24"))
    (attached,) = await bridges.attach(task)
    _ip("-n", task.netns.name, "addr", "flush", "dev", "eth0")
    _ip("-n", task.netns.name, "addr", "add", "10.32.5.99/24", "dev", "eth0")
    _ip("-n", node.name, "link", "set", attached.host_ifname, "down")

    _ip(
        "-n",
        node.name,
        "link",
        "set",
        attached.host_ifname,
        "type",
        "bridge_slave",
        "hairpin",
        "off",
    )

    (repaired,) = await bridges.attach(task)
    assert repaired.host_index == attached.host_index
    assert "hairpin on" in _ip("-n", node.name, "-d", "link", "show", attached.host_ifname)
    assert "10.32.5.99" not in _ip("-n", task.netns.name, "-4", "addr", "show", "eth0")
    assert _default_route(task.netns) == "default via 10.32.5.1 dev eth0"
    assert _pings(task.netns, "10.32.5.1")


async def test_detach_removes_the_interfaces_and_then_the_network_goes(
    namespaces: Namespaces, node: Path
) -> None:
    bridges = PyrouteBridgeNetwork(node)
    task = _task(namespaces, "d1", (NET_A, "10.32.5.2/24"), (NET_B, "10.33.5.2/24"))
    await bridges.attach(task)
    with pytest.raises(FailedPrecondition, match="detach those tasks first"):
        await bridges.remove_network("neta")

    await bridges.detach("d1")
    await bridges.detach("d1")  # nothing left: no error
    assert set(_links(task.netns)) == {"lo"}
    assert set(_links(node)) == {"lo", bridge_name("neta"), bridge_name("netb")}
    assert await bridges.attachments() == {}

    for network_id in ("neta", "netb"):
        await bridges.remove_network(network_id)
        await bridges.remove_network(network_id)
    assert set(_links(node)) == {"lo"}
    assert await bridges.networks() == frozenset()


async def test_a_missing_namespace_changes_nothing(namespaces: Namespaces, node: Path) -> None:
    bridges = PyrouteBridgeNetwork(node)
    entry = NetworkAddress(NET_A, IPv4Interface("10.32.5.2/24"))
    task = TaskAttachment("gone", NETNS_DIR / f"{namespaces.prefix}-gone", (entry,))
    with pytest.raises(FailedPrecondition, match="does not exist"):
        await bridges.attach(task)
    assert set(_links(node)) == {"lo"}


async def test_a_failed_attach_removes_what_it_made(namespaces: Namespaces, node: Path) -> None:
    bridges = PyrouteBridgeNetwork(node)
    task = _task(namespaces, "f1", (NET_A, "10.32.5.2/24"), (NET_B, "10.33.5.2/24"))
    # Something that is not Warren's holds the second network's bridge name.
    _ip("-n", node.name, "link", "add", bridge_name("netb"), "type", "bridge")
    with pytest.raises(FailedPrecondition, match="not Warren's bridge"):
        await bridges.attach(task)
    assert host_ifname("f1", "neta") not in _links(node)
    assert set(_links(task.netns)) == {"lo"}
    assert await bridges.attachments() == {}


async def test_the_node_checks_see_this_kernel(node: Path) -> None:
    facts = await SystemProber(node).probe()
    assert facts.bridge_error is None and facts.veth_error is None
    assert facts.libnftables_error is None and facts.nft_error is None
    assert facts.wireguard in ("kernel", "wireguard-go")
    # A fresh namespace does not forward; the check says so until it is enabled.
    assert [p.what for p in problems(facts)] == [
        "IPv4 forwarding is off (tasks cannot reach other nodes or services)"
    ]
    await enable_ip_forwarding(node)
    assert problems(await SystemProber(node).probe()) == []
    assert set(_links(node)) == {"lo"}  # the test interfaces are gone


async def test_attach_takes_a_few_milliseconds(namespaces: Namespaces, node: Path) -> None:
    bridges = PyrouteBridgeNetwork(node)
    await bridges.ensure_network(NET_A)
    timings = []
    for number in range(5):
        task = _task(namespaces, f"m{number}", (NET_A, f"10.32.5.{10 + number}/24"))
        started = time.perf_counter()
        await bridges.attach(task)
        timings.append((time.perf_counter() - started) * 1000)
    median = sorted(timings)[len(timings) // 2]
    print(f"attach, one task on one network: median {median:.1f} ms (FIELD-NOTES spike: ~40 ms)")
    assert median < 200


async def test_the_lean_reader_agrees_with_ip(namespaces: Namespaces, node: Path) -> None:
    bridges = PyrouteBridgeNetwork(node)
    await bridges.attach(_task(namespaces, "l1", (NET_A, "10.32.5.2/24")))
    _ip("-n", node.name, "link", "add", "wvx", "type", "veth", "peer", "name", "wvy")
    with LinkReader(node) as reader:
        read = {link.name: link for link in reader.dump()}
        assert reader.get("wvx") == read["wvx"]
        assert reader.get("absent") is None
    shown = _links(node)
    assert set(read) == set(shown)
    for name, link in read.items():
        expected = shown[name]
        assert link.index == expected["ifindex"]
        assert link.mtu == expected["mtu"]
        assert link.up == ("UP" in expected["flags"])
        assert link.alias == expected.get("ifalias")
        assert link.kind == expected.get("linkinfo", {}).get("info_kind")
        master = shown.get(expected.get("master", ""), {}).get("ifindex")
        assert link.master == master
    assert read["wvx"].peer_index == read["wvy"].index
