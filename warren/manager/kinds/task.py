"""Tasks: found by service and by node; states only move forward. A backup
keeps them, but a restored cluster starts without: the orchestrator creates
them afresh."""

from __future__ import annotations

from warren.core.errors import AlreadyExists, FailedPrecondition
from warren.core.models import Task
from warren.core.states import TaskState, check_transition
from warren.manager.kinds.base import BackupRule, Index, Kind, KindSpec, StoreView, register

BY_SERVICE = "service"
BY_NODE = "node"
BY_ADDRESS = "address"


def _service(task: Task) -> tuple[str, ...]:
    return (task.service_id,)


def _node(task: Task) -> tuple[str, ...]:
    return (task.node_id,) if task.node_id else ()


def _addresses(task: Task) -> tuple[str, ...]:
    """The addresses a task holds: until its node has stopped it (the allocator
    frees them then)."""
    if not task.holds_resources:
        return ()
    return tuple(attachment.ip for attachment in task.networks)


def _unique_addresses(view: StoreView, old: Task | None, new: Task) -> None:
    for ip in _addresses(new):
        if view.indexed(Kind.TASK, BY_ADDRESS, ip) - {new.id}:
            raise AlreadyExists(f"address {ip} is already held by another task")


def _moves_forward(view: StoreView, old: Task | None, new: Task) -> None:
    if old is None:
        return
    check_transition(old.status.state, new.status.state)
    if old.desired_state == TaskState.SHUTDOWN and new.desired_state == TaskState.RUNNING:
        raise FailedPrecondition(f"task {new.id} was shut down; it cannot run again")
    if old.node_id and new.node_id != old.node_id:
        raise FailedPrecondition(f"task {new.id} is already assigned to another node")


register(
    KindSpec(
        Kind.TASK,
        Task,
        indexes=(
            Index(BY_SERVICE, _service),
            Index(BY_NODE, _node),
            Index(BY_ADDRESS, _addresses),
        ),
        invariants=(_moves_forward, _unique_addresses),
        backup=BackupRule("tasks"),
    )
)
