#!/usr/bin/env python3
"""nftables VIPs (warren/agent/network/nftables.py): endpoint-change cost and first-connection
latency as the number of services grows.

Two throwaway namespaces (nothing in the root namespace): a "node" holding the
table and a TCP server on two of its addresses, and a "client" routing the VIP
range through the node over a veth pair. Every service has two backends (the
node's two addresses); its VIP is 10.96.x.y port 80.

  - first sync: building the table of N services (no table before: in steps of
    BUILD_STEP services, ServiceProxy.sync);
  - endpoint change: one service's backend replaced (ServiceProxy.sync: plan in
    Python, then one libnftables transaction), at 10, 1,000 and 10,000 services,
    beside the previous layout's figures (a chain per service and backend);
  - first connection: connect() through a VIP from the client, each a new
    connection to a random service, at 10 and 10,000 services, beside a direct
    connect to the backend (no VIP).

Anchors: ../shared/FIELD-NOTES.md (libnftables JSON replaced a map's elements in
about 1 ms; `nft` as a subprocess costs about 3 ms a call) and Kubernetes' nftables
kube-proxy (KEP-3866: first-packet latency at 30,000 services stays below the iptables
mode's best case, i.e. flat in the number of services).

Needs root.  .venv/bin/python bench/nft_sync.py [--runs N] [--connects N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchkit import print_table

from warren.agent.network import vip_rules
from warren.agent.network.nftables import NftablesPacketFilter, ServiceProxy
from warren.agent.network.vip_rules import Backend, DataPlane, ServiceFrontend

NETNS_DIR = Path("/run/netns")
SIZES = (10, 1_000, 10_000)
LATENCY_SIZES = (10, 10_000)
MAP_REPLACE_MS = 1.0  # FIELD-NOTES: libnftables JSON, replacing a map's elements
# The previous layout (a chain per service and per backend, an anonymous vmap per
# service; commits 0ae1106..cedadb0): one endpoint change's apply ms, this machine.
PREVIOUS_APPLY_MS = {10: "0.54", 1_000: "15", 10_000: "250"}
NFT_CALL_MS = 3.0  # FIELD-NOTES: one `nft` subprocess call
NODE, BACKEND_A, BACKEND_B, CLIENT = "10.250.0.1", "10.250.0.3", "10.250.0.4", "10.250.0.2"
PORT = 8080

SERVER = f"""
import socket
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", {PORT}))
server.listen(1024)
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    conn.close()
"""

CLIENT_SCRIPT = """
import json, socket, sys, time
targets = json.loads(sys.argv[1])
times = []
for host, port in targets:
    sock = socket.socket()
    sock.settimeout(2)
    started = time.perf_counter()
    sock.connect((host, port))
    times.append((time.perf_counter() - started) * 1000)
    sock.close()
