"""Service reconciliation: compare a service's tasks with its spec and plan the
difference. Pure: the caller reads the store, applies the plan and re-runs on
change (or at ``Plan.wake_at``).

A slot is a replica number (replicated) or a node (global). Its current task is
its newest task with desired state RUNNING; tasks told to shut down are history.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from warren.core.constraints import parse_constraint
from warren.core.models import (
    Availability,
    Node,
    NodeStatus,
    RestartCondition,
    RestartPolicy,
    Service,
    ServiceMode,
    Task,
)
from warren.core.states import TaskState

# Dead history tasks kept per slot, for `ps` and for counting restart attempts.
HISTORY_LIMIT = 5

_FAILURES = frozenset({TaskState.FAILED, TaskState.REJECTED, TaskState.COMPLETE})

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
class _Slot:
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
class _SlotRule:
    """What the spec and the cluster allow in one slot."""

    wanted: bool  # the slot should have a task at all
    can_create: bool  # a new task may be started in it now


@dataclass
class _PlanBuilder:
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


def reconcile(service: Service, tasks: Sequence[Task], nodes: Sequence[Node], now: float) -> Plan:
    """Plan how to bring ``service``'s tasks (all of them, history included) to its spec."""
    nodes_by_id = {node.id: node for node in nodes}
    wanted = _wanted_slots(service, nodes_by_id)
    slots = _group_by_slot(tasks)
    plan = _PlanBuilder()
    kept: list[Task] = []
    movable: list[Task] = []  # kept tasks a rolling update may replace now
    for key in sorted(wanted | slots.keys()):
        slot = _Slot(key, tuple(slots.get(key, ())))
        rule = _slot_rule(key, wanted, nodes_by_id)
        survivor = _reconcile_slot(service.spec.restart_policy, slot, rule, nodes_by_id, now, plan)
        if survivor is not None:
            kept.append(survivor)
            if rule.can_create and not _node_down(survivor, nodes_by_id):
                movable.append(survivor)
        plan.remove.extend(_prunable(slot.history, service.spec.restart_policy, now))
    _roll_update(service.spec_version, kept, movable, plan)
    return plan.build()


def reconcile_removed_service(tasks: Sequence[Task]) -> Plan:
    """The service is gone: stop what still runs and delete what has stopped."""
    return Plan(
        shutdown=tuple(
            sorted(
                t.id
                for t in tasks
                if t.desired_state == TaskState.RUNNING and t.status.state.is_active
            )
        ),
        remove=tuple(sorted(t.id for t in tasks if t.status.state.is_terminal)),
    )


def restart_at(
    policy: RestartPolicy, dead: Task, slot_history: Sequence[Task], now: float
) -> float | None:
    """When ``dead`` may be replaced under ``policy``: a time (due if <= ``now``), or
    None if never. ``slot_history`` is every task of the slot, ``dead`` included.

    With a window, attempts expire: the restart becomes due once enough of the
    counted failures have left the window.
    """
    if not _condition_allows(policy.condition, dead.status.state):
        return None
    due = dead.status.timestamp + policy.delay
    if policy.max_attempts == 0:
        return due
    attempts = sorted(
        t.status.timestamp for t in slot_history if _counts_as_attempt(t, policy, now)
    )
    excess = len(attempts) - policy.max_attempts
    if excess <= 0:
        return due
    if policy.window == 0:
        return None
    return max(due, attempts[excess - 1] + policy.window)


def _condition_allows(condition: RestartCondition, state: TaskState) -> bool:
    if condition == RestartCondition.ON_FAILURE:
        return state in (TaskState.FAILED, TaskState.REJECTED)
    return condition == RestartCondition.ANY


def _counts_as_attempt(task: Task, policy: RestartPolicy, now: float) -> bool:
    if task.status.state not in _FAILURES:
        return False
    return policy.window == 0 or now - task.status.timestamp < policy.window


def _wanted_slots(service: Service, nodes: Mapping[str, Node]) -> set[SlotKey]:
    spec = service.spec
    if spec.mode == ServiceMode.REPLICATED:
        return {(n, "") for n in range(1, spec.replicas + 1)}
    # A global service keeps its task on a down or paused node; drain or a
    # constraint it no longer meets evicts it.
    return {
        (0, node.id)
        for node in nodes.values()
        if node.availability != Availability.DRAIN
        and all(parse_constraint(expr).matches(node) for expr in spec.constraints)
    }


