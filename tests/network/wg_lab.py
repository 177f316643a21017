"""Mesh nodes on netlab hosts, for the WireGuard tests and bench/wireguard.py.

Each node is a lab host with an empty bridge (no dummy module here) holding its "container subnet"
gateway, and Warren's mesh code run inside the host's network namespace by
``wg_node.py`` (through nsenter, so wireguard-go is spawned in that namespace).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaos import netlab

from warren.agent.network.wg_uapi import SOCKET_DIR
from warren.agent.network.wireguard import NodeKey, generate_private_key, public_key_of

NODE_SCRIPT = Path(__file__).with_name("wg_node.py")
WG_PORT = 51820
CONTAINER_IF = "ctr0"


def nsenter(netns: str, args: Sequence[str]) -> list[str]:
    return ["nsenter", f"--net={netlab.NETNS_DIR / netns}", *args]


def ns_run(
    netns: str, args: Sequence[str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        nsenter(netns, args), capture_output=True, text=True, timeout=timeout, check=False
    )


def ns_popen(netns: str, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        nsenter(netns, args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kwargs,
    )


@dataclass
class MeshNode:
    host: netlab.Host
    name: str  # the WireGuard interface, unique across namespaces
    key: NodeKey
    subnet: str  # the node's container subnet
    gateway: str  # its first address, on the "container" bridge

    @property
    def netns(self) -> str:
        return self.host.netns

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "private_key": self.key.private_key,
            "listen_port": WG_PORT,
            "address": self.gateway,
            "mtu": 1420,
        }

    def as_peer(self) -> dict[str, Any]:
        return {
            "public_key": self.key.public_key,
            "endpoint": f"{self.host.address}:{WG_PORT}",
            "allowed_ips": [self.subnet],
        }

    def request(self, action: str, peers: Sequence[MeshNode] = (), **extra: Any) -> dict[str, Any]:
        body = {
            "action": action,
            "config": self.config(),
            "peers": [p.as_peer() for p in peers],
            **extra,
        }
        done = ns_run(self.netns, [sys.executable, str(NODE_SCRIPT), json.dumps(body)], 60)
        if done.returncode != 0:
            raise RuntimeError(f"wg_node {action} on {self.host.name} failed: {done.stderr}")
        reply: dict[str, Any] = json.loads(done.stdout)
        return reply

    def sync(self, peers: Sequence[MeshNode]) -> dict[str, Any]:
        reply = self.request("sync", peers)
        if "error" in reply:
            raise RuntimeError(f"sync on {self.host.name}: {reply}")
        return reply

    def state(self) -> dict[str, Any]:
        reply = self.request("state")
        if "error" in reply:
            raise RuntimeError(f"state on {self.host.name}: {reply}")
        state: dict[str, Any] = reply["state"]
        return state


def make_nodes(lab: netlab.Lab, count: int) -> list[MeshNode]:
    """``count`` hosts, each with container subnet 10.77.<i>.0/24 on an empty bridge."""
    token = secrets.token_hex(4)
    nodes = []
    for index in range(1, count + 1):
        host = lab.add_host(f"n{index}")
        private = generate_private_key()
        node = MeshNode(
            host=host,
            name=f"wg{token}{index}",
            key=NodeKey(private, public_key_of(private)),
            subnet=f"10.77.{index}.0/24",
            gateway=f"10.77.{index}.1",
        )
        for args in (
            ["ip", "link", "add", CONTAINER_IF, "type", "bridge"],
            ["ip", "addr", "add", f"{node.gateway}/24", "dev", CONTAINER_IF],
            ["ip", "link", "set", CONTAINER_IF, "up"],
        ):
            ns_run(host.netns, args).check_returncode()
        nodes.append(node)
    return nodes


def mesh_all(nodes: Sequence[MeshNode]) -> None:
    for node in nodes:
        node.sync([other for other in nodes if other is not node])


def wireguard_go_pids(names: Sequence[str]) -> list[int]:
    """wireguard-go processes serving any of ``names`` (by their command line)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"wireguard-go") and any(n.encode() in argv for n in names):
            found.append(int(entry.name))
    return found


def leftovers(names: Sequence[str]) -> list[str]:
    sockets = [
        f"socket {SOCKET_DIR / f'{n}.sock'}" for n in names if (SOCKET_DIR / f"{n}.sock").exists()
    ]
    return sockets + [f"wireguard-go pid {pid}" for pid in wireguard_go_pids(names)]


def tear_down(nodes: Sequence[MeshNode]) -> None:
    """Best effort, also after a failure: Warren's own 'down', then whatever remains
    (the lab's close kills every process left in its namespaces)."""
    for node in nodes:
        with contextlib.suppress(Exception):
            node.request("down")
    names = [n.name for n in nodes]
    for pid in wireguard_go_pids(names):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    for name in names:
        (SOCKET_DIR / f"{name}.sock").unlink(missing_ok=True)


def add_container(node: MeshNode) -> tuple[str, str]:
    """A "container" behind ``node``: its own namespace on the node's container bridge
    through a veth, address .2 of the node's subnet, default route via the gateway.
    The node forwards for it. Returns (namespace, address); ``remove_container`` undoes it.
    """
    netns = f"{node.netns}-c"  # under the lab's prefix: its sweep and leftovers see it
    address = node.gateway.rsplit(".", 1)[0] + ".2"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    host = node.netns
    for args in (
        ["ip", "-n", host, "link", "add", "vctr", "type", "veth", "peer", "name", "eth0",
         "netns", netns],
        ["ip", "-n", host, "link", "set", "vctr", "master", CONTAINER_IF, "up"],
        ["ip", "-n", netns, "addr", "add", f"{address}/24", "dev", "eth0"],
        ["ip", "-n", netns, "link", "set", "lo", "up"],
        ["ip", "-n", netns, "link", "set", "eth0", "up"],
        ["ip", "-n", netns, "route", "add", "default", "via", node.gateway],
        ["nsenter", f"--net={netlab.NETNS_DIR / host}", "sysctl", "-qw", "net.ipv4.ip_forward=1"],
    ):  # fmt: skip
        subprocess.run(args, check=True, capture_output=True)
    return netns, address


def remove_container(netns: str) -> None:
    """Kill whatever still runs in the container namespace, then delete it."""
    path = netlab.NETNS_DIR / netns
    if not path.exists():
        return
    st = os.stat(path)
    for pid in netlab.pids_in_netns((st.st_dev, st.st_ino)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    subprocess.run(["ip", "netns", "delete", netns], check=False)
