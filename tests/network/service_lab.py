"""A cluster serving real containers' traffic across lab hosts.

One manager (m1, drained: it runs no task but serves the routing mesh like
any node) and workers w1, w2, each a netlab host running a Warren node on the
test containerd (one containerd in the root namespace; its socket reaches
every host, each node has its own containerd namespace), plus a "client" host
that runs the CLI and plays an outside client. Nothing in the root namespace
can reach the lab's addresses.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chaos.netlab import Host, Lab
from support import Process, wait_for

WARREN = [sys.executable, "-m", "warren"]
API_PORT, REST_PORT, METRICS_PORT, RAFT_PORT = 2377, 2378, 9090, 2379
# `ip netns exec` gives its command a private mount namespace, where the named
# network namespaces a node makes for its containers would be mounted out of
# containerd's sight: nodes run in the lab's network namespace but our mounts.
SHARED_MOUNTS = ["nsenter", f"--mount=/proc/{os.getpid()}/ns/mnt", "--"]


class ServiceLab:
    def __init__(
        self, lab: Lab, root: Path, socket: Path, namespace_prefix: str, workers: Sequence[str]
    ) -> None:
        self.lab = lab
        self.root = root
        self.socket = socket
        self.prefix = namespace_prefix
        self.config_dir = root / "config"
        self.env = dict(os.environ, WARREN_CONFIG_DIR=str(self.config_dir), GRPC_VERBOSITY="ERROR")
        self.env.pop("WARREN_MANAGER", None)
        self.client = lab.add_host("client")
        self.hosts: dict[str, Host] = {"m1": lab.add_host("m1")}
        self.hosts.update((name, lab.add_host(name)) for name in workers)
        self.daemons: dict[str, Process] = {}

    @property
    def manager(self) -> str:
        return f"{self.hosts['m1'].address}:{API_PORT}"

    def namespace(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def _runtime(self, node: str) -> list[str]:
        return [
            "--runtime", "containerd",
            "--containerd-socket", str(self.socket),
            "--containerd-namespace", self.namespace(node),
            "--data-dir", str(self.root / node),
            "--node-name", node,
        ]  # fmt: skip

    def _daemon(self, node: str, args: list[str]) -> Process:
        host = self.hosts[node]
        command = [*host.exec_prefix(), *SHARED_MOUNTS, *WARREN, *args]
        daemon = Process(node, command, self.root / f"{node}.log", self.env)
        self.daemons[node] = daemon
        daemon.start()
        return daemon

    def start(self) -> None:
        address = self.hosts["m1"].address
        self._daemon("m1", [
            "cluster", "init", *self._runtime("m1"),
            "--advertise-addr", address, "--listen-addr", "0.0.0.0",
            "--api-port", str(API_PORT), "--rest-port", str(REST_PORT),
            "--metrics-port", str(METRICS_PORT), "--raft-port", str(RAFT_PORT),
            "--availability", "drain", "--node-down-timeout", "5s",
        ])  # fmt: skip
        wait_for(self._api_ready, 60, "m1's API")
        token = self.cli("cluster", "join-token", "worker", "-q").stdout.strip()
        for node in self.hosts:
            if node == "m1":
                continue
            self._daemon(node, ["worker", "join", "--token", token, "--manager", self.manager,
                                *self._runtime(node)])  # fmt: skip
        for node in self.hosts:
            wait_for(lambda n=node: self.node_status(n) == "ready", 60, f"{node} to be ready")

    def _api_ready(self) -> bool:
        daemon = self.daemons["m1"]
        if not daemon.alive:
            raise AssertionError(f"m1 exited:\n{daemon.tail()}")
        if not (self.config_dir / "config.json").exists():
            return False
        return self.cli("cluster", "info", check=False).returncode == 0

    def stop(self) -> None:
        for daemon in reversed(list(self.daemons.values())):
            with contextlib.suppress(Exception):
                daemon.stop()

    def logs(self, lines: int = 60) -> str:
        return "\n".join(f"--- {d.name}\n{d.tail(lines)}" for d in self.daemons.values())

    # -- the CLI, on the client host ---------------------------------------------------

    def cli(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        command = [*self.client.exec_prefix(), *WARREN, "--manager", self.manager, *args]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=self.env
        )
        if check and result.returncode != 0:
            raise AssertionError(f"warren {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "-o", "json").stdout)

    def node_status(self, node: str) -> str | None:
        result = self.cli("node", "ls", "-o", "json", check=False)
        if result.returncode != 0:
            return None
        return next((n["status"] for n in json.loads(result.stdout) if n["hostname"] == node), None)

    def node_names(self) -> dict[str, str]:
        return {n["id"]: n["hostname"] for n in self.json("node", "ls")}

    def running_tasks(self, service: str) -> list[dict[str, Any]]:
        return [
            t
            for t in self.json("service", "ps", service)
            if t.get("status", {}).get("state") == "running"
            and t.get("desired_state", "running") == "running"
        ]

    def wait_running(self, service: str, count: int, timeout: float = 90) -> list[dict[str, Any]]:
        wait_for(
            lambda: len(self.running_tasks(service)) == count,
            timeout,
            f"{count} running tasks of {service}",
        )
        return self.running_tasks(service)

    # -- inside containers ---------------------------------------------------------------

    def exec(
        self, node: str, container_id: str, script: str, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """``sh -c script`` inside a running container (containerd's exec)."""
        exec_id = f"t{secrets.token_hex(4)}"
        ctr = ["ctr", "--address", str(self.socket), "-n", self.namespace(node)]
        command = [*ctr, "tasks", "exec", "--exec-id", exec_id, container_id, "sh", "-c", script]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)

    def container_pids(self, node: str) -> dict[str, int]:
        """Container ID -> PID of each running container of the node."""
        ctr = ["ctr", "--address", str(self.socket), "-n", self.namespace(node)]
        listed = subprocess.run([*ctr, "tasks", "ls"], capture_output=True, text=True, timeout=30)
        rows = [line.split() for line in listed.stdout.splitlines()[1:]]
        return {row[0]: int(row[1]) for row in rows if len(row) >= 3 and row[2] == "RUNNING"}

    def remove_everything(self) -> None:
        """Leave containerd as found: services first (their containers go), then
        whatever a dead node left."""
        with contextlib.suppress(Exception):
            for service in self.json("service", "ls"):
                self.cli("service", "rm", service["id"], check=False)
            # Nodes whose containers are gone remove their data plane when they stop.
            wait_for(
                lambda: not any(_containers(self.socket, self.namespace(n)) for n in self.hosts),
                60,
                "the containers to go",
            )
        self.stop()
        for node in self.hosts:
            _remove_containers(self.socket, self.namespace(node))


def _containers(socket: Path, namespace: str) -> list[str]:
    ctr = ["ctr", "--address", str(socket), "-n", namespace]
    listed = subprocess.run([*ctr, "containers", "ls", "-q"], capture_output=True, text=True)
    return listed.stdout.split()


def _remove_containers(socket: Path, namespace: str) -> None:
    ctr = ["ctr", "--address", str(socket), "-n", namespace]
    for container in _containers(socket, namespace):
        for args in (["tasks", "kill", "-s", "SIGKILL", container],
                     ["tasks", "rm", "-f", container],
                     ["containers", "rm", container]):  # fmt: skip
            subprocess.run([*ctr, *args], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "delete", f"warren-{container}"], capture_output=True)
