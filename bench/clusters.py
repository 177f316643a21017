"""Clusters of several managers for the benchmarks, started as a user would.

Managers come from ``tests/integration/harness.Cluster``: `warren cluster init`
and `warren manager join` through the CLI, sim runtime, on loopback, each in
its own process group. Whatever consensus backend those commands run is what
the benchmarks measure.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from harness import Cluster, wait_for

from warren.cli.client import WarrenClient
from warren.core.errors import WarrenError
from warren.security.tls import IdentityFiles

__all__ = [
    "Cluster",
    "client_of",
    "healthy",
    "leader_process",
    "manager_pid",
    "running_cluster",
    "wait_for",
]

EXTRA_MANAGERS = ("m2", "m3", "m4", "m5")


@contextlib.contextmanager
def running_cluster(
    root: Path, managers: int, node_down_timeout: float = 15.0
) -> Iterator[Cluster]:
    """``managers`` drained managers (they run no tasks), all reachable, one
    leading; every process stopped on leaving, and their logs printed to stderr
    if it was left by an error."""
    if not 1 <= managers <= 1 + len(EXTRA_MANAGERS):
        raise ValueError(f"1 to {1 + len(EXTRA_MANAGERS)} managers, not {managers}")
    cluster = Cluster(root, node_down_timeout=node_down_timeout)
    try:
        cluster.init_manager("--availability", "drain")
        for name in EXTRA_MANAGERS[: managers - 1]:
            cluster.join_manager(name, "--availability", "drain")
        with client_of(cluster) as any_manager:
            wait_for(lambda: healthy(any_manager, managers), 60, f"{managers} managers")
        yield cluster
    except BaseException:
        print(cluster.logs(), file=sys.stderr)
        raise
    finally:
        cluster.stop_all()


def client_of(cluster: Cluster, timeout: float = 5.0, linearizable: bool = False) -> WarrenClient:
    """A gRPC client with the admin identity that knows every manager."""
    addresses = cluster.manager_addresses.split(",")
    return WarrenClient(addresses, IdentityFiles(cluster.config_dir), timeout, linearizable)


def healthy(any_manager: WarrenClient, managers: int) -> bool:
    """One leader and every other manager reachable, as the managers report."""
    try:
        nodes = any_manager.list_nodes()
    except WarrenError:
        return False
    statuses = sorted(n.manager_status for n in nodes if n.manager_status)
    return statuses == ["leader", *["reachable"] * (managers - 1)]


def leader_process(cluster: Cluster) -> str | None:
    """The manager process that says it is the leader (a follower's view may lag)."""
    for name, ports in cluster.manager_ports.items():
        address = f"127.0.0.1:{ports['api']}"
        with WarrenClient([address], IdentityFiles(cluster.config_dir), 2.0) as one:
            try:
                if one.cluster_info().get("is_leader"):
                    return str(name)
            except WarrenError:
                continue
    return None


def manager_pid(cluster: Cluster, name: str = "manager") -> int:
    """The process ID of a manager's process (``manager`` is the first one)."""
    popen = cluster.processes[name].popen
    if popen is None:
        raise RuntimeError(f"manager {name} was never started")
    return int(popen.pid)
