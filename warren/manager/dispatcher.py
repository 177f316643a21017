"""Worker sessions: registration, heartbeats, assignment streams, status reports.

Heartbeats stay in memory (they would flood the Raft log); only what they
change, a node going down, is written. Assignments are pushed: each session
recomputes its node's task set when a store event touches that node.

Each session also carries its node's ``NetworkView`` (warren.core.node_view):
sent after the session starts and again whenever it changes. What every node
shares of it is built once per change (``network_view.shared_view``).

It speaks domain events (``warren.manager.sessions``); protobuf stays in the
gRPC adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from warren.core.doctor import DoctorReport, DoctorRequest, no_answer
from warren.core.errors import (
    Conflict,
    NotFound,
    PermissionDenied,
    RuntimeFailure,
    Unavailable,
)
from warren.core.formats import field_format
from warren.core.models import Node, NodeStatus, Task, TaskStatus, new_id
from warren.core.node_view import NetworkView
from warren.core.states import TaskState
from warren.manager.command_format import cluster_format
from warren.manager.consensus import Consensus
from warren.manager.events import EventBus
from warren.manager.leader import require_leader
from warren.manager.network_view import SharedView, ViewCache, shared_view, view_for
from warren.manager.sessions import (
    Assignments,
    CancelLogs,
    LogEntry,
    LogsChunk,
    LogsRequest,
    ManagerEvent,
    NodeEvent,
    Registration,
    RoleUpdate,
    SessionStarted,
    StatusReport,
)
from warren.manager.store import Kind, barrier, put, task_status
from warren.manager.writes import changed, orphan_node_tasks, update_with_retry, write

log = logging.getLogger(__name__)

# Status reports are coalesced for this long before one Raft write per node.
_STATUS_FLUSH_PERIOD = 0.05
# Assignment pushes wait this long so a burst of task events sends one set.
_ASSIGNMENT_DEBOUNCE = 0.02
# A view is the whole cluster's services as the node sees them, so a burst of
# changes (hundreds of creates a second) goes out as one view every 0.2 s, or
# ten times what the last one took to build and send (at most 2 s), not one
# view per change: building, sending and applying each costs time in
# proportion to the cluster's size.
_VIEW_MIN_INTERVAL = 0.2
_VIEW_MAX_INTERVAL = 2.0
# What may change a network view; assignments follow task and node events only.
_VIEW_KINDS = frozenset({Kind.TASK, Kind.SERVICE, Kind.NETWORK, Kind.NODE})
# The command format that stores a node's WireGuard identity.
_WIREGUARD_FORMAT = field_format(Node.__dataclass_fields__["wireguard_public_key"])
# How often the live clock checks that the event loop is running.
_LIVE_CLOCK_TICK = 0.1


class LiveClock:
    """Monotonic time that stands still while the event loop is stalled.

    A heartbeat that arrives while the loop is blocked (a slow request, a big
    Raft apply holding the store lock) waits unread in a socket. Measuring a
    node's silence on this clock means a stalled loop is never taken for a
    silent node. Lateness of up to one tick is ordinary scheduling jitter.
    """

    def __init__(self, tick: float = _LIVE_CLOCK_TICK) -> None:
        self.tick = tick
        self._stalled = 0.0
        self._due: float | None = None  # when ``run`` should wake next; None: not running

    def now(self) -> float:
        current = time.monotonic()
        return current - self._stalled - self._excess(current)

    def _excess(self, current: float) -> float:
        # A stall still in progress (or not yet seen by ``run``) counts too.
        if self._due is None:
            return 0.0
        return max(0.0, current - self._due - self.tick)

    async def run(self) -> None:
        try:
            while True:
                self._due = time.monotonic() + self.tick
                await asyncio.sleep(self.tick)
                self._stalled += self._excess(time.monotonic())
        finally:
            self._stalled += self._excess(time.monotonic())
            self._due = None


@dataclass
class _Session:
    node_id: str
    # Set when the node's tasks changed or a message waits in the outbox.
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    assignments_dirty: bool = True
    outbox: list[ManagerEvent] = field(default_factory=list)
    # Task ID -> version the node was last sent; None until the first full set.
    sent: dict[str, int] | None = None
    # Set when the cluster's networks, services, tasks or nodes changed.
    view_dirty: bool = True
    # The last network view sent, at revision 0; None until the first.
    view_sent: NetworkView | None = None
    # When the last view went out (loop time), and a wake-up for one held back.
    view_sent_at: float = float("-inf")
    view_timer: asyncio.TimerHandle | None = None
    # Seconds the last view took to build, encode and send.
    view_cost: float = 0.0

    def mark_dirty(self) -> None:
        self.assignments_dirty = True
        self.wake.set()

    def mark_view_dirty(self) -> None:
        self.view_dirty = True
        self.wake.set()

    def send(self, message: ManagerEvent) -> None:
        self.outbox.append(message)
        self.wake.set()


class Dispatcher:
    def __init__(
        self,
        consensus: Consensus,
        bus: EventBus,
        node_down_timeout: float,
        managers: Callable[[], list[str]],
    ) -> None:
        self.consensus = consensus
        self.store = consensus.store
        self.bus = bus
        self.node_down_timeout = node_down_timeout
        self.heartbeat_period = max(0.2, min(5.0, node_down_timeout / 4))
        self._managers = managers
        self._sessions: dict[str, _Session] = {}
        # Heartbeats on the live clock: a stalled loop does not age them.
        self.clock = LiveClock()
        self._last_seen: dict[str, float] = {}
        self._pending: dict[str, dict[str, TaskStatus]] = {}
        self._leader_since = self.clock.now()
        self._log_streams: dict[str, asyncio.Queue[LogsChunk]] = {}
        # Doctor request ID -> node ID -> its report, while the request waits.
        self._doctor_answers: dict[str, dict[str, asyncio.Future[DoctorReport]]] = {}
        self._barrier: asyncio.Future[Any] | None = None
        # The latest shared part of the network views, reused by every session
        # at the same store revision.
        self._shared_view: SharedView | None = None
        self._view_cache = ViewCache()
        # Tasks that are endpoints in it: an event about one of them may
        # change a view even when the task no longer holds an address.
        self._endpoint_tasks: frozenset[str] = frozenset()

    # -- leader-only background work -------------------------------------------

    async def run(self) -> None:
        """Route events to sessions, flush status reports, detect down nodes."""
        self._leader_since = self.clock.now()
        async with asyncio.TaskGroup() as group:
            group.create_task(self.clock.run())
            group.create_task(self._route_events())
            group.create_task(self._flush_statuses())
            group.create_task(self._watch_heartbeats())

    async def _route_events(self) -> None:
        subscription = self.bus.subscribe(_VIEW_KINDS)
        try:
            async for event in subscription:
                if event.kind in (Kind.TASK, Kind.NODE):
                    node_id = event.object.node_id if event.kind is Kind.TASK else event.object.id
                    session = self._sessions.get(node_id)
                    if session is not None:
                        session.mark_dirty()
                if self._may_change_views(event.kind, event.object):
                    for session in self._sessions.values():
                        session.mark_view_dirty()
        finally:
            subscription.close()

    def _may_change_views(self, kind: Kind, obj: Any) -> bool:
        # A task that holds no address and was no endpoint is none now either
        # (most tasks of a cluster without networks).
        if kind is Kind.TASK:
            return bool(obj.networks) or obj.id in self._endpoint_tasks
        return True

    async def _flush_statuses(self) -> None:
        while True:
            await asyncio.sleep(_STATUS_FLUSH_PERIOD)
            if not self._pending:
                continue
            batches, self._pending = self._pending, {}
            now = time.time()
            results = await asyncio.gather(
                *(self.consensus.propose(task_status(n, u, now)) for n, u in batches.items()),
                return_exceptions=True,
            )
            for node_id, result in zip(batches, results, strict=True):
                if isinstance(result, BaseException):
                    log.warning("status reports from %s not committed: %s", node_id, result)
                    # Keep newer reports that arrived meanwhile; retry the rest.
                    merged = batches[node_id] | self._pending.get(node_id, {})
                    self._pending[node_id] = merged

    def close_sessions(self) -> None:
        """Leadership is lost: every session ends (with the leader's address)."""
        for session in list(self._sessions.values()):
            session.wake.set()

    async def _watch_heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_period / 2)
            now = self.clock.now()
            for node in self.store.list(Kind.NODE):
                if node.status == NodeStatus.DOWN and self._alive(node.id, now):
                    # Its session outlived a cut: it heartbeats again.
                    await self._mark_ready(node)
                    continue
                if node.status != NodeStatus.READY:
                    continue
                # After a leader change, every node gets a full timeout to reconnect.
                seen = max(self._last_seen.get(node.id, 0.0), self._leader_since)
                if now - seen > self.node_down_timeout:
                    await self._mark_down(node, f"no heartbeat for {now - seen:.1f}s")

    def _alive(self, node_id: str, now: float) -> bool:
        seen = self._last_seen.get(node_id, 0.0)
        return node_id in self._sessions and now - seen < self.heartbeat_period * 2

    async def _mark_ready(self, node: Node) -> None:
        ready = replace(node, status=NodeStatus.READY, status_message="", updated_at=time.time())
        try:
            await write(self.consensus, [put(ready, node.version)])
            log.info("node ready again", extra={"node_id": node.id})
        except (Conflict, Unavailable) as exc:
            log.info("marking %s ready deferred: %s", node.id, exc)

    async def _mark_down(self, node: Node, reason: str) -> None:
        now = time.time()
        down = replace(node, status=NodeStatus.DOWN, status_message=reason, updated_at=now)
        # Their tasks stay wanted: the node may come back before they are replaced.
        orphans = orphan_node_tasks(
            self.store, node.id, f"node down: {reason}", now, shut_down=False
        )
        try:
            await write(self.consensus, [put(down, node.version), *orphans])
            log.warning("node down", extra={"node_id": node.id, "reason": reason})
        except (Conflict, Unavailable) as exc:
            log.info("marking %s down deferred: %s", node.id, exc)

    # -- sessions ----------------------------------------------------------------

    def _require_leader(self) -> None:
        require_leader(self.consensus, "this manager is not the leader")

    async def session(
        self, node_id: str, requests: AsyncIterator[NodeEvent], peer_address: str = ""
    ) -> AsyncGenerator[ManagerEvent, None]:
        """A node's session; ``peer_address`` is the IP it connects from, its
        address in ``node ls`` unless it registers one (a manager's advertised one)."""
        self._require_leader()
        first = await anext(aiter(requests), None)
        if not isinstance(first, Registration):
            raise PermissionDenied("a session must start with register")
        await self._register(node_id, first, peer_address)
        session = _Session(node_id)
        previous = self._sessions.get(node_id)
        if previous is not None:
            previous.wake.set()
        self._sessions[node_id] = session
        self._last_seen[node_id] = self.clock.now()
        reader = asyncio.create_task(self._read(node_id, requests))
        try:
            yield SessionStarted(node_id, self.heartbeat_period, self._managers())
            session.mark_dirty()
            while not reader.done() and self._sessions.get(node_id) is session:
                await _wait_either(session.wake, reader)
                if reader.done() or self._sessions.get(node_id) is not session:
                    break
                self._require_leader()
                if self.store.find(Kind.NODE, node_id) is None:
                    # node rm --force of a live node: it learns at once, and stops.
                    raise PermissionDenied(f"node {node_id} was removed from this cluster")
                if session.assignments_dirty or session.view_dirty:
                    await asyncio.sleep(_ASSIGNMENT_DEBOUNCE)
                session.wake.clear()
                outbox, session.outbox = session.outbox, []
                for message in outbox:
                    yield message
                # The view first: a new task's network is set up before it starts
                # (an agent waits for the view that holds its task's networks).
                if session.view_dirty and self._view_due(session):
                    session.view_dirty = False
                    started = time.perf_counter()
                    view = self._view_if_changed(session)
                    if view is not None:
                        yield view  # resumed once encoded and sent
                        session.view_sent_at = asyncio.get_running_loop().time()
                        session.view_cost = time.perf_counter() - started
                if session.assignments_dirty:
                    session.assignments_dirty = False
                    assignments = self._assignments_if_changed(session)
                    if assignments is not None:
                        yield assignments
        finally:
            reader.cancel()
            if session.view_timer is not None:
                session.view_timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            if self._sessions.get(node_id) is session:
                del self._sessions[node_id]

    async def watch_role(self, node_id: str) -> AsyncGenerator[RoleUpdate, None]:
        """The role the cluster wants for a node: at once, then on every change.

        Leader only, and every update follows a barrier: a demoted node drops
        its Raft state on this word, so it must not come from a deposed
        leader's stale store. The stream ends when leadership is lost.
        """
        self._require_leader()
        subscription = self.bus.subscribe([Kind.NODE])
        sent: RoleUpdate | None = None
        try:
            while True:
                update = self._role_update(node_id)
                if update != sent:
                    await self._shared_barrier()
                    update = self._role_update(node_id)
                    sent = update
                    yield update
                # Any node event may change the manager list; wake up now and
                # then to notice a lost leadership.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.heartbeat_period):
                        await subscription.queue.get()
                subscription.drain()
                self._require_leader()
        finally:
            subscription.close()

    async def _shared_barrier(self) -> None:
        # Every node opens a role stream when a new leader is elected: they
        # share barriers rather than each writing one.
        if self._barrier is None or self._barrier.done():
            self._barrier = asyncio.ensure_future(self.consensus.propose(barrier()))
            # Retrieved here too: its waiters may all be gone when it fails.
            self._barrier.add_done_callback(lambda f: f.cancelled() or f.exception())
        await asyncio.shield(self._barrier)

    def _role_update(self, node_id: str) -> RoleUpdate:
        node = self.store.find(Kind.NODE, node_id)
        if node is None:
            raise PermissionDenied(f"node {node_id} is not part of this cluster (removed?)")
        return RoleUpdate(node.role, node.desired_role, self._managers())

    async def _register(self, node_id: str, register: Registration, peer_address: str) -> None:
        if self.store.find(Kind.NODE, node_id) is None:
            # A refused node stops for good: first be sure this store is current.
            await self._shared_barrier()

        # Managers of an older format could not apply a node's WireGuard identity:
        # until the cluster moves to its format, the node is kept out of the mesh.
        mesh = cluster_format(self.store) >= _WIREGUARD_FORMAT
        if not mesh and register.wireguard_public_key:
            log.warning(
                "node %s stays out of the network mesh until every manager is upgraded "
                "(the cluster is at command format %d)",
                node_id,
                cluster_format(self.store),
            )

        def registered(node: Node) -> Node | None:
            updated = replace(
                node,
                hostname=register.hostname or node.hostname,
                address=register.address or peer_address or node.address,
                resources=register.resources,
                status=NodeStatus.READY,
                status_message="",
                updated_at=time.time(),
                wireguard_public_key=register.wireguard_public_key if mesh else "",
                wireguard_port=register.wireguard_port if mesh else 0,
            )
            return changed(node, updated)

        try:
            await update_with_retry(self.consensus, Kind.NODE, node_id, registered)
        except NotFound:
            raise PermissionDenied(
                f"node {node_id} is not part of this cluster (removed?)"
            ) from None

    async def _read(self, node_id: str, requests: AsyncIterator[NodeEvent]) -> None:
        async for event in requests:
            self._last_seen[node_id] = self.clock.now()
            if isinstance(event, StatusReport):
                self._pending.setdefault(node_id, {}).update(event.statuses)
            elif isinstance(event, LogsChunk):
                stream = self._log_streams.get(event.request_id)
                if stream is not None:
                    stream.put_nowait(event)
            elif isinstance(event, DoctorReport):
                self._doctor_answered(node_id, event)

    def _doctor_answered(self, node_id: str, report: DoctorReport) -> None:
        answer = self._doctor_answers.get(report.request_id, {}).get(node_id)
        if answer is not None and not answer.done():
            # The session says which node this is, not the report.
            answer.set_result(replace(report, node_id=node_id))

    async def network_doctor(self, service: str, timeout: float) -> list[DoctorReport]:
        """Every node's network doctor report, by node ID: each connected node is
        asked over its session; one not connected, or silent for ``timeout``
        seconds, gets a failed row saying so. ``service`` is a service name ("": all)."""
        self._require_leader()
        request_id = new_id()
        nodes = sorted(self.store.list(Kind.NODE), key=lambda n: n.id)
        answers: dict[str, asyncio.Future[DoctorReport]] = {}
        self._doctor_answers[request_id] = answers
        loop = asyncio.get_running_loop()
        try:
            for node in nodes:
                session = self._sessions.get(node.id)
                if session is not None:
                    answers[node.id] = loop.create_future()
                    session.send(DoctorRequest(request_id, service))
            if answers:
                await asyncio.wait(answers.values(), timeout=timeout)
        finally:
            del self._doctor_answers[request_id]
        reports = []
        for node in nodes:
            name = node.hostname or node.id
            answer = answers.get(node.id)
            if answer is None:
                report = no_answer(
                    request_id, node.id, f"node {name} is not connected (status {node.status})"
                )
            elif answer.done():
                report = answer.result()
            else:
                answer.cancel()
                report = no_answer(
                    request_id, node.id, f"no answer from node {name} within {timeout:g}s"
                )
            reports.append(replace(report, hostname=node.hostname))
        return reports

    async def task_logs(self, task: Task, follow: bool, tail: int) -> AsyncIterator[LogEntry]:
        """Stream a task's log entries from its node, over the node's session."""
        session = self._sessions.get(task.node_id)
        if session is None:
            raise Unavailable(f"the node running {task.name} is not connected")
        request_id = new_id()
        chunks: asyncio.Queue[LogsChunk] = asyncio.Queue()
        self._log_streams[request_id] = chunks
        session.send(LogsRequest(request_id, task.id, follow, tail))
        done = False
        try:
            while not done:
                chunk = await chunks.get()
                for entry in chunk.entries:
                    yield entry
                done = chunk.done
                if chunk.error:
                    raise RuntimeFailure(f"logs of {task.name}: {chunk.error}")
        finally:
            del self._log_streams[request_id]
            if not done:
                session.send(CancelLogs(request_id))

    def _view_due(self, session: _Session) -> bool:
        """Whether the session may get a view now; if not, it wakes when it may."""
        loop = asyncio.get_running_loop()
        # A large view (its node applies it at a similar cost) goes out less often.
        interval = min(_VIEW_MAX_INTERVAL, max(_VIEW_MIN_INTERVAL, 10 * session.view_cost))
        wait = session.view_sent_at + interval - loop.time()
        if wait <= 0:
            return True
        if session.view_timer is None or session.view_timer.cancelled():
            session.view_timer = loop.call_later(wait, _wake_for_view, session)
        return False

    def _view_if_changed(self, session: _Session) -> NetworkView | None:
        view = view_for(self._current_shared_view(), session.node_id)
        # The revision moves with every write; only a change of content is news.
        content = replace(view, revision=0)
        if content == session.view_sent:
            return None
        session.view_sent = content
        return view

    def _current_shared_view(self) -> SharedView:
        shared = self._shared_view
        if shared is None or shared.revision != self.store.revision:
            shared = self._shared_view = shared_view(self.store.snapshot(), self._view_cache)
            self._endpoint_tasks = frozenset(
                e.task_id for service in shared.services for e in service.endpoints
            )
        return shared

    def _assignments_if_changed(self, session: _Session) -> Assignments | None:
        # Everything placed and not yet terminal: tasks to run and tasks to
        # stop. A task that leaves the set is one the node no longer owns. A
        # global task is bound to its node before the scheduler accepts it:
        # it is not the node's until it is assigned.
        current = {t.id: t for t in self.store.tasks_on_node(session.node_id) if _shipped(t)}
        previous = session.sent
        changed_tasks = [
            t for t in current.values() if previous is None or previous.get(t.id) != t.version
        ]
        removed = sorted(previous.keys() - current.keys()) if previous is not None else []
        if previous is not None and not changed_tasks and not removed:
            return None
        session.sent = {t.id: t.version for t in current.values()}
        return Assignments(changed_tasks, removed, full=previous is None)


def _shipped(task: Task) -> bool:
    state = task.status.state
    return state.is_active and state.rank >= TaskState.ASSIGNED.rank


def _wake_for_view(session: _Session) -> None:
    session.view_timer = None
    session.wake.set()


async def _wait_either(event: asyncio.Event, task: asyncio.Task[None]) -> None:
    waiter = asyncio.create_task(event.wait())
    try:
        await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
