#!/usr/bin/env python3
"""Time to put a task's network namespace on the node's bridges (warren/agent/network/bridge.py).

In a throwaway "node" namespace (nothing in the root namespace), per run:
  - attach one task to one network (veth pair, peer made inside the task's
    namespace, address, MTU, up, default route), the network's bridge ensured;
  - attach one task to two networks;
  - attach again (an agent restart: finds everything in place, changes nothing);
  - detach.
The floor: the same steps for one network with `ip` commands (one process per step),
as a shell script or a CNI plugin would do them. Anchor: the pyroute2 spike in
../shared/FIELD-NOTES.md, about 40 ms for bridge + veth + address + route.

Needs root.  .venv/bin/python bench/bridge_attach.py [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path

from benchkit import print_table

from warren.agent.network.bridge import (
    NetworkAddress,
    NodeNetwork,
    PyrouteBridgeNetwork,
    TaskAttachment,
)

NETNS_DIR = Path("/run/netns")
SPIKE_MS = 40.0  # FIELD-NOTES: pyroute2 bridge + veth + address + route
NET_A = NodeNetwork("bencha", IPv4Network("10.32.5.0/24"), mtu=1400)
NET_B = NodeNetwork("benchb", IPv4Network("10.33.5.0/24"), mtu=1400)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Namespaces:
    def __init__(self) -> None:
        self.prefix = f"wbb-{os.getpid()}-{secrets.token_hex(3)}"
        self.made: list[str] = []

    def make(self, tag: str) -> Path:
        name = f"{self.prefix}-{tag}"
        self.made.append(name)
        ip("netns", "add", name)
        ip("-n", name, "link", "set", "lo", "up")
        return NETNS_DIR / name

    def close(self) -> None:
        for name in reversed(self.made):
            if (NETNS_DIR / name).exists():
                subprocess.run(["ip", "netns", "delete", name], capture_output=True)


async def timed(action: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await action()
    return (time.perf_counter() - started) * 1000


async def ip_floor(spaces: Namespaces, node: Path, number: int) -> float:
    """One network with `ip`, bridge already there: what a shell script costs."""
    task = spaces.make(f"ip{number}")
    host = f"wbbip{number}"
    started = time.perf_counter()
    ip("-n", node.name, "link", "add", host, "mtu", "1400", "type", "veth",
       "peer", "name", "eth0", "netns", task.name)  # fmt: skip
    ip("-n", node.name, "link", "set", host, "master", "wbbfloor", "up")
    ip("-n", task.name, "addr", "add", f"10.34.5.{10 + number}/24", "dev", "eth0")
    ip("-n", task.name, "link", "set", "eth0", "up")
    ip("-n", task.name, "route", "add", "default", "via", "10.34.5.1")
    return (time.perf_counter() - started) * 1000


async def run(runs: int) -> None:
    spaces = Namespaces()
    try:
        node = spaces.make("node")
        bridges = PyrouteBridgeNetwork(node)
        ensure_ms = await timed(lambda: bridges.ensure_network(NET_A))
        ip("-n", node.name, "link", "add", "wbbfloor", "type", "bridge")
        ip("-n", node.name, "addr", "add", "10.34.5.1/24", "dev", "wbbfloor")
        ip("-n", node.name, "link", "set", "wbbfloor", "up")
        one, two, again, detach, floor = [], [], [], [], []
        for number in range(runs):
            single = TaskAttachment(
                f"one{number}",
                spaces.make(f"one{number}"),
                (NetworkAddress(NET_A, IPv4Interface(f"10.32.5.{10 + number}/24")),),
            )
            double = TaskAttachment(
                f"two{number}",
                spaces.make(f"two{number}"),
                (
                    NetworkAddress(NET_A, IPv4Interface(f"10.32.5.{110 + number}/24")),
                    NetworkAddress(NET_B, IPv4Interface(f"10.33.5.{10 + number}/24")),
                ),
            )
            one.append(await timed(lambda t=single: bridges.attach(t)))  # type: ignore[misc]
            two.append(await timed(lambda t=double: bridges.attach(t)))  # type: ignore[misc]
            again.append(await timed(lambda t=single: bridges.attach(t)))  # type: ignore[misc]
            detach.append(await timed(lambda t=double: bridges.detach(t.task_id)))  # type: ignore[misc]
            floor.append(await ip_floor(spaces, node, number))
    finally:
        spaces.close()

    def median(values: list[float]) -> str:
        return f"{statistics.median(values):.1f}"

    print(f"{runs} runs; ensure_network (new bridge): {ensure_ms:.1f} ms")
    print_table(
        ["step", "median ms", "anchor ms"],
        [
            ["attach, one network", median(one), f"{SPIKE_MS:.0f} (FIELD-NOTES spike)"],
            ["attach, two networks", median(two), ""],
            ["attach again (no change)", median(again), ""],
            ["detach, two networks", median(detach), ""],
            ["same as 'one network' with ip", median(floor), "(5 ip processes, measured here)"],
        ],
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    asyncio.run(run(args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
