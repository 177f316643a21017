"""The agent's network controller with the real parts, on three lab hosts.

Each host runs ``controller_node.py`` (bridges through pyroute2, the nftables
table through libnftables, the embedded DNS, wireguard-go: this kernel has no
WireGuard module) and is given one hand-built NetworkView: networks front and
back, a service ``web`` with a VIP, a published port and one endpoint on each
of hosts 1 and 2 (host 1's in its second block of front); host 3 holds no
block. "Containers" are plain network namespaces the controller attaches,
with a tiny TCP server answering its name. A client container on host 1 (on
both networks) resolves ``web`` at its gateway, reaches both endpoints
through the VIP on any port (one across the WireGuard mesh) and through the
published port of hosts 2 and 3 (and 127.0.0.1 on host 2); networks are
isolated; an agent stop keeps the traffic and the next agent takes over from
the view it kept; after ``close`` no interface, table or wireguard-go process
of Warren's is left. Needs root, ip, nft, nsenter and wireguard-go.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pickle
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chaos import netlab

from network.wg_lab import leftovers, wireguard_go_pids
from warren.agent.network.wg_uapi import SOCKET_DIR
from warren.core.models import ContainerSpec, ServiceSpec, Task
from warren.core.networks import NetworkAttachment, PortConfig, VirtualIP
from warren.core.node_view import NetworkView, ViewEndpoint, ViewNetwork, ViewPeer, ViewService

TOOLS = ("ip", "nft", "nsenter", "wireguard-go")
pytestmark = pytest.mark.skipif(
    netlab.unavailable_reason() is not None or any(shutil.which(t) is None for t in TOOLS),
    reason=f"needs root and {', '.join(TOOLS)}",
)

NODE_SCRIPT = Path(__file__).with_name("controller_node.py")
WG_PORT = 51820
SERVICE_PORT = 8000
OTHER_PORT = 8001
# Each node's blocks of each network; node 1 holds two of front (web1 is in the second).
BLOCKS = {
    (1, "net-front"): ("10.40.1.0/24", "10.40.11.0/24"),
    (1, "net-back"): ("10.41.1.0/24",),
    (2, "net-front"): ("10.40.2.0/24",),
    (2, "net-back"): ("10.41.2.0/24",),
    # Node 3 runs no task (a drained manager): no block, yet it serves published ports.
    (3, "net-front"): (),
    (3, "net-back"): (),
}
PUBLISHED = 30080
VIP = "10.40.0.2"

# Answers every connection with its name, then closes it.
SERVER = """
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[2])))
srv.listen(64)
print("listening", flush=True)
while True:
    conn, _ = srv.accept()
    conn.sendall(sys.argv[1].encode())
    conn.close()
"""

# Resolves names at the name server, then connects N times to an address and port.
CLIENT = """
import json, socket, sys
from dnslib import DNSRecord
server, target, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
names = {}
for name in sys.argv[5:]:
    reply = DNSRecord.parse(DNSRecord.question(name).send(server, 53, timeout=3))
    names[name] = sorted(str(rr.rdata) for rr in reply.rr)
answers = []
for _ in range(count):
    with socket.create_connection((target, port), timeout=3) as sock:
        answers.append(sock.recv(100).decode())
print(json.dumps({"names": names, "answers": answers}))
"""

# Connects N times to an address and port, printing the answers.
CONNECT = """
import json, socket, sys
answers = []
for _ in range(int(sys.argv[3])):
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as sock:
        answers.append(sock.recv(100).decode())
