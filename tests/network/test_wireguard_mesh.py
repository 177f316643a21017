"""The WireGuard mesh for real: two lab hosts (network namespaces on a bridge), each
with a "container subnet", meshed by Warren's code through wireguard-go (this kernel
has no WireGuard module). Needs root, ip, nft, nsenter, wireguard-go and tcpdump."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from chaos import netlab

from network.wg_lab import (
    WG_PORT,
    MeshNode,
    add_container,
    leftovers,
    make_nodes,
    mesh_all,
    ns_popen,
    ns_run,
    remove_container,
    tear_down,
    wireguard_go_pids,
)
from warren.agent.network.wg_uapi import UapiClient
from warren.core.errors import InvalidArgument

TOOLS = ("ip", "nft", "nsenter", "wireguard-go", "tcpdump")

RECEIVER = """
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(1)
print("listening", flush=True)
srv.settimeout(20)
conn, _ = srv.accept()
data = b""
while chunk := conn.recv(65536):
    data += chunk
print(data.decode(), flush=True)
"""

SENDER = """
import socket, sys
sock = socket.socket()
sock.settimeout(float(sys.argv[4]))
if sys.argv[1] != "-":
    sock.bind((sys.argv[1], 0))
try:
    sock.connect((sys.argv[2], int(sys.argv[3])))
except OSError as err:
    print(type(err).__name__)
    sys.exit(0)
sock.sendall(sys.argv[5].encode())
sock.close()
print("sent")
"""


@pytest.fixture
def nodes() -> Iterator[list[MeshNode]]:
    """Two meshable hosts; everything (namespaces, wireguard-go, sockets) goes after."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"missing tools: {', '.join(missing)}")
    netlab.sweep_stale()
    with netlab.Lab() as lab:
        made: list[MeshNode] = []
        try:
            made = make_nodes(lab, 2)
            yield made
        finally:
            tear_down(made)
    assert leftovers([n.name for n in made]) == []
    assert lab.leftovers() == []


