"""Task state machine: one ordered, forward-only sequence, guarded in one place."""

from __future__ import annotations

from enum import StrEnum

from warren.core.errors import FailedPrecondition


class TaskState(StrEnum):
    NEW = "new"
    PENDING = "pending"
    ASSIGNED = "assigned"
    PREPARING = "preparing"
    STARTING = "starting"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"
    REJECTED = "rejected"
    SHUTDOWN = "shutdown"
    ORPHANED = "orphaned"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @property
    def is_terminal(self) -> bool:
        return self.rank > _RANK[TaskState.RUNNING]

    @property
    def is_active(self) -> bool:
        """Not terminal: the task holds (or may soon hold) resources on a node."""
        return not self.is_terminal


# Terminal states share one rank: a task reaches exactly one of them.
_RANK: dict[TaskState, int] = {
    TaskState.NEW: 0,
    TaskState.PENDING: 1,
    TaskState.ASSIGNED: 2,
    TaskState.PREPARING: 3,
    TaskState.STARTING: 4,
    TaskState.RUNNING: 5,
    TaskState.COMPLETE: 6,
    TaskState.FAILED: 6,
    TaskState.REJECTED: 6,
    TaskState.SHUTDOWN: 6,
    TaskState.ORPHANED: 6,
}

# Where a task may be told to end up: it runs, or it is stopped.
DESIRED_STATES = frozenset({TaskState.RUNNING, TaskState.SHUTDOWN})


def can_transition(current: TaskState, new: TaskState) -> bool:
    """Forward-only: a state may only move to a later rank (or stay put).

    Staying in the same non-terminal state is allowed so that a status report
    can refresh its message; a terminal state never changes.
    """
    if current.is_terminal:
        return current == new
    return new.rank >= current.rank


def check_transition(current: TaskState, new: TaskState) -> None:
    if not can_transition(current, new):
        raise FailedPrecondition(f"task state cannot move from {current} to {new}")
