"""Scheduler: filters, scorers, reasons, and invariants over random clusters."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import replace

from factories import GIB, make_node, make_service, make_snapshot, make_task
from hypothesis import given, settings
from hypothesis import strategies as st

from warren.core.constraints import parse_constraint
from warren.core.models import (
    Availability,
    Node,
    NodeStatus,
    Service,
    ServiceMode,
    Task,
    TaskStatus,
)
from warren.core.states import TaskState
from warren.manager.orchestrator import reconcile
from warren.manager.scheduler import (
    FILTERS,
    Filter,
    NodeLoad,
    PassState,
    Placement,
    ScheduleResult,
    TaskGroup,
    Unplaceable,
    schedule,
    schedule_ops,
)
from warren.manager.snapshot import Snapshot


def _run(nodes: list[Node], pending: list[Task], existing: Sequence[Task] = ()) -> ScheduleResult:
    return schedule(make_snapshot(nodes=nodes, tasks=[*existing, *pending]), pending)


def _per_node(result: ScheduleResult) -> Counter[str]:
    return Counter(p.node_id for p in result.placements)


def _reasons(result: ScheduleResult) -> set[str]:
    return {u.reason for u in result.unplaceable}


# --- placement and scoring -------------------------------------------------


def test_places_a_task_on_the_only_node() -> None:
    task = make_task()
    result = _run([make_node("n1")], [task])
    assert result == ScheduleResult((Placement(task.id, "n1"),), ())


def test_six_replicas_on_three_equal_nodes_land_two_each() -> None:
    service = make_service(replicas=6)
    tasks = [make_task(service, slot=i) for i in range(1, 7)]
    result = _run([make_node(f"n{i}") for i in range(3)], tasks)
    assert sorted(_per_node(result).values()) == [2, 2, 2]
    assert not result.unplaceable


def test_spread_counts_the_service_tasks_already_running() -> None:
    service = make_service(replicas=3)
    running = [make_task(service, slot=s, node_id="n1", state=TaskState.RUNNING) for s in (1, 2)]
    result = _run([make_node("n1"), make_node("n2")], [make_task(service, slot=3)], running)
    assert result.placements[0].node_id == "n2"


def test_spread_ignores_tasks_that_no_longer_hold_resources() -> None:
    service = make_service()
    dead = make_task(service, node_id="n1", state=TaskState.FAILED)
    other = make_task(make_service("db"), node_id="n2", state=TaskState.RUNNING)
    result = _run([make_node("n1"), make_node("n2")], [make_task(service)], [dead, other])
    assert result.placements[0].node_id == "n1"


def test_least_allocated_prefers_the_node_with_fewer_tasks() -> None:
    busy = [make_task(make_service("db"), node_id="n1", state=TaskState.RUNNING)]
    result = _run([make_node("n1"), make_node("n2")], [make_task()], busy)
    assert result.placements[0].node_id == "n2"


def test_least_allocated_prefers_the_lower_reserved_fraction() -> None:
    # n1 runs one big task, n2 two small ones: the fraction wins over the count.
    big = make_service("big", memory_bytes=6 * GIB)
    small = make_service("small", memory_bytes=1 * GIB)
    existing = [
        make_task(big, node_id="n1", state=TaskState.RUNNING),
        make_task(small, slot=1, node_id="n2", state=TaskState.RUNNING),
        make_task(small, slot=2, node_id="n2", state=TaskState.RUNNING),
    ]
    result = _run([make_node("n1"), make_node("n2")], [make_task()], existing)
    assert result.placements[0].node_id == "n2"


def test_ties_go_to_the_lowest_node_id() -> None:
    result = _run([make_node("n2"), make_node("n1")], [make_task()])
    assert result.placements[0].node_id == "n1"


# --- filters ----------------------------------------------------------------


def test_same_pass_placements_count_against_resources() -> None:
    service = make_service(replicas=3, memory_bytes=3 * GIB)
    tasks = [make_task(service, slot=i) for i in (1, 2, 3)]
    result = _run([make_node("n1", memory_bytes=7 * GIB)], tasks)
    assert len(result.placements) == 2
    assert _reasons(result) == {"no suitable node (insufficient memory on 1 node)"}


def test_existing_reservations_count_against_resources() -> None:
    existing = [make_task(make_service("db", cpus=3.5), node_id="n1", state=TaskState.RUNNING)]
    result = _run([make_node("n1", cpus=4)], [make_task(make_service(cpus=1))], existing)
    assert _reasons(result) == {"no suitable node (insufficient cpu on 1 node)"}


def test_fractional_cpus_fill_a_node_exactly() -> None:
    service = make_service(replicas=10, cpus=0.1)
    tasks = [make_task(service, slot=i) for i in range(1, 11)]
    result = _run([make_node("n1", cpus=1.0)], tasks)
    assert len(result.placements) == 10


def test_a_node_without_resources_takes_tasks_that_reserve_nothing() -> None:
    result = _run([make_node("n1", cpus=0, memory_bytes=0)], [make_task()])
    assert result.placements == (Placement(result.placements[0].task_id, "n1"),)


def test_constraint_reason_counts_nodes() -> None:
    service = make_service(constraints=["node.labels.zone==east"])
    nodes = [make_node(f"n{i}", labels={"zone": "west"}) for i in range(3)]
    result = _run(nodes, [make_task(service)])
    assert _reasons(result) == {"no suitable node (constraint not met on 3 nodes)"}


def test_constraints_choose_the_matching_node() -> None:
    service = make_service(replicas=2, constraints=["node.labels.zone==east", "node.role!=manager"])
    nodes = [
        make_node("n1", labels={"zone": "west"}),
        make_node("n2", labels={"zone": "east"}),
        make_node("n3"),
    ]
    result = _run(nodes, [make_task(service, slot=1), make_task(service, slot=2)])
    assert _per_node(result) == {"n2": 2}


def test_several_reasons_most_common_first_and_each_node_counted_once() -> None:
    service = make_service(constraints=["node.labels.gpu==yes"], memory_bytes=4 * GIB)
    nodes = [
        make_node("n1"),
        make_node("n2"),
        # Fails memory and the constraint: counted under memory, which comes first.
        make_node("n3", memory_bytes=1 * GIB),
    ]
    result = _run(nodes, [make_task(service)])
    assert _reasons(result) == {
        "no suitable node (constraint not met on 2 nodes; insufficient memory on 1 node)"
    }


def test_unready_paused_and_drained_nodes_are_skipped() -> None:
    nodes = [
        make_node("n1", status=NodeStatus.DOWN),
        make_node("n2", availability=Availability.PAUSE),
        make_node("n3", availability=Availability.DRAIN),
        make_node("n4", status=NodeStatus.UNKNOWN),
    ]
    result = _run(nodes, [make_task()])
    assert _reasons(result) == {"no suitable node (node not ready or not active on 4 nodes)"}


def test_no_nodes_at_all() -> None:
    task = make_task()
    result = _run([], [task])
    assert result.unplaceable == (
        Unplaceable(task.id, "no suitable node (no nodes in the cluster)"),
    )


def test_max_replicas_per_node_counts_existing_and_same_pass_tasks() -> None:
    service = make_service(replicas=5, max_replicas_per_node=2)
    existing = [make_task(service, slot=1, node_id="n1", state=TaskState.RUNNING)]
    pending = [make_task(service, slot=s) for s in (2, 3, 4, 5)]
    result = _run([make_node("n1"), make_node("n2")], pending, existing)
    assert _per_node(result) == {"n1": 1, "n2": 2}
    assert _reasons(result) == {"no suitable node (max replicas per node reached on 2 nodes)"}


def test_every_leftover_replica_gets_the_reason() -> None:
    service = make_service(replicas=5, max_replicas_per_node=1)
    tasks = [make_task(service, slot=i) for i in range(1, 6)]
    result = _run([make_node("n1"), make_node("n2")], tasks)
    assert len(result.placements) == 2
    assert len(result.unplaceable) == 3


# --- tasks already bound to a node (global services) --------------------------


def test_bound_task_is_placed_on_its_node_only() -> None:
    service = make_service(mode=ServiceMode.GLOBAL)
    task = make_task(service, slot=0, node_id="n2")
    result = _run([make_node("n1"), make_node("n2")], [task])
    assert result.placements == (Placement(task.id, "n2"),)


def test_bound_task_that_fails_a_filter_is_unplaceable() -> None:
    service = make_service(mode=ServiceMode.GLOBAL, memory_bytes=16 * GIB)
    task = make_task(service, slot=0, node_id="n1")
    result = _run([make_node("n1"), make_node("n2", memory_bytes=64 * GIB)], [task])
    assert result.unplaceable == (
        Unplaceable(task.id, "no suitable node (insufficient memory on 1 node)"),
    )


def test_bound_task_on_a_missing_node() -> None:
    task = make_task(make_service(mode=ServiceMode.GLOBAL), slot=0, node_id="gone")
    result = _run([make_node("n1")], [task])
    assert result.unplaceable == (Unplaceable(task.id, "node gone not found"),)


def test_bound_tasks_are_not_counted_twice_and_reserve_first() -> None:
    agent = make_service("agent", mode=ServiceMode.GLOBAL, memory_bytes=4 * GIB)
    web = make_service("web", memory_bytes=4 * GIB)
    bound = make_task(agent, slot=0, node_id="n1")
    free = make_task(web)
    # The bound task is in the snapshot (holding resources on n1) and in the batch.
    result = _run([make_node("n1", memory_bytes=8 * GIB)], [free, bound])
    assert set(result.placements) == {Placement(bound.id, "n1"), Placement(free.id, "n1")}


# --- scale -----------------------------------------------------------------------


def test_ten_thousand_tasks_on_a_hundred_nodes() -> None:
    nodes = [make_node(f"n{i:03d}") for i in range(100)]
    tasks: list[Task] = []
    for s in range(1000):
        service = make_service(f"svc{s}")
        tasks.extend(make_task(service, slot=r) for r in range(1, 11))
    snapshot = make_snapshot(nodes=nodes, tasks=tasks)
    started = time.perf_counter()
    result = schedule(snapshot, tasks)
    print(f"scheduled {len(tasks)} tasks in {time.perf_counter() - started:.3f}s")
    assert len(result.placements) == 10_000
    assert max(_per_node(result).values()) == 100


# --- properties --------------------------------------------------------------------

_LABELS = st.dictionaries(
    st.sampled_from(["zone", "disk"]), st.sampled_from(["a", "b"]), max_size=2
)
_CONSTRAINTS = st.lists(
    st.sampled_from(
        ["node.labels.zone==a", "node.labels.zone!=b", "node.labels.disk==b", "node.role==worker"]
    ),
    max_size=2,
    unique=True,
)


@st.composite
def _nodes(draw: st.DrawFn) -> list[Node]:
    count = draw(st.integers(0, 6))
    return [
        make_node(
            f"n{i}",
            labels=draw(_LABELS),
            status=draw(st.sampled_from(list(NodeStatus))),
            availability=draw(st.sampled_from(list(Availability))),
            cpus=draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, 4.0])),
            memory_bytes=draw(st.sampled_from([0, 1, 2, 4])) * GIB,
        )
        for i in range(count)
    ]


@st.composite
def _services(draw: st.DrawFn) -> list[Service]:
    return [
        make_service(
            f"s{i}",
            constraints=draw(_CONSTRAINTS),
            cpus=draw(st.sampled_from([0.0, 0.25, 0.5, 1.0])),
            memory_bytes=draw(st.sampled_from([0, 1, 2])) * GIB // 2,
            max_replicas_per_node=draw(st.integers(0, 3)),
            mode=draw(st.sampled_from(list(ServiceMode))),
        )
        for i in range(draw(st.integers(1, 4)))
    ]


@st.composite
def _cluster(draw: st.DrawFn) -> tuple[Snapshot, list[Task]]:
    nodes = draw(_nodes())
    services = draw(_services())
    node_ids = [n.id for n in nodes]
    existing: list[Task] = []
    pending: list[Task] = []
    for service in services:
        for slot in range(1, draw(st.integers(0, 8)) + 1):
            if bool(node_ids) and draw(st.booleans()):
                existing.append(
                    make_task(
                        service,
                        slot=slot,
                        node_id=draw(st.sampled_from(node_ids)),
                        state=draw(st.sampled_from([TaskState.RUNNING, TaskState.FAILED])),
                    )
                )
            else:
                bound = service.spec.mode == ServiceMode.GLOBAL and bool(node_ids)
                node_id = draw(st.sampled_from(node_ids)) if bound else ""
                pending.append(make_task(service, slot=0 if bound else slot, node_id=node_id))
    snapshot = make_snapshot(nodes=nodes, services=services, tasks=[*existing, *pending])
    return snapshot, pending


def _committed(snapshot: Snapshot, pending: list[Task], result: ScheduleResult) -> list[Task]:
    """Tasks holding resources once the placements are applied."""
    pending_ids = {t.id for t in pending}
    held = [t for t in snapshot.tasks.values() if t.holds_resources and t.id not in pending_ids]
    placed = [replace(snapshot.tasks[p.task_id], node_id=p.node_id) for p in result.placements]
    return held + placed


@settings(max_examples=300, deadline=None)
@given(_cluster())
def test_placements_respect_every_filter(cluster: tuple[Snapshot, list[Task]]) -> None:
    snapshot, pending = cluster
    result = schedule(snapshot, pending)
    decided = [p.task_id for p in result.placements] + [u.task_id for u in result.unplaceable]
    assert sorted(decided) == sorted(t.id for t in pending)
    committed = _committed(snapshot, pending, result)
    for node_id in {p.node_id for p in result.placements}:
        node = snapshot.nodes[node_id]
        assert node.schedulable
        on_node = [t for t in committed if t.node_id == node_id]
        assert (
            sum(t.spec.resources.reservations.cpus for t in on_node) <= node.resources.cpus + 1e-9
        )
        assert (
            sum(t.spec.resources.reservations.memory_bytes for t in on_node)
            <= node.resources.memory_bytes
        )
    for placement in result.placements:
        task = snapshot.tasks[placement.task_id]
        node = snapshot.nodes[placement.node_id]
        assert all(parse_constraint(c).matches(node) for c in task.spec.placement.constraints)
        if task.spec.placement.max_replicas_per_node:
            same = [
                t
                for t in committed
                if t.service_id == task.service_id and t.node_id == placement.node_id
            ]
            assert len(same) <= task.spec.placement.max_replicas_per_node


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 8), st.integers(0, 40), st.lists(st.integers(0, 7), max_size=10))
def test_replicas_spread_within_one_on_equal_nodes(
    nodes: int, replicas: int, other_load: list[int]
) -> None:
    cluster = [make_node(f"n{i}") for i in range(nodes)]
    # Other services' tasks only sway the tie-breaking scorer, never the spread.
    other = make_service("other", replicas=len(other_load))
    existing = [
        make_task(other, slot=i + 1, node_id=f"n{n % nodes}", state=TaskState.RUNNING)
        for i, n in enumerate(other_load)
    ]
    service = make_service(replicas=replicas)
    pending = [make_task(service, slot=r) for r in range(1, replicas + 1)]
    result = _run(cluster, pending, existing)
    counts = _per_node(result)
    per_node = [counts[n.id] for n in cluster]
    assert len(result.placements) == replicas
    assert max(per_node) - min(per_node) <= 1


# --- rolling updates (orchestrator and scheduler together) ---------------------------


def _stop_leaving(tasks: list[Task]) -> list[Task]:
    """The agents stop every task told to shut down."""
    return [
        replace(t, status=replace(t.status, state=TaskState.SHUTDOWN))
        if t.desired_state == TaskState.SHUTDOWN and t.status.state.is_active
        else t
        for t in tasks
    ]


def _place_and_start(nodes: list[Node], tasks: list[Task]) -> list[Task]:
    """One scheduler pass, then the agents start what was placed."""
    pending = [t for t in tasks if not t.node_id and t.desired_state == TaskState.RUNNING]
    result = schedule(make_snapshot(nodes=nodes, tasks=tasks), pending)
    assert not result.unplaceable
    where = {p.task_id: p.node_id for p in result.placements}
    return [
        replace(t, node_id=where[t.id], status=replace(t.status, state=TaskState.RUNNING))
        if t.id in where
        else t
        for t in tasks
    ]


def _converge(
    service: Service, nodes: list[Node], tasks: list[Task], old_stops_first: Callable[[], bool]
) -> list[Task]:
    """Orchestrator, scheduler and agents in turn until the service matches its spec.
    ``old_stops_first`` says, each round, whether a replaced task has stopped
    before the scheduler places its successor."""
    for now in range(1, 1000):
        plan = reconcile(service, tasks, nodes, float(now))
        if not plan.create and not plan.shutdown:
            return tasks
        stopping = set(plan.shutdown)
        tasks = [
            replace(t, desired_state=TaskState.SHUTDOWN) if t.id in stopping else t
            for t in tasks
            if t.id not in plan.remove
        ]
        tasks += [make_task(service, slot=n.slot, created_at=now) for n in plan.create]
        if old_stops_first():
            tasks = _stop_leaving(tasks)
        tasks = _stop_leaving(_place_and_start(nodes, tasks))
    raise AssertionError("the service did not converge")


def _running_per_node(nodes: list[Node], tasks: list[Task]) -> list[int]:
    counts = Counter(
        t.node_id
        for t in tasks
        if t.desired_state == TaskState.RUNNING and t.status.state == TaskState.RUNNING
    )
    return [counts[n.id] for n in nodes]


def test_a_rolling_update_of_six_replicas_on_three_nodes_keeps_two_on_each() -> None:
    nodes = [make_node(f"n{i}") for i in range(3)]
    v1 = make_service(replicas=6)
    tasks = _converge(v1, nodes, [], lambda: False)
    assert _running_per_node(nodes, tasks) == [2, 2, 2]
    v2 = replace(v1, spec_version=2)
    # The old task of each slot still runs when its successor is placed.
    tasks = _converge(v2, nodes, tasks, lambda: False)
    assert _running_per_node(nodes, tasks) == [2, 2, 2]
    assert {t.spec_version for t in tasks if t.desired_state == TaskState.RUNNING} == {2}


def test_a_task_told_to_shut_down_still_counts_toward_max_replicas() -> None:
    service = make_service(replicas=2, max_replicas_per_node=1)
    leaving = make_task(
        service, slot=1, node_id="n1", state=TaskState.RUNNING, desired_state=TaskState.SHUTDOWN
    )
    result = _run([make_node("n1")], [make_task(service, slot=1)], [leaving])
    assert _reasons(result) == {"no suitable node (max replicas per node reached on 1 node)"}


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 5), st.integers(1, 12), st.data())
def test_a_rolling_update_keeps_replicas_spread_within_one(
    node_count: int, replicas: int, data: st.DataObject
) -> None:
    nodes = [make_node(f"n{i}") for i in range(node_count)]
    v1 = make_service(replicas=replicas)
    tasks = _converge(v1, nodes, [], lambda: False)
    v2 = replace(v1, spec_version=2)
    tasks = _converge(v2, nodes, tasks, lambda: data.draw(st.booleans()))
    per_node = _running_per_node(nodes, tasks)
    assert sum(per_node) == replicas
    assert max(per_node) - min(per_node) <= 1
    assert {t.spec_version for t in tasks if t.desired_state == TaskState.RUNNING} == {2}


# --- the filter pipeline ---------------------------------------------------------------------


class _SsdFilter:
    """A filter added in one class: nodes labelled ssd=yes only, for every task."""

    name = "no ssd"
    static = True

    def key(self, group: TaskGroup) -> Hashable:
        return None

    def check(self, load: NodeLoad, group: TaskGroup, state: PassState) -> bool:
        return load.node.labels.get("ssd") == "yes"

    def explain(self, nodes: int) -> str:
        return f"no ssd on {nodes} node{'' if nodes == 1 else 's'}"


def test_a_new_filter_is_one_class_that_places_and_explains() -> None:
    filters: tuple[Filter, ...] = (*FILTERS, _SsdFilter())
    nodes = [make_node("n1"), make_node("n2", labels={"ssd": "yes"}), make_node("n3")]
    service = make_service(replicas=2, max_replicas_per_node=1)
    tasks = [make_task(service, slot=s) for s in (1, 2)]
    result = schedule(make_snapshot(nodes=nodes, tasks=tasks), tasks, filters)
    assert result.placements == (Placement(tasks[0].id, "n2"),)
    # n2 is reported under the earlier filter it fails, max replicas.
    assert result.unplaceable == (
        Unplaceable(
            tasks[1].id,
            "no suitable node (no ssd on 2 nodes; max replicas per node reached on 1 node)",
        ),
    )


def test_schedule_ops_assign_and_only_rewrite_a_changed_reason() -> None:
    node = make_node("n1", cpus=1.0)
    fits = make_task(make_service("a", cpus=1.0))
    reason = "no suitable node (insufficient cpu on 1 node)"
    waits = make_task(make_service("b", cpus=2.0))
    known = replace(
        make_task(make_service("c", cpus=3.0), state=TaskState.PENDING),
        status=TaskStatus(TaskState.PENDING, "waiting for a node", err=reason),
    )
    snapshot = make_snapshot(nodes=[node], tasks=[fits, waits, known])
    scheduled = schedule_ops(snapshot, 5.0)
    assert scheduled.placed == 1
    states = {op["object"]["id"]: op["object"]["status"] for op in scheduled.ops}
    assert set(states) == {fits.id, waits.id}  # `known` already says why
    assert (states[fits.id]["state"], states[fits.id]["timestamp"]) == ("assigned", 5.0)
    assert (states[waits.id]["state"], states[waits.id]["err"]) == ("pending", reason)
    assert all(op["expect"] == snapshot.tasks[op["object"]["id"]].version for op in scheduled.ops)
