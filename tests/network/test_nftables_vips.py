"""Service VIPs and published ports through real nftables, programmed by Warren's proxy.

Hosts are network namespaces (tests/chaos/netlab.py): a client, a node and a
remote host on the lab bridge; behind the node, on its container bridge, three
backend namespaces (the node's "containers", subnet 10.77.0.0/24). Every
backend runs a tiny TCP server answering its name and the peer address it
sees. The node's table is written through libnftables from this process (a
thread that entered the node's namespace). Needs root, ip and nft.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from chaos import netlab
from support import wait_for

from warren.agent.network.libnft import NftablesError
from warren.agent.network.nft_model import NftModel
from warren.agent.network.nftables import NftablesPacketFilter, ServiceProxy
from warren.agent.network.vip_rules import (
    Backend,
    DataPlane,
    PublishedPort,
    ServiceFrontend,
    plan,
)

CONTAINER_SUBNET = "10.77.0.0/24"
GATEWAY = "10.77.0.1"
VIP = "10.96.0.10"
SERVER_PORT = 8080

SERVER = """
import socket, sys
name, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((address, port))
server.listen(256)
print("ready", flush=True)
while True:
    conn, peer = server.accept()
    conn.sendall(f"{name} {peer[0]}".encode())
    conn.close()
"""

CLIENT = """
import json, socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
answers, errors = [], []
for _ in range(count):
    try:
        with socket.create_connection((host, port), timeout=2) as sock:
            answers.append(sock.recv(100).decode())
    except OSError as err:
        errors.append(type(err).__name__)
