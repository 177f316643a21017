"""From plans to store writes: one pass over a snapshot, as complete operations
(compare-and-swap puts and deletes) the controller only has to write."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from warren.core.models import Service, Task, TaskStatus, new_id
from warren.core.states import TaskState
from warren.manager.orchestrator.reconcile import reconcile, reconcile_removed_service
from warren.manager.orchestrator.slots import NewTask, Plan
from warren.manager.snapshot import Snapshot
from warren.manager.store import MUST_NOT_EXIST, Kind, delete, put


@dataclass(frozen=True)
class Converge:
    """One pass's writes, and the earliest time a delayed restart becomes due."""

    ops: tuple[dict[str, Any], ...] = ()
    wake_at: float | None = None


def converge(snapshot: Snapshot, service_ids: set[str] | None, now: float) -> Converge:
    """Plan every service in ``service_ids`` (all, including removed ones' leftover
    tasks, when None) and return the writes that carry the plans out."""
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
        ops.extend(plan_ops(snapshot, service, plan, now))
        if plan.wake_at is not None:
            wake = plan.wake_at if wake is None else min(wake, plan.wake_at)
    return Converge(tuple(ops), wake)


def plan_ops(
    snapshot: Snapshot, service: Service | None, plan: Plan, now: float
) -> list[dict[str, Any]]:
    """The writes for one service's plan, each conditional on the version it was planned from."""
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
