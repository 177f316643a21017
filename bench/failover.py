#!/usr/bin/env python3
"""Leader failover: 3 managers on loopback, SIGKILL the leader N times.

For each kill: the time from the SIGKILL to the first write accepted by the
cluster (a scale of one service through a client that knows all three
managers), then the old leader is restarted and rejoins before the next kill.
Prints min/median/max beside Docker Swarm's median on this kind of machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from harness import Cluster, wait_for

from warren.cli.client import WarrenClient
from warren.core.errors import WarrenError
from warren.security.tls import IdentityFiles

SWARM_MEDIAN_SECONDS = 12.4


def leader_process(c: Cluster) -> str:
    """The manager process that says it is the leader (a follower's view may lag)."""
    for name, ports in c.manager_ports.items():
        one = WarrenClient([f"127.0.0.1:{ports['api']}"], IdentityFiles(c.config_dir), 2.0)
        try:
            if one.cluster_info().get("is_leader"):
                return name
        except WarrenError:
            continue
    raise RuntimeError("no manager says it is the leader")


def leader_process_or_none(c: Cluster) -> str | None:
    try:
        return leader_process(c)
    except RuntimeError:
        return None


def first_accepted_write(client: WarrenClient, replicas: int, deadline: float) -> float:
    """Seconds until a write commits; retries as fast as the client fails."""
    started = time.monotonic()
    while time.monotonic() < deadline:
        try:
            client.scale_service("probe", replicas)
            return time.monotonic() - started
        except WarrenError:
            time.sleep(0.01)
    raise RuntimeError("no write accepted before the deadline")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="warren-failover-") as tmp:
        c = Cluster(Path(tmp), node_down_timeout=15.0)
        try:
            c.init_manager("--availability", "drain")
            c.join_manager("m2", "--availability", "drain")
            c.join_manager("m3", "--availability", "drain")
            c.cli("service", "create", "probe", "--image", "busybox", "--replicas", "0")
            addresses = c.manager_addresses.split(",")
            client = WarrenClient(addresses, IdentityFiles(c.config_dir), timeout=1.0)
            times: list[float] = []
            for kill in range(args.kills):
                name = wait_for(lambda: leader_process_or_none(c), 30, "a leader")
                c.processes[name].kill()
                elapsed = first_accepted_write(client, kill % 3, time.monotonic() + 30)
                times.append(elapsed)
                print(f"kill {kill + 1:2d}: leader {name:8s} write accepted after {elapsed:.3f} s")
                c.restart_manager(name)
                wait_for(
                    lambda: (
                        sorted(n.manager_status for n in client.list_nodes())
                        == ["leader", "reachable", "reachable"]
                    ),
                    60,
                    "three managers",
                )
        finally:
            c.stop_all()
    print()
    print(f"Leader failover, {len(times)} SIGKILLs of the leader of 3 managers (loopback):")
    median = statistics.median(times)
    print(f"  min {min(times):.3f} s   median {median:.3f} s   max {max(times):.3f} s")
    print(f"  Docker Swarm on this kind of machine: median {SWARM_MEDIAN_SECONDS} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
