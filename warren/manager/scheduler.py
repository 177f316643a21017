"""Task placement: a pure filter/score pipeline over a snapshot. No I/O.

Filters, in order (a node that fails several is reported under the first):
ready and active, resources, constraints, max replicas per node. Scorers, in
order: spread (fewest tasks of the service meant to keep running), least
allocated, node ID.

A task told to shut down still holds its node's resources and counts toward
max replicas per node until it has stopped, but not toward the spread: a
rolling update places a slot's new task while the old one is still stopping,
and counting the old one would pile new tasks onto the lowest node ID.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from warren.core.constraints import parse_constraint
from warren.core.models import Node, Resources, Task
from warren.core.states import TaskState
from warren.manager.snapshot import Snapshot

NOT_READY = "node not ready or not active"
NO_CPU = "insufficient cpu"
NO_MEMORY = "insufficient memory"
CONSTRAINT = "constraint not met"
MAX_REPLICAS = "max replicas per node reached"
_FILTER_ORDER = (NOT_READY, NO_CPU, NO_MEMORY, CONSTRAINT, MAX_REPLICAS)

# Absorbs float rounding when fractional CPU reservations are summed.
_CPU_EPSILON = 1e-9


@dataclass(frozen=True)
class Placement:
    task_id: str
    node_id: str


@dataclass(frozen=True)
class Unplaceable:
    task_id: str
    reason: str


@dataclass(frozen=True)
class ScheduleResult:
    placements: tuple[Placement, ...]
    unplaceable: tuple[Unplaceable, ...]


@dataclass
class _NodeLoad:
    """What a node has committed: tasks holding resources, plus this pass's placements."""

    node: Node
    cpus: float = 0.0
    memory_bytes: int = 0
    tasks: int = 0

    def add(self, reservations: Resources) -> None:
        self.cpus += reservations.cpus
        self.memory_bytes += reservations.memory_bytes
        self.tasks += 1

    def allocated(self) -> tuple[float, int]:
        """Least-allocated score: the larger reserved fraction, then the task count."""
        capacity = self.node.resources
        cpu = self.cpus / capacity.cpus if capacity.cpus else 0.0
        memory = self.memory_bytes / capacity.memory_bytes if capacity.memory_bytes else 0.0
        return max(cpu, memory), self.tasks

    def resource_failure(self, reservations: Resources) -> str | None:
        capacity = self.node.resources
        if self.cpus + reservations.cpus > capacity.cpus + _CPU_EPSILON:
            return NO_CPU
        if self.memory_bytes + reservations.memory_bytes > capacity.memory_bytes:
            return NO_MEMORY
        return None


@dataclass(frozen=True)
class _Group:
    """Tasks that every filter treats alike, so they share one candidate heap."""

    service_id: str
    constraints: tuple[str, ...]
    reservations: Resources
    max_replicas_per_node: int

    @classmethod
    def of(cls, task: Task) -> _Group:
        spec = task.spec
        return cls(task.service_id, spec.constraints, spec.reservations, spec.max_replicas_per_node)


@dataclass
class _State:
    """Mutable bookkeeping for one ``schedule`` call."""

    loads: dict[str, _NodeLoad]
    # service ID -> node ID -> tasks of that service holding resources there.
    per_service: dict[str, Counter[str]] = field(default_factory=dict)
    # The same, without the tasks told to shut down: what the spread scorer counts.
    staying: dict[str, Counter[str]] = field(default_factory=dict)
    eligible_by_constraints: dict[tuple[str, ...], list[str]] = field(default_factory=dict)

    def service_count(self, service_id: str, node_id: str) -> int:
        counts = self.per_service.get(service_id)
        return counts[node_id] if counts else 0

    def staying_count(self, service_id: str, node_id: str) -> int:
        counts = self.staying.get(service_id)
        return counts[node_id] if counts else 0

    def place(self, group: _Group, node_id: str, *, leaving: bool = False) -> None:
        self.loads[node_id].add(group.reservations)
        self.per_service.setdefault(group.service_id, Counter())[node_id] += 1
        if not leaving:
            self.staying.setdefault(group.service_id, Counter())[node_id] += 1

    def static_eligible(self, constraints: tuple[str, ...]) -> list[str]:
        """Nodes passing the filters that no placement can change, cached per constraint set."""
        if constraints not in self.eligible_by_constraints:
            self.eligible_by_constraints[constraints] = [
                node_id
                for node_id, load in self.loads.items()
                if load.node.schedulable and _constraints_match(constraints, load.node)
            ]
        return self.eligible_by_constraints[constraints]

    def dynamic_failure(self, group: _Group, node_id: str) -> str | None:
        failure = self.loads[node_id].resource_failure(group.reservations)
        if failure is None and _replicas_full(group, self.service_count(group.service_id, node_id)):
            return MAX_REPLICAS
        return failure

    def first_failure(self, group: _Group, node_id: str) -> str | None:
        node = self.loads[node_id].node
        if not node.schedulable:
            return NOT_READY
        failure = self.loads[node_id].resource_failure(group.reservations)
        if failure is not None:
            return failure
        if not _constraints_match(group.constraints, node):
            return CONSTRAINT
        if _replicas_full(group, self.service_count(group.service_id, node_id)):
            return MAX_REPLICAS
        return None

    def score(self, group: _Group, node_id: str) -> tuple[int, float, int, str]:
        fraction, tasks = self.loads[node_id].allocated()
        return self.staying_count(group.service_id, node_id), fraction, tasks, node_id


