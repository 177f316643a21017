"""ContainerdRuntime against a real containerd, registry and busybox image."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from rt_images import EXPECTED_OUTPUT, layered_archive

from warren.agent.containerd.client import ContainerdClient
from warren.agent.containerd.netns import netns_path
from warren.agent.containerd.proto import containers_pb2, leases_pb2, snapshots_pb2
from warren.agent.containerd.runtime import ContainerdRuntime
from warren.agent.containerd.snapshots import SNAPSHOTTER
from warren.agent.runtime import (
    ContainerConfig,
    ContainerNames,
    ContainerState,
    LogStream,
    RuntimeEvent,
)
from warren.core.errors import (
    FailedPrecondition,
    ImageNotFound,
    InvalidArgument,
    NotFound,
    RuntimeFailure,
    Unavailable,
)
from warren.devtools.containerd import LocalContainerd
from warren.devtools.image import manifest_digest
from warren.devtools.registry import LocalRegistry
from warren.registry.client import RegistryConfig

NAMESPACE = "warren-rt"
CGROUP = Path("/sys/fs/cgroup")


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def make_runtime(
    containerd: LocalContainerd, state: Path, registry: LocalRegistry | None, namespace: str
) -> ContainerdRuntime:
    insecure = frozenset({registry.address}) if registry is not None else frozenset()
    return ContainerdRuntime(
        str(containerd.socket),
        namespace,
        state_dir=state,
        registry=RegistryConfig(insecure=insecure),
        runc_root=containerd.runc_root,
    )


@pytest.fixture
async def runtime(
    containerd: LocalContainerd, registry: LocalRegistry, tmp_path: Path
) -> AsyncIterator[ContainerdRuntime]:
    rt = make_runtime(containerd, tmp_path / "state", registry, NAMESPACE)
    try:
        yield rt
    finally:
        await rt.close()


@pytest.fixture
async def busybox(runtime: ContainerdRuntime, busybox_ref: str) -> str:
    await runtime.pull(busybox_ref)
    return busybox_ref


@contextlib.asynccontextmanager
async def running(rt: ContainerdRuntime, config: ContainerConfig) -> AsyncIterator[str]:
    """The container created and started; removed at the end, pass or fail."""
    try:
        await rt.create(config)
        await rt.start(config.container_id)
        yield config.container_id
    finally:
        await rt.remove(config.container_id)


async def output(rt: ContainerdRuntime, container_id: str) -> list[str]:
    return [entry.line.decode() async for entry in rt.logs(container_id)]


async def test_pull_from_registry(
    containerd: LocalContainerd,
    registry: LocalRegistry,
    busybox_ref: str,
    busybox_archive: Path,
    tmp_path: Path,
) -> None:
    # A namespace of its own: nothing pulled before, so this really fetches.
    namespace = new_id("pull")
    rt = make_runtime(containerd, tmp_path, registry, namespace)
    try:
        started = time.monotonic()
        digest = await rt.pull(busybox_ref)
        first = time.monotonic() - started
        started = time.monotonic()
        assert await rt.pull(busybox_ref) == digest
        again = time.monotonic() - started
        print(f"pull: {first * 1000:.0f} ms from the registry, {again * 1000:.0f} ms local")
        assert digest == manifest_digest(busybox_archive)
        images = containerd.ctr("images", "ls", "-q", namespace=namespace).stdout.split()
        assert images == [f"{busybox_ref}"]
    finally:
        await rt.close()
        containerd.ctr("images", "rm", "--sync", busybox_ref, namespace=namespace)


async def test_sleep_container_runs(runtime: ContainerdRuntime, busybox: str) -> None:
    labels = {"warren.task.id": "t1", "team": "edge"}
    config = ContainerConfig(new_id("sleep"), busybox, args=("sleep", "60"), labels=labels)
    started = time.monotonic()
    async with running(runtime, config) as cid:
        elapsed = time.monotonic() - started
        print(f"create+start: {elapsed * 1000:.0f} ms")
        info = await runtime.inspect(cid)
        assert info.state == ContainerState.RUNNING
        assert info.pid > 0
        assert info.labels == labels
        assert info.image == busybox
        assert cid in {c.container_id for c in await runtime.list()}
        assert runtime.network_namespace(cid) == str(netns_path(cid))
        assert Path(f"/proc/{info.pid}/ns/net").resolve() != Path("/proc/self/ns/net").resolve()


async def test_exit_code(runtime: ContainerdRuntime, busybox: str) -> None:
    config = ContainerConfig(new_id("exit"), busybox, args=("sh", "-c", "exit 3"))
    async with running(runtime, config) as cid:
        status = await asyncio.wait_for(runtime.wait(cid), 10)
        assert status.exit_code == 3
        assert not status.oom_killed
        info = await runtime.inspect(cid)
        assert info.state == ContainerState.STOPPED
        assert info.exit == status
        # A second wait, after the exit, answers at once.
        assert await asyncio.wait_for(runtime.wait(cid), 1) == status


async def test_killed_process_reported_through_wait_and_events(
    runtime: ContainerdRuntime, busybox: str
) -> None:
    config = ContainerConfig(new_id("kill"), busybox, args=("sleep", "60"))
    events = runtime.events()
    first_event = asyncio.ensure_future(anext(events))
    try:
        async with running(runtime, config) as cid:
            pid = (await runtime.inspect(cid)).pid
            waiter = asyncio.ensure_future(runtime.wait(cid))
            await asyncio.sleep(0.1)
            started = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            status = await asyncio.wait_for(waiter, 1.0)
            print(f"SIGKILL to wait(): {(time.monotonic() - started) * 1000:.0f} ms")
            assert status.exit_code == 137
            event = await asyncio.wait_for(first_event, 1.0)
            assert event == RuntimeEvent(cid, status)
    finally:
        first_event.cancel()
        await events.aclose()  # type: ignore[attr-defined]


async def test_stop_honours_grace_period(runtime: ContainerdRuntime, busybox: str) -> None:
    script = 'trap "" TERM; sleep 100'
    config = ContainerConfig(new_id("grace"), busybox, args=("sh", "-c", script))
    async with running(runtime, config) as cid:
        started = time.monotonic()
        status = await runtime.stop(cid, 1.0)
        elapsed = time.monotonic() - started
        print(f"stop (TERM ignored, grace 1 s): {elapsed * 1000:.0f} ms")
        assert status.exit_code == 137
        assert 0.9 <= elapsed < 3.0


async def test_init_forwards_stop_signal(runtime: ContainerdRuntime, busybox: str) -> None:
    # busybox httpd as PID 1 ignores SIGTERM; under the init it is not PID 1.
    config = ContainerConfig(new_id("init"), busybox, args=("httpd", "-f", "-p", "8080"), init=True)
    async with running(runtime, config) as cid:
        await asyncio.sleep(0.2)
        started = time.monotonic()
        status = await runtime.stop(cid, 10.0)
        elapsed = time.monotonic() - started
        print(f"stop (init, httpd): {elapsed * 1000:.0f} ms")
        assert elapsed < 2.0
        assert status.exit_code == 128 + signal.SIGTERM


async def test_resource_limits_in_cgroup(runtime: ContainerdRuntime, busybox: str) -> None:
    config = ContainerConfig(
        new_id("limits"),
        busybox,
        args=("sleep", "60"),
        memory_limit_bytes=64 * 2**20,
        cpu_limit=0.5,
    )
    async with running(runtime, config) as cid:
        memory = CGROUP / "memory" / "warren" / cid / "memory.limit_in_bytes"
        assert int(memory.read_text()) == 64 * 2**20
        quota = CGROUP / "cpu" / "warren" / cid / "cpu.cfs_quota_us"
        assert int(quota.read_text()) == 50_000


async def test_out_of_memory_is_reported(runtime: ContainerdRuntime, busybox: str) -> None:
    # tail buffers a "line" of /dev/zero without end: it grows until the limit.
    config = ContainerConfig(
        new_id("oom"), busybox, args=("tail", "/dev/zero"), memory_limit_bytes=16 * 2**20
    )
    async with running(runtime, config) as cid:
        status = await asyncio.wait_for(runtime.wait(cid), 20)
        assert status.exit_code == 137
        assert status.oom_killed
        assert (await runtime.inspect(cid)).exit == status


async def test_env_workdir_and_user(runtime: ContainerdRuntime, busybox: str) -> None:
    script = "id -u; id -g; pwd; env"
    config = ContainerConfig(
        new_id("env"),
        busybox,
        args=("sh", "-c", script),
        env={"FOO": "bar", "PATH": "/bin"},
        workdir="/tmp",
        user="nobody",
    )
    async with running(runtime, config) as cid:
        assert (await asyncio.wait_for(runtime.wait(cid), 10)).exit_code == 0
        lines = await output(runtime, cid)
        assert lines[:3] == ["65534", "65534", "/tmp"]
        assert {"FOO=bar", "PATH=/bin", "HOME=/nonexistent", f"HOSTNAME={cid[:12]}"} <= set(lines)
    numeric = replace(config, container_id=new_id("uid"), args=("sh", "-c", "id -u; id -g"))
    async with running(runtime, replace(numeric, user="1234:5678")) as cid:
        await asyncio.wait_for(runtime.wait(cid), 10)
        assert await output(runtime, cid) == ["1234", "5678"]


async def test_image_command_and_entrypoint_override(
    runtime: ContainerdRuntime, busybox: str
) -> None:
    config = ContainerConfig(new_id("entry"), busybox, entrypoint=("echo",), args=("a", "b"))
    async with running(runtime, config) as cid:
        await asyncio.wait_for(runtime.wait(cid), 10)
        assert await output(runtime, cid) == ["a b"]


async def test_read_only_root(runtime: ContainerdRuntime, busybox: str) -> None:
    # With the init too: its bind mount must not need a writable root.
    script = "touch /x || exit 7; exit 0"
    config = ContainerConfig(
        new_id("ro"), busybox, args=("sh", "-c", script), read_only=True, init=True
    )
    async with running(runtime, config) as cid:
        assert (await asyncio.wait_for(runtime.wait(cid), 10)).exit_code == 7
        entries = [entry async for entry in runtime.logs(cid)]
        assert entries and entries[0].stream == LogStream.STDERR
        assert b"Read-only file system" in entries[0].line


async def test_unknown_user_is_refused_and_undone(
    runtime: ContainerdRuntime, busybox: str, tmp_path: Path
) -> None:
    config = ContainerConfig(new_id("user"), busybox, args=("true",), user="ghost")
    with pytest.raises(InvalidArgument, match="ghost"):
        await runtime.create(config)
    with pytest.raises(NotFound):
        await runtime.inspect(config.container_id)
    assert not netns_path(config.container_id).exists()
    assert not (tmp_path / "state" / "containers" / config.container_id).exists()


async def test_started_twice_is_refused(runtime: ContainerdRuntime, busybox: str) -> None:
    config = ContainerConfig(new_id("twice"), busybox, args=("sleep", "60"))
    async with running(runtime, config) as cid:
        with pytest.raises(FailedPrecondition):
            await runtime.start(cid)
        assert (await runtime.inspect(cid)).state == ContainerState.RUNNING


async def test_logs_tail_and_follow(runtime: ContainerdRuntime, busybox: str) -> None:
    # stdout and stderr are pumped apart: the pause keeps their order certain.
    script = "for i in 1 2 3 4 5; do echo $i; done; sleep 0.5; echo 6; sleep 0.3; echo oops >&2"
    script += "; sleep 60"
    config = ContainerConfig(new_id("logs"), busybox, args=("sh", "-c", script))
    async with running(runtime, config) as cid:
        followed: list[str] = []

        async def follow() -> None:
            async for entry in runtime.logs(cid, follow=True):
                followed.append(entry.line.decode())
                if entry.stream == LogStream.STDERR:
                    return

        await asyncio.wait_for(follow(), 10)
        assert followed == ["1", "2", "3", "4", "5", "6", "oops"]
        tail = [entry.line async for entry in runtime.logs(cid, tail=2)]
        assert tail == [b"6", b"oops"]


async def test_exec(runtime: ContainerdRuntime, busybox: str) -> None:
    config = ContainerConfig(
        new_id("exec"), busybox, args=("sleep", "60"), env={"GREETING": "hi"}, workdir="/tmp"
    )
    async with running(runtime, config) as cid:
        result = await runtime.exec(cid, ["sh", "-c", 'echo "$GREETING $(pwd)"; exit 5'], 5)
        assert (result.exit_code, result.output) == (5, b"hi /tmp\n")
        big = await runtime.exec(cid, ["sh", "-c", "yes | head -c 100000"], 5)
        assert big.exit_code == 0
        assert big.output == b"y\n" * 2048
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await runtime.exec(cid, ["sleep", "30"], 0.5)
        assert time.monotonic() - started < 3
        with pytest.raises(RuntimeFailure):
            await runtime.exec(cid, ["/no/such/binary"], 5)
        assert (await runtime.exec(cid, ["true"], 5)).exit_code == 0


async def test_names_point_at_warrens_dns(runtime: ContainerdRuntime, busybox: str) -> None:
    names = ContainerNames(nameserver="10.32.64.1", address="10.32.64.7")
    config = ContainerConfig(new_id("names"), busybox, args=("sleep", "60"), names=names)
    async with running(runtime, config) as cid:
        resolv = await runtime.exec(cid, ["cat", "/etc/resolv.conf"], 5)
        assert resolv.output == b"nameserver 10.32.64.1\noptions ndots:0\n"
        hosts = await runtime.exec(cid, ["cat", "/etc/hosts"], 5)
        assert f"10.32.64.7\t{cid[:12]}\n".encode() in hosts.output


async def test_missing_image(runtime: ContainerdRuntime, registry: LocalRegistry) -> None:
    with pytest.raises(ImageNotFound) as raised:
        await runtime.pull(f"{registry.address}/nothing-here:latest")
    assert str(raised.value).startswith("image not found: ")


async def test_imported_image_runs_without_a_registry(
    containerd: LocalContainerd, busybox_archive: Path, tmp_path: Path
) -> None:
    # No registry configured, and docker.io is not reachable from the tests.
    namespace = new_id("import")
    rt = make_runtime(containerd, tmp_path, None, namespace)
    try:
        assert await rt.import_archive(busybox_archive) == ["docker.io/library/busybox:latest"]
        config = ContainerConfig(new_id("imported"), "busybox", args=("echo", "offline"))
        async with running(rt, config) as cid:
            assert (await asyncio.wait_for(rt.wait(cid), 10)).exit_code == 0
            assert await output(rt, cid) == ["offline"]
        assert await rt.pull(f"busybox@{manifest_digest(busybox_archive)}")
    finally:
        await rt.close()
        containerd.ctr(
            "images", "rm", "--sync", "docker.io/library/busybox:latest", namespace=namespace
        )


async def test_layered_image_defaults_and_whiteouts(
    containerd: LocalContainerd, busybox_archive: Path, tmp_path: Path
) -> None:
    namespace = new_id("layers")
    name = "registry.invalid/warren/layered:1"
    archive = layered_archive(busybox_archive, tmp_path / "layered.tar", name)
    rt = make_runtime(containerd, tmp_path / "state", None, namespace)
    try:
        assert await rt.import_archive(archive) == [name]
        config = ContainerConfig(new_id("layered"), name)
        async with running(rt, config) as cid:
            assert (await asyncio.wait_for(rt.wait(cid), 10)).exit_code == 0
            assert await output(rt, cid) == EXPECTED_OUTPUT
    finally:
        await rt.close()
        containerd.ctr("images", "rm", "--sync", name, namespace=namespace)


async def test_remove_leaves_nothing(
    runtime: ContainerdRuntime, busybox: str, containerd: LocalContainerd, tmp_path: Path
) -> None:
    config = ContainerConfig(new_id("rm"), busybox, args=("sleep", "60"), memory_limit_bytes=2**26)
    async with running(runtime, config) as cid:
        assert netns_path(cid).exists()
    with pytest.raises(NotFound):
        await runtime.inspect(cid)
    assert not netns_path(cid).exists()
    assert not (tmp_path / "state" / "containers" / cid).exists()
    assert not (CGROUP / "memory" / "warren" / cid).exists()
    client = ContainerdClient(str(containerd.socket), NAMESPACE)
    try:
        with pytest.raises(NotFound):
            request = containers_pb2.GetContainerRequest(id=cid)
            await client.call(client.api.containers.Get, request)
        with pytest.raises(NotFound):
            stat = snapshots_pb2.StatSnapshotRequest(snapshotter=SNAPSHOTTER, key=cid)
            await client.call(client.api.snapshots.Stat, stat)
        with pytest.raises(NotFound):
            await client.call(
                client.api.leases.Delete, leases_pb2.DeleteRequest(id=f"warren-{cid}")
            )
    finally:
        await client.close()
    await runtime.remove(cid)  # unknown IDs are ignored


async def test_restarted_runtime_reattaches(
    containerd: LocalContainerd, registry: LocalRegistry, busybox: str, tmp_path: Path
) -> None:
    script = "echo before; sleep 1; echo after; sleep 60"
    config = ContainerConfig(new_id("reattach"), busybox, args=("sh", "-c", script))
    first = make_runtime(containerd, tmp_path / "state", registry, NAMESPACE)
    second = make_runtime(containerd, tmp_path / "state", registry, NAMESPACE)
    try:
        await first.create(config)
        await first.start(config.container_id)
        await first.close()  # the agent goes away; the container keeps running
        found = {c.container_id: c for c in await second.list()}
        assert found[config.container_id].state == ContainerState.RUNNING
        await second.reattach(config.container_id)
        lines: list[str] = []
        async for entry in second.logs(config.container_id, follow=True):
            lines.append(entry.line.decode())
            if lines[-1] == "after":
                break
        assert lines == ["before", "after"]
        assert (await second.stop(config.container_id, 0.2)).exit_code == 137
    finally:
        await second.remove(config.container_id)
        await second.close()


async def test_containerd_unreachable(tmp_path: Path) -> None:
    rt = ContainerdRuntime(
        str(tmp_path / "nothing.sock"), state_dir=tmp_path, registry=RegistryConfig()
    )
    try:
        with pytest.raises(Unavailable) as raised:
            await rt.inspect("x")
        assert str(raised.value).startswith(f"containerd is not reachable at {tmp_path}")
    finally:
        await rt.close()
