"""Real Warren processes on loopback for integration tests.

Every process is a ``support.Process``: its own session (process group), so
teardown can kill it and anything it started, also when a test fails.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The benchmarks import this file with only tests/integration on the path.
if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from support import Process, wait_for

__all__ = ["WARREN", "Cluster", "Process", "free_port", "wait_for"]

WARREN = [sys.executable, "-m", "warren"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    root: Path
    node_down_timeout: float = 3.0
    # Runtime flags of every node; "{node}" in them becomes the node's name.
    runtime_args: list[str] = field(default_factory=lambda: ["--runtime", "sim"])
    processes: dict[str, Process] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    # Ports of every manager by process name ("manager" is the first one).
    manager_ports: dict[str, dict[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.config_dir = self.root / "config"
        self.env = dict(os.environ, WARREN_CONFIG_DIR=str(self.config_dir), GRPC_VERBOSITY="ERROR")
        self.env.pop("WARREN_MANAGER", None)

    @property
    def manager_address(self) -> str:
        return f"127.0.0.1:{self.ports['api']}"

    @property
    def manager_addresses(self) -> str:
        """Every manager, for the CLI to fail over (the first manager first)."""
        return ",".join(f"127.0.0.1:{ports['api']}" for ports in self.manager_ports.values())

    # -- processes ---------------------------------------------------------------

    def _manager_args(self, name: str, node_name: str) -> list[str]:
        ports = self.manager_ports.setdefault(
            name, {p: free_port() for p in ("api", "rest", "metrics", "raft")}
        )
        return [
            "--data-dir", str(self.root / name),
            "--advertise-addr", "127.0.0.1",
            "--listen-addr", "127.0.0.1",
            "--api-port", str(ports["api"]),
            "--rest-port", str(ports["rest"]),
            "--metrics-port", str(ports["metrics"]),
            "--raft-port", str(ports["raft"]),
            *self._runtime_args(node_name),
            "--node-down-timeout", str(self.node_down_timeout),
            "--node-name", node_name,
        ]  # fmt: skip

    def init_manager(self, *extra: str) -> Process:
        args = [*WARREN, "cluster", "init", *self._manager_args("manager", "manager-1"), *extra]
        self.ports = self.manager_ports["manager"]
        process = self._spawn("manager", args)
        wait_for(lambda: self._api_ready(process), 30, "the manager's API")
        return process

    def join_manager(self, name: str, *extra: str) -> Process:
        """Another manager; its process name and node name are both ``name``."""
        token = self.join_token("manager")
        args = [*WARREN, "manager", "join", "--token", token, "--manager", self.manager_address,
                *self._manager_args(name, name), *extra]  # fmt: skip
        process = self._spawn(name, args)
        wait_for(lambda: self.node_status(name) == "ready", 60, f"manager {name} to be ready")
        return process

    def restart_manager(self, name: str = "manager") -> Process:
        process = self.processes[name]
        process.start()
        wait_for(lambda: self._api_ready(process, name), 60, f"the restarted {name}'s API")
        return process

    def join_worker(self, name: str, *extra: str, token: str | None = None) -> Process:
        token = token or self.join_token("worker")
        args = [
            *WARREN, "worker", "join",
            "--token", token,
            "--manager", self.manager_address,
            "--data-dir", str(self.root / name),
            *self._runtime_args(name),
            "--node-name", name,
            *extra,
        ]  # fmt: skip
        process = self._spawn(name, args)
        wait_for(lambda: self.node_status(name) == "ready", 30, f"worker {name} to be ready")
        return process

    def _runtime_args(self, node: str) -> list[str]:
        return [arg.replace("{node}", node) for arg in self.runtime_args]

    def _spawn(self, name: str, args: list[str]) -> Process:
        process = Process(name, args, self.root / f"{name}.log", self.env)
        self.processes[name] = process
        process.start()
        return process

    def _api_ready(self, process: Process, name: str = "manager") -> bool:
        if not process.alive:
            raise AssertionError(f"{process.name} exited:\n{process.tail()}")
        if not (self.config_dir / "config.json").exists():
            return False
        return self.cli_at(name, "cluster", "info", check=False).returncode == 0

    def stop_all(self) -> None:
        for process in self.processes.values():
            process.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.tail()}" for p in self.processes.values())

    # -- the CLI -----------------------------------------------------------------

    def cli_at(
        self, manager: str, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """The CLI against one manager only (``manager`` is its process name)."""
        address = f"127.0.0.1:{self.manager_ports[manager]['api']}"
        return self.cli(*args, check=check, managers=address)

    def cli(
        self, *args: str, check: bool = True, timeout: float = 60, managers: str = ""
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*WARREN, "--manager", managers or self.manager_addresses, *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"warren {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "-o", "json").stdout)

    def json_at(self, manager: str, *args: str) -> Any:
        return json.loads(self.cli_at(manager, *args, "-o", "json").stdout)

    def join_token(self, role: str) -> str:
        return self.cli("cluster", "join-token", role, "-q").stdout.strip()

    def nodes(self) -> list[dict[str, Any]]:
        return list(self.json("node", "ls"))

    def node_status(self, hostname: str) -> str | None:
        for node in self.nodes():
            if node["hostname"] == hostname:
                return str(node["status"])
        return None

    def node_id(self, hostname: str) -> str:
        return next(n["id"] for n in self.nodes() if n["hostname"] == hostname)

    def tasks(self, service: str) -> list[dict[str, Any]]:
        return list(self.json("service", "ps", service))

    def running(self, service: str) -> list[dict[str, Any]]:
        return [
            t
            for t in self.tasks(service)
            if t["desired_state"] == "running" and t["status"]["state"] == "running"
        ]

    def placement(self, service: str) -> dict[str, int]:
        """Running tasks per node hostname."""
        hostnames = {n["id"]: n["hostname"] for n in self.nodes()}
        counts: dict[str, int] = {}
        for task in self.running(service):
            host = hostnames.get(task["node_id"], task["node_id"])
            counts[host] = counts.get(host, 0) + 1
        return counts