print(json.dumps(answers))
"""


def _connect(netns: str, address: str) -> list[str] | None:
    """One connection from ``netns`` to the service port at address: its answers, or
    None if it could not connect within a second."""
    args = [sys.executable, "-c", CONNECT.replace("timeout=3", "timeout=1"), address,
            str(SERVICE_PORT), "1"]  # fmt: skip
    done = subprocess.run(_nsenter(netns, args), capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        assert "timed out" in done.stderr, done.stderr
        return None
    answers: list[str] = json.loads(done.stdout)
    return answers


def _dump(value: object) -> str:
    return base64.b64encode(pickle.dumps(value)).decode()


def _nsenter(netns: str, args: list[str]) -> list[str]:
    return ["nsenter", f"--net={netlab.NETNS_DIR / netns}", *args]


class ControllerNode:
    """controller_node.py in a host's namespace, driven over its stdin/stdout."""

    def __init__(self, host: netlab.Host, node_id: str, interface: str, state_dir: Path) -> None:
        self.host = host
        self.node_id = node_id
        self.interface = interface
        self.state_dir = state_dir
        self.proc = subprocess.Popen(
            _nsenter(host.netns, [sys.executable, str(NODE_SCRIPT)]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(state_dir.parent / f"{node_id}.log", "ab"),  # noqa: SIM115
            text=True,
            start_new_session=True,
        )

    def ask(self, action: str, **fields: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"action": action, **fields}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"{self.node_id} exited: see {self.state_dir.parent / self.node_id}.log"
        reply: dict[str, Any] = json.loads(line)
        assert "error" not in reply, f"{self.node_id} {action}: {reply}"
        return reply

    def start(self) -> str:
        reply = self.ask(
            "start",
            node_id=self.node_id,
            state_dir=str(self.state_dir),
            interface=self.interface,
            port=WG_PORT,
        )
        return str(reply["public_key"])

    def stop_process(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


class Containers:
    """Network namespaces standing for containers, under the lab's prefix."""

    def __init__(self, lab: netlab.Lab) -> None:
        self.lab = lab
        self.made: list[str] = []
        self.procs: list[subprocess.Popen[str]] = []

    def make(self, tag: str) -> str:
        netns = f"{self.lab.prefix}-{tag}"
        self.made.append(netns)
        subprocess.run(["ip", "netns", "add", netns], check=True)
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        return netns

    def serve(self, netns: str, name: str, port: int = SERVICE_PORT) -> None:
        proc = subprocess.Popen(
            _nsenter(netns, [sys.executable, "-c", SERVER, name, str(port)]),
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        for netns in self.made:
            subprocess.run(["ip", "netns", "delete", netns], check=False, capture_output=True)


@pytest.fixture
def lab() -> Iterator[netlab.Lab]:
    with netlab.Lab() as made:
        yield made
    assert made.leftovers() == []


def _task(task_id: str, *attachments: tuple[str, str]) -> Task:
    spec = ServiceSpec(name="web", container=ContainerSpec(image="busybox"))
    return Task(
        id=task_id,
        service_id="svc-web",
        service_name="web",
        spec=spec,
        spec_version=1,
        networks=tuple(NetworkAttachment(n, a) for n, a in attachments),
    )


def _view(hosts: list[netlab.Host], keys: list[str]) -> NetworkView:
    front = ViewNetwork("net-front", "front", "10.40.0.0/16")
    back = ViewNetwork("net-back", "back", "10.41.0.0/16")
    web = ViewService(
        "svc-web",
        "web",
        networks=("net-front",),
        vips=(VirtualIP("net-front", f"{VIP}/16"),),
        ports=(PortConfig(target=SERVICE_PORT, published=PUBLISHED),),
        endpoints=(
            ViewEndpoint("t-web1", "node-1", "net-front", "10.40.11.10/24"),
            ViewEndpoint("t-web2", "node-2", "net-front", "10.40.2.10/24"),
        ),
    )
    peers = tuple(
        ViewPeer(
            f"node-{i}",
            key,
            f"{host.address}:{WG_PORT}",
            tuple(b for (node, _), blocks in BLOCKS.items() if node == i for b in blocks),
        )
        for i, (host, key) in enumerate(zip(hosts, keys, strict=True), start=1)
    )
    return NetworkView(revision=1, networks=(front, back), services=(web,), peers=peers)


def _for_node(view: NetworkView, index: int) -> NetworkView:
    """The view as node ``index`` gets it: its own blocks on each network."""
    networks = tuple(
        ViewNetwork(n.id, n.name, n.subnet, BLOCKS[index, n.id]) for n in view.networks
    )
    return NetworkView(view.revision, networks, view.services, view.peers)


def _links(netns: str) -> list[str]:
    """The namespace's interfaces with their indexes (a recreated one gets a new index)."""
    links = subprocess.run(
        ["ip", "-n", netns, "-o", "link", "show"], capture_output=True, text=True, check=True
    ).stdout
    return [line.split("<")[0] for line in links.splitlines()]


def _warren_state(netns: str, interface: str) -> list[str]:
    """What of Warren's is left in a host: interfaces but lo/eth0, the table, wireguard-go."""
    links = subprocess.run(
        ["ip", "-n", netns, "-o", "link", "show"], capture_output=True, text=True, check=True
    ).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in links.splitlines()]
    left = [f"interface {n}" for n in names if n not in ("lo", "eth0")]
    tables = subprocess.run(
        _nsenter(netns, ["nft", "list", "tables"]), capture_output=True, text=True, check=True
    ).stdout
    if "table ip warren" in tables:
        left.append("nft table ip warren")
    return left + leftovers([interface])


def test_a_container_reaches_a_service_across_the_mesh_by_name_vip_and_published_port(
    lab: netlab.Lab, tmp_path: Path
) -> None:
    hosts = [lab.add_host("h1"), lab.add_host("h2"), lab.add_host("h3")]
    token = secrets.token_hex(3)
    nodes = [
        ControllerNode(host, f"node-{i}", f"wgc{token}{i}", tmp_path / f"state-{i}")
        for i, host in enumerate(hosts, start=1)
    ]
    containers = Containers(lab)
    try:
        keys = [node.start() for node in nodes]
        view = _view(hosts, keys)
        for index, node in enumerate(nodes, start=1):
            assert node.ask("view", view=_dump(_for_node(view, index)))["failures"] == {}

        web1, web2, client = (containers.make(tag) for tag in ("c-web1", "c-web2", "c-client"))
        nodes[0].ask("attach", task=_dump(_task("t-web1", ("net-front", "10.40.11.10/24"))),
                     netns=str(netlab.NETNS_DIR / web1))  # fmt: skip
        nodes[1].ask("attach", task=_dump(_task("t-web2", ("net-front", "10.40.2.10/24"))),
                     netns=str(netlab.NETNS_DIR / web2))  # fmt: skip
        names = nodes[0].ask(
            "attach",
            task=_dump(
                _task("t-client", ("net-front", "10.40.1.20/24"), ("net-back", "10.41.1.20/24"))
            ),
            netns=str(netlab.NETNS_DIR / client),
        )
        assert names == {"nameserver": "10.40.1.1", "address": "10.40.1.20"}
        # The second network's subnet goes through its own gateway.
        routes = subprocess.run(
            ["ip", "-n", client, "route"], capture_output=True, text=True, check=True
        ).stdout
        assert "10.41.0.0/16 via 10.41.1.1 dev eth1" in routes
        assert "default via 10.40.1.1 dev eth0" in routes
        containers.serve(web1, "web1")
        containers.serve(web2, "web2")
        # A VIP carries every port, not only those the service publishes.
        containers.serve(web1, "web1-other", OTHER_PORT)
        containers.serve(web2, "web2-other", OTHER_PORT)
        # Isolation: a container only on back, on host 2; web1 is only on front.
        db = containers.make("c-db")
        nodes[1].ask("attach", task=_dump(_task("t-db", ("net-back", "10.41.2.30/24"))),
                     netns=str(netlab.NETNS_DIR / db))  # fmt: skip
        containers.serve(db, "db")
        assert _connect(client, "10.41.2.30") == ["db"]  # on both networks: reaches back
        assert _connect(web1, "10.41.2.30") is None  # front only: cut off
        assert _connect(db, "10.40.11.10") is None  # and the other way round
        assert _connect(client, "10.40.2.10") == ["web2"]  # front to front, across nodes
        assert _connect(client, "10.40.11.10") == ["web1"]  # via its own gateway, another block

        def run_client(target: str, port: int, *queries: str) -> dict[str, Any]:
            args = [sys.executable, "-c", CLIENT, "10.40.1.1", target, str(port), "24", *queries]
            done = subprocess.run(
                _nsenter(client, args), capture_output=True, text=True, timeout=30
            )
            assert done.returncode == 0, done.stderr
            result: dict[str, Any] = json.loads(done.stdout)
            return result

        through_vip = run_client(
            VIP, SERVICE_PORT, "web", "tasks.web", "web.front", "nothing.warren.internal"
        )
        assert through_vip["names"] == {
            "web": [VIP],
            "tasks.web": ["10.40.11.10", "10.40.2.10"],
            "web.front": [VIP],
            "nothing.warren.internal": [],
        }
        assert set(through_vip["answers"]) == {"web1", "web2"}
        assert set(run_client(VIP, OTHER_PORT)["answers"]) == {"web1-other", "web2-other"}
        # Host 2's published port (the routing mesh): forwarded to either endpoint.
        published = run_client(hosts[1].address, PUBLISHED)
        assert set(published["answers"]) == {"web1", "web2"}
        # Host 3 holds no block: it forwards to both through the mesh, on its own address.
        assert set(run_client(hosts[2].address, PUBLISHED)["answers"]) == {"web1", "web2"}
        # And on the node itself, at 127.0.0.1 (the quick start's curl).
        local = subprocess.run(
            _nsenter(
                hosts[1].netns, [sys.executable, "-c", CONNECT, "127.0.0.1", str(PUBLISHED), "12"]
            ),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert local.returncode == 0, local.stderr
        assert set(json.loads(local.stdout)) == {"web1", "web2"}

        # The agent of host 1 stops: its containers keep their traffic meanwhile, and
        # the next agent takes their interfaces over as they are.
        interfaces = _links(client)
        nodes[0].ask("stop")
        nodes[0].proc.wait(timeout=10)
        assert set(run_client(VIP, SERVICE_PORT)["answers"]) == {"web1", "web2"}
        nodes[0] = ControllerNode(hosts[0], "node-1", nodes[0].interface, tmp_path / "state-1")
        assert nodes[0].start() == keys[0]  # the key stays in the state directory
        running = [
            _task("t-web1", ("net-front", "10.40.11.10/24")),
            _task("t-client", ("net-front", "10.40.1.20/24"), ("net-back", "10.41.1.20/24")),
        ]
        # No view from the managers yet: it serves the one the last agent kept.
        assert nodes[0].ask("resync", tasks=_dump(running))["failures"] == {}
        assert _links(client) == interfaces
        again = run_client(VIP, SERVICE_PORT, "web")
        assert again["names"] == {"web": [VIP]}
        assert set(again["answers"]) == {"web1", "web2"}

        for node in nodes:
            node.ask("close")
        for node, host in zip(nodes, hosts, strict=True):
            assert _warren_state(host.netns, node.interface) == []
        # The containers' ends went with their veths.
        for netns in (web1, web2, client, db):
            links = subprocess.run(
                ["ip", "-n", netns, "-o", "link", "show"], capture_output=True, text=True
            ).stdout
            assert "eth0" not in links
    finally:
        for node in nodes:
            node.stop_process()
        containers.close()
        for pid in wireguard_go_pids([n.interface for n in nodes]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for node in nodes:  # a killed wireguard-go leaves its socket
            (SOCKET_DIR / f"{node.interface}.sock").unlink(missing_ok=True)