print(json.dumps({"answers": answers, "errors": errors}))
"""


def _sh(args: Sequence[str], timeout: float = 30) -> str:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


@dataclass
class Namespace:
    """A network namespace that is not a lab host (a backend behind the node)."""

    name: str
    netns: str
    address: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, args: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def run(self, args: Sequence[str], timeout: float = 60) -> str:
        command = ["timeout", str(timeout), "ip", "netns", "exec", self.netns, *args]
        return _sh(command, timeout=timeout + 10)

    def remove(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        path = netlab.NETNS_DIR / self.netns
        if path.exists():
            st = path.stat()
            for pid in netlab.pids_in_netns((st.st_dev, st.st_ino)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            subprocess.run(["ip", "netns", "delete", self.netns], check=False, timeout=30)


@dataclass
class VipLab:
    lab: netlab.Lab
    client: netlab.Host
    node: netlab.Host
    remote: netlab.Host
    backends: dict[str, Namespace]
    packet_filter: NftablesPacketFilter
    proxy: ServiceProxy
    logs: Path

    def backend(self, name: str, weight: int = 1) -> Backend:
        return Backend(self.backends[name].address, SERVER_PORT, weight)

    def connect(
        self, source: netlab.Host | Namespace, host: str, port: int, count: int
    ) -> dict[str, list[str]]:
        args = [sys.executable, "-c", CLIENT, host, str(port), str(count)]
        if isinstance(source, Namespace):
            out = source.run(args)
        else:
            out = source.run(args, timeout=120, check=True).stdout
        result: dict[str, list[str]] = json.loads(out)
        return result

    def names(
        self, source: netlab.Host | Namespace, host: str, port: int, count: int
    ) -> Counter[str]:
        result = self.connect(source, host, port, count)
        assert result["errors"] == [], result["errors"][:5]
        return Counter(answer.split()[0] for answer in result["answers"])


def _start_server(where: netlab.Host | Namespace, name: str, address: str, logs: Path) -> None:
    log = logs / f"{name}.log"
    where.spawn([sys.executable, "-c", SERVER, name, address, str(SERVER_PORT)], log)
    wait_for(lambda: log.exists() and "ready" in log.read_text(), 10, f"server {name}")


def _add_backend(lab: netlab.Lab, node: netlab.Host, name: str, address: str) -> Namespace:
    netns = f"{lab.prefix}-{name}"
    _sh(["ip", "netns", "add", netns])
    _sh(["ip", "-n", node.netns, "link", "add", f"c{name}", "type", "veth",
         "peer", "name", "eth0", "netns", netns])  # fmt: skip
    _sh(["ip", "-n", node.netns, "link", "set", f"c{name}", "master", "cbr0", "up"])
    _sh(["ip", "-n", netns, "addr", "add", f"{address}/24", "dev", "eth0"])
    _sh(["ip", "-n", netns, "link", "set", "lo", "up"])
    _sh(["ip", "-n", netns, "link", "set", "eth0", "up"])
    _sh(["ip", "-n", netns, "route", "add", "default", "via", GATEWAY])
    return Namespace(name, netns, address)


def _prepare_node(node: netlab.Host) -> None:
    # Bridged frames skip IP hooks here (as without br_netfilter): the same-subnet
    # masquerade must make hairpin work on its own.
    node.run(["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward; "
              "for f in /proc/sys/net/bridge/bridge-nf-call-*; do "
              '[ -e "$f" ] && echo 0 > "$f"; done; true'], check=True)  # fmt: skip
    _sh(["ip", "-n", node.netns, "link", "add", "cbr0", "type", "bridge"])
    _sh(["ip", "-n", node.netns, "addr", "add", f"{GATEWAY}/24", "dev", "cbr0"])
    _sh(["ip", "-n", node.netns, "link", "set", "cbr0", "up"])


@pytest.fixture(scope="module")
def vips(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VipLab]:
    reason = netlab.unavailable_reason()
    if reason is not None:
        if os.environ.get("WARREN_SKIP_CHAOS") == "1":
            pytest.skip(reason)
        pytest.fail(f"{reason}; set WARREN_SKIP_CHAOS=1 to skip")
    netlab.sweep_stale()
    logs = tmp_path_factory.mktemp("vips")
    backends: dict[str, Namespace] = {}
    packet_filter: NftablesPacketFilter | None = None
    lab = netlab.Lab()
    try:
        client, node, remote = (lab.add_host(name) for name in ("client", "node", "remote"))
        _prepare_node(node)
        client.run(["ip", "route", "add", "10.96.0.0/16", "via", node.address], check=True)
        # A node has a default route: packets to a VIP without endpoints reach the
        # forward hook (and its reject) instead of failing the route lookup.
        node.run(["ip", "route", "add", "default", "via", remote.address], check=True)
        for index, name in enumerate(("k1", "k2", "k3")):
            backends[name] = _add_backend(lab, node, name, f"10.77.0.{11 + index}")
        for backend in backends.values():
            _start_server(backend, backend.name, backend.address, logs)
        _start_server(remote, "remote", remote.address, logs)
        packet_filter = NftablesPacketFilter(netlab.NETNS_DIR / node.netns)
        proxy = ServiceProxy(packet_filter)
        yield VipLab(lab, client, node, remote, backends, packet_filter, proxy, logs)
        proxy.close()
        assert "warren" not in node.run(["nft", "list", "tables"], check=True).stdout
    finally:
        if packet_filter is not None:
            packet_filter.close()
        for backend in backends.values():
            backend.remove()
        lab.close()
        assert lab.leftovers() == []
        assert not any((netlab.NETNS_DIR / b.netns).exists() for b in backends.values())


def _service(vips: VipLab, *backends: Backend) -> DataPlane:
    return DataPlane(
        (ServiceFrontend(VIP, "tcp", 80, backends),), container_subnets=(CONTAINER_SUBNET,)
    )


def test_300_connections_spread_over_three_backends(vips: VipLab) -> None:
    vips.proxy.sync(_service(vips, *(vips.backend(n) for n in ("k1", "k2", "k3"))))
    names = vips.names(vips.client, VIP, 80, 300)
    assert set(names) == {"k1", "k2", "k3"}
    assert all(60 <= count <= 140 for count in names.values()), names


def test_weights_90_10_split_proportionally(vips: VipLab) -> None:
    vips.proxy.sync(_service(vips, vips.backend("k1", 90), vips.backend("k2", 10)))
    names = vips.names(vips.client, VIP, 80, 300)
    # Binomial(300, 0.9): mean 270, standard deviation 5.2.
    assert set(names) == {"k1", "k2"}
    assert 245 <= names["k1"] <= 292, names


def test_a_removed_backend_gets_no_new_connection(vips: VipLab) -> None:
    vips.proxy.sync(_service(vips, *(vips.backend(n) for n in ("k1", "k2", "k3"))))
    assert vips.names(vips.client, VIP, 80, 30)["k3"] > 0
    transaction = vips.proxy.sync(_service(vips, vips.backend("k1"), vips.backend("k2")))
    # 3 slots become 2: pick-svc-2 added (chain and 3 rules), the VIP's element moved
    # to it (delete, add), k3's slot deleted, pick-svc-3 flushed and deleted.
    assert len(transaction) == 9
    names = vips.names(vips.client, VIP, 80, 150)
    assert names["k3"] == 0 and names["k1"] > 0 and names["k2"] > 0, names


def test_hairpin_a_backend_reaches_its_own_service(vips: VipLab) -> None:
    vips.proxy.sync(_service(vips, *(vips.backend(n) for n in ("k1", "k2", "k3"))))
    names = vips.names(vips.backends["k1"], VIP, 80, 60)
    # P(never landing on itself in 60 tries) = (2/3)^60, about 3e-11.
    assert names["k1"] > 0 and names["k2"] + names["k3"] > 0, names


def test_ingress_published_port_forwards_anywhere(vips: VipLab) -> None:
    remote = Backend(vips.remote.address, SERVER_PORT)
    published = PublishedPort(30080, "tcp", "ingress", (vips.backend("k1"), remote))
    vips.proxy.sync(DataPlane(published=(published,), container_subnets=(CONTAINER_SUBNET,)))
    result = vips.connect(vips.client, vips.node.address, 30080, 60)
    assert result["errors"] == []
    seen = {tuple(answer.split()) for answer in result["answers"]}
    # Both the local container and the remote host answer, each seeing this node
    # (masqueraded), so their replies come back through it.
    assert {name for name, _ in seen} == {"k1", "remote"}
    assert {peer for _, peer in seen} == {GATEWAY, vips.node.address}


def test_host_published_port_keeps_the_client_address(vips: VipLab) -> None:
    published = PublishedPort(30090, "tcp", "host", (vips.backend("k2"),))
    vips.proxy.sync(DataPlane(published=(published,), container_subnets=(CONTAINER_SUBNET,)))
    result = vips.connect(vips.client, vips.node.address, 30090, 10)
    assert result["errors"] == []
    assert set(result["answers"]) == {f"k2 {vips.client.address}"}


def test_a_service_without_endpoints_refuses_at_once(vips: VipLab) -> None:
    vips.proxy.sync(_service(vips, vips.backend("k1", 0)))
    started = time.monotonic()
    result = vips.connect(vips.client, VIP, 80, 5)
    assert result["errors"] == ["ConnectionRefusedError"] * 5
    assert time.monotonic() - started < 5


def test_the_kernel_accepts_every_planned_transaction(vips: VipLab) -> None:
    """Random steps through the real kernel: each transaction is accepted and the
    kernel's table names what the model's does."""
    rng = random.Random(9)
    model = NftModel()
    vips.proxy.close()
    assert not vips.packet_filter.table_exists()
    current: DataPlane | None = None
    for _ in range(25):
        desired = _random_plane(rng)
        transaction = plan(current, desired)
        vips.packet_filter.apply(transaction)
        model.apply(transaction)
        table = model.table("ip", "warren")
        assert table is not None
        assert _kernel_view(vips.packet_filter.list_table()) == (
            set(table.chains),
            {name: len(elements) for name, elements in table.maps.items()},
        )
        current = desired
    assert vips.packet_filter.table_exists()
    vips.proxy.programmed = current
    # A chain that is not there ("missing" would be a keyword of nft's syntax, in
    # which the packet filter writes).
    with pytest.raises(NftablesError, match="No such file or directory"):
        vips.packet_filter.apply(({"delete": {"chain": {"family": "ip", "table": "warren",
                                                        "name": "gone-chain"}}},))  # fmt: skip


def _random_plane(rng: random.Random) -> DataPlane:
    def backends() -> tuple[Backend, ...]:
        picked = rng.sample(range(2, 30), rng.randint(0, 4))
        return tuple(
            Backend(f"10.77.0.{i}", rng.choice([80, 8080]), rng.randint(0, 3)) for i in picked
        )

    services = {
        (vip, proto, port): ServiceFrontend(vip, proto, port, backends())  # type: ignore[arg-type]
        for vip, proto, port in (
            (f"10.96.0.{rng.randint(1, 6)}", rng.choice(["tcp", "udp"]), rng.choice([53, 80]))
            for _ in range(rng.randint(0, 6))
        )
    }
    published = {
        port: PublishedPort(port, "tcp", rng.choice(["ingress", "host"]), backends())
        for port in rng.sample([30000, 30001, 30002], rng.randint(0, 3))
    }
    subnets = tuple(
        rng.sample([CONTAINER_SUBNET, "10.78.0.0/24", "10.80.0.0/16"], rng.randint(0, 3))
    )
    return DataPlane(tuple(services.values()), tuple(published.values()), subnets)


def _kernel_view(listing: dict[str, object]) -> tuple[set[str], dict[str, int]]:
    chains: set[str] = set()
    maps: dict[str, int] = {}
    items = listing.get("nftables", [])
    assert isinstance(items, list)
    for item in items:
        if "chain" in item:
            chains.add(item["chain"]["name"])
        elif "map" in item:
            maps[item["map"]["name"]] = len(item["map"].get("elem", []))
    return chains, maps


def test_the_node_itself_reaches_vips_and_published_ports(vips: VipLab) -> None:
    published = PublishedPort(30080, "tcp", "ingress", (vips.backend("k1"),))
    plane = _service(vips, vips.backend("k2"))
    vips.proxy.sync(DataPlane(plane.services, (published,), plane.container_subnets))
    assert vips.names(vips.node, VIP, 80, 5) == {"k2": 5}
    assert vips.names(vips.node, vips.node.address, 30080, 5) == {"k1": 5}
