"""A task's container dies with a crashed containerd: the worker notices once
containerd is back and restarts the task in place, or reports it lost.

Each test runs a containerd of its own (it is SIGKILLed, with its shims and the
containers they ran, and started again on the same directory), and the runtime
keeps runc's state under its own state dir, as a node does (``runc_root`` not
given). containerd comes back with its root and state kept, with its state
lost (/run cleared by a reboot), or with both lost (the quick start's
containerd wipes them when it stops). runc's record of a live container is
never deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import eventually

from warren.agent.containerd.netns import netns_path
from warren.agent.containerd.runc_state import RuncState
from warren.agent.containerd.runtime import ContainerdRuntime
from warren.agent.executor import TaskExecutor
from warren.agent.runtime import ContainerConfig, ContainerState, ExecResult
from warren.core.errors import FailedPrecondition, NotFound
from warren.core.models import ContainerSpec, RestartPolicy, ServiceSpec, Task, TaskStatus
from warren.core.states import TaskState
from warren.devtools.containerd import LocalContainerd
from warren.devtools.registry import LocalRegistry
from warren.registry.client import RegistryConfig

NAMESPACE = "warren-crash"
PAGE = "hello from warren\n"
# From containerd back to the task answering again (or reported lost): the
# event stream resubscribes within 2 s; the rest is one container start.
BOUND = 20.0


@pytest.fixture
def instance_dir(containerd_tools: None) -> Iterator[Path]:
    # Short: containerd's sockets live in it (unix socket path limit).
    directory = Path(tempfile.mkdtemp(prefix="wrn-crash-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class Node:
    """A containerd that can crash and come back on the same directory, and a runtime on it."""

    directory: Path
    state_dir: Path
    registry: LocalRegistry
    containerd: LocalContainerd = field(init=False)
    runtime: ContainerdRuntime = field(init=False)

    def __post_init__(self) -> None:
        self.containerd = LocalContainerd(self.directory).start()
        self.runtime = ContainerdRuntime(
            str(self.containerd.socket),
            NAMESPACE,
            state_dir=self.state_dir,
            registry=RegistryConfig(insecure=frozenset({self.registry.address})),
        )

    @property
    def runc_records(self) -> Path:
        return self.state_dir / "runc" / NAMESPACE

    def crash(self, *, containers_too: bool = True) -> None:
        """SIGKILL containerd, then (optionally) the containers, then their shims."""
        os.kill(self.containerd.pid, signal.SIGKILL)
        while self.containerd.running():  # reaps it
            time.sleep(0.01)
        shims = shim_pids(self.directory)
        if containers_too:
            kill_and_wait([pid for shim in shims for pid in children(shim)])
        kill_and_wait(shims)
        kill_and_wait(instance_tools(self.directory))  # a `containerd publish` of a dying shim

    def lose(self, *, root_too: bool) -> None:
        """Remove containerd's state dir, as a reboot clears /run; with ``root_too``
        its root as well, as the quick start's containerd does when it stops."""
        for directory in [self.containerd.state, *([self.containerd.root] if root_too else [])]:
            unmount_under(directory)
            shutil.rmtree(directory)

    def restart_containerd(self) -> None:
        self.containerd = LocalContainerd(self.directory).start()


@pytest.fixture
async def node(instance_dir: Path, registry: LocalRegistry, tmp_path: Path) -> AsyncIterator[Node]:
    node = Node(instance_dir, tmp_path / "state", registry)
    try:
        yield node
    finally:
        await node.runtime.close()
        # Only a failed test leaves any of these.
        remove_runc_records(node.runc_records)
        for directory in (node.state_dir / "containers").glob("*"):
            if netns_path(directory.name).exists():
                subprocess.run(["ip", "netns", "delete", netns_path(directory.name).name])
        # Cleans up after a crash without a restart too; raises if a process or mount is left.
        node.containerd.stop()