def _slot_rule(key: SlotKey, wanted: set[SlotKey], nodes: Mapping[str, Node]) -> _SlotRule:
    if key not in wanted:
        return _SlotRule(wanted=False, can_create=False)
    slot, node_id = key
    if slot:
        return _SlotRule(wanted=True, can_create=True)
    return _SlotRule(wanted=True, can_create=nodes[node_id].schedulable)


def _group_by_slot(tasks: Iterable[Task]) -> dict[SlotKey, list[Task]]:
    slots: dict[SlotKey, list[Task]] = {}
    for task in sorted(tasks, key=lambda t: (t.created_at, t.id)):
        slots.setdefault(_slot_key(task), []).append(task)
    return slots


def _reconcile_slot(
    policy: RestartPolicy,
    slot: _Slot,
    rule: _SlotRule,
    nodes: Mapping[str, Node],
    now: float,
    plan: _PlanBuilder,
) -> Task | None:
    """Plan one slot; return its current task if it stays as it is."""
    current = slot.current
    # Only the newest RUNNING-desired task is current; any older one is a leftover.
    plan.shutdown.extend(
        t.id for t in slot.tasks if t.desired_state == TaskState.RUNNING and t is not current
    )
    if current is None:
        if rule.can_create:
            plan.replace(None, slot.key)
        return None
    if not rule.wanted:
        plan.shutdown.append(current.id)
        return None
    if current.status.state == TaskState.ORPHANED:
        # Its node went down: not a failure of the task, so no restart policy.
        if rule.can_create:
            plan.replace(current, slot.key)
        else:
            plan.shutdown.append(current.id)
        return None
    if current.status.state.is_terminal:
        return _restart(policy, current, slot, rule, now, plan)
    if _evicted(current, nodes):
        plan.replace(current, slot.key)
        return None
    return current


def _restart(
    policy: RestartPolicy,
    dead: Task,
    slot: _Slot,
    rule: _SlotRule,
    now: float,
    plan: _PlanBuilder,
) -> Task | None:
    """Replace a dead task if its restart policy allows; it stays current otherwise."""
    due = restart_at(policy, dead, slot.tasks, now)
    # A global slot on a paused or down node waits: the node's return re-runs us.
    if due is None or not rule.can_create:
        return dead
    if due > now:
        plan.wake(due)
        return dead
    plan.replace(dead, slot.key)
    return None


def _evicted(task: Task, nodes: Mapping[str, Node]) -> bool:
    """On a node that was drained or removed (a down node is left to the dispatcher)."""
    if not task.node_id:
        return False
    node = nodes.get(task.node_id)
    return node is None or node.availability == Availability.DRAIN


def _roll_update(
    spec_version: int, kept: Sequence[Task], movable: Sequence[Task], plan: _PlanBuilder
) -> None:
    """Replace one outdated task, once every up-to-date task is running.

    Outdated tasks that are not running do not hold the update back (they are
    about to be replaced) and go first: replacing them costs no availability.
    Dead ones are left to the restart policy.
    """
    if plan.create:
        return
    if any(t.status.state != TaskState.RUNNING for t in kept if t.spec_version >= spec_version):
        return
    candidates = [t for t in movable if t.spec_version < spec_version and t.status.state.is_active]
    if candidates:
        task = min(candidates, key=lambda t: (t.status.state == TaskState.RUNNING, _slot_key(t)))
        plan.replace(task, _slot_key(task))


def _node_down(task: Task, nodes: Mapping[str, Node]) -> bool:
    node = nodes.get(task.node_id)
    return node is not None and node.status == NodeStatus.DOWN


def _slot_key(task: Task) -> SlotKey:
    return (task.slot, "") if task.slot else (0, task.node_id)


def _prunable(history: Sequence[Task], policy: RestartPolicy, now: float) -> list[str]:
    """Dead history beyond the newest HISTORY_LIMIT, except failures that still
    count toward max attempts (pruning them would reset the restart limit)."""
    dead = [t for t in reversed(history) if t.status.state.is_terminal]
    return [
        t.id
        for t in dead[HISTORY_LIMIT:]
        if not (policy.max_attempts and _counts_as_attempt(t, policy, now))
    ]
