"""A Warren cluster inside a network lab: every manager and worker on a host of its
own, the CLI and the writer on a "client" host (nothing in the root namespace can
reach the lab's addresses).

Ports are fixed: each host is its own network namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netlab import Host, Lab
from support import Process, wait_for

WARREN = [sys.executable, "-m", "warren"]
WRITER = [sys.executable, str(Path(__file__).with_name("writer.py"))]
API_PORT, REST_PORT, METRICS_PORT, RAFT_PORT = 2377, 2378, 9090, 2379
MANAGERS = ("m1", "m2", "m3")
# Managers should listen on their host's address only, but a manager's own agent
# dials 127.0.0.1:API_PORT (warren/node/daemon.py, serve_manager), so the first
# manager's node would stay "unknown" for ever. All addresses of the host's own
# namespace come to the same thing for the partitions (they filter eth0 traffic).
LISTEN_ADDR = "0.0.0.0"


@dataclass
class Stats:
    """The suite's counts, printed at the end of the session (see conftest)."""

    clusters: int = 0  # clusters started: nothing to print without one
    writes_acked: int = 0
    writes_failed: int = 0
    leader_kills: int = 0
    failovers: list[float] = field(default_factory=list)

    def lines(self) -> list[str]:
        if self.failovers:
            times = self.failovers
            failover = (
                f"min {min(times):.2f}s, median {statistics.median(times):.2f}s, "
                f"max {max(times):.2f}s ({len(times)} measured)"
            )
        else:
            failover = "not measured"
        return [
            f"writes acknowledged: {self.writes_acked}",
            f"writes failed (unacknowledged): {self.writes_failed}",
            f"leader kills: {self.leader_kills}",
            f"failover time (kill -> next acknowledged write): {failover}",
        ]


STATS = Stats()


def failover_times(kills: Sequence[float], records: Sequence[dict[str, Any]]) -> list[float]:
    """Per kill: time to the first write both started and acknowledged after it.

    Started after: a write already in flight may have committed before the kill.
    So this never underestimates; it overestimates by at most one write's latency.
    """
    acked = [(r["t_start"], r["t_ack"]) for r in records if r["ok"]]
    times = []
    for killed in kills:
        after = [ack for start, ack in acked if start >= killed]
        if after:
            times.append(min(after) - killed)
    return times


