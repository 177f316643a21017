"""The Runtime protocol on containerd (1.6, runc v2 shim, overlayfs snapshotter).

Lifecycle: ``create`` records the container (rootfs snapshot, OCI spec, network
namespace); ``start`` creates and starts its task with stdout/stderr on FIFOs
that Warren pumps into a log file. Exits come from containerd's event stream.
When the main process exits, Warren deletes the task at once (which waits for
the shim to flush the output), records the exit status in the container's
state directory, and only then wakes ``wait()``: the log is complete by then.
``remove`` deletes everything the container had.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from pathlib import Path
from typing import Any

from warren.agent.containerd.client import DEFAULT_NAMESPACE, DEFAULT_SOCKET, ContainerdClient
from warren.agent.containerd.containers import (
    STOP_SIGNAL_LABEL,
    Containers,
    container_labels,
    stored_spec,
    user_labels,
)
from warren.agent.containerd.events import EventStream, ProcessExit, timestamp_seconds
from warren.agent.containerd.execs import run_exec
from warren.agent.containerd.exits import Broadcast, Waiters
from warren.agent.containerd.hostfiles import container_hostname, write_host_files
from warren.agent.containerd.images import ImageStore, LocalImage
from warren.agent.containerd.leases import create_lease, delete_lease
from warren.agent.containerd.namespace_lock import NamespaceLock
from warren.agent.containerd.netns import create_netns, delete_netns, netns_path
from warren.agent.containerd.output import LOG_NAME, OutputCapture, fifo_path
from warren.agent.containerd.proto import containers_pb2, task_pb2, types_pb2
from warren.agent.containerd.runc_state import RuncState
from warren.agent.containerd.snapshots import Snapshots
from warren.agent.containerd.spec import build_spec, exec_process
from warren.agent.containerd.state import StateDir
from warren.agent.containerd.tasks import Tasks
from warren.agent.containerd.users import layer_dirs, read_image_file, resolve_user
from warren.agent.logfile import read_log
from warren.agent.runtime import (
    ContainerConfig,
    ContainerInfo,
    ContainerState,
    ExecResult,
    ExitStatus,
    LogEntry,
    LogStream,
    RuntimeEvent,
)
from warren.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RuntimeFailure,
    Unavailable,
    WarrenError,
)
from warren.registry.client import RegistryConfig

log = logging.getLogger(__name__)

_RUNNING = frozenset({task_pb2.RUNNING, task_pb2.PAUSED, task_pb2.PAUSING})


def signal_number(name: str) -> int:
    """A signal given as "SIGTERM", "TERM" or "15", as a number."""
    text = name.strip().upper()
    if text.isdigit():
        return int(text)
    try:
        return int(signal.Signals[text if text.startswith("SIG") else f"SIG{text}"])
    except KeyError:
        raise InvalidArgument(f"unknown signal {name!r}") from None


class ContainerdRuntime:
    name = "containerd"

    def __init__(
        self,
        socket: str = DEFAULT_SOCKET,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        state_dir: Path,
        registry: RegistryConfig,
        log_max_bytes: int = 10 * 2**20,
        log_max_files: int = 3,
        runc_root: Path | None = None,
        exclusive: bool = False,
    ) -> None:
        # A node's runtime owns its namespace (its agent removes containers it does
        # not know): no other live node may use it. `image import` only adds images.
        self._lock = (
            NamespaceLock.acquire(socket, namespace, f"pid {os.getpid()}, state in {state_dir}")
            if exclusive
            else None
        )
        self._client = ContainerdClient(socket, namespace)
        self._images = ImageStore(self._client, registry)
        self._snapshots = Snapshots(self._client)
        self._containers = Containers(self._client)
        self._tasks = Tasks(self._client)
        self._state = StateDir(state_dir)
        # runc's state for Warren's containers; apart from other clients' by default.
        self._runc_root = runc_root or state_dir / "runc"
        self._runc = RuncState(self._runc_root, namespace)
        self._log_limits = (log_max_bytes, log_max_files)
        self._captures: dict[str, OutputCapture] = {}
        self._waiters = Waiters()
        self._broadcast = Broadcast()
        self._oom: set[str] = set()
        self._finalizers: dict[str, asyncio.Task[ExitStatus]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._events = EventStream(self._client, self._on_exit, self._oom.add, self._recheck)

    # -- images ---------------------------------------------------------------

    async def pull(self, image: str) -> str:
        return (await self._images.get(image)).digest

    async def import_archive(self, path: Path) -> list[str]:
        """Import the images of an OCI archive (``warren image import``)."""
        return await self._images.import_archive(path)

    # -- lifecycle ------------------------------------------------------------

    async def create(self, config: ContainerConfig) -> None:
        container_id = config.container_id
        with contextlib.suppress(NotFound):
            await self._containers.get(container_id)
            # Checked first: the undo steps below would harm an existing one.
            raise AlreadyExists(f"container {container_id} already exists")
        # containerd has no such container, hence no task: a runc record left by
        # one that died with containerd's state would make its task fail to start.
        await self._runc.remove_dead(container_id)
        image = await self._images.get(config.image)
        async with contextlib.AsyncExitStack() as undo:
            # Each step registers its undo; success pops them all.
            directory = self._state.container(container_id)
            directory.mkdir(parents=True, exist_ok=True)
            undo.callback(self._state.remove, container_id)
            lease = f"warren-{container_id}"
            await create_lease(self._client, lease, expires=False)
            undo.push_async_callback(delete_lease, self._client, lease)
            mounts = await self._snapshots.prepare(container_id, image.chain_id, lease)
            undo.push_async_callback(self._snapshots.remove, container_id)
            netns = None
            if not config.host_network:
                netns = str(await create_netns(container_id))
                undo.push_async_callback(delete_netns, container_id)
            spec = self._spec(config, image, mounts, netns, directory)
            labels = container_labels(config.labels, config.stop_signal)
            await self._containers.create(
                container_id, image.name, labels, spec, self._runc_root, lease
            )
            undo.pop_all()

    def _spec(
        self,
        config: ContainerConfig,
        image: LocalImage,
        mounts: list[types_pb2.Mount],
        netns: str | None,
        directory: Path,
    ) -> dict[str, Any]:
        dirs = layer_dirs(mounts)
        user = resolve_user(
            config.user or image.config.user,
            read_image_file(dirs, "etc/passwd"),
            read_image_file(dirs, "etc/group"),
        )
        hostname = container_hostname(config.container_id, config.host_network)
        files = write_host_files(directory, hostname, config.host_network, config.names)
        return build_spec(config, image.config, user, hostname, netns, files)

    async def start(self, container_id: str) -> None:
        await self._containers.get(container_id)
        if self._state.was_started(container_id):
            raise FailedPrecondition(f"container {container_id} was started already")
        await self._events.ready()  # exits from here on are seen
        capture = self._capture(container_id)
        capture.start()
        directory = self._state.container(container_id)
        try:
            rootfs = await self._snapshots.mounts(container_id)
            await self._tasks.create(
                container_id,
                rootfs,
                str(fifo_path(directory, LogStream.STDOUT)),
                str(fifo_path(directory, LogStream.STDERR)),
            )
            try:
                await self._tasks.start(container_id)
            except WarrenError:
                await self._tasks.delete(container_id)
                raise
            self._state.mark_started(container_id)
        except WarrenError:
            await capture.stop()
            raise

    async def stop(self, container_id: str, grace_period: float) -> ExitStatus:
        process = await self._tasks.get(container_id)
        if process is None or process.status == task_pb2.CREATED:
            return await self._stop_unstarted(container_id, process is not None)
        waiter = asyncio.ensure_future(self.wait(container_id))
        try:
            if process.status in _RUNNING:
                container = await self._containers.get(container_id)
                stop_signal = container.labels.get(STOP_SIGNAL_LABEL, "SIGTERM")
                await self._tasks.kill(container_id, signal_number(stop_signal))
                try:
                    async with asyncio.timeout(grace_period):
                        return await asyncio.shield(waiter)
                except TimeoutError:
                    await self._tasks.kill(container_id, signal.SIGKILL, all_processes=True)
            return await waiter
        finally:
            waiter.cancel()

    async def _stop_unstarted(self, container_id: str, has_task: bool) -> ExitStatus:
        """A container that never ran: record it as stopped (exit 0)."""
        recorded = self._state.load_exit(container_id)
        if recorded is not None:
            return recorded
        await self._containers.get(container_id)  # NotFound for an unknown ID
        if has_task:
            await self._tasks.delete(container_id)
        status = ExitStatus(0, finished_at=time.time())
        self._state.save_exit(container_id, status)
        self._waiters.resolve(container_id, container_id, status)
        return status

    async def wait(self, container_id: str) -> ExitStatus:
        if container_id in self._finalizers:
            return await self._finalized(container_id)
        recorded = self._state.load_exit(container_id)
        if recorded is not None:
            return recorded
        # Expect the exit before looking, so one in between is not missed.
        future = self._waiters.expect(container_id, container_id)
        try:
            try:
                await self._events.ready()
                process = await self._tasks.get(container_id)
            except Unavailable:
                # containerd is away: once the event stream is back, _recheck
                # finds the exit, or the loss of the task, for this waiter.
                return await future
            if process is None:
                return await self._wait_taskless(container_id, future)
            if process.status == task_pb2.STOPPED:
                self._finalize(container_id, _process_exit(process))
                return await self._finalized(container_id)
            return await future
        finally:
            self._waiters.discard(container_id, container_id, future)

    async def _wait_taskless(
        self, container_id: str, future: asyncio.Future[ExitStatus]
    ) -> ExitStatus:
        if container_id in self._finalizers:
            return await self._finalized(container_id)
        recorded = self._state.load_exit(container_id)
        if recorded is not None:
            return recorded
        await self._containers.get(container_id)  # NotFound for an unknown ID
        if self._state.was_started(container_id):
            raise NotFound(f"container {container_id} lost its task (containerd restarted?)")
        return await future  # created, not started yet

    async def reattach(self, container_id: str) -> None:
        process = await self._tasks.get(container_id)
        if process is None:
            await self._containers.get(container_id)
            return
        await self._events.ready()
        # Pumping first: output written while no agent ran waits in the FIFOs,
        # also that of a container that has exited since.
        self._capture(container_id).start()
        if process.status == task_pb2.STOPPED:
            self._finalize(container_id, _process_exit(process))
            await self._finalized(container_id)

    async def remove(self, container_id: str) -> None:
        process = await self._tasks.get(container_id)
        if process is not None and process.status in _RUNNING:
            await self.stop(container_id, 0)
        if container_id in self._finalizers:
            with contextlib.suppress(Exception):
                await self._finalized(container_id)
        try:
            await self._tasks.delete(container_id)
        except RuntimeFailure as exc:
            # The exit handler may have deleted it already and the shim be gone
            # ("ttrpc: closed"): the rest of the clean-up must still happen.
            log.warning("deleting the task of %s: %s", container_id, exc)
        # The netns goes before the container record: whoever sees the record
        # gone (a test, an agent restarted mid-way) finds no netns left either.
        await delete_netns(container_id)
        capture = self._captures.pop(container_id, None)
        if capture is not None:
            await capture.stop()
        await self._snapshots.remove(container_id)
        await self._containers.delete(container_id)
        try:
            await self._runc.remove_dead(container_id)
        except WarrenError as exc:
            log.warning("runc's record of %s stays: %s", container_id, exc)
        await delete_lease(self._client, f"warren-{container_id}")
        self._state.remove(container_id)
        self._finalizers.pop(container_id, None)
        self._oom.discard(container_id)
        self._waiters.fail(container_id, NotFound(f"container {container_id} was removed"))

    # -- exits ----------------------------------------------------------------

    def _on_exit(self, event: ProcessExit) -> None:
        if event.process_id == event.container_id:
            self._finalize(event.container_id, event.status)
        else:
            self._waiters.resolve(event.container_id, event.process_id, event.status)

    def _recheck(self) -> None:
        """After (re)subscribing: look at what may have exited while not subscribed."""
        for container_id, process_id in self._waiters.pending():
            self._spawn(self._recheck_one(container_id, process_id))

    async def _recheck_one(self, container_id: str, process_id: str) -> None:
        exec_id = "" if process_id == container_id else process_id
        try:
            process = await self._tasks.get(container_id, exec_id)
        except WarrenError as exc:  # containerd went again: its next return rechecks
            log.debug("rechecking %s: %s", container_id, exc)
            return
        if process is not None and process.status == task_pb2.STOPPED:
            self._on_exit(ProcessExit(container_id, process_id, _process_exit(process)))
        elif process is None and not exec_id:
            self._lost_task(container_id)

    def _lost_task(self, container_id: str) -> None:
        """A started container's task is gone and no exit was seen: containerd
        restarted and found its shim dead (the exit it publishes then goes out
        before anyone can subscribe). Its waiters learn it now, not never."""
        if container_id in self._finalizers or self._state.load_exit(container_id) is not None:
            return
        if self._state.was_started(container_id):
            error = NotFound(f"container {container_id} lost its task (containerd restarted?)")
            self._waiters.fail(container_id, error)

    def _finalize(self, container_id: str, status: ExitStatus) -> None:
        """Finish an exited container once, however many paths notice the exit."""
        if container_id not in self._finalizers:
            finish = asyncio.ensure_future(self._finish(container_id, status))
            self._finalizers[container_id] = finish

    async def _finalized(self, container_id: str) -> ExitStatus:
        # Shielded: a waiter that gives up must not cancel the finishing.
        return await asyncio.shield(self._finalizers[container_id])

    async def _finish(self, container_id: str, status: ExitStatus) -> ExitStatus:
        recorded = self._state.container(container_id).is_dir()
        if recorded:
            self._state.save_exit(container_id, status)  # first: survives a crash below
        try:
            await self._tasks.delete(container_id)  # returns once the output is flushed
        except WarrenError as exc:
            log.warning("could not delete the task of %s: %s", container_id, exc)
        capture = self._captures.get(container_id)
        if capture is not None:
            await capture.stop()
        if container_id in self._oom:  # the OOM event may come after the exit
            status = ExitStatus(status.exit_code, True, status.finished_at)
            if recorded:
                self._state.save_exit(container_id, status)
        self._waiters.resolve(container_id, container_id, status)
        self._broadcast.publish(RuntimeEvent(container_id, status))
        return status

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- inspection -----------------------------------------------------------

    async def inspect(self, container_id: str) -> ContainerInfo:
        container = await self._containers.get(container_id)
        return self._info(container, await self._tasks.get(container_id))

    async def list(self) -> list[ContainerInfo]:
        containers = await self._containers.list_managed()
        processes = await self._tasks.list()
        return [self._info(c, processes.get(c.id)) for c in containers]

    def _info(
        self, container: containers_pb2.Container, process: task_pb2.Process | None
    ) -> ContainerInfo:
        state, pid, exit_status = ContainerState.CREATED, 0, None
        if process is None:
            exit_status = self._state.load_exit(container.id)
            if exit_status is not None or self._state.was_started(container.id):
                state = ContainerState.STOPPED
        elif process.status in _RUNNING:
            state, pid = ContainerState.RUNNING, int(process.pid)
        elif process.status == task_pb2.STOPPED:
            state, exit_status = ContainerState.STOPPED, _process_exit(process)
        return ContainerInfo(
            container_id=container.id,
            image=container.image,
            state=state,
            labels=user_labels(container),
            pid=pid,
            exit=exit_status,
        )

    def network_namespace(self, container_id: str) -> str | None:
        path = netns_path(container_id)
        return str(path) if path.exists() else None

    # -- exec -----------------------------------------------------------------

    async def exec(self, container_id: str, args: Sequence[str], timeout: float) -> ExecResult:
        container = await self._containers.get(container_id)
        process = exec_process(stored_spec(container), list(args))
        await self._events.ready()  # its exit must be seen
        directory = self._state.container(container_id)
        return await run_exec(self._tasks, self._waiters, directory, container_id, process, timeout)

    # -- output and events ----------------------------------------------------

    def _capture(self, container_id: str) -> OutputCapture:
        capture = self._captures.get(container_id)
        if capture is None:
            directory = self._state.container(container_id)
            capture = OutputCapture(directory, *self._log_limits)
            self._captures[container_id] = capture
        return capture

    async def logs(
        self, container_id: str, follow: bool = False, tail: int | None = None
    ) -> AsyncIterator[LogEntry]:
        directory = self._state.container(container_id)
        if not directory.is_dir():
            raise NotFound(f"container {container_id} not found")
        # Followed until remove() deletes the directory (with the log).
        async for entry in read_log(directory / LOG_NAME, follow, tail, directory.is_dir):
            yield entry

    def events(self) -> AsyncIterator[RuntimeEvent]:
        return self._broadcast.subscribe()

    async def close(self) -> None:
        """Stop following containers (they keep running) and disconnect."""
        await self._events.close()
        for task in [*self._background, *self._finalizers.values()]:
            task.cancel()
        self._finalizers.clear()
        for capture in self._captures.values():
            await capture.stop()
        self._captures.clear()
        await self._images.close()
        await self._client.close()
        if self._lock is not None:
            self._lock.release()


def _process_exit(process: task_pb2.Process) -> ExitStatus:
    return ExitStatus(int(process.exit_status), finished_at=timestamp_seconds(process.exited_at))
