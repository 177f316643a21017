"""Task placement: a pure filter/score pipeline over a snapshot. No I/O.

Filters (``FILTERS``, in order; a node that fails several is reported under
the first): ready and active, cpu, memory, constraints, max replicas per node.
A filter is one class following ``Filter``: add it to ``FILTERS`` and
``schedule`` checks it and explains with it. Scorers, in order: spread (fewest
tasks of the service meant to keep running), least allocated, node ID.

A task told to shut down still holds its node's resources and counts toward
max replicas per node until it has stopped, but not toward the spread: a
rolling update places a slot's new task while the old one is still stopping,
and counting the old one would pile new tasks onto the lowest node ID.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from warren.core.constraints import parse_constraint
from warren.core.errors import WarrenError
from warren.core.models import Node, Resources, Task, TaskStatus
from warren.core.networks import Network, NetworkAttachment
from warren.core.states import TaskState
from warren.manager.allocator import allocate_task
from warren.manager.allocator.state import WorkingState
from warren.manager.allocator.view import allocator_state
from warren.manager.snapshot import Snapshot
from warren.manager.store import put

NOT_READY = "node not ready or not active"
NO_CPU = "insufficient cpu"
NO_MEMORY = "insufficient memory"
CONSTRAINT = "constraint not met"
MAX_REPLICAS = "max replicas per node reached"

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
class NodeLoad:
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


@dataclass(frozen=True)
class TaskGroup:
    """What filters and scorers read of a task: tasks alike share one candidate heap."""

    service_id: str
    constraints: tuple[str, ...]
    reservations: Resources
    max_replicas_per_node: int

    @classmethod
    def of(cls, task: Task) -> TaskGroup:
        spec = task.spec
        placement = spec.placement
        return cls(
            task.service_id,
            placement.constraints,
            spec.resources.reservations,
            placement.max_replicas_per_node,
        )


class Filter(Protocol):
    """One reason a node cannot take a task.

    A ``static`` filter reads only the node and ``key(group)``, so the pipeline
    asks it once per node and key in a pass; any other filter also reads what
    the pass has placed (``PassState``) and is asked before every placement.
    """

    name: str  # the reason, as explanations show it
    static: bool

    def key(self, group: TaskGroup) -> Hashable:
        """What of the task a static filter's verdict depends on."""
        ...

    def check(self, load: NodeLoad, group: TaskGroup, state: PassState) -> bool:
        """Whether the node may take one more task of ``group``."""
        ...

    def explain(self, nodes: int) -> str:
        """Why ``nodes`` nodes said no, e.g. ``constraint not met on 3 nodes``."""
        ...


class _NamedFilter:
    """Explains itself by name; dynamic unless a subclass says otherwise."""

    name: str
    static: bool = False

    def key(self, group: TaskGroup) -> Hashable:
        return None

    def explain(self, nodes: int) -> str:
        return f"{self.name} on {nodes} node{'' if nodes == 1 else 's'}"


class ReadyFilter(_NamedFilter):
    name = NOT_READY
    static = True

    def check(self, load: NodeLoad, group: TaskGroup, state: PassState) -> bool:
        return load.node.schedulable


class CpuFilter(_NamedFilter):
    name = NO_CPU

    def check(self, load: NodeLoad, group: TaskGroup, state: PassState) -> bool:
        wanted = load.cpus + group.reservations.cpus
        return wanted <= load.node.resources.cpus + _CPU_EPSILON


class MemoryFilter(_NamedFilter):
    name = NO_MEMORY

    def check(self, load: NodeLoad, group: TaskGroup, state: PassState) -> bool:
        wanted = load.memory_bytes + group.reservations.memory_bytes
        return wanted <= load.node.resources.memory_bytes


class ConstraintFilter(_NamedFilter):
    name = CONSTRAINT
    static = True

    def key(self, group: TaskGroup) -> Hashable:
        return group.constraints

    def check(self, load: NodeLoad, group: TaskGroup, state: PassState) -> bool:
        return all(parse_constraint(expr).matches(load.node) for expr in group.constraints)


class MaxReplicasFilter(_NamedFilter):
    name = MAX_REPLICAS

    def check(self, load: NodeLoad, group: TaskGroup, state: PassState) -> bool:
        limit = group.max_replicas_per_node
        return limit == 0 or state.service_count(group.service_id, load.node.id) < limit


FILTERS: tuple[Filter, ...] = (
    ReadyFilter(),
    CpuFilter(),
    MemoryFilter(),
    ConstraintFilter(),
    MaxReplicasFilter(),
)