print(json.dumps(times))
"""


def sh(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True, timeout=60)


class Lab:
    def __init__(self) -> None:
        tag = f"wnft-{os.getpid()}"
        self.node, self.client = f"{tag}-node", f"{tag}-client"
        self.server: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Lab:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        for netns in (self.node, self.client):
            sh("ip", "netns", "add", netns)
            sh("ip", "-n", netns, "link", "set", "lo", "up")
        sh("ip", "-n", self.node, "link", "add", "eth0", "type", "veth",
           "peer", "name", "eth0", "netns", self.client)  # fmt: skip
        for address in (NODE, BACKEND_A, BACKEND_B):
            sh("ip", "-n", self.node, "addr", "add", f"{address}/24", "dev", "eth0")
        sh("ip", "-n", self.client, "addr", "add", f"{CLIENT}/24", "dev", "eth0")
        for netns in (self.node, self.client):
            sh("ip", "-n", netns, "link", "set", "eth0", "up")
        sh("ip", "-n", self.client, "route", "add", "10.96.0.0/16", "via", NODE)
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.node, sys.executable, "-c", SERVER],
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        assert self.server.stdout is not None
        if self.server.stdout.readline().strip() != b"ready":
            raise RuntimeError("the backend server did not start")

    def connect_ms(self, targets: list[tuple[str, int]]) -> list[float]:
        out = subprocess.run(
            ["ip", "netns", "exec", self.client, sys.executable, "-c", CLIENT_SCRIPT,
             json.dumps(targets)],
            check=True, capture_output=True, text=True, timeout=300,
        ).stdout  # fmt: skip
        times: list[float] = json.loads(out)
        return times

    def close(self) -> None:
        if self.server is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.server.pid, signal.SIGKILL)
            self.server.wait(timeout=10)
        for netns in (self.node, self.client):
            if (NETNS_DIR / netns).exists():
                subprocess.run(["ip", "netns", "delete", netns], check=False, timeout=60)


def vip(index: int) -> str:
    return f"10.96.{index // 250}.{index % 250 + 1}"


def plane(count: int) -> DataPlane:
    services = tuple(
        ServiceFrontend(vip(i), "tcp", 80, (Backend(NODE, PORT), Backend(BACKEND_A, PORT)))
        for i in range(count)
    )
    return DataPlane(services, container_subnets=("10.250.0.0/24",))


def with_backend(current: DataPlane, index: int, second: str) -> DataPlane:
    """current with one service's second backend replaced (the others the same objects,
    as an agent keeps them between syncs)."""
    services = list(current.services)
    services[index] = ServiceFrontend(
        vip(index), "tcp", 80, (Backend(NODE, PORT), Backend(second, PORT))
    )
    return DataPlane(tuple(services), container_subnets=current.container_subnets)


def timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return (time.perf_counter() - started) * 1000


def endpoint_changes(proxy: ServiceProxy, count: int, runs: int) -> tuple[float, float, float]:
    """First sync ms, then median plan ms and apply ms of one endpoint change."""
    proxy.close()
    first = timed(lambda: proxy.sync(plane(count)))
    rng = random.Random(count)
    plans, applies = [], []
    for _ in range(runs):
        current = proxy.programmed
        assert current is not None
        index = rng.randrange(count)
        was = current.services[index].backends[1].address
        desired = with_backend(current, index, BACKEND_B if was == BACKEND_A else BACKEND_A)
        # What ServiceProxy.sync does, timed in its two halves.
        started = time.perf_counter()
        transaction = vip_rules.plan(current, desired)
        planned = time.perf_counter()
        proxy.packet_filter.apply(transaction)
        applied = time.perf_counter()
        proxy.programmed = desired
        plans.append((planned - started) * 1000)
        applies.append((applied - planned) * 1000)
    return first, statistics.median(plans), statistics.median(applies)


def latency(lab: Lab, count: int, connects: int) -> tuple[list[float], list[float]]:
    """connect() ms through random VIPs of the programmed table, and straight to the backend."""
    rng = random.Random(7)
    through_vips = lab.connect_ms([(vip(rng.randrange(count)), 80) for _ in range(connects)])
    return through_vips, lab.connect_ms([(NODE, PORT)] * connects)


def p99(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.99) - 1)]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30, help="endpoint changes per size")
    parser.add_argument("--connects", type=int, default=300, help="connections per size")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    load = os.getloadavg()[0]
    changes: dict[int, tuple[float, float, float]] = {}
    latencies: dict[int, tuple[list[float], list[float]]] = {}
    with Lab() as lab:
        packet_filter = NftablesPacketFilter(NETNS_DIR / lab.node)
        try:
            proxy = ServiceProxy(packet_filter)
            for count in SIZES:
                changes[count] = endpoint_changes(proxy, count, args.runs)
                if count in LATENCY_SIZES:
                    latencies[count] = latency(lab, count, args.connects)
            proxy.close()
        finally:
            packet_filter.close()
    print(f"1-minute load average at start: {load:.1f} (2 cores; figures are noisy above ~1)")
    print(f"endpoint change: {args.runs} runs per size (one service's backend replaced)")
    print_table(
        ["services", "first sync ms", "plan ms", "apply ms", "previous layout apply ms",
         "anchor ms"],
        [
            [f"{n:,}", f"{first:.0f}", f"{plan_ms:.2f}", f"{apply_ms:.2f}",
             PREVIOUS_APPLY_MS.get(n, "-"),
             f"~{MAP_REPLACE_MS:.0f} (libnftables map replace); {NFT_CALL_MS:.0f} per nft call"]
            for n, (first, plan_ms, apply_ms) in changes.items()
        ],
    )  # fmt: skip
    print(
        "apply: libnftables 1.0.6 (Debian 12) reads every chain and set of the table before "
        "adding or deleting a rule or an element; the layout has no chain or set per service "
        "(an endpoint change is a few elements of a hash map), so that read stays small"
    )
    print()
    print(f"first connection (connect() through a VIP, {args.connects} new connections each)")
    rows = []
    for count, (through_vips, direct) in latencies.items():
        rows += [
            [f"VIP, {count:,} services", f"{statistics.median(through_vips):.3f}",
             f"{p99(through_vips):.3f}"],
            ["  direct to the backend", f"{statistics.median(direct):.3f}", f"{p99(direct):.3f}"],
        ]  # fmt: skip
    print_table(["path", "median ms", "p99 ms"], rows)
    ratio = statistics.median(latencies[LATENCY_SIZES[-1]][0]) / statistics.median(
        latencies[LATENCY_SIZES[0]][0]
    )
    print(
        f"10,000 vs 10 services: median x{ratio:.2f}; anchor: kube-proxy's nftables mode stays "
        "flat up to 30,000 services (KEP-3866)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
