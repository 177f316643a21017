"""The worker agent: a session with a manager, executors for assigned tasks.

The manager pushes the node's complete task set on a stream; the agent
starts what is new, stops what is to be shut down or no longer listed, and
reports every state change. Reports made while no manager is reachable are
kept (the last per task) and sent when a session is back.

Cut off from every manager, the agent keeps its tasks running on its own: a
task that exits is restarted in place as its restart policy allows, also
after the agent itself restarted (see ``TaskExecutor``). The managers never
see it fail, so they create no replacement; if they replaced it anyway (the
node was marked down), the next assignment set leaves it out and it is
stopped here: one task per slot either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import grpc

from warren.agent.cache import TaskCache
from warren.agent.executor import TaskExecutor, TaskNetworking
from warren.agent.runtime import ContainerState, Runtime
from warren.core.doctor import CheckKind, CheckResult, DoctorCheck, DoctorReport, DoctorRequest
from warren.core.errors import NotFound, PermissionDenied, WarrenError
from warren.core.models import Resources, Task, TaskStatus
from warren.core.node_view import NetworkView
from warren.core.states import TaskState
from warren.proto import warren_pb2 as pb
from warren.proto import warren_pb2_grpc as pb_grpc
from warren.proto.convert import from_message, to_message
from warren.proto.errors import error_from_rpc, leader_hint
from warren.security.tls import IdentityFiles, manager_channel_options

log = logging.getLogger(__name__)

# Pings on the session: a cut that drops packets silently (no reset) ends the
# session within seconds, so the agent knows it is on its own.
_KEEPALIVE = [
    ("grpc.keepalive_time_ms", 2000),
    ("grpc.keepalive_timeout_ms", 2000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
# Longer than a silent cut takes to notice with the keepalive above.
_UNACKNOWLEDGED_END = 10.0
_REPORT_DEBOUNCE = 0.02
_CACHE_DEBOUNCE = 0.2
_LOG_BATCH_LINES = 200
_LOG_BATCH_SECONDS = 0.05


def node_resources() -> Resources:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return Resources(cpus=float(os.cpu_count() or 1), memory_bytes=memory)


def manager_channel(
    identity: IdentityFiles, address: str, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """A channel to ``address`` that accepts only a manager of the node's cluster."""
    ca, cert, key = identity.load()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )
    return grpc.aio.secure_channel(
        address, credentials, options=[*options, *manager_channel_options(address, ca)]
    )


@dataclass(frozen=True)
class WireGuardIdentity:
    """What the node publishes of itself in the mesh: its public key (base64)
    and the UDP port it listens on at its address."""

    public_key: str
    port: int


# Called with every network view the manager sends (warren.core.node_view),
# in the session's read loop: it hands the view over and returns quickly.
NetworkViewHandler = Callable[[NetworkView], Awaitable[None]]
# Runs the network doctor's checks on this node (warren.agent.network.doctor).
DoctorHandler = Callable[[DoctorRequest], Awaitable[DoctorReport]]


class NodeNetworking(TaskNetworking, Protocol):
    """The node's network controller as the agent sees it: it plugs tasks in,
    and after a restart learns which tasks still run."""

    async def resync(self, running: Iterable[Task]) -> None: ...


# The worker's end of a Dispatcher.Session stream.
SessionCall = grpc.aio.StreamStreamCall[pb.WorkerMessage, pb.ManagerMessage]


