"""Controllers against a real Store through LocalConsensus: one pass at a time, then live."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest
from factories import make_node, make_service

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
class Cluster:
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
async def cluster() -> AsyncIterator[Cluster]:
    store = Store()
    consensus = LocalConsensus(store)
    await consensus.start()
    bus = EventBus(store, asyncio.get_running_loop())
    store.load(make_node(node_id) for node_id in NODES)
    try:
        yield Cluster(store, consensus, Orchestrator(consensus, bus), Scheduler(consensus, bus))
    finally:
        await consensus.stop()


async def _deployed(cluster: Cluster, service: Service) -> Service:
    """Create ``service``, converge and place it; every task reported running."""
    service = await cluster.create(service)
    await cluster.settle()
    for task in cluster.tasks(service.id):
        await cluster.report(task, S.RUNNING)
    return service


async def test_six_replicas_are_spread_two_per_node(cluster: Cluster) -> None:
    service = await cluster.create(make_service("web", replicas=6))
    await cluster.orchestrator.converge()
    created = cluster.tasks(service.id)
    assert [t.slot for t in created] == [1, 2, 3, 4, 5, 6]
    assert {t.status.state for t in created} == {S.NEW}
    assert all(t.spec == service.spec and t.spec_version == 1 for t in created)

    assert await cluster.scheduler.schedule_pending() == 6
    placed = cluster.tasks(service.id)
    assert {t.status.state for t in placed} == {S.ASSIGNED}
    assert Counter(t.node_id for t in placed) == {"n1": 2, "n2": 2, "n3": 2}
    assert Counter(t.node_id for t in cluster.store.tasks_on_node("n1")) == {"n1": 2}


async def test_a_converged_service_needs_no_more_writes(cluster: Cluster) -> None:
    await _deployed(cluster, make_service("web", replicas=3))
    revision = cluster.store.revision
    await cluster.settle()
    assert cluster.store.revision == revision


async def test_scaling_down_shuts_the_extra_replicas_down(cluster: Cluster) -> None:
    service = await _deployed(cluster, make_service("web", replicas=6))
    await cluster.write(put(replace(service, spec=replace(service.spec, replicas=2)), service.version))
    await cluster.settle()
    tasks = cluster.tasks(service.id)
    assert len(tasks) == 6  # the workers still have to stop them
    assert [t.slot for t in tasks if t.desired_state == S.RUNNING] == [1, 2]
    assert [t.slot for t in tasks if t.desired_state == S.SHUTDOWN] == [3, 4, 5, 6]
    assert {t.status.state for t in tasks} == {S.RUNNING}


async def test_deleting_a_service_shuts_down_then_removes_its_tasks(cluster: Cluster) -> None:
    service = await _deployed(cluster, make_service("web", replicas=3))
    await cluster.write(delete(Kind.SERVICE, service.id))
    await cluster.settle()
    tasks = cluster.tasks(service.id)
    assert len(tasks) == 3
    assert {t.desired_state for t in tasks} == {S.SHUTDOWN}

    # Not removed while a worker may still be running them.
    for task in tasks[:2]:
        await cluster.report(task, S.SHUTDOWN)
    await cluster.settle()
    assert [t.id for t in cluster.tasks(service.id)] == [tasks[2].id]

    await cluster.report(tasks[2], S.SHUTDOWN)
    await cluster.settle()
    assert cluster.tasks(service.id) == []
    assert cluster.store.list(Kind.TASK) == []


async def test_an_orphaned_task_is_replaced(cluster: Cluster) -> None:
    service = await _deployed(cluster, make_service("web", replicas=1))
    (old,) = cluster.tasks(service.id)
    orphaned = replace(old, status=TaskStatus(S.ORPHANED, "node down", timestamp=time.time()))
    await cluster.write(put(orphaned, old.version))

    await cluster.settle()
    assert cluster.store.get(Kind.TASK, old.id).desired_state == S.SHUTDOWN
    (new,) = cluster.running(service.id)
    assert new.id != old.id
    assert new.slot == old.slot
    assert new.status.state == S.ASSIGNED


async def test_a_failed_task_with_restart_condition_none_is_not_replaced(
    cluster: Cluster,
) -> None:
    policy = RestartPolicy(RestartCondition.NONE, delay=0.0)
    service = await _deployed(cluster, make_service("web", restart_policy=policy))
    (task,) = cluster.tasks(service.id)
    await cluster.report(task, S.FAILED)
    revision = cluster.store.revision

    assert await cluster.orchestrator.converge() is None
    await cluster.scheduler.schedule_pending()
    assert cluster.store.revision == revision
    assert [(t.id, t.status.state) for t in cluster.tasks(service.id)] == [(task.id, S.FAILED)]


async def test_a_failed_task_with_restart_condition_any_is_replaced(cluster: Cluster) -> None:
    service = await _deployed(cluster, make_service("web", restart_policy=NO_DELAY))
    (task,) = cluster.tasks(service.id)
    await cluster.report(task, S.FAILED)
    await cluster.settle()
    (new,) = cluster.running(service.id)
    assert new.id != task.id
    assert new.status.state == S.ASSIGNED
    assert cluster.store.get(Kind.TASK, task.id).desired_state == S.SHUTDOWN


async def test_a_restart_delay_is_returned_as_the_wake_time(cluster: Cluster) -> None:
    policy = RestartPolicy(RestartCondition.ANY, delay=30.0)
    service = await _deployed(cluster, make_service("web", restart_policy=policy))
    (task,) = cluster.tasks(service.id)
    await cluster.report(task, S.FAILED)
    failed_at = cluster.store.get(Kind.TASK, task.id).status.timestamp
    assert await cluster.orchestrator.converge() == pytest.approx(failed_at + 30.0)
    assert len(cluster.tasks(service.id)) == 1


async def test_an_unplaceable_task_waits_as_pending_with_the_reason(cluster: Cluster) -> None:
    service = await cluster.create(make_service("big", cpus=64.0))
    await cluster.settle()
    (task,) = cluster.tasks(service.id)
    assert task.node_id == ""
    assert task.status.state == S.PENDING
    assert task.status.err == "no suitable node (insufficient cpu on 3 nodes)"

    # Same reason next pass: nothing is rewritten.
    revision = cluster.store.revision
    assert await cluster.scheduler.schedule_pending() == 0
    assert cluster.store.revision == revision


async def test_a_pending_task_is_placed_once_a_node_fits(cluster: Cluster) -> None:
    service = await cluster.create(make_service("big", cpus=64.0))
    await cluster.settle()
    await cluster.write(put(make_node("huge", cpus=128.0), MUST_NOT_EXIST))
    assert await cluster.scheduler.schedule_pending() == 1
    (task,) = cluster.tasks(service.id)
    assert (task.node_id, task.status.state, task.status.err) == ("huge", S.ASSIGNED, "")


# --- the background loops ------------------------------------------------------------


async def _eventually(check: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_the_running_loops_converge_a_new_service(cluster: Cluster) -> None:
    # Their first pass is a full resync, so no need to wait for them to subscribe.
    loops = [
        asyncio.create_task(cluster.orchestrator.run()),
        asyncio.create_task(cluster.scheduler.run()),
    ]
    try:
        service = await cluster.create(make_service("web", replicas=3))

        def placed() -> bool:
            tasks = cluster.tasks(service.id)
            return len(tasks) == 3 and all(t.status.state == S.ASSIGNED for t in tasks)

        await _eventually(placed)
        assert Counter(t.node_id for t in cluster.tasks(service.id)) == dict.fromkeys(NODES, 1)

        # A failure is noticed and replaced without anyone calling converge().
        await cluster.write(
            put(replace(service, spec=replace(service.spec, restart_policy=NO_DELAY)), service.version)
        )
        victim = cluster.tasks(service.id)[0]
        await cluster.report(victim, S.FAILED)
        await _eventually(
            lambda: len(cluster.running(service.id)) == 3
            and all(t.status.state == S.ASSIGNED for t in cluster.running(service.id))
            and victim.id not in {t.id for t in cluster.running(service.id)}
        )
    finally:
        for loop in loops:
            loop.cancel()
        for loop in loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
    assert all(loop.done() for loop in loops)
