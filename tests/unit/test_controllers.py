"""Controllers against a real Store through LocalConsensus: one pass at a time, then live."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from factories import make_node, make_service
from support import eventually

from warren.core.models import RestartCondition, RestartPolicy, Service, Task, TaskStatus
from warren.core.states import TaskState
from warren.manager.consensus import LocalConsensus
from warren.manager.controllers import Orchestrator, Scheduler
from warren.manager.events import EventBus
from warren.manager.store import (
    MUST_NOT_EXIST,
    Kind,
    Store,
    delete,
    put,
    raise_for_result,
    task_status,
    txn,
)

S = TaskState
NODES = ("n1", "n2", "n3")
NO_DELAY = RestartPolicy(RestartCondition.ANY, delay=0.0)


@dataclass
class Manager:
    """A leader's store and controllers, driven by hand."""

    store: Store
    consensus: LocalConsensus
    orchestrator: Orchestrator
    scheduler: Scheduler

    async def write(self, *ops: dict[str, Any]) -> Any:
        return raise_for_result(await self.consensus.propose(txn(list(ops), at=time.time())))

    async def create(self, service: Service) -> Service:
        await self.write(put(service, MUST_NOT_EXIST))
        return self.store.get(Kind.SERVICE, service.id)  # type: ignore[no-any-return]

    async def settle(self) -> None:
        """One orchestrator pass, then one scheduler pass."""
        await self.orchestrator.converge()
        await self.scheduler.schedule_pending()

    async def report(self, task: Task, state: S) -> None:
        status = TaskStatus(state, f"now {state}", timestamp=time.time())
        result = await self.consensus.propose(
            task_status(task.node_id, {task.id: status}, at=time.time())
        )
        assert result["applied"] == [task.id], result

    def tasks(self, service_id: str) -> list[Task]:
        return sorted(self.store.tasks_of_service(service_id), key=lambda t: (t.slot, t.created_at))

    def running(self, service_id: str) -> list[Task]:
        """Tasks meant to run (desired RUNNING)."""
        return [t for t in self.tasks(service_id) if t.desired_state == S.RUNNING]


@pytest.fixture
async def manager() -> AsyncIterator[Manager]:
    store = Store()
    consensus = LocalConsensus(store)
    await consensus.start()
    bus = EventBus(store, asyncio.get_running_loop())
    store.load(make_node(node_id) for node_id in NODES)
    try:
        yield Manager(store, consensus, Orchestrator(consensus, bus), Scheduler(consensus, bus))
    finally:
        await consensus.stop()


async def _deployed(manager: Manager, service: Service) -> Service:
    """Create ``service``, converge and place it; every task reported running."""
    service = await manager.create(service)
    await manager.settle()
    for task in manager.tasks(service.id):
        await manager.report(task, S.RUNNING)
    return service


async def test_six_replicas_are_spread_two_per_node(manager: Manager) -> None:
    service = await manager.create(make_service("web", replicas=6))
    await manager.orchestrator.converge()
    created = manager.tasks(service.id)
    assert [t.slot for t in created] == [1, 2, 3, 4, 5, 6]
    assert {t.status.state for t in created} == {S.NEW}
    assert all(t.spec == service.spec and t.spec_version == 1 for t in created)

    assert await manager.scheduler.schedule_pending() == 6
    placed = manager.tasks(service.id)
    assert {t.status.state for t in placed} == {S.ASSIGNED}
    assert Counter(t.node_id for t in placed) == {"n1": 2, "n2": 2, "n3": 2}
    assert Counter(t.node_id for t in manager.store.tasks_on_node("n1")) == {"n1": 2}


async def test_a_converged_service_needs_no_more_writes(manager: Manager) -> None:
    await _deployed(manager, make_service("web", replicas=3))
    revision = manager.store.revision
    await manager.settle()
    assert manager.store.revision == revision


async def test_scaling_down_shuts_the_extra_replicas_down(manager: Manager) -> None:
    service = await _deployed(manager, make_service("web", replicas=6))
    await manager.write(
        put(replace(service, spec=replace(service.spec, replicas=2)), service.version)
    )
    await manager.settle()
    tasks = manager.tasks(service.id)
    assert len(tasks) == 6  # the workers still have to stop them
    assert [t.slot for t in tasks if t.desired_state == S.RUNNING] == [1, 2]
    assert [t.slot for t in tasks if t.desired_state == S.SHUTDOWN] == [3, 4, 5, 6]
    assert {t.status.state for t in tasks} == {S.RUNNING}


async def test_deleting_a_service_shuts_down_then_removes_its_tasks(manager: Manager) -> None:
    service = await _deployed(manager, make_service("web", replicas=3))
    await manager.write(delete(Kind.SERVICE, service.id))
    await manager.settle()
    tasks = manager.tasks(service.id)
    assert len(tasks) == 3
    assert {t.desired_state for t in tasks} == {S.SHUTDOWN}

    # Not removed while a worker may still be running them.
    for task in tasks[:2]:
        await manager.report(task, S.SHUTDOWN)
    await manager.settle()
    assert [t.id for t in manager.tasks(service.id)] == [tasks[2].id]

    await manager.report(tasks[2], S.SHUTDOWN)
    await manager.settle()
    assert manager.tasks(service.id) == []
    assert manager.store.list(Kind.TASK) == []


