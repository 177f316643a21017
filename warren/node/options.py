"""What a node process is told on its command line: one base every node shares,
and what only a manager (``cluster init``, ``manager join``) or only a worker
(``worker join``) adds.

A worker carries the manager fields too: they are the manager it runs once
promoted. Light on purpose: the CLI builds these without loading a daemon.
"""

from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warren.core.models import Availability


@dataclass
class NodeOptions:
    """Every node: its data dir, name, runtime, and the manager it runs (now or once promoted)."""

    data_dir: Path
    runtime: str = "containerd"
    node_name: str = field(default_factory=socket.gethostname)
    labels: dict[str, str] = field(default_factory=dict)
    containerd_socket: str = "/run/containerd/containerd.sock"
    containerd_namespace: str = "warren"
    insecure_registries: list[str] = field(default_factory=list)
    registry_config: Path | None = None
    advertise_addr: str = "127.0.0.1"
    listen_addr: str = "0.0.0.0"
    api_port: int = 2377
    rest_port: int = 2378
    metrics_port: int = 9090
    raft_port: int = 2379
    node_down_timeout: float = 15.0
    # UDP port of the node's WireGuard mesh endpoint (published in its node object).
    wireguard_port: int = 51820
    # kernel or sim; "": kernel with containerd, sim with the sim runtime.
    network_plane: str = ""

    @property
    def kernel_network_plane(self) -> bool:
        return (self.network_plane or self.runtime) != "sim"

    @property
    def api_address(self) -> str:
        return f"{self.advertise_addr}:{self.api_port}"

    @property
    def raft_address(self) -> str:
        return f"{self.advertise_addr}:{self.raft_port}"


@dataclass
class ManagerOptions(NodeOptions):
    availability: Availability = Availability.ACTIVE
    config_dir: Path = field(default_factory=lambda: Path.home() / ".warren")
    # `warren manager join`: join an existing cluster instead of creating one.
    join_token: str | None = None
    join_managers: list[str] = field(default_factory=list)
    # A node promoted by an admin: trade its certificate (in data_dir) for a
    # manager one at join_managers instead of joining with a token.
    promote: bool = False
    # `cluster init --force`: a new cluster may replace the admin credentials
    # another cluster left in config_dir.
    replace_admin_credentials: bool = False
    # `cluster init --default-subnet`: the default network's subnet ("": pick one).
    default_subnet: str = ""


@dataclass
class WorkerOptions(NodeOptions):
    # Keyword-only: they have no default, and follow the base's defaulted fields.
    token: str | None = field(kw_only=True)
    managers: list[str] = field(kw_only=True)


def _node_fields(options: NodeOptions) -> dict[str, Any]:
    """The base's fields, which both roles have: what carries over on a role change."""
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(NodeOptions)}


def manager_options(worker: WorkerOptions) -> ManagerOptions:
    """The manager a worker process runs once promoted: its data dir, ports and runtime."""
    return ManagerOptions(**_node_fields(worker))


def worker_options(manager: ManagerOptions) -> WorkerOptions:
    """The worker a demoted manager process runs from then on."""
    return WorkerOptions(token=None, managers=list(manager.join_managers), **_node_fields(manager))