def send(netns: str, source: str, target: str, port: int, text: str, timeout: float = 5) -> str:
    done = ns_run(
        netns,
        [sys.executable, "-c", SENDER, source, target, str(port), str(timeout), text],
        timeout=timeout + 10,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def receive(netns: str, address: str, port: int) -> subprocess.Popen[str]:
    proc = ns_popen(netns, [sys.executable, "-c", RECEIVER, address, str(port)])
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "listening"
    return proc


def received(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return out.strip()


class Capture:
    """tcpdump on a host's underlay link (eth0) into a pcap file."""

    def __init__(self, node: MeshNode, path: Path) -> None:
        self.path = path
        self.proc = ns_popen(
            node.netns,
            [
                "tcpdump",
                "-i",
                "eth0",
                "-n",
                "-U",
                "--immediate-mode",
                "-s",
                "0",
                "-Z",
                "root",
                "-w",
                str(path),
            ],
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        assert "listening on" in line, line

    def stop(self) -> bytes:
        os.killpg(self.proc.pid, signal.SIGINT)
        self.proc.communicate(timeout=10)
        return self.path.read_bytes()

    def count(self, expression: str) -> int:
        done = subprocess.run(
            ["tcpdump", "-n", "-r", str(self.path), expression],
            capture_output=True,
            text=True,
            check=True,
        )
        return len(done.stdout.splitlines())


@pytest.fixture
def containers(nodes: list[MeshNode]) -> Iterator[list[tuple[str, str]]]:
    """A "container" namespace behind each node (veth on its container bridge)."""
    made: list[tuple[str, str]] = []
    try:
        for node in nodes:
            made.append(add_container(node))
        yield made
    finally:
        for netns, _address in made:
            remove_container(netns)


def test_traffic_between_containers_on_two_nodes_is_encrypted(
    nodes: list[MeshNode], containers: list[tuple[str, str]], tmp_path: Path
) -> None:
    a, b = nodes
    (ns_a, _addr_a), (ns_b, addr_b) = containers
    mesh_all(nodes)
    capture = Capture(a, tmp_path / "underlay.pcap")
    try:
        # Control: the same capture does see a marker sent in the clear.
        plain = f"PLAIN-{secrets.token_hex(8)}"
        listener = receive(b.netns, b.host.address, 7001)
        assert send(a.netns, "-", b.host.address, 7001, plain) == "sent"
        assert received(listener) == plain

        secret = f"SECRET-{secrets.token_hex(8)}"
        listener = receive(ns_b, addr_b, 7000)
        assert send(ns_a, "-", addr_b, 7000, secret) == "sent"
        assert received(listener) == secret
    finally:
        pcap = capture.stop()
    assert plain.encode() in pcap
    assert secret.encode() not in pcap
    assert capture.count(f"udp and dst host {b.host.address} and dst port {WG_PORT}") > 0
    assert capture.count(f"tcp and host {addr_b}") == 0


def test_state_reports_handshake_and_counters(nodes: list[MeshNode]) -> None:
    a, b = nodes
    mesh_all(nodes)
    listener = receive(b.netns, b.gateway, 7000)
    assert send(a.netns, a.gateway, b.gateway, 7000, "hello") == "sent"
    assert received(listener) == "hello"

    state = a.state()
    (peer,) = state["peers"]
    assert peer["public_key"] == b.key.public_key
    assert peer["endpoint"] == f"{b.host.address}:{WG_PORT}"
    assert peer["allowed_ips"] == [b.subnet]
    assert peer["persistent_keepalive"] == 25
    assert 0 <= time.time() - peer["last_handshake"] < 60
    assert peer["rx_bytes"] > 0 and peer["tx_bytes"] > 0
    assert state["routes"] == [b.subnet]
    assert state["public_key"] == a.key.public_key
    assert state["listen_port"] == WG_PORT
    # A second sync with the same peers changes nothing (the session stays).
    assert a.sync([b]) == {"changes": 0, "routes_added": []}


def test_removing_a_peer_stops_traffic(nodes: list[MeshNode]) -> None:
    a, b = nodes
    mesh_all(nodes)
    # Nothing listens on port 7002: a refusal proves the packets got through.
    assert send(b.netns, b.gateway, a.gateway, 7002, "x") == "ConnectionRefusedError"

    assert a.sync([]) == {"changes": 1, "routes_added": []}
    state = a.state()
    assert state["peers"] == [] and state["routes"] == []
    # a has no route to b's subnet any more; b still has one, but a drops its packets.
    assert send(a.netns, a.gateway, b.gateway, 7002, "x") in ("OSError", "TimeoutError")
    assert send(b.netns, b.gateway, a.gateway, 7002, "x", timeout=2) == "TimeoutError"

    a.sync([b])  # and back
    assert send(b.netns, b.gateway, a.gateway, 7002, "x") == "ConnectionRefusedError"


def test_down_stops_wireguard_go_and_leaves_nothing(nodes: list[MeshNode]) -> None:
    a, b = nodes
    mesh_all(nodes)
    pid = UapiClient(a.name).server_pid()
    assert wireguard_go_pids([a.name]) == [pid]
    assert a.request("down") == {}
    assert leftovers([a.name]) == []
    assert ns_run(a.netns, ["ip", "link", "show", a.name]).returncode != 0
    assert b.request("state")["state"]["peers"]  # the other node is untouched


def test_node_check_egress_mtu_and_a_name_clash_across_namespaces(
    nodes: list[MeshNode],
) -> None:
    a, b = nodes
    assert a.request("missing") == {"missing": None}
    assert a.request("mtu", target=b.host.address) == {"egress": 1500, "mesh": 1420}
    ns_run(a.netns, ["ip", "link", "set", "eth0", "mtu", "1400"]).check_returncode()
    assert a.request("mtu", target=b.host.address) == {"egress": 1400, "mesh": 1320}
    mesh_all(nodes)
    clash = MeshNode(b.host, a.name, b.key, b.subnet, b.gateway)
    reply = clash.request("sync", [a])
    assert reply["error"] == "already_exists"
    assert "unique across namespaces" in reply["message"]
    # Removing "that" interface from b's namespace leaves a's wireguard-go alone.
    assert clash.request("down") == {}
    assert a.state()["peers"]
    assert len(wireguard_go_pids([a.name])) == 1


def test_uapi_errors_become_warren_errors(nodes: list[MeshNode]) -> None:
    a = nodes[0]
    mesh_all(nodes)
    with pytest.raises(InvalidArgument, match="EINVAL"):
        UapiClient(a.name).set(b"set=1\nlisten_port=not-a-port\n\n")
    assert a.state()["listen_port"] == WG_PORT
