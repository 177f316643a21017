"""What every orchestrator module shares: slots, and the plan they add to.

A slot is a replica number (replicated) or a node (global). Its current task is
its newest task with desired state RUNNING; tasks told to shut down are history.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from warren.core.models import Task
from warren.core.states import TaskState

# (slot, node ID): (N, "") for replica N, (0, node ID) for a global task.
SlotKey = tuple[int, str]


@dataclass(frozen=True)
class NewTask:
    """A task to create: slot >= 1 for a replica, or slot 0 bound to ``node_id`` (global)."""

    slot: int
    node_id: str = ""


@dataclass(frozen=True)
class Plan:
    create: tuple[NewTask, ...] = ()
    shutdown: tuple[str, ...] = ()  # task IDs whose desired state must become SHUTDOWN
    remove: tuple[str, ...] = ()  # dead task IDs to delete from the store (history pruning)
    wake_at: float | None = None  # earliest time a delayed restart becomes due


@dataclass(frozen=True)
class Slot:
    key: SlotKey
    tasks: tuple[Task, ...]  # oldest first

    @property
    def current(self) -> Task | None:
        running = [t for t in self.tasks if t.desired_state == TaskState.RUNNING]
        return running[-1] if running else None

    @property
    def history(self) -> list[Task]:
        return [t for t in self.tasks if t.desired_state == TaskState.SHUTDOWN]


@dataclass(frozen=True)
class SlotRule:
    """What the spec and the cluster allow in one slot."""

    wanted: bool  # the slot should have a task at all
    can_create: bool  # a new task may be started in it now


UNWANTED = SlotRule(wanted=False, can_create=False)


@dataclass
class PlanBuilder:
    create: list[NewTask] = field(default_factory=list)
    shutdown: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    wake_at: float | None = None

    def replace(self, task: Task | None, key: SlotKey) -> None:
        if task is not None:
            self.shutdown.append(task.id)
        self.create.append(NewTask(*key))

    def wake(self, at: float) -> None:
        self.wake_at = at if self.wake_at is None else min(self.wake_at, at)

    def build(self) -> Plan:
        return Plan(
            create=tuple(sorted(self.create, key=lambda n: (n.slot, n.node_id))),
            shutdown=tuple(sorted(self.shutdown)),
            remove=tuple(sorted(self.remove)),
            wake_at=self.wake_at,
        )


def slot_key(task: Task) -> SlotKey:
    return (task.slot, "") if task.slot else (0, task.node_id)


def group_by_slot(tasks: Iterable[Task]) -> dict[SlotKey, list[Task]]:
    slots: dict[SlotKey, list[Task]] = {}
    for task in sorted(tasks, key=lambda t: (t.created_at, t.id)):
        slots.setdefault(slot_key(task), []).append(task)
    return slots