def schedule(snapshot: Snapshot, tasks: Sequence[Task]) -> ScheduleResult:
    """Choose a node for each pending task; tasks already bound to a node are only checked."""
    state = _initial_state(snapshot, {task.id for task in tasks})
    placements: list[Placement] = []
    unplaceable: list[Unplaceable] = []
    # Bound (global) tasks first: they have nowhere else to go.
    for task in tasks:
        if task.node_id:
            reason = _check_bound(state, task)
            if reason is None:
                placements.append(Placement(task.id, task.node_id))
            else:
                unplaceable.append(Unplaceable(task.id, reason))
    for group, members in _group_unbound(tasks).items():
        placed, reason = _place_group(state, group, len(members))
        placements.extend(Placement(t.id, n) for t, n in zip(members, placed, strict=False))
        unplaceable.extend(Unplaceable(t.id, reason) for t in members[len(placed) :])
    return ScheduleResult(tuple(placements), tuple(unplaceable))


def _initial_state(snapshot: Snapshot, pending_ids: set[str]) -> _State:
    state = _State(loads={nid: _NodeLoad(snapshot.nodes[nid]) for nid in sorted(snapshot.nodes)})
    for task in snapshot.tasks.values():
        # Tasks being scheduled now are counted when (and if) they are placed.
        if task.holds_resources and task.id not in pending_ids and task.node_id in state.loads:
            leaving = task.desired_state != TaskState.RUNNING
            state.place(_Group.of(task), task.node_id, leaving=leaving)
    return state


def _group_unbound(tasks: Iterable[Task]) -> dict[_Group, list[Task]]:
    groups: dict[_Group, list[Task]] = {}
    for task in tasks:
        if not task.node_id:
            groups.setdefault(_Group.of(task), []).append(task)
    return groups


def _check_bound(state: _State, task: Task) -> str | None:
    if task.node_id not in state.loads:
        return f"node {task.node_id} not found"
    group = _Group.of(task)
    failure = state.first_failure(group, task.node_id)
    if failure is not None:
        return _explain(Counter([failure]))
    state.place(group, task.node_id)
    return None


def _place_group(state: _State, group: _Group, count: int) -> tuple[list[str], str]:
    """Place up to ``count`` tasks of ``group``; return their nodes and, if some
    did not fit, why (identical tasks fail identically, so one reason covers them).

    Placing a task only changes its own node's score, so a heap keyed on the
    score hands out nodes in order; a node that fails a dynamic filter can only
    fail it again for this group, so it is dropped.
    """
    heap = [state.score(group, nid) for nid in state.static_eligible(group.constraints)]
    heapq.heapify(heap)
    chosen: list[str] = []
    while len(chosen) < count and heap:
        node_id = heap[0][-1]
        if state.dynamic_failure(group, node_id) is not None:
            heapq.heappop(heap)
            continue
        state.place(group, node_id)
        chosen.append(node_id)
        heapq.heapreplace(heap, state.score(group, node_id))
    reason = "" if len(chosen) == count else _explain_group(state, group)
    return chosen, reason


def _explain_group(state: _State, group: _Group) -> str:
    failures = (state.first_failure(group, node_id) for node_id in state.loads)
    return _explain(Counter(failure for failure in failures if failure is not None))


def _explain(failures: Counter[str]) -> str:
    """E.g. ``no suitable node (constraint not met on 2 nodes; insufficient memory on 1 node)``."""
    if not failures:
        return "no suitable node (no nodes in the cluster)"
    ordered = sorted(failures.items(), key=lambda item: (-item[1], _FILTER_ORDER.index(item[0])))
    parts = [f"{name} on {n} node{'' if n == 1 else 's'}" for name, n in ordered]
    return f"no suitable node ({'; '.join(parts)})"


def _constraints_match(constraints: tuple[str, ...], node: Node) -> bool:
    return all(parse_constraint(expr).matches(node) for expr in constraints)


def _replicas_full(group: _Group, count: int) -> bool:
    return 0 < group.max_replicas_per_node <= count
