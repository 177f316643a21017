"""Leader-only controllers: they react to store events, with a periodic resync.

Each controller turns events into a set of things to look at, waits a short
debounce so a burst (1,000 new tasks) becomes one pass, calls a pure decision
function over a snapshot, and writes the result as compare-and-swap
operations. A write that lost a race is simply retried on the next pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from warren.core.errors import WarrenError
from warren.core.models import Service, Task, TaskStatus, new_id
from warren.core.states import TaskState
from warren.manager.consensus import Consensus
from warren.manager.events import EventBus, Subscription
from warren.manager.orchestrator import NewTask, Plan, reconcile, reconcile_removed_service
from warren.manager.scheduler import schedule
from warren.manager.snapshot import Snapshot
from warren.manager.store import MUST_NOT_EXIST, Kind, StoreEvent, delete, put, txn

log = logging.getLogger(__name__)

_DEBOUNCE = 0.02  # quiet time that ends a burst
_MAX_DELAY = 0.2  # a steady stream of events still gets a pass this often
_BATCH = 500  # operations per Raft command


async def write_ops(consensus: Consensus, ops: list[dict[str, Any]]) -> int:
    """Write best-effort batches; returns how many operations failed."""
    failures = 0
    for start in range(0, len(ops), _BATCH):
        chunk = ops[start : start + _BATCH]
        result = await consensus.propose(txn(chunk, at=time.time(), atomic=False))
        failures += sum(1 for r in result.get("results", []) if "error" in r)
    return failures


async def _gather_burst(subscription: Subscription, timeout: float | None) -> list[StoreEvent]:
    """Wait for events (or the timeout), then keep collecting until a quiet gap."""
    events: list[StoreEvent] = []
    try:
        first = await asyncio.wait_for(subscription.queue.get(), timeout)
    except TimeoutError:
        return events
    if first is None:
        raise asyncio.CancelledError("event subscription closed")
    events.append(first)
    deadline = time.monotonic() + _MAX_DELAY
    while time.monotonic() < deadline:
        await asyncio.sleep(_DEBOUNCE)
        more = subscription.drain()
        if not more:
            break
        events.extend(more)
    return events


class Orchestrator:
    """Keeps each service's tasks converged on its spec (replicated and global)."""

    def __init__(self, consensus: Consensus, bus: EventBus, resync_period: float = 10.0) -> None:
        self.consensus = consensus
        self.store = consensus.store
        self.bus = bus
        self.resync_period = resync_period

    async def run(self) -> None:
        subscription = self.bus.subscribe([Kind.SERVICE, Kind.TASK, Kind.NODE])
        try:
            await self._loop(subscription)
        finally:
            subscription.close()

    async def _loop(self, subscription: Subscription) -> None:
        next_resync = 0.0
        wake_at: float | None = None
        dirty: set[str] | None = None  # None: everything
        while True:
            timeout = max(0.0, min(next_resync, wake_at or next_resync) - time.monotonic())
            events = await _gather_burst(subscription, timeout)
            dirty = _dirty_services(events, dirty)
            if time.monotonic() >= next_resync or (wake_at and time.monotonic() >= wake_at):
                dirty = None
                next_resync = time.monotonic() + self.resync_period
            if dirty is not None and not dirty:
                continue
            try:
                wake = await self.converge(dirty)
            except WarrenError as exc:
                log.warning("orchestrator pass failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            dirty = set()
            wake_at = None if wake is None else time.monotonic() + max(0.0, wake - time.time())

    async def converge(self, service_ids: set[str] | None = None) -> float | None:
        """One pass over ``service_ids`` (all when None); returns the earliest wake time."""
        snapshot = self.store.snapshot()
        now = time.time()
        nodes = list(snapshot.nodes.values())
        ops: list[dict[str, Any]] = []
        wake: float | None = None
        ids = set(snapshot.task_ids_by_service) | set(snapshot.services)
        for service_id in sorted(ids if service_ids is None else service_ids):
            tasks = snapshot.tasks_of_service(service_id)
            service = snapshot.services.get(service_id)
            if service is None:
                plan = reconcile_removed_service(tasks)
            else:
                plan = reconcile(service, tasks, nodes, now)
            ops.extend(_plan_ops(snapshot, service, plan, now))
            if plan.wake_at is not None:
                wake = plan.wake_at if wake is None else min(wake, plan.wake_at)
        if ops:
            await write_ops(self.consensus, ops)
        return wake


def _dirty_services(events: Iterable[StoreEvent], dirty: set[str] | None) -> set[str] | None:
    if dirty is None:
        return None
    for event in events:
        if event.kind is Kind.SERVICE:
            dirty.add(event.object.id)
        elif event.kind is Kind.TASK:
            dirty.add(event.object.service_id)
        elif event.kind is Kind.NODE:
            # Node changes affect global services and tasks placed anywhere.
            return None
    return dirty


def _plan_ops(
    snapshot: Snapshot, service: Service | None, plan: Plan, now: float
) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = []
    for task_id in plan.shutdown:
        task = snapshot.tasks[task_id]
        ops.append(put(_shut_down(task, now), task.version))
    for task_id in plan.remove:
        ops.append(delete(Kind.TASK, task_id, snapshot.tasks[task_id].version))
    if service is not None:
        ops.extend(put(_new_task(service, new, now), MUST_NOT_EXIST) for new in plan.create)
    return ops


def _shut_down(task: Task, now: float) -> Task:
    task = replace(task, desired_state=TaskState.SHUTDOWN, updated_at=now)
    if not task.node_id and task.status.state.is_active:
        # Never placed, so no worker will report it stopped: it is stopped now.
        task = replace(
            task, status=TaskStatus(TaskState.SHUTDOWN, "shut down before placement", timestamp=now)
        )
    return task


def _new_task(service: Service, new: NewTask, now: float) -> Task:
    return Task(
        id=new_id(),
        service_id=service.id,
        service_name=service.spec.name,
        spec=service.spec,
        spec_version=service.spec_version,
        slot=new.slot,
        node_id=new.node_id,
        status=TaskStatus(TaskState.NEW, "created", timestamp=now),
        created_at=now,
        updated_at=now,
    )


class Scheduler:
    """Places new and pending tasks; debounced so a large service is one pass."""

    def __init__(self, consensus: Consensus, bus: EventBus, resync_period: float = 10.0) -> None:
        self.consensus = consensus
        self.store = consensus.store
        self.bus = bus
        self.resync_period = resync_period

    async def run(self) -> None:
        subscription = self.bus.subscribe([Kind.TASK, Kind.NODE])
        try:
            next_resync = 0.0
            while True:
                timeout = max(0.0, next_resync - time.monotonic())
                events = await _gather_burst(subscription, timeout)
                if time.monotonic() >= next_resync:
                    next_resync = time.monotonic() + self.resync_period
                elif not any(_wants_scheduling(e) for e in events):
                    continue
                try:
                    await self.schedule_pending()
                except WarrenError as exc:
                    log.warning("scheduling pass failed: %s", exc)
                    await asyncio.sleep(0.5)
        finally:
            subscription.close()

    async def schedule_pending(self) -> int:
        """Place every waiting task; returns how many were placed."""
        snapshot = self.store.snapshot()
        waiting = [t for t in snapshot.tasks.values() if _waiting(t)]
        if not waiting:
            return 0
        result = schedule(snapshot, waiting)
        now = time.time()
        ops: list[dict[str, Any]] = []
        for placement in result.placements:
            task = snapshot.tasks[placement.task_id]
            status = TaskStatus(TaskState.ASSIGNED, "scheduled", timestamp=now)
            ops.append(
                put(
                    replace(task, node_id=placement.node_id, status=status, updated_at=now),
                    task.version,
                )
            )
        for unplaceable in result.unplaceable:
            task = snapshot.tasks[unplaceable.task_id]
            if task.status.state == TaskState.PENDING and task.status.err == unplaceable.reason:
                continue  # unchanged: don't churn the log
            status = TaskStatus(
                TaskState.PENDING, "waiting for a node", err=unplaceable.reason, timestamp=now
            )
            ops.append(put(replace(task, status=status, updated_at=now), task.version))
        if ops:
            await write_ops(self.consensus, ops)
        return len(result.placements)


def _waiting(task: Task) -> bool:
    return task.desired_state == TaskState.RUNNING and task.status.state in (
        TaskState.NEW,
        TaskState.PENDING,
    )


def _wants_scheduling(event: StoreEvent) -> bool:
    if event.kind is Kind.NODE:
        return True
    task = event.object
    # A new task to place, or a task that stopped and freed its node's resources.
    return _waiting(task) or (bool(task.node_id) and task.status.state.is_terminal)