@dataclass
class PassState:
    """Mutable bookkeeping for one ``schedule`` call."""

    loads: dict[str, NodeLoad]
    filters: tuple[Filter, ...] = FILTERS
    # service ID -> node ID -> tasks of that service holding resources there.
    per_service: dict[str, Counter[str]] = field(default_factory=dict)
    # The same, without the tasks told to shut down: what the spread scorer counts.
    staying: dict[str, Counter[str]] = field(default_factory=dict)
    eligible_by_key: dict[tuple[Hashable, ...], list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.static_filters = tuple(f for f in self.filters if f.static)
        self.dynamic_filters = tuple(f for f in self.filters if not f.static)

    def service_count(self, service_id: str, node_id: str) -> int:
        counts = self.per_service.get(service_id)
        return counts[node_id] if counts else 0

    def staying_count(self, service_id: str, node_id: str) -> int:
        counts = self.staying.get(service_id)
        return counts[node_id] if counts else 0

    def place(self, group: TaskGroup, node_id: str, *, leaving: bool = False) -> None:
        self.loads[node_id].add(group.reservations)
        self.per_service.setdefault(group.service_id, Counter())[node_id] += 1
        if not leaving:
            self.staying.setdefault(group.service_id, Counter())[node_id] += 1

    def static_eligible(self, group: TaskGroup) -> list[str]:
        """Nodes passing the filters that no placement can change, cached per key."""
        key = tuple(f.key(group) for f in self.static_filters)
        if key not in self.eligible_by_key:
            self.eligible_by_key[key] = [
                node_id
                for node_id, load in self.loads.items()
                if all(f.check(load, group, self) for f in self.static_filters)
            ]
        return self.eligible_by_key[key]

    def fits_now(self, group: TaskGroup, node_id: str) -> bool:
        """The dynamic filters, for a node that passed the static ones."""
        load = self.loads[node_id]
        # A plain loop: the hot path of a pass, and all() over a generator costs more.
        for dynamic in self.dynamic_filters:  # noqa: SIM110
            if not dynamic.check(load, group, self):
                return False
        return True

    def first_failure(self, group: TaskGroup, node_id: str) -> Filter | None:
        load = self.loads[node_id]
        return next((f for f in self.filters if not f.check(load, group, self)), None)

    def score(self, group: TaskGroup, node_id: str) -> tuple[int, float, int, str]:
        fraction, tasks = self.loads[node_id].allocated()
        return self.staying_count(group.service_id, node_id), fraction, tasks, node_id

    def explain(self, failures: Counter[Filter]) -> str:
        """E.g. ``no suitable node (constraint not met on 2 nodes; insufficient cpu on 1 node)``."""
        if not failures:
            return "no suitable node (no nodes in the cluster)"
        order = {f: i for i, f in enumerate(self.filters)}
        ordered = sorted(failures.items(), key=lambda item: (-item[1], order[item[0]]))
        return f"no suitable node ({'; '.join(f.explain(n) for f, n in ordered)})"


def schedule(
    snapshot: Snapshot, tasks: Sequence[Task], filters: tuple[Filter, ...] = FILTERS
) -> ScheduleResult:
    """Choose a node for each pending task; tasks already bound to a node are only checked."""
    state = _initial_state(snapshot, {task.id for task in tasks}, filters)
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


@dataclass(frozen=True)
class Scheduled:
    """One scheduling pass's writes, and how many tasks they place."""

    ops: tuple[dict[str, Any], ...] = ()
    placed: int = 0


def waiting(task: Task) -> bool:
    """A task the scheduler should place: meant to run, not placed yet."""
    return task.desired_state == TaskState.RUNNING and task.status.state in (
        TaskState.NEW,
        TaskState.PENDING,
    )


def schedule_ops(snapshot: Snapshot, now: float) -> Scheduled:
    """Place every waiting task of ``snapshot``: the compare-and-swap writes that
    assign them, or that say why they wait (only when the reason changed)."""
    pending = [t for t in snapshot.tasks.values() if waiting(t)]
    if not pending:
        return Scheduled()
    result = schedule(snapshot, pending)
    addressed = addresses_for(snapshot, result.placements, now)
    ops: list[dict[str, Any]] = list(addressed.network_ops)
    unplaceable = list(result.unplaceable)
    placed = 0
    for placement in result.placements:
        task = snapshot.tasks[placement.task_id]
        if task.id in addressed.deferred:
            continue
        reason = addressed.failed.get(task.id)
        if reason is not None:
            unplaceable.append(Unplaceable(task.id, reason))
            continue
        status = TaskStatus(TaskState.ASSIGNED, "scheduled", timestamp=now)
        networks = addressed.attachments.get(task.id, ())
        assigned = replace(
            task, node_id=placement.node_id, status=status, networks=networks, updated_at=now
        )
        ops.append(put(assigned, task.version))
        placed += 1
    for waiting_task in unplaceable:
        task = snapshot.tasks[waiting_task.task_id]
        if task.status.state == TaskState.PENDING and task.status.err == waiting_task.reason:
            continue  # unchanged: don't churn the log
        status = TaskStatus(
            TaskState.PENDING, "waiting for a node", err=waiting_task.reason, timestamp=now
        )
        ops.append(put(replace(task, status=status, updated_at=now), task.version))
    return Scheduled(tuple(ops), placed)


@dataclass(frozen=True)
class Addressed:
    """The addresses of a pass's placed tasks on their services' networks."""

    attachments: dict[str, tuple[NetworkAttachment, ...]] = field(default_factory=dict)
    # Tasks no address could be found for, and why (they wait).
    failed: dict[str, str] = field(default_factory=dict)
    # Writes of networks whose nodes took blocks. They go first, alone: the tasks
    # needing them (deferred) are placed in the next pass, once the blocks are
    # stored, so no task ever holds an address of a block its node does not.
    network_ops: tuple[dict[str, Any], ...] = ()
    deferred: frozenset[str] = frozenset()


def addresses_for(snapshot: Snapshot, placements: Iterable[Placement], now: float) -> Addressed:
    with_networks = [p for p in placements if snapshot.tasks[p.task_id].spec.networks]
    if not with_networks:
        return Addressed()
    working = WorkingState(
        allocator_state(
            snapshot.networks.values(), snapshot.services.values(), snapshot.tasks.values()
        )
    )
    attachments: dict[str, tuple[NetworkAttachment, ...]] = {}
    failed: dict[str, str] = {}
    blocks_taken: dict[str, Network] = {}
    for placement in with_networks:
        task = snapshot.tasks[placement.task_id]
        try:
            allocation = allocate_task(working, task.id, task.spec.networks, placement.node_id)
        except WarrenError as exc:
            failed[task.id] = exc.message
            continue
        working.fold(allocation)
        attachments[task.id] = allocation.attachments
        blocks_taken.update((net.id, net) for net in allocation.networks)
    if not blocks_taken:
        return Addressed(attachments, failed)
    ops = tuple(
        put(replace(net, updated_at=now), snapshot.networks[net.id].version)
        for net in blocks_taken.values()
    )
    return Addressed(failed=failed, network_ops=ops, deferred=frozenset(attachments))


def _initial_state(
    snapshot: Snapshot, pending_ids: set[str], filters: tuple[Filter, ...]
) -> PassState:
    loads = {nid: NodeLoad(snapshot.nodes[nid]) for nid in sorted(snapshot.nodes)}
    state = PassState(loads=loads, filters=filters)
    for task in snapshot.tasks.values():
        # Tasks being scheduled now are counted when (and if) they are placed.
        if task.holds_resources and task.id not in pending_ids and task.node_id in state.loads:
            leaving = task.desired_state != TaskState.RUNNING
            state.place(TaskGroup.of(task), task.node_id, leaving=leaving)
    return state


def _group_unbound(tasks: Iterable[Task]) -> dict[TaskGroup, list[Task]]:
    groups: dict[TaskGroup, list[Task]] = {}
    for task in tasks:
        if not task.node_id:
            groups.setdefault(TaskGroup.of(task), []).append(task)
    return groups


def _check_bound(state: PassState, task: Task) -> str | None:
    if task.node_id not in state.loads:
        return f"node {task.node_id} not found"
    group = TaskGroup.of(task)
    failure = state.first_failure(group, task.node_id)
    if failure is not None:
        return state.explain(Counter([failure]))
    state.place(group, task.node_id)
    return None


def _place_group(state: PassState, group: TaskGroup, count: int) -> tuple[list[str], str]:
    """Place up to ``count`` tasks of ``group``; return their nodes and, if some
    did not fit, why (identical tasks fail identically, so one reason covers them).

    Placing a task only changes its own node's score, so a heap keyed on the
    score hands out nodes in order; a node that fails a dynamic filter can only
    fail it again for this group, so it is dropped.
    """
    heap = [state.score(group, nid) for nid in state.static_eligible(group)]
    heapq.heapify(heap)
    chosen: list[str] = []
    while len(chosen) < count and heap:
        node_id = heap[0][-1]
        if not state.fits_now(group, node_id):
            heapq.heappop(heap)
            continue
        state.place(group, node_id)
        chosen.append(node_id)
        heapq.heapreplace(heap, state.score(group, node_id))
    reason = "" if len(chosen) == count else _explain_group(state, group)
    return chosen, reason


def _explain_group(state: PassState, group: TaskGroup) -> str:
    failures = (state.first_failure(group, node_id) for node_id in state.loads)
    return state.explain(Counter(failure for failure in failures if failure is not None))
