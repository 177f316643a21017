"""Worker autonomy on real containerd: a worker cut off from every manager keeps
its tasks running, restarts crashed ones in place (also across its own restart),
and the managers find exactly the original tasks when the link heals."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Cluster, wait_for

from warren.agent.cache import TaskCache

pytestmark = pytest.mark.integration

WORKER = "worker-1"
RESTARTED = "restarted locally while disconnected"


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


class EdgeSite:
    """A drained manager and one worker, each on its own containerd namespace."""

    def __init__(self, cluster: Cluster, socket: Path, prefix: str) -> None:
        self.cluster = cluster
        self.socket = socket
        self.namespace = f"{prefix}-{WORKER}"

    def containers(self) -> dict[str, int]:
        return running_containers(self.socket, self.namespace)

    def crash(self, container_id: str) -> int:
        """SIGKILL the container's process; return its PID."""
        pid = self.containers()[container_id]
        os.kill(pid, signal.SIGKILL)
        return pid

    def restarted(self, container_id: str, old_pid: int) -> bool:
        return self.containers().get(container_id) not in (None, old_pid)

    @property
    def worker(self) -> Any:
        return self.cluster.processes[WORKER]

    def cached_message(self, task_id: str) -> str:
        """The task's status message in the worker's cache (what survives a crash)."""
        cache = TaskCache(self.cluster.root / WORKER / "agent" / "tasks.json")
        task = cache.load().get(task_id)
        return "" if task is None else task.status.message


@pytest.fixture
def site(
    tmp_path: Path, containerd: Any, registry: Any, request: pytest.FixtureRequest
) -> Iterator[EdgeSite]:
    prefix = f"warren-{secrets.token_hex(4)}"
    cluster = Cluster(
        tmp_path,
        # Long enough that the manager orphans nothing during the test.
        node_down_timeout=60,
        runtime_args=[
            "--runtime", "containerd",
            # Simulated networks: both nodes share the machine's network namespace.
            "--network-plane", "sim",
            "--containerd-socket", str(containerd.socket),
            "--containerd-namespace", prefix + "-{node}",
            "--insecure-registry", registry.address,
        ],
    )  # fmt: skip
    edge = EdgeSite(cluster, Path(containerd.socket), prefix)
    try:
        cluster.init_manager("--availability", "drain")  # the tasks run on the worker
        cluster.join_worker(WORKER)
        yield edge
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(cluster.logs())
        _clean_up(edge)


def _clean_up(edge: EdgeSite) -> None:
    """Leave containerd as we found it: services removed, containers gone, processes stopped."""
    cluster = edge.cluster
    try:
        if "manager" in cluster.processes and not cluster.processes["manager"].alive:
            cluster.restart_manager()
        if WORKER in cluster.processes and not edge.worker.alive:
            edge.worker.start()
        for service in cluster.json("service", "ls"):
            cluster.cli("service", "rm", service["id"], check=False)
        wait_for(lambda: not edge.containers(), 30, "containers to go")
    finally:
        cluster.stop_all()


def test_a_cut_off_worker_restarts_tasks_in_place_and_reconciles(
    site: EdgeSite, busybox_ref: str
) -> None:
    cluster = site.cluster
    cluster.cli("service", "create", "edge", "--image", busybox_ref, "--replicas", "2",
                "--init", "--restart-delay", "1s", "--", "sleep", "3600")  # fmt: skip
    original = {t["id"] for t in cluster.running("edge")}
    assert len(original) == 2
    assert set(site.containers()) == original
    first, second = sorted(original)

    # Cut off: every manager is gone.
    cluster.processes["manager"].kill()

    # A crash is restarted in place: same container ID, a new process.
    pid = site.crash(first)
    wait_for(lambda: site.restarted(first, pid), 15, f"{first} to run again")
    # The cache is written a moment after a change; a crash before that would
    # only lose the message, the task would be running either way.
    wait_for(lambda: site.cached_message(first).startswith(RESTARTED), 10, "the cache")

    # The worker dies too; a container crashes while no agent runs.
    site.worker.kill()
    assert set(site.containers()) == original  # containers outlive the agent
    pid = site.crash(second)
    wait_for(lambda: second not in site.containers(), 10, f"{second} to stop")
    time.sleep(1)
    assert second not in site.containers()  # nobody restarts it yet
    site.worker.start()  # same command, same data dir
    wait_for(lambda: site.restarted(second, pid), 30, f"{second} to be restarted on recovery")
    assert set(site.containers()) == original

    # The link heals: the managers hear of both restarts and replace nothing.
    cluster.restart_manager()

    def reconciled() -> bool:
        tasks = cluster.tasks("edge")
        messages = {t["status"]["message"] for t in tasks}
        return len(tasks) == 2 and all(m.startswith(RESTARTED) for m in messages)

    wait_for(reconciled, 30, "the worker's reports to reach the manager")
    wait_for(lambda: cluster.node_status(WORKER) == "ready", 30, "the worker to be ready")
    time.sleep(2)  # room for a (wrong) replacement to show up
    tasks = cluster.tasks("edge")
    assert {t["id"] for t in tasks} == original  # no duplicates, no lost tasks
    assert {t["status"]["state"] for t in tasks} == {"running"}
    assert {t["desired_state"] for t in tasks} == {"running"}
    assert {t["id"] for t in cluster.running("edge")} == original
    assert set(site.containers()) == original
    ps = cluster.cli("service", "ps", "edge").stdout
    assert "failed" not in ps