async def test_an_orphaned_task_is_replaced(manager: Manager) -> None:
    service = await _deployed(manager, make_service("web", replicas=1))
    (old,) = manager.tasks(service.id)
    orphaned = replace(old, status=TaskStatus(S.ORPHANED, "node down", timestamp=time.time()))
    await manager.write(put(orphaned, old.version))

    await manager.settle()
    assert manager.store.get(Kind.TASK, old.id).desired_state == S.SHUTDOWN
    (new,) = manager.running(service.id)
    assert new.id != old.id
    assert new.slot == old.slot
    assert new.status.state == S.ASSIGNED


async def test_a_failed_task_with_restart_condition_none_is_not_replaced(
    manager: Manager,
) -> None:
    policy = RestartPolicy(RestartCondition.NONE, delay=0.0)
    service = await _deployed(manager, make_service("web", restart_policy=policy))
    (task,) = manager.tasks(service.id)
    await manager.report(task, S.FAILED)
    revision = manager.store.revision

    assert await manager.orchestrator.converge() is None
    await manager.scheduler.schedule_pending()
    assert manager.store.revision == revision
    assert [(t.id, t.status.state) for t in manager.tasks(service.id)] == [(task.id, S.FAILED)]


async def test_a_failed_task_with_restart_condition_any_is_replaced(manager: Manager) -> None:
    service = await _deployed(manager, make_service("web", restart_policy=NO_DELAY))
    (task,) = manager.tasks(service.id)
    await manager.report(task, S.FAILED)
    await manager.settle()
    (new,) = manager.running(service.id)
    assert new.id != task.id
    assert new.status.state == S.ASSIGNED
    assert manager.store.get(Kind.TASK, task.id).desired_state == S.SHUTDOWN


async def test_a_restart_delay_is_returned_as_the_wake_time(manager: Manager) -> None:
    policy = RestartPolicy(RestartCondition.ANY, delay=30.0)
    service = await _deployed(manager, make_service("web", restart_policy=policy))
    (task,) = manager.tasks(service.id)
    await manager.report(task, S.FAILED)
    failed_at = manager.store.get(Kind.TASK, task.id).status.timestamp
    assert await manager.orchestrator.converge() == pytest.approx(failed_at + 30.0)
    assert len(manager.tasks(service.id)) == 1


async def test_an_unplaceable_task_waits_as_pending_with_the_reason(manager: Manager) -> None:
    service = await manager.create(make_service("big", cpus=64.0))
    await manager.settle()
    (task,) = manager.tasks(service.id)
    assert task.node_id == ""
    assert task.status.state == S.PENDING
    assert task.status.err == "no suitable node (insufficient cpu on 3 nodes)"

    # Same reason next pass: nothing is rewritten.
    revision = manager.store.revision
    assert await manager.scheduler.schedule_pending() == 0
    assert manager.store.revision == revision


async def test_a_pending_task_is_placed_once_a_node_fits(manager: Manager) -> None:
    service = await manager.create(make_service("big", cpus=64.0))
    await manager.settle()
    await manager.write(put(make_node("huge", cpus=128.0), MUST_NOT_EXIST))
    assert await manager.scheduler.schedule_pending() == 1
    (task,) = manager.tasks(service.id)
    assert (task.node_id, task.status.state, task.status.err) == ("huge", S.ASSIGNED, "")


# --- the background loops ------------------------------------------------------------


async def test_the_running_loops_converge_a_new_service(manager: Manager) -> None:
    # Their first pass is a full resync, so no need to wait for them to subscribe.
    loops = [
        asyncio.create_task(manager.orchestrator.run()),
        asyncio.create_task(manager.scheduler.run()),
    ]
    try:
        service = await manager.create(make_service("web", replicas=3))

        def placed() -> bool:
            tasks = manager.tasks(service.id)
            return len(tasks) == 3 and all(t.status.state == S.ASSIGNED for t in tasks)

        await eventually(placed, 2.0, "3 tasks assigned")
        assert Counter(t.node_id for t in manager.tasks(service.id)) == dict.fromkeys(NODES, 1)

        # A failure is noticed and replaced without anyone calling converge().
        await manager.write(
            put(
                replace(service, spec=replace(service.spec, restart=NO_DELAY)),
                service.version,
            )
        )
        victim = manager.tasks(service.id)[0]
        await manager.report(victim, S.FAILED)
        await eventually(
            lambda: (
                len(manager.running(service.id)) == 3
                and all(t.status.state == S.ASSIGNED for t in manager.running(service.id))
                and victim.id not in {t.id for t in manager.running(service.id)}
            ),
            2.0,
            "3 assigned running tasks, the failed one replaced",
        )
    finally:
        for loop in loops:
            loop.cancel()
        for loop in loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
    assert all(loop.done() for loop in loops)
