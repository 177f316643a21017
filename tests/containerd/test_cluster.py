"""A real cluster running real containers: a manager and a worker process on
their own containerd, pulling the test image from the loopback registry."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import WARREN, Cluster, wait_for

pytestmark = pytest.mark.integration


class Ctr:
    """containerd's own CLI, to check what really runs."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket

    def run(self, namespace: str, *args: str) -> str:
        result = subprocess.run(
            ["ctr", "--address", str(self.socket), "-n", namespace, *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if result.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def running_tasks(self, namespace: str) -> dict[str, int]:
        """Container ID -> PID of every RUNNING containerd task."""
        out: dict[str, int] = {}
        for line in self.run(namespace, "tasks", "ls").splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3 and fields[2] == "RUNNING":
                out[fields[0]] = int(fields[1])
        return out

    def containers(self, namespace: str) -> list[str]:
        return self.run(namespace, "containers", "ls", "-q").split()

    def info(self, namespace: str, container_id: str) -> dict[str, Any]:
        return dict(json.loads(self.run(namespace, "containers", "info", container_id)))


@pytest.fixture
def ctr(containerd: Any) -> Ctr:
    return Ctr(Path(containerd.socket))


@dataclass
class ContainerCluster(Cluster):
    # The manager's containerd namespace: the agent owns every container in it.
    namespace: str = ""


@pytest.fixture
def node(
    tmp_path: Path, containerd: Any, registry: Any, request: pytest.FixtureRequest
) -> Iterator[ContainerCluster]:
    """A one-node cluster (the manager runs the tasks) on the test containerd."""
    prefix = f"warren-{secrets.token_hex(4)}"
    cluster = ContainerCluster(
        tmp_path,
        runtime_args=[
            "--runtime", "containerd",
            # Simulated networks: the tests share the machine's network namespace.
            "--network-plane", "sim",
            "--containerd-socket", str(containerd.socket),
            "--containerd-namespace", prefix + "-{node}",
            "--insecure-registry", registry.address,
        ],
        namespace=prefix + "-manager-1",
    )  # fmt: skip
    ctr = Ctr(Path(containerd.socket))
    try:
        cluster.init_manager()
        yield cluster
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(cluster.logs())
        try:
            # Leave containerd as we found it: removing the services removes the
            # containers (and their network namespaces) before the agent stops.
            for service in cluster.json("service", "ls"):
                cluster.cli("service", "rm", service["id"], check=False)
            wait_for(lambda: not ctr.containers(cluster.namespace), 30, "containers to go")
        finally:
            cluster.stop_all()


def test_replicas_are_containers_with_digest_env_and_memory_limit(
    node: ContainerCluster, ctr: Ctr, busybox_ref: str
) -> None:
    node.cli("service", "create", "web", "--image", busybox_ref, "--replicas", "3",
             "--env", "GREETING=hello", "--limit-memory", "64m",
             "--", "sleep", "1000")  # fmt: skip
    service = node.json("service", "inspect", "web")[0]
    pinned = service["spec"]["container"]["image"]
    assert pinned.startswith(busybox_ref + "@sha256:")
    running = ctr.running_tasks(node.namespace)
    tasks = node.running("web")
    assert {t["id"] for t in tasks} == set(running)
    for task in tasks:
        info = ctr.info(node.namespace, task["id"])
        assert info["Image"] == pinned
        assert "GREETING=hello" in info["Spec"]["process"]["env"]
        limit = Path(f"/sys/fs/cgroup/memory/warren/{task['id']}/memory.limit_in_bytes")
        assert int(limit.read_text()) == 64 * 2**20


def test_scale_up_and_back_down(node: ContainerCluster, ctr: Ctr, busybox_ref: str) -> None:
    node.cli("service", "create", "web", "--image", busybox_ref, "--replicas", "3", "--init",
             "--", "sleep", "1000")  # fmt: skip
    node.cli("service", "scale", "web=10")
    assert len(ctr.running_tasks(node.namespace)) == 10
    node.cli("service", "scale", "web=3")
    wait_for(lambda: len(ctr.running_tasks(node.namespace)) == 3, 30, "7 containers to stop")
    assert len(node.running("web")) == 3


def test_killed_container_is_replaced(node: ContainerCluster, ctr: Ctr, busybox_ref: str) -> None:
    node.cli("service", "create", "web", "--image", busybox_ref, "--restart-delay", "0s",
             "--", "sleep", "1000")  # fmt: skip
    ((victim, pid),) = ctr.running_tasks(node.namespace).items()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: [t for t in node.running("web") if t["id"] != victim], 20, "a replacement")
    dead = next(t for t in node.tasks("web") if t["id"] == victim)
    assert dead["status"]["state"] == "failed"
    assert dead["status"]["exit_code"] == 137
    assert dead["status"]["err"] == "task exited with code 137"


def test_failing_exec_health_check_replaces_the_task(
    node: ContainerCluster, busybox_ref: str
) -> None:
    node.cli("service", "create", "sick", "--image", busybox_ref, "--detach",
             "--health-cmd", "test -e /tmp/never", "--health-interval", "200ms",
             "--health-retries", "2", "--restart-delay", "0s",
             "--", "sleep", "1000")  # fmt: skip

    def unhealthy() -> list[dict[str, Any]]:
        return [t for t in node.tasks("sick") if t["status"]["err"].startswith("unhealthy")]

    failed = wait_for(unhealthy, 30, "a task failed as unhealthy")
    assert failed[0]["status"]["state"] == "failed"
    assert failed[0]["status"]["health"] == "unhealthy"
    # It never counted as running, and a replacement was started.
    wait_for(lambda: len(node.tasks("sick")) >= 2, 20, "a replacement task")


def test_http_health_check_gates_running(node: ContainerCluster, busybox_ref: str) -> None:
    node.cli("service", "create", "web", "--image", busybox_ref, "--replicas", "2", "--init",
             "--health-http", "8080/index.html", "--health-interval", "200ms",
             "--", "httpd", "-f", "-p", "8080", "-h", "/var/www")  # fmt: skip
    # `create` waited for convergence: both are running, which needs healthy.
    running = node.running("web")
    assert len(running) == 2
    assert {t["status"]["health"] for t in running} == {"healthy"}
    node.cli("service", "create", "wrongport", "--image", busybox_ref, "--detach", "--init",
             "--health-http", "9999/", "--health-interval", "200ms", "--health-retries", "50",
             "--", "httpd", "-f", "-p", "8080", "-h", "/var/www")  # fmt: skip
    time.sleep(3)
    (task,) = node.tasks("wrongport")
    assert task["status"]["state"] == "starting"
    assert task["status"]["health"] == "starting"


def test_service_logs_follow_shows_new_lines(node: ContainerCluster, busybox_ref: str) -> None:
    script = "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"
    node.cli("service", "create", "ticker", "--image", busybox_ref, "--init",
             "--", "sh", "-c", script)  # fmt: skip
    time.sleep(1)
    before = node.cli("service", "logs", "ticker").stdout.splitlines()
    assert before and all("| tick " in line for line in before)
    last_before = int(before[-1].rsplit(" ", 1)[1])
    follow = subprocess.Popen(
        [*WARREN, "--manager", node.manager_address, "service", "logs", "-f", "--tail", "1",
         "ticker"],
        stdout=subprocess.PIPE, text=True, env=node.env, start_new_session=True,
    )  # fmt: skip
    try:
        seen: list[int] = []
        deadline = time.monotonic() + 10
        assert follow.stdout is not None
        while time.monotonic() < deadline and (not seen or seen[-1] <= last_before + 3):
            line = follow.stdout.readline()
            if line:
                assert line.startswith("ticker.1@")
                seen.append(int(line.rsplit(" ", 1)[1]))
        assert seen and seen[-1] > last_before + 3, seen
    finally:
        os.killpg(follow.pid, signal.SIGTERM)
        follow.wait(timeout=10)


def test_stop_honours_the_grace_period(node: ContainerCluster, ctr: Ctr, busybox_ref: str) -> None:
    node.cli("service", "create", "stubborn", "--image", busybox_ref,
             "--stop-grace-period", "2s",
             "--", "sh", "-c", "trap '' TERM; while true; do sleep 0.1; done")  # fmt: skip
    assert len(ctr.running_tasks(node.namespace)) == 1
    started = time.monotonic()
    node.cli("service", "rm", "stubborn")
    wait_for(lambda: not ctr.running_tasks(node.namespace), 15, "the container to be killed")
    elapsed = time.monotonic() - started
    assert 2.0 <= elapsed < 6.0, elapsed


def test_init_stops_pid1_programs_promptly(
    node: ContainerCluster, ctr: Ctr, busybox_ref: str
) -> None:
    # busybox httpd as PID 1 ignores SIGTERM; with --init it stops at once.
    node.cli("service", "create", "web", "--image", busybox_ref, "--init",
             "--stop-grace-period", "10s", "--", "httpd", "-f", "-p", "8080")  # fmt: skip
    started = time.monotonic()
    node.cli("service", "rm", "web")
    wait_for(lambda: not ctr.running_tasks(node.namespace), 15, "the container to stop")
    assert time.monotonic() - started < 5


def test_restarted_worker_keeps_its_containers(
    node: ContainerCluster, ctr: Ctr, busybox_ref: str
) -> None:
    node.cli("service", "create", "web", "--image", busybox_ref, "--replicas", "2",
             "--", "sleep", "1000")  # fmt: skip
    before = ctr.running_tasks(node.namespace)
    assert len(before) == 2
    node.processes["manager"].kill()
    assert ctr.running_tasks(node.namespace) == before  # containers outlive the agent
    node.restart_manager()
    time.sleep(2)
    assert ctr.running_tasks(node.namespace) == before  # same containers, same PIDs
    assert {t["id"] for t in node.running("web")} == set(before)


def test_missing_image_gives_a_clear_error(node: ContainerCluster, registry: Any) -> None:
    image = f"{registry.address}/nothing-here:latest"
    node.cli("service", "create", "ghost", "--image", image, "--detach")

    def rejected() -> list[dict[str, Any]]:
        return [t for t in node.tasks("ghost") if t["status"]["state"] == "rejected"]

    task = wait_for(rejected, 20, "a rejected task")[0]
    assert task["status"]["err"].startswith(f"image not found: {image}")
    assert f"image not found: {image}" in node.cli("service", "ps", "ghost").stdout


def test_a_second_node_on_a_namespace_in_use_is_refused_before_it_joins(
    node: ContainerCluster, ctr: Ctr, containerd: Any, busybox_ref: str
) -> None:
    node.cli("service", "create", "web", "--image", busybox_ref, "--replicas", "2",
             "--", "sleep", "1000")  # fmt: skip
    before = ctr.running_tasks(node.namespace)
    assert len(before) == 2
    intruder = subprocess.run(
        [*WARREN, "worker", "join", "--token", node.join_token("worker"),
         "--manager", node.manager_address, "--data-dir", str(node.root / "intruder"),
         "--runtime", "containerd", "--network-plane", "sim",
         "--containerd-socket", str(containerd.socket),
         "--containerd-namespace", node.namespace, "--node-name", "intruder"],
        capture_output=True, text=True, env=node.env, timeout=60,
    )  # fmt: skip
    assert intruder.returncode == 1, intruder.stderr
    (error,) = [line for line in intruder.stderr.splitlines() if line.startswith("Error:")]
    assert error.startswith(
        f"Error: containerd namespace '{node.namespace}' is in use by another live Warren node "
        f"(pid {node.processes['manager'].popen.pid}, "  # type: ignore[union-attr]
    )
    assert error.endswith("give each node on this containerd its own --containerd-namespace")
    # The first node's containers are untouched, and the refused one never joined.
    assert ctr.running_tasks(node.namespace) == before
    assert [n["hostname"] for n in node.nodes()] == ["manager-1"]
