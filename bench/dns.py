#!/usr/bin/env python3
"""DNS queries/s answered by the node's embedded server, asked from a task's namespace.

Two lab hosts (network namespaces on a bridge): "node" runs the server
(tests/network/dns_node.py: warren.agent.network.dns on its lab address, port 53,
a view of 100 services, a fake upstream on its loopback); "client" keeps N UDP
queries in flight (a raw-socket asyncio loop: a reply sends the next query; a
query unanswered for 1 s counts as lost and is replaced). Each case runs
``--seconds`` after a 1 s warm-up; the answered rate is printed beside CoreDNS's
published 33.7k/s on 2 vCPU (FIELD-NOTES "Anchors"), with the server's CPU use
(the machine is shared: the rate per server CPU is the steadier figure). Needs root.

    .venv/bin/python bench/dns.py [--quick] [--seconds S]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from benchkit import CpuMeter, print_table
from chaos import netlab
from network.dns_node import write_config
from support import cpu_seconds

from warren.agent.network.dns_view import (
    DnsClient,
    DnsNetwork,
    DnsService,
    DnsView,
    ServiceOnNetwork,
)

ANCHOR_COREDNS = 33_700  # queries/s on 2 vCPU, CoreDNS's scaling guide
SERVICES = 100
REPO = Path(__file__).resolve().parents[1]
DNS_NODE = REPO / "tests" / "network" / "dns_node.py"

# argv: server, name, in flight, warm-up s, measured s. Prints one JSON line.
LOAD = r"""
import asyncio, json, random, resource, socket, sys, time

server, name, in_flight, warmup, seconds = (
    sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))
question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0\0\1\0\1"

class Load(asyncio.DatagramProtocol):
    def __init__(self):
        self.pending = {}  # query id -> sent at
        self.answered = self.failed = self.lost = 0
        self.next_id = random.randrange(65536)

    def connection_made(self, transport):
        self.transport = transport
        # SO_RCVBUFFORCE (root): room for every reply in flight.
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, 33, 4 << 20)
        for _ in range(in_flight):
            self.send()

    def send(self):
        self.next_id = (self.next_id + 1) % 65536
        while self.next_id in self.pending:
            self.next_id = (self.next_id + 1) % 65536
        self.pending[self.next_id] = time.monotonic()
        self.transport.sendto(self.next_id.to_bytes(2, "big") + b"\1\0\0\1\0\0\0\0\0\0" + question)

    def datagram_received(self, data, addr):
        if self.pending.pop(int.from_bytes(data[:2], "big"), None) is None:
            return
        if data[3] & 0x0F == 0:
            self.answered += 1
        else:
            self.failed += 1
        self.send()

    def expire(self):
        now = time.monotonic()
        for qid, sent in list(self.pending.items()):
            if now - sent > 1.0:
                del self.pending[qid]
                self.lost += 1
                self.send()

async def main():
    loop = asyncio.get_running_loop()
    _, load = await loop.create_datagram_endpoint(Load, remote_addr=(server, 53))
    await asyncio.sleep(warmup)
    start = (time.monotonic(), load.answered, load.failed, load.lost)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    end = start[0] + seconds
    while time.monotonic() < end:
        await asyncio.sleep(0.2)
        load.expire()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.monotonic() - start[0]
    cpu = (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / wall
    print(json.dumps({"answered": (load.answered - start[1]) / wall,
                      "failed": load.failed - start[2], "lost": load.lost - start[3],
                      "client_cpu": cpu}))

asyncio.run(main())
"""


@dataclass(frozen=True)
class Case:
    label: str
    name: str
    in_flight: int


CASES = (
    Case("web (VIP)", "web", 64),
    Case("web (VIP)", "web", 256),
    Case("tasks.web (3 tasks)", "tasks.web", 64),
    Case("example.test (forwarded)", "example.test", 64),
)


def bench_view(client_address: str) -> DnsView:
    services = [DnsService("web", (ServiceOnNetwork("nf", "10.10.0.2", tuple(
        f"10.10.1.{i}" for i in range(1, 4))),))]  # fmt: skip
    services += [
        DnsService(f"svc{i}", (ServiceOnNetwork("nf", f"10.10.2.{i}", (f"10.10.3.{i}",)),))
        for i in range(1, SERVICES)
    ]
    return DnsView(
        networks=(DnsNetwork("nf", "front"),),
        services=tuple(services),
        clients=(DnsClient((client_address,), frozenset({"nf"})),),
    )


def run(seconds: float) -> list[list[object]]:
    rows: list[list[object]] = []
    with netlab.Lab() as lab, tempfile.TemporaryDirectory() as tmp:
        node, client = lab.add_host("node"), lab.add_host("client")
        config = write_config(Path(tmp) / "dns.json", bench_view(client.address), [node.address])
        log = Path(tmp) / "dns-node.log"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        server = node.spawn([sys.executable, str(DNS_NODE), str(config)], log, env=env)
        deadline = time.monotonic() + 20
        while "ready" not in log.read_text():
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"DNS node did not start: {log.read_text()}")
            time.sleep(0.05)
        for case in CASES:
            meter = CpuMeter([server.pid])
            server_cpu_before = cpu_seconds(server.pid)
            started = time.monotonic()
            done = client.run(
                [sys.executable, "-c", LOAD, node.address, case.name, str(case.in_flight),
                 "1", str(seconds)],
                timeout=seconds + 60,
            )  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(f"load client failed: {done.stderr}")
            result = json.loads(done.stdout)
            server_cpu = (cpu_seconds(server.pid) - server_cpu_before) / (
                time.monotonic() - started
            )
            rows.append(
                [
                    case.label,
                    case.in_flight,
                    f"{result['answered']:,.0f}",
                    f"{ANCHOR_COREDNS:,}",
                    f"{result['answered'] / ANCHOR_COREDNS:.0%}",
                    result["failed"],
                    result["lost"],
                    f"{server_cpu:.2f}",
                    f"{result['answered'] / max(server_cpu, 1e-9):,.0f}",
                    f"{result['client_cpu']:.2f}",
                ]
            )
            print(f"{case.label}, {case.in_flight} in flight: {result}", flush=True)
            print(f"  {meter.note()}", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s per case")
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    seconds = 3.0 if args.quick else args.seconds
    reason = netlab.unavailable_reason()
    if reason is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    rows = run(seconds)
    print()
    print(f"DNS queries/s answered, UDP, from a client namespace over a bridge, {seconds:g} s each")
    print_table(
        ["query", "in flight", "answered/s", "anchor/s", "vs anchor", "errors", "lost",
         "server CPUs", "per server CPU", "client CPUs"],
        rows,
    )  # fmt: skip
    print(
        "anchor: CoreDNS, 33.7k queries/s on 2 vCPU (its scaling guide). Warren's server is "
        "one Python process (at most one core) and the load client shares the machine; "
        "'per server CPU' is answered/s divided by the server's CPU use, what one whole "
        "core would answer. The forwarded case includes the fake upstream, which runs in "
        "the server's process."
    )
    print(f"1-minute load average at the end: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