def web_task(image: str) -> Task:
    spec = ServiceSpec(
        name="web",
        container=ContainerSpec(
            image=image,
            args=("httpd", "-f", "-p", "8080", "-h", "/var/www"),
            init=True,
            stop_grace_period=2.0,
        ),
        restart=RestartPolicy(delay=0.1),
    )
    task_id = f"task-{secrets.token_hex(6)}"
    status = TaskStatus(state=TaskState.ASSIGNED)
    return Task(task_id, "service-1", "web", spec, 1, slot=1, node_id="node-1", status=status)


@dataclass
class Reports:
    statuses: list[TaskStatus] = field(default_factory=list)

    def __call__(self, task_id: str, status: TaskStatus) -> None:
        self.statuses.append(status)

    def since(self, index: int) -> list[tuple[TaskState, str]]:
        return [(s.state, s.message) for s in self.statuses[index:]]


async def answers(container_id: str) -> str:
    """The page served inside the task's network namespace ('' if none)."""
    process = await asyncio.create_subprocess_exec(
        "nsenter", f"--net={netns_path(container_id)}",
        "/bin/busybox", "wget", "-q", "-O", "-", "http://127.0.0.1:8080/",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:  # this busybox's wget has no timeout option
        stdout, _ = await asyncio.wait_for(process.communicate(), 5)
    except TimeoutError:
        process.kill()
        await process.wait()
        return ""
    return stdout.decode() if process.returncode == 0 else ""


async def running_pid(runtime: ContainerdRuntime, container_id: str) -> int:
    with contextlib.suppress(Exception):
        info = await runtime.inspect(container_id)
        if info.state == ContainerState.RUNNING:
            return info.pid
    return 0


async def serving(node: Node, task_id: str, not_pid: int = 0) -> int:
    """The PID of the task's running container once it answers (0 while it does not)."""
    pid = await running_pid(node.runtime, task_id)
    if pid and pid != not_pid and await answers(task_id) == PAGE:
        return pid
    return 0


@pytest.mark.parametrize("lost", ["nothing", "state", "all"])
async def test_a_task_restarts_in_place_after_containerd_and_its_shims_die(
    node: Node, busybox_ref: str, lost: str
) -> None:
    task = web_task(busybox_ref)
    reports = Reports()
    # A worker with no manager restarts its tasks itself (worker autonomy).
    executor = TaskExecutor(task, node.runtime, reports, can_restart_locally=lambda: True)
    executor.start()
    try:
        old_pid = await eventually(lambda: serving(node, task.id), 30, "the task to serve")
        seen = len(reports.statuses)

        node.crash()
        if lost != "nothing":
            node.lose(root_too=lost == "all")
            # What the bug tripped on: runc's record outlives containerd's state.
            assert (node.runc_records / task.id / "state.json").exists()
        node.restart_containerd()
        back = time.monotonic()

        new_pid = await eventually(
            lambda: serving(node, task.id, not_pid=old_pid), BOUND, "the task to serve again"
        )
        print(f"containerd lost {lost}: serving again {time.monotonic() - back:.2f} s after")
        assert new_pid != old_pid
        assert not executor.done  # the same task, never replaced
        states = reports.since(seen)
        assert all(s == TaskState.RUNNING for s, _ in states), states
        assert (
            TaskState.RUNNING,
            "the container disappeared; restarting locally in 0.1s",
        ) in states
        assert executor.local_restarts == 1
    finally:
        await stop(executor, node)
    assert_nothing_left(node, task.id)


async def test_a_connected_worker_reports_the_lost_task_once_containerd_is_back(
    node: Node, busybox_ref: str
) -> None:
    """With a manager to replace it, the task is reported failed, promptly."""
    task = web_task(busybox_ref)
    reports = Reports()
    executor = TaskExecutor(task, node.runtime, reports, can_restart_locally=lambda: False)
    executor.start()
    try:
        await eventually(lambda: serving(node, task.id), 30, "the task to serve")
        node.crash()
        node.restart_containerd()
        back = time.monotonic()
        await eventually(lambda: executor.done, BOUND, "the task to be reported ended")
        print(f"lost task reported {time.monotonic() - back:.2f} s after containerd came back")
        last = reports.statuses[-1]
        assert (last.state, last.message) == (TaskState.FAILED, "container lost")
        await eventually(
            lambda: _no_containers(node.runtime), 10, "the lost container to be removed"
        )
    finally:
        await stop(executor, node)
    assert_nothing_left(node, task.id)


async def test_a_wait_begun_while_containerd_is_down_ends_once_it_is_back(
    node: Node, busybox_ref: str
) -> None:
    config = ContainerConfig(f"wait-{secrets.token_hex(4)}", busybox_ref, args=("sleep", "600"))
    try:
        await node.runtime.create(config)
        await node.runtime.start(config.container_id)
        node.crash()
        waiter = asyncio.ensure_future(node.runtime.wait(config.container_id))
        await asyncio.sleep(1)
        assert not waiter.done()  # not "containerd is not reachable": that ended the executor
        node.restart_containerd()
        with pytest.raises(NotFound, match="lost its task"):
            await asyncio.wait_for(waiter, BOUND)
    finally:
        await node.runtime.remove(config.container_id)
    assert_nothing_left(node, config.container_id)


async def test_the_runc_record_of_a_live_container_is_never_deleted(
    node: Node, busybox_ref: str
) -> None:
    config = ContainerConfig(f"live-{secrets.token_hex(4)}", busybox_ref, args=("sleep", "600"))
    records = RuncState(node.state_dir / "runc", NAMESPACE)
    try:
        await node.runtime.create(config)
        await node.runtime.start(config.container_id)
        pid = (await node.runtime.inspect(config.container_id)).pid
        with pytest.raises(FailedPrecondition, match="still has a live process under runc"):
            await records.remove_dead(config.container_id)
        assert _alive(pid)
        assert records.has_record(config.container_id)
        assert await node.runtime.exec(config.container_id, ["true"], 5) == ExecResult(0, b"")
    finally:
        await node.runtime.remove(config.container_id)
    assert not _alive(pid)
    assert_nothing_left(node, config.container_id)


async def stop(executor: TaskExecutor, node: Node) -> None:
    await executor.stop()
    with contextlib.suppress(TimeoutError):
        await eventually(lambda: _no_containers(node.runtime), 15, "the container to go")
    await executor.close()


async def _no_containers(runtime: ContainerdRuntime) -> bool:
    return not await runtime.list()


def assert_nothing_left(node: Node, container_id: str) -> None:
    """No shim, runc or container process, no mount, no runc record, no netns."""
    assert not shim_pids(node.directory)
    assert not [p for p in _pids() if _command(p)[:1] == ["runc"] and _names(p, node.state_dir)]
    assert not mounts_under(node.directory)
    assert not list(node.runc_records.glob("*/state.json"))
    assert not netns_path(container_id).exists()


# -- processes and mounts of the instance ---------------------------------------------


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _command(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    args = raw.decode(errors="replace").split("\0")
    return [os.path.basename(args[0]), *args[1:]]


def _names(pid: int, directory: Path) -> bool:
    return any(str(directory) in arg for arg in _command(pid)[1:])


def shim_pids(directory: Path) -> list[int]:
    return [
        pid
        for pid in _pids()
        if _command(pid)[:1] == ["containerd-shim-runc-v2"] and _names(pid, directory)
    ]


def instance_tools(directory: Path) -> list[int]:
    return [
        pid for pid in _pids() if _command(pid)[:1] == ["containerd"] and _names(pid, directory)
    ]


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def kill_and_wait(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"processes {pids} outlived SIGKILL"
        time.sleep(0.02)


def mounts_under(directory: Path) -> list[str]:
    prefix = f"{directory}/"
    with open("/proc/self/mountinfo") as mountinfo:
        points = [line.split()[4] for line in mountinfo]
    return [point for point in points if point.startswith(prefix)]


def unmount_under(directory: Path) -> None:
    for point in sorted(mounts_under(directory), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=True, capture_output=True)


def remove_runc_records(records: Path) -> None:
    """Kill and delete whatever runc still knows of in the test's runc root."""
    for state in records.glob("*/state.json"):
        subprocess.run(
            ["runc", "--root", str(records), "delete", "--force", state.parent.name],
            capture_output=True,
            check=False,
        )