class Agent:
    def __init__(
        self,
        node_id: str,
        managers: list[str],
        identity: IdentityFiles,
        runtime: Runtime,
        data_dir: Path,
        hostname: str = "",
        address: str = "",
        resources: Resources | None = None,
        wireguard: WireGuardIdentity | None = None,
        on_network_view: NetworkViewHandler | None = None,
        networking: NodeNetworking | None = None,
        on_doctor: DoctorHandler | None = None,
    ) -> None:
        self.node_id = node_id
        self.managers = list(managers)
        self.identity = identity
        self.runtime = runtime
        self.hostname = hostname or socket.gethostname()
        self.address = address
        self.resources = resources or node_resources()
        self.wireguard = wireguard
        self.on_network_view = on_network_view
        # None: the node serves no networks, and says so to the doctor.
        self.on_doctor = on_doctor
        # Plugs networked tasks' containers in (None: tasks keep only loopback).
        self.networking = networking
        self.data_dir = data_dir
        self.cache = TaskCache(data_dir / "tasks.json")
        self.tasks: dict[str, Task] = {}
        self.executors: dict[str, TaskExecutor] = {}
        self._unsent: dict[str, TaskStatus] = {}
        self._call: SessionCall | None = None
        # One writer at a time on the session stream (gRPC allows no overlap).
        self._write_lock = asyncio.Lock()
        self._log_requests: dict[str, asyncio.Task[None]] = {}
        self._report_scheduled = False
        self._cache_dirty = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self.connected = asyncio.Event()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        # Held until done: the loop keeps only weak references to tasks.
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- startup: what was running before -------------------------------------

    async def recover(self) -> None:
        """Follow the cached tasks' containers again; restart lost ones in place.

        Containers that exited while the agent was down are followed too: their
        exit is handled like any other. No session is open yet, so a task's
        restart policy decides, as when disconnected.
        """
        self.tasks = self.cache.load()
        containers = {c.container_id: c for c in await self.runtime.list()}
        for task in self.tasks.values():
            if task.status.state.is_terminal or task.status.state.rank < TaskState.STARTING.rank:
                continue
            container = containers.get(task.id)
            executor = self._new_executor(task)
            if container is not None and container.state != ContainerState.CREATED:
                executor.attach()
            else:
                # Never started (or gone): nothing to follow.
                executor.recover_lost()
        # Containers that no task of ours explains are leftovers: remove them.
        for container_id in containers.keys() - self.executors.keys():
            with contextlib.suppress(WarrenError):
                await self.runtime.stop(container_id, 0)
                await self.runtime.remove(container_id)
        if self.networking is not None:
            # Running containers keep their interfaces; those of gone tasks go.
            running = [
                task
                for task in self.tasks.values()
                if task.id in containers and containers[task.id].state == ContainerState.RUNNING
            ]
            await self.networking.resync(running)

    def _new_executor(self, task: Task) -> TaskExecutor:
        executor = TaskExecutor(
            task, self.runtime, self._on_status, self._disconnected, self.networking
        )
        self.executors[task.id] = executor
        return executor

    def _revive_unacknowledged_ends(self) -> None:
        # A cut is noticed a few seconds late (keepalive): tasks that ended in
        # that time were reported into the void, so they restart here.
        for executor in self.executors.values():
            if executor.revive_if_recent(within=_UNACKNOWLEDGED_END):
                log.info("restarting %s locally: the link died as it ended", executor.task.id)

    def _disconnected(self) -> bool:
        # Without a session no manager can replace a task that exits: the
        # executor restarts it itself.
        return not self.connected.is_set()

    # -- main loop ---------------------------------------------------------------

    async def run(self) -> None:
        await self.recover()
        cache_writer = asyncio.create_task(self._write_cache())
        try:
            await self._sessions()
        finally:
            cache_writer.cancel()
            for executor in self.executors.values():
                await executor.close()
            self._save_cache()

    async def _sessions(self) -> None:
        backoff = 0.2
        index = 0
        while True:
            manager = self.managers[index % len(self.managers)]
            leader = None
            refused: PermissionDenied | None = None
            try:
                await self._session(manager)
            except grpc.RpcError as exc:
                leader = leader_hint(exc)
                error = error_from_rpc(exc)
                refused = error if isinstance(error, PermissionDenied) else None
                log.warning("session with %s ended: %s", manager, error)
            except WarrenError as exc:
                log.warning("session with %s ended: %s", manager, exc)
            finally:
                was_connected = self.connected.is_set()
                self.connected.clear()
                self._call = None
                if was_connected:
                    backoff = 0.2  # it worked for a while: start over quickly
                    self._revive_unacknowledged_ends()
            if refused is not None:
                await self._leave(refused)
            if leader is not None:
                # A follower named the leader: go there at once.
                if leader not in self.managers:
                    self.managers.append(leader)
                index = self.managers.index(leader)
                await asyncio.sleep(0.05)
                continue
            index += 1
            await asyncio.sleep(backoff + random.uniform(0, backoff / 2))
            backoff = min(backoff * 2, 5.0)

    async def _leave(self, refused: PermissionDenied) -> None:
        """The cluster refused this node (removed with node rm): retrying cannot
        help, and its tasks were replaced elsewhere. They stop, and so does the agent."""
        log.error("the cluster refused this node (%s); stopping its tasks", refused)
        await self.apply_assignments([])
        raise PermissionDenied(
            f"{refused}: this node stops; to join again, remove {self.data_dir.parent} "
            "and run 'warren worker join' with a join token"
        )

    async def _session(self, manager: str) -> None:
        async with manager_channel(self.identity, manager, _KEEPALIVE) as channel:
            stub = pb_grpc.DispatcherStub(channel)
            call = stub.Session()
            await call.write(pb.WorkerMessage(register=self.registration()))
            first = await call.read()
            # read() gives grpc.aio.EOF, not a message, once the manager has closed the stream.
            if not isinstance(first, pb.ManagerMessage) or first.WhichOneof("message") != "session":
                raise WarrenError("manager closed the session during registration")
            info = first.session
            if info.managers:
                self.managers = list(info.managers)
            self._call = call
            self.connected.set()
            log.info("session open", extra={"manager": manager, "node_id": self.node_id})
            # Everything known is resent: the manager may have missed reports.
            for task_id, executor in self.executors.items():
                self._unsent.setdefault(task_id, self._status_of(executor))
            self._schedule_report()
            heartbeat = asyncio.create_task(self._heartbeats(call, info.heartbeat_period))
            try:
                while True:
                    message = await call.read()
                    if not isinstance(message, pb.ManagerMessage):
                        return  # grpc.aio.EOF: the manager ended the session
                    await self._handle(message)
            finally:
                heartbeat.cancel()
                for request in self._log_requests.values():
                    request.cancel()
                self._log_requests.clear()

    def registration(self) -> pb.Register:
        """What the node says of itself as a session opens."""
        wireguard = self.wireguard or WireGuardIdentity(public_key="", port=0)
        return pb.Register(
            hostname=self.hostname,
            resources=to_message(self.resources, pb.Resources),
            address=self.address,
            wireguard_public_key=wireguard.public_key,
            wireguard_port=wireguard.port,
        )

    async def _handle(self, message: pb.ManagerMessage) -> None:
        kind = message.WhichOneof("message")
        if kind == "assignments":
            update = message.assignments
            changed = [from_message(Task, t) for t in update.tasks]
            if update.full:
                await self.apply_assignments(changed)
            else:
                await self.apply_changes(changed, list(update.removed))
        elif kind == "logs":
            request = message.logs
            task = asyncio.create_task(self._serve_logs(request))
            self._log_requests[request.request_id] = task
            task.add_done_callback(lambda _: self._log_requests.pop(request.request_id, None))
        elif kind == "cancel_logs":
            running = self._log_requests.get(message.cancel_logs.request_id)
            if running is not None:
                running.cancel()
        elif kind == "network_view" and self.on_network_view is not None:
            await self.on_network_view(from_message(NetworkView, message.network_view))
        elif kind == "doctor":
            # The checks take seconds: the session keeps reading meanwhile.
            self._spawn(self._serve_doctor(from_message(DoctorRequest, message.doctor)))

    async def _write(self, message: pb.WorkerMessage) -> None:
        call = self._call
        if call is None:
            raise WarrenError("no session")
        async with self._write_lock:
            await call.write(message)

    async def _heartbeats(self, call: SessionCall, period: float) -> None:
        while True:
            await asyncio.sleep(period)
            await self._write(pb.WorkerMessage(heartbeat=pb.Heartbeat()))

    async def _serve_doctor(self, request: DoctorRequest) -> None:
        """Run the doctor's checks and send the report (a failure is a failed row)."""
        try:
            report = await self.doctor_report(request)
            await self._write(pb.WorkerMessage(doctor=to_message(report, pb.DoctorReport)))
        except (WarrenError, grpc.RpcError, asyncio.InvalidStateError, RuntimeError) as exc:
            log.warning("network doctor report %s not sent: %s", request.request_id, exc)

    async def doctor_report(self, request: DoctorRequest) -> DoctorReport:
        if self.on_doctor is None:
            skipped = DoctorCheck(
                CheckKind.NODE, f"node {self.node_id}", CheckResult.SKIP, "serves no networks"
            )
            return DoctorReport(request.request_id, self.node_id, (skipped,))
        try:
            return await self.on_doctor(request)
        except Exception as exc:
            log.exception("network doctor failed")
            failed = DoctorCheck(
                CheckKind.NODE,
                f"node {self.node_id}",
                CheckResult.FAIL,
                f"the doctor failed on this node: {str(exc)[:300]}",
                "see the node's agent log",
            )
            return DoctorReport(request.request_id, self.node_id, (failed,))

    async def _serve_logs(self, request: pb.TaskLogsRequest) -> None:
        """Stream a container's output back in batches, ending with ``done``."""
        batch: list[pb.LogEntry] = []
        last_flush = time.monotonic()

        async def flush(done: bool = False, error: str = "") -> None:
            nonlocal batch, last_flush
            chunk = pb.LogsChunk(
                request_id=request.request_id, entries=batch, done=done, error=error
            )
            batch, last_flush = [], time.monotonic()
            await self._write(pb.WorkerMessage(logs=chunk))

        try:
            lines = self.runtime.logs(request.task_id, request.follow, request.tail or None)
            async for entry in lines:
                batch.append(
                    pb.LogEntry(timestamp=entry.timestamp, stream=entry.stream, line=entry.line)
                )
                if (
                    len(batch) >= _LOG_BATCH_LINES
                    or time.monotonic() - last_flush > _LOG_BATCH_SECONDS
                ):
                    await flush()
        except NotFound:
            await flush(done=True, error="no container (the task is not running on this node)")
        except WarrenError as exc:
            await flush(done=True, error=str(exc))
        else:
            await flush(done=True)

    # -- assignments -------------------------------------------------------------

    async def apply_assignments(self, tasks: list[Task]) -> None:
        """A complete set: anything not in it is no longer this node's."""
        assigned = {t.id: t for t in tasks}
        await self.apply_changes(tasks, list(self.executors.keys() - assigned.keys()))

    async def apply_changes(self, changed: list[Task], removed: list[str]) -> None:
        for task_id in removed:
            # No longer ours: stop it, whatever the manager thinks it was.
            executor = self.executors.pop(task_id, None)
            if executor is not None:
                await executor.stop()
            self.tasks.pop(task_id, None)
        for task in changed:
            self._apply_one(task)
        self._cache_dirty.set()

    def _apply_one(self, task: Task) -> None:
        executor = self.executors.get(task.id)
        known = self.tasks.get(task.id)
        # Keep our own, fresher status; take everything else from the manager.
        self.tasks[task.id] = task if known is None else replace(task, status=known.status)
        if task.desired_state == TaskState.SHUTDOWN:
            if executor is not None:
                self._spawn(executor.stop())
            elif not task.status.state.is_terminal:
                self._on_status(task.id, TaskStatus(TaskState.SHUTDOWN, "shut down before start"))
            return
        if executor is not None or task.status.state.rank < TaskState.ASSIGNED.rank:
            return
        if task.status.state == TaskState.ASSIGNED:
            self._new_executor(task).start()
        else:
            # The manager thinks it runs here, but nothing of it is left.
            self._on_status(
                task.id,
                TaskStatus(TaskState.FAILED, "container lost", err="not running on this worker"),
            )

    # -- status reports ------------------------------------------------------------

    def _status_of(self, executor: TaskExecutor) -> TaskStatus:
        task = self.tasks.get(executor.task.id, executor.task)
        return task.status

    def _on_status(self, task_id: str, status: TaskStatus) -> None:
        task = self.tasks.get(task_id)
        if task is not None:
            self.tasks[task_id] = replace(task, status=status)
        self._unsent[task_id] = status
        self._cache_dirty.set()
        self._schedule_report()

    def _schedule_report(self) -> None:
        if not self._report_scheduled:
            self._report_scheduled = True
            asyncio.get_running_loop().call_later(
                _REPORT_DEBOUNCE, lambda: self._spawn(self._send_reports())
            )

    async def _send_reports(self) -> None:
        self._report_scheduled = False
        call = self._call
        if call is None or not self._unsent:
            return
        batch, self._unsent = self._unsent, {}
        message = pb.StatusReport(
            statuses={k: to_message(v, pb.TaskStatus) for k, v in batch.items()}
        )
        try:
            await call.write(pb.WorkerMessage(status=message))
        except (grpc.RpcError, asyncio.InvalidStateError, RuntimeError):
            # Keep them for the next session; newer reports win.
            self._unsent = batch | self._unsent

    # -- cache ---------------------------------------------------------------------

    async def _write_cache(self) -> None:
        while True:
            await self._cache_dirty.wait()
            await asyncio.sleep(_CACHE_DEBOUNCE)
            self._cache_dirty.clear()
            await asyncio.to_thread(self.cache.write, self._encode_cache())

    def _encode_cache(self) -> bytes:
        # Encoded on the loop (the tasks change there), written in a thread.
        live = {
            tid: t
            for tid, t in self.tasks.items()
            if tid in self.executors or not t.status.state.is_terminal
        }
        return self.cache.encode(live)

    def _save_cache(self) -> None:
        self.cache.write(self._encode_cache())