def running_containers(socket: Path, namespace: str) -> dict[str, int]:
    """Container ID -> PID of every RUNNING containerd task, as ``ctr`` sees them."""
    result = subprocess.run(
        ["ctr", "--address", str(socket), "-n", namespace, "tasks", "ls"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    running: dict[str, int] = {}
    for line in result.stdout.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "RUNNING":
            running[fields[0]] = int(fields[1])
    return running


class LabCluster:
    """Managers m1 (cluster init), m2, m3 and workers, each on its own lab host.

    Managers are drained sim nodes (they run no tasks). Workers run ``worker_runtime``
    (sim unless given); ``{node}`` in it becomes the worker's name.
    """

    def __init__(
        self,
        lab: Lab,
        root: Path,
        node_down_timeout: float = 8.0,
        worker_runtime: Sequence[str] = ("--runtime", "sim"),
    ) -> None:
        self.lab = lab
        self.root = root
        self.node_down_timeout = node_down_timeout
        self.worker_runtime = list(worker_runtime)
        self.config_dir = root / "config"
        self.env = dict(os.environ, WARREN_CONFIG_DIR=str(self.config_dir), GRPC_VERBOSITY="ERROR")
        self.env.pop("WARREN_MANAGER", None)
        self.client = lab.add_host("client")
        self.hosts = {name: lab.add_host(name) for name in MANAGERS}
        self.managers: dict[str, Process] = {}
        self.workers: dict[str, Process] = {}

    # -- addresses -------------------------------------------------------------------

    def api(self, name: str) -> str:
        return f"{self.hosts[name].address}:{API_PORT}"

    def raft(self, name: str) -> str:
        return f"{self.hosts[name].address}:{RAFT_PORT}"

    @property
    def all_managers(self) -> str:
        return ",".join(self.api(m) for m in MANAGERS)

    def manager_named(self, raft_or_api: str) -> str | None:
        host = raft_or_api.rsplit(":", 1)[0]
        return next((m for m in MANAGERS if self.hosts[m].address == host), None)

    # -- processes -------------------------------------------------------------------

    def _manager_args(self, name: str) -> list[str]:
        address = self.hosts[name].address
        return [
            "--data-dir", str(self.root / name),
            "--advertise-addr", address,
            "--listen-addr", LISTEN_ADDR,
            "--api-port", str(API_PORT),
            "--rest-port", str(REST_PORT),
            "--metrics-port", str(METRICS_PORT),
            "--raft-port", str(RAFT_PORT),
            "--runtime", "sim",
            "--availability", "drain",
            "--node-down-timeout", f"{self.node_down_timeout:g}s",
            "--node-name", name,
        ]  # fmt: skip

    def _daemon(self, name: str, host: Host, args: list[str]) -> Process:
        """A process on ``host``, restartable with the same command (``start`` again)."""
        daemon = Process(name, [*host.exec_prefix(), *args], self.root / f"{name}.log", self.env)
        daemon.start()
        return daemon

    def start(self, workers: Sequence[str] = ("w1", "w2")) -> None:
        args = [*WARREN, "cluster", "init", *self._manager_args("m1")]
        self.managers["m1"] = self._daemon("m1", self.hosts["m1"], args)
        wait_for(lambda: self._api_ready("m1"), 60, "m1's API")
        token = self.cli("cluster", "join-token", "manager", "-q", managers=self.api("m1"))
        for name in MANAGERS[1:]:
            args = [*WARREN, "manager", "join", "--token", token.stdout.strip(),
                    "--manager", self.api("m1"), *self._manager_args(name)]  # fmt: skip
            self.managers[name] = self._daemon(name, self.hosts[name], args)
            self._wait_node_ready(name)
            # `manager join` ignores --availability (only `cluster init` applies it).
            self.cli("node", "update", "--availability", "drain", name)
        for name in workers:
            self.join_worker(name)

    def join_worker(self, name: str, spawn_prefix: Sequence[str] = ()) -> Process:
        host = self.lab.add_host(name)
        token = self.cli("cluster", "join-token", "worker", "-q").stdout.strip()
        runtime = [arg.replace("{node}", name) for arg in self.worker_runtime]
        args = [*spawn_prefix, *WARREN, "worker", "join", "--token", token,
                "--manager", self.all_managers, "--data-dir", str(self.root / name),
                *runtime, "--node-name", name]  # fmt: skip
        self.workers[name] = self._daemon(name, host, args)
        self._wait_node_ready(name)
        return self.workers[name]

    def _wait_node_ready(self, name: str) -> None:
        wait_for(lambda: self.node_status(name) == "ready", 60, f"{name} to be ready")

    def _api_ready(self, name: str) -> bool:
        daemon = self.managers[name]
        if not daemon.alive:
            raise AssertionError(f"{name} exited:\n{daemon.tail()}")
        if not (self.config_dir / "config.json").exists():
            return False
        return self.cli("cluster", "info", managers=self.api(name), check=False).returncode == 0

    def kill(self, *names: str) -> None:
        """SIGKILL managers; several die together (all signalled before any is reaped)."""
        daemons = [self.managers[name] for name in names]
        for daemon in daemons:
            if daemon.popen is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(daemon.popen.pid, signal.SIGKILL)
        for daemon in daemons:
            daemon.kill()

    def restart(self, name: str) -> None:
        """Same command, same data dir: the manager rejoins with its Raft log."""
        self.managers[name].start()

    def stop(self) -> None:
        for daemon in [*self.workers.values(), *self.managers.values()]:
            with contextlib.suppress(Exception):
                daemon.kill()

    def logs(self, lines: int = 40) -> str:
        daemons = [*self.managers.values(), *self.workers.values()]
        return "\n".join(f"--- {d.name}\n{d.tail(lines)}" for d in daemons)

    # -- the client host -------------------------------------------------------------

    def cli(
        self, *args: str, managers: str = "", timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``warren --manager ... ARGS`` on the client host."""
        command = [*WARREN, "--manager", managers or self.all_managers, *args]
        result = self._run(command, timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"warren {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def json(self, *args: str, managers: str = "") -> Any:
        return json.loads(self.cli(*args, "-o", "json", managers=managers).stdout)

    def _run(self, command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        # Host.run has no env parameter: the identity's location goes through env(1).
        env = ["env", f"WARREN_CONFIG_DIR={self.config_dir}", "GRPC_VERBOSITY=ERROR"]
        return self.client.run([*env, *command], timeout=timeout)

    def writer_args(self, *args: str, managers: str = "", timeout: float = 3.0) -> list[str]:
        return [*WRITER, "--config-dir", str(self.config_dir),
                "--managers", managers or self.all_managers,
                "--timeout", f"{timeout:g}", *args]  # fmt: skip

    def snapshot(self, tasks: str = "", managers: Sequence[str] = MANAGERS) -> dict[str, Any]:
        """Manager name -> what it says (``writer.py snapshot``), each asked on its own."""
        addresses = ",".join(self.api(m) for m in managers)
        extra = ["--tasks", tasks] if tasks else []
        result = self._run(self.writer_args("snapshot", *extra, managers=addresses), 60)
        if result.returncode != 0:
            raise AssertionError(f"snapshot failed: {result.stderr.strip()}")
        by_address = json.loads(result.stdout)
        return {self.manager_named(a) or a: answer for a, answer in by_address.items()}

    def write(
        self, op: str, name: str, *extra: str, managers: str = "", timeout: float = 3.0
    ) -> dict[str, Any]:
        """One write (``writer.py write``); its record, acknowledged or not."""
        args = self.writer_args("write", op, name, *extra, managers=managers, timeout=timeout)
        result = self._run(args, 60)
        try:
            return dict(json.loads(result.stdout))
        except ValueError:
            raise AssertionError(f"writer.py write failed: {result.stderr.strip()}") from None

    def start_writer(self, log: Path, stop_file: Path, prefix: str, seed: int) -> Process:
        args = self.writer_args("stream", "--log", str(log), "--stop-file", str(stop_file),
                                "--prefix", prefix, "--seed", str(seed))  # fmt: skip
        return self._daemon(f"writer-{prefix}", self.client, args)

    # -- what the managers say -------------------------------------------------------

    def nodes(self) -> list[dict[str, Any]]:
        return list(self.json("node", "ls"))

    def node_status(self, hostname: str) -> str | None:
        for node in self.nodes():
            if node["hostname"] == hostname:
                return str(node["status"])
        return None

    def leader(self, snap: dict[str, Any] | None = None) -> str | None:
        """The one manager every answering manager agrees is the leader, else None."""
        snap = snap if snap is not None else self.snapshot()
        infos = {m: a["info"] for m, a in snap.items() if "info" in a}
        claimants = [m for m, info in infos.items() if info["is_leader"]]
        if len(claimants) != 1:
            return None
        (leader,) = claimants
        agree = all(info["leader"] == self.raft(leader) for info in infos.values())
        return leader if agree else None

    def wait_leader(self, timeout: float = 30) -> str:
        return str(wait_for(self.leader, timeout, "one leader all managers agree on", 0.2))

    def healthy(self, snap: dict[str, Any]) -> str | None:
        """The leader if all three managers answer, agree on it, and it sees the
        other two as reachable; else None."""
        if any("error" in answer for answer in snap.values()):
            return None
        leader = self.leader(snap)
        if leader is None:
            return None
        statuses = {
            n["hostname"]: n["manager_status"]
            for n in snap[leader]["nodes"]
            if n["role"] == "manager"
        }
        wanted = {m: "reachable" for m in MANAGERS} | {leader: "leader"}
        return leader if statuses == wanted else None

    def wait_healthy(self, timeout: float = 60) -> str:
        return str(
            wait_for(lambda: self.healthy(self.snapshot()), timeout, "three healthy managers", 0.2)
        )

    def converged(self, snap: dict[str, Any], workers: bool = True) -> bool:
        """Healthy, every manager at the same revision and state hash, and (with
        ``workers``) every node ready."""
        if self.healthy(snap) is None:
            return False
        states = {(a["info"]["revision"], a["info"]["state_hash"]) for a in snap.values()}
        if len(states) != 1:
            return False
        if workers:
            return all(n["status"] == "ready" for a in snap.values() for n in a["nodes"])
        return True

    def replica_mismatches(self) -> list[str]:
        """Services whose running tasks (desired and actual) differ from their replicas,
        as "name: running/replicas (the states of its tasks)", asked of the leader."""
        leader = self.wait_leader()
        answer = self.snapshot(tasks="*", managers=[leader])[leader]
        if "error" in answer:
            return [f"{leader}: {answer['error']}"]
        states: dict[str, Counter[str]] = {}
        for task in answer["tasks"]:
            states.setdefault(task["service"], Counter())[f"{task['desired']}/{task['state']}"] += 1
        out = []
        for service in answer["services"]:
            seen = states.get(service["name"], Counter())
            if seen["running/running"] != service["replicas"]:
                out.append(
                    f"{service['name']}: {seen['running/running']}/{service['replicas']} "
                    f"(desired/actual: {dict(seen)})"
                )
        return out

    def wait_converged(self, timeout: float = 90, workers: bool = True) -> dict[str, Any]:
        """A snapshot in which all managers agree (asked again until they do)."""
        last: dict[str, Any] = {}

        def agreed() -> dict[str, Any] | None:
            nonlocal last
            last = self.snapshot()
            return last if self.converged(last, workers) else None

        try:
            return dict(wait_for(agreed, timeout, "the managers to converge", 0.5))
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nlast snapshot: {summary(last)}") from None


def summary(snap: dict[str, Any]) -> str:
    """A readable digest of a snapshot, for failure messages."""
    out = []
    for manager, answer in snap.items():
        if "error" in answer:
            out.append(f"{manager}: {answer['error']}")
            continue
        info = answer["info"]
        nodes = ", ".join(
            f"{n['hostname']}={n['status']}/{n['manager_status'] or '-'}" for n in answer["nodes"]
        )
        out.append(
            f"{manager}: leader={info['leader']} is_leader={info['is_leader']} "
            f"rev={info['revision']} hash={info['state_hash'][:12]} "
            f"services={len(answer['services'])} nodes[{nodes}]"
        )
    return "\n".join(out)
