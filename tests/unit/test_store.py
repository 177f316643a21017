"""Store: the replicated state machine. CAS, invariants, indexes, events, snapshots."""

from __future__ import annotations

import dataclasses
import json
import pickle
from dataclasses import replace
from typing import Any

import pytest
from factories import make_node, make_service, make_task
from hypothesis import given, settings
from hypothesis import strategies as st

from warren.core.errors import AlreadyExists, Conflict, FailedPrecondition, NotFound
from warren.core.models import (
    Cluster,
    Node,
    Resources,
    RestartPolicy,
    Service,
    ServiceSpec,
    Task,
    TaskStatus,
)
from warren.core.states import TaskState
from warren.manager.snapshot import Snapshot
from warren.manager.store import (
    MUST_NOT_EXIST,
    EventAction,
    Kind,
    Store,
    StoreEvent,
    barrier,
    delete,
    object_digest,
    put,
    raise_for_result,
    task_status,
    txn,
)

AT = 1000.0
S = TaskState


def _write(store: Store, *ops: dict[str, Any], atomic: bool = True) -> Any:
    return store.apply(txn(list(ops), at=AT, atomic=atomic))


def _error(result: Any) -> str:
    assert isinstance(result, dict) and "error" in result, result
    return str(result["error"])


def _status(store: Store, node_id: str, **states: S) -> Any:
    updates = {tid: TaskStatus(state, f"now {state}") for tid, state in states.items()}
    return store.apply(task_status(node_id, updates, at=AT + 1))


def _recorder(store: Store) -> list[StoreEvent]:
    events: list[StoreEvent] = []
    store.subscribe(events.extend)
    return events


def _with_task(state: S = S.ASSIGNED, node_id: str = "n1") -> tuple[Store, Task]:
    store = Store()
    task = make_task(make_service(), id="t1", node_id=node_id, state=state)
    raise_for_result(_write(store, put(task, MUST_NOT_EXIST)))
    return store, store.get(Kind.TASK, "t1")


def _assert_indexes_match_tables(store: Store) -> None:
    snap = store.snapshot()
    rebuilt = Snapshot.build(snap.nodes, snap.services, snap.tasks)
    assert snap.task_ids_by_service == rebuilt.task_ids_by_service
    assert snap.task_ids_by_node == rebuilt.task_ids_by_node


# --- puts, versions, compare-and-swap --------------------------------------


def test_create_stamps_the_revision_as_version() -> None:
    store = Store()
    result = _write(store, put(make_service("web", id="s1"), MUST_NOT_EXIST))
    assert result == {"results": [{"version": 1}]}
    assert store.revision == 1
    assert store.get(Kind.SERVICE, "s1").version == 1


def test_create_of_an_existing_object_is_refused_and_changes_nothing() -> None:
    store = Store()
    _write(store, put(make_service("web", id="s1"), MUST_NOT_EXIST))
    before = store.snapshot()
    result = _write(store, put(make_service("web", id="s1", replicas=5), MUST_NOT_EXIST))
    assert _error(result) == AlreadyExists.code
    assert store.snapshot() == before


def test_cas_with_the_current_version_succeeds() -> None:
    store = Store()
    _write(store, put(make_service("web", id="s1"), MUST_NOT_EXIST))
    current = store.get(Kind.SERVICE, "s1")
    result = _write(store, put(replace(current, spec_version=2), current.version))
    assert result == {"results": [{"version": 2}]}
    assert store.get(Kind.SERVICE, "s1").spec_version == 2


def test_cas_with_a_stale_version_is_a_conflict_and_changes_nothing() -> None:
    store = Store()
    _write(store, put(make_service("web", id="s1"), MUST_NOT_EXIST))
    stale = store.get(Kind.SERVICE, "s1")
    _write(store, put(replace(stale, spec_version=2), stale.version))
    before = store.snapshot()
    result = _write(store, put(replace(stale, spec_version=3), stale.version))
    assert _error(result) == Conflict.code
    assert "expected 1" in result["message"]
    assert store.snapshot() == before
    with pytest.raises(Conflict):
        raise_for_result(result)


def test_expect_none_overwrites_whatever_is_there() -> None:
    store = Store()
    _write(store, put(make_service("web", id="s1"), MUST_NOT_EXIST))
    _write(store, put(make_service("web", id="s1", replicas=4), None))
    assert store.get(Kind.SERVICE, "s1").spec.replicas == 4


def test_cas_on_a_missing_object_is_not_found() -> None:
    result = _write(Store(), put(make_service("web", id="s1"), 3))
    assert _error(result) == NotFound.code


def test_delete_checks_existence_and_version() -> None:
    store = Store()
    _write(store, put(make_service("web", id="s1"), MUST_NOT_EXIST))
    assert _error(_write(store, delete(Kind.SERVICE, "nope"))) == NotFound.code
    assert _error(_write(store, delete(Kind.SERVICE, "s1", expect=7))) == Conflict.code
    assert store.find(Kind.SERVICE, "s1") is not None
    assert _write(store, delete(Kind.SERVICE, "s1", expect=1)) == {"results": [{"version": 2}]}
    assert store.find(Kind.SERVICE, "s1") is None
    with pytest.raises(NotFound):
        store.get(Kind.SERVICE, "s1")


def test_a_second_cluster_is_refused() -> None:
    store = Store()
    _write(store, put(Cluster(id="c1", ca_fingerprint="fp"), MUST_NOT_EXIST))
    result = _write(store, put(Cluster(id="c2", ca_fingerprint="fp"), None))
    assert _error(result) == AlreadyExists.code
    assert store.cluster() == store.get(Kind.CLUSTER, "c1")


# --- transactions -------------------------------------------------------------


def test_atomic_txn_with_one_failing_op_changes_nothing() -> None:
    store = Store()
    _write(store, put(make_service("db", id="s0"), MUST_NOT_EXIST))
    before = store.snapshot()
    events = _recorder(store)
    result = _write(
        store,
        put(make_service("web", id="s1"), MUST_NOT_EXIST),
        put(make_node("n1"), MUST_NOT_EXIST),
        put(make_service("db", id="s0"), MUST_NOT_EXIST),  # exists: fails
    )
    assert _error(result) == AlreadyExists.code
    assert store.snapshot() == before
    assert events == []


def test_atomic_txn_applies_every_op() -> None:
    store = Store()
    result = _write(
        store, put(make_service("web", id="s1"), MUST_NOT_EXIST), put(make_node("n1"), None)
    )
    assert len(result["results"]) == 2
    assert store.revision == 2
    assert store.find(Kind.SERVICE, "s1") is not None
    assert store.find(Kind.NODE, "n1") is not None


def test_non_atomic_txn_applies_the_good_ops() -> None:
    store = Store()
    _write(store, put(make_service("db", id="s0"), MUST_NOT_EXIST))
    result = _write(
        store,
        put(make_service("web", id="s1"), MUST_NOT_EXIST),
        put(make_service("db", id="s0"), MUST_NOT_EXIST),
        delete(Kind.NODE, "missing"),
        put(make_node("n1"), MUST_NOT_EXIST),
        atomic=False,
    )
    versions = [r.get("version") for r in result["results"]]
    errors = [r.get("error") for r in result["results"]]
    assert versions == [2, None, None, 3]
    assert errors == [None, AlreadyExists.code, NotFound.code, None]
    assert {s.id for s in store.list(Kind.SERVICE)} == {"s0", "s1"}
    assert store.find(Kind.NODE, "n1") is not None
    with pytest.raises(AlreadyExists):
        raise_for_result(result)


def test_barrier_reports_the_revision_and_changes_nothing() -> None:
    store = Store()
    _write(store, put(make_node("n1"), MUST_NOT_EXIST))
    events = _recorder(store)
    assert store.apply(barrier()) == {"revision": 1}
    assert store.revision == 1
    assert events == []


def test_an_unknown_command_is_an_error_result() -> None:
    assert _error(Store().apply({"op": "compact"})) == FailedPrecondition.code


# --- service invariants -------------------------------------------------------


def test_a_second_service_with_the_same_name_is_refused() -> None:
    store = Store()
    _write(store, put(make_service("web", id="s1"), MUST_NOT_EXIST))
    result = _write(store, put(make_service("web", id="s2"), MUST_NOT_EXIST))
    assert _error(result) == AlreadyExists.code
    assert "service 'web' already exists" in result["message"]
    assert [s.id for s in store.list(Kind.SERVICE)] == ["s1"]


def test_renaming_onto_a_taken_name_is_refused() -> None:
    store = Store()
    _write(
        store,
        put(make_service("web", id="s1"), MUST_NOT_EXIST),
        put(make_service("db", id="s2"), MUST_NOT_EXIST),
    )
    db = store.get(Kind.SERVICE, "s2")
    renamed = replace(db, spec=replace(db.spec, name="web"))
    assert _error(_write(store, put(renamed, db.version))) == AlreadyExists.code
    assert store.get(Kind.SERVICE, "s2").spec.name == "db"
    assert store.service_by_name("web") == store.get(Kind.SERVICE, "s1")


def test_a_service_may_keep_its_own_name_and_a_freed_name_is_reusable() -> None:
    store = Store()
    _write(store, put(make_service("web", id="s1"), MUST_NOT_EXIST))
    web = store.get(Kind.SERVICE, "s1")
    raise_for_result(_write(store, put(replace(web, spec_version=2), web.version)))
    raise_for_result(_write(store, delete(Kind.SERVICE, "s1")))
    raise_for_result(_write(store, put(make_service("web", id="s2"), MUST_NOT_EXIST)))
    assert store.service_by_name("web").id == "s2"  # type: ignore[union-attr]


# --- task invariants via put ---------------------------------------------------


def test_task_state_moves_forward_via_put() -> None:
    store, task = _with_task(S.ASSIGNED)
    running = replace(task, status=TaskStatus(S.RUNNING))
    raise_for_result(_write(store, put(running, task.version)))
    assert store.get(Kind.TASK, "t1").status.state == S.RUNNING


@pytest.mark.parametrize(("old", "new"), [(S.RUNNING, S.STARTING), (S.FAILED, S.RUNNING)])
def test_task_state_cannot_move_backwards_via_put(old: S, new: S) -> None:
    store, task = _with_task(old)
    result = _write(store, put(replace(task, status=TaskStatus(new)), task.version))
    assert _error(result) == FailedPrecondition.code
    assert store.get(Kind.TASK, "t1").status.state == old


def test_a_shut_down_task_cannot_be_told_to_run_again() -> None:
    store, task = _with_task(S.RUNNING)
    raise_for_result(_write(store, put(replace(task, desired_state=S.SHUTDOWN), task.version)))
    shut = store.get(Kind.TASK, "t1")
    result = _write(store, put(replace(shut, desired_state=S.RUNNING), shut.version))
    assert _error(result) == FailedPrecondition.code
    assert "cannot run again" in result["message"]
    assert store.get(Kind.TASK, "t1").desired_state == S.SHUTDOWN


def test_an_assigned_task_cannot_move_to_another_node() -> None:
    store, task = _with_task(S.ASSIGNED, node_id="n1")
    for node_id in ("n2", ""):
        result = _write(store, put(replace(task, node_id=node_id), task.version))
        assert _error(result) == FailedPrecondition.code
    assert store.get(Kind.TASK, "t1").node_id == "n1"
    assert [t.id for t in store.tasks_on_node("n1")] == ["t1"]
    assert store.tasks_on_node("n2") == []


def test_an_unassigned_task_can_be_assigned() -> None:
    store, task = _with_task(S.NEW, node_id="")
    assigned = replace(task, node_id="n1", status=TaskStatus(S.ASSIGNED))
    raise_for_result(_write(store, put(assigned, task.version)))
    assert store.get(Kind.TASK, "t1").node_id == "n1"


# --- task status reports ----------------------------------------------------------


def test_task_status_moves_a_task_forward_and_stamps_the_time() -> None:
    store, _ = _with_task(S.ASSIGNED)
    assert _status(store, "n1", t1=S.RUNNING) == {"applied": ["t1"], "refused": {}}
    task = store.get(Kind.TASK, "t1")
    assert task.status == TaskStatus(S.RUNNING, "now running")
    assert task.updated_at == AT + 1
    assert task.version == store.revision


def test_task_status_may_repeat_a_non_terminal_state() -> None:
    store, _ = _with_task(S.RUNNING)
    assert _status(store, "n1", t1=S.RUNNING)["applied"] == ["t1"]


@pytest.mark.parametrize(
    ("old", "new"), [(S.RUNNING, S.STARTING), (S.FAILED, S.FAILED), (S.COMPLETE, S.SHUTDOWN)]
)
def test_task_status_never_moves_a_task_back_or_out_of_a_terminal_state(old: S, new: S) -> None:
    store, task = _with_task(old)
    events = _recorder(store)
    result = _status(store, "n1", t1=new)
    assert result == {"applied": [], "refused": {"t1": f"task is already {old}"}}
    assert store.get(Kind.TASK, "t1") == task
    assert events == []


def test_task_status_refuses_tasks_of_another_node_and_unknown_tasks() -> None:
    store, task = _with_task(S.ASSIGNED, node_id="n1")
    result = _status(store, "n2", t1=S.RUNNING, ghost=S.RUNNING)
    assert result == {
        "applied": [],
        "refused": {"t1": "task is not assigned to this node", "ghost": "unknown task"},
    }
    assert store.get(Kind.TASK, "t1") == task


def test_task_status_refuses_an_unassigned_task() -> None:
    store, _ = _with_task(S.PENDING, node_id="")
    assert _status(store, "n1", t1=S.RUNNING)["refused"] == {
        "t1": "task is not assigned to this node"
    }


def test_task_status_applies_the_good_reports_of_a_batch() -> None:
    store = Store()
    service = make_service()
    tasks = [make_task(service, id=f"t{i}", slot=i, node_id="n1", state=S.RUNNING) for i in (1, 2)]
    _write(store, *(put(t, MUST_NOT_EXIST) for t in tasks))
    result = _status(store, "n1", t1=S.FAILED, t2=S.STARTING)
    assert result == {"applied": ["t1"], "refused": {"t2": "task is already running"}}
    assert store.get(Kind.TASK, "t1").status.state == S.FAILED


# --- indexes -------------------------------------------------------------------


def test_indexes_follow_creates_updates_assignment_and_deletes() -> None:
    store = Store()
    web, db = make_service("web", id="web"), make_service("db", id="db")
    a = make_task(web, id="a", slot=1)
    b = make_task(web, id="b", slot=2, node_id="n1", state=S.ASSIGNED)
    c = make_task(db, id="c", node_id="n2", state=S.ASSIGNED)
    _write(store, *(put(t, MUST_NOT_EXIST) for t in (a, b, c)))

    def ids(tasks: list[Task]) -> set[str]:
        return {t.id for t in tasks}

    assert ids(store.tasks_of_service("web")) == {"a", "b"}
    assert ids(store.tasks_of_service("db")) == {"c"}
    assert ids(store.tasks_on_node("n1")) == {"b"}

    # Assigning a: it joins n1; a status update keeps the indexes (and the new object).
    a = store.get(Kind.TASK, "a")
    _write(store, put(replace(a, node_id="n1", status=TaskStatus(S.ASSIGNED)), a.version))
    _status(store, "n1", a=S.RUNNING)
    assert ids(store.tasks_on_node("n1")) == {"a", "b"}
    assert {t.status.state for t in store.tasks_on_node("n1") if t.id == "a"} == {S.RUNNING}

    # A refused reassignment leaves the indexes alone.
    c = store.get(Kind.TASK, "c")
    _write(store, put(replace(c, node_id="n1"), c.version))
    assert ids(store.tasks_on_node("n2")) == {"c"}

    _write(store, delete(Kind.TASK, "b"), delete(Kind.TASK, "c"))
    assert ids(store.tasks_on_node("n1")) == {"a"}
    assert store.tasks_on_node("n2") == []
    assert store.tasks_of_service("db") == []
    snap = store.snapshot()
    assert set(snap.task_ids_by_node) == {"n1"}
    assert set(snap.task_ids_by_service) == {"web"}
    _assert_indexes_match_tables(store)


def test_index_follows_a_task_moved_to_another_service() -> None:
    store, task = _with_task()
    _write(store, put(replace(task, service_id="other"), task.version))
    assert store.tasks_of_service(task.service_id) == []
    assert [t.id for t in store.tasks_of_service("other")] == ["t1"]


# --- events ----------------------------------------------------------------------


def test_events_follow_each_commit_with_increasing_revisions() -> None:
    store = Store()
    seen: list[tuple[int, int]] = []  # (event revision, store revision when delivered)

    def listener(batch: list[StoreEvent]) -> None:
        for event in batch:
            seen.append((event.revision, store.revision))

    store.subscribe(listener)
    events = _recorder(store)
    service = make_service("web", id="s1")
    _write(store, put(service, MUST_NOT_EXIST), put(make_node("n1"), MUST_NOT_EXIST))
    current = store.get(Kind.SERVICE, "s1")
    _write(store, put(replace(current, spec_version=2), current.version))
    _write(store, delete(Kind.SERVICE, "s1"))

    assert [(e.action, e.kind) for e in events] == [
        (EventAction.CREATE, Kind.SERVICE),
        (EventAction.CREATE, Kind.NODE),
        (EventAction.UPDATE, Kind.SERVICE),
        (EventAction.DELETE, Kind.SERVICE),
    ]
    assert [e.revision for e in events] == [1, 2, 3, 4]
    assert all(e.timestamp == AT for e in events)
    # Delivered after the whole command committed.
    assert [store_rev for _, store_rev in seen] == [2, 2, 3, 4]
    # Puts carry the stored object; a delete carries the old one.
    assert events[2].object.spec_version == 2
    assert events[2].object.version == 3
    assert events[3].object.version == 3


@pytest.mark.parametrize(
    "command",
    [
        txn([put(make_service("web", id="s1"), MUST_NOT_EXIST)], at=AT),  # exists
        txn([put(make_service("web", id="s9"), MUST_NOT_EXIST)], at=AT),  # name taken
        txn([delete(Kind.SERVICE, "s1", expect=99)], at=AT),  # stale
        txn([put(make_node("n1"), None), delete(Kind.NODE, "nope")], at=AT),  # atomic
        task_status("n1", {"nope": TaskStatus(S.RUNNING)}, at=AT),
        barrier(),
    ],
    ids=["exists", "name-taken", "stale", "atomic", "status", "barrier"],
)
def test_no_event_for_a_refused_or_read_only_command(command: dict[str, Any]) -> None:
    store = Store()
    _write(store, put(make_service("web", id="s1"), MUST_NOT_EXIST))
    events = _recorder(store)
    store.apply(command)
    assert events == []


def test_unsubscribe_stops_delivery() -> None:
    store = Store()
    events: list[StoreEvent] = []
    store.subscribe(events.extend)
    store.unsubscribe(events.extend)
    _write(store, put(make_node("n1"), MUST_NOT_EXIST))
    assert events == []


# --- snapshots for log compaction -----------------------------------------------


def _populated_store() -> Store:
    store = Store()
    web, db = make_service("web", id="web", replicas=2), make_service("db", id="db")
    _write(
        store,
        put(make_node("n1"), MUST_NOT_EXIST),
        put(make_node("n2"), MUST_NOT_EXIST),
        put(web, MUST_NOT_EXIST),
        put(db, MUST_NOT_EXIST),
        put(make_task(web, id="w1", slot=1, node_id="n1", state=S.ASSIGNED), MUST_NOT_EXIST),
        put(make_task(web, id="w2", slot=2, node_id="n2", state=S.ASSIGNED), MUST_NOT_EXIST),
        put(make_task(db, id="d1"), MUST_NOT_EXIST),
    )
    _status(store, "n1", w1=S.RUNNING)
    return store


def test_export_import_round_trip_through_pickle() -> None:
    source = _populated_store()
    restored = Store()
    restored.import_state(pickle.loads(pickle.dumps(source.export_state())))
    assert restored.snapshot() == source.snapshot()
    assert restored.revision == source.revision
    assert [t.id for t in restored.tasks_on_node("n1")] == ["w1"]
    _assert_indexes_match_tables(restored)


def test_an_imported_store_goes_on_from_the_imported_revision() -> None:
    source = _populated_store()
    restored = Store()
    restored.import_state(pickle.loads(pickle.dumps(source.export_state())))
    for store in (source, restored):
        _write(store, put(make_node("n3"), MUST_NOT_EXIST))
    assert restored.snapshot() == source.snapshot()


def test_import_replaces_what_was_there() -> None:
    target = _populated_store()
    target.import_state(pickle.loads(pickle.dumps(Store().export_state())))
    assert target.revision == 0
    assert target.snapshot() == Store().snapshot()
    assert target.tasks_on_node("n1") == []


# --- known bugs: ops of one atomic txn are all checked against the state before it


def test_atomic_txn_cannot_create_two_services_with_one_name() -> None:
    store = Store()
    _write(
        store,
        put(make_service("web", id="s1"), MUST_NOT_EXIST),
        put(make_service("web", id="s2"), MUST_NOT_EXIST),
    )
    assert len([s for s in store.list(Kind.SERVICE) if s.spec.name == "web"]) <= 1


def test_atomic_txn_cannot_assign_a_task_twice() -> None:
    store, task = _with_task(S.NEW, node_id="")
    _write(store, put(replace(task, node_id="n1"), None), put(replace(task, node_id="n2"), None))
    _assert_indexes_match_tables(store)
    assert store.get(Kind.TASK, "t1").node_id in ("", "n1")


def test_atomic_txn_deleting_twice_is_an_error_and_changes_nothing() -> None:
    store, _ = _with_task()
    before = store.snapshot()
    result = _write(store, delete(Kind.TASK, "t1"), delete(Kind.TASK, "t1"))
    assert _error(result) == NotFound.code
    assert store.snapshot() == before


def test_atomic_txn_results_give_each_op_its_version() -> None:
    store = Store()
    result = _write(store, put(make_node("n1"), None), put(make_node("n2"), None))
    versions = [r["version"] for r in result["results"]]
    assert versions == [store.get(Kind.NODE, n).version for n in ("n1", "n2")]


def test_task_status_with_a_malformed_update_changes_nothing() -> None:
    store = Store()
    tasks = [make_task(id=f"t{i}", slot=i, node_id="n1", state=S.ASSIGNED) for i in (1, 2)]
    _write(store, *(put(t, MUST_NOT_EXIST) for t in tasks))
    before = store.snapshot()
    command = task_status("n1", {"t1": TaskStatus(S.RUNNING)}, at=AT)
    command["updates"]["t2"] = {"state": "sleeping"}
    result = store.apply(command)
    assert "error" not in result or store.snapshot() == before


# --- determinism: same commands, same state -----------------------------------------

_SERVICE_IDS = ["s1", "s2", "s3"]
_TASK_IDS = ["t1", "t2", "t3", "t4"]
_NODES = ["", "n1", "n2"]
_expect = st.one_of(st.none(), st.just(MUST_NOT_EXIST), st.integers(1, 30))


@st.composite
def _service_op(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    sid = draw(st.sampled_from(_SERVICE_IDS))
    if draw(st.booleans()):
        return sid, delete(Kind.SERVICE, sid, draw(_expect))
    service = make_service(
        draw(st.sampled_from(["web", "db", "api"])),
        id=sid,
        replicas=draw(st.integers(0, 3)),
        spec_version=draw(st.integers(1, 3)),
    )
    return sid, put(service, draw(_expect))


@st.composite
def _task_op(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    tid = draw(st.sampled_from(_TASK_IDS))
    if draw(st.integers(0, 4)) == 0:
        return tid, delete(Kind.TASK, tid, draw(_expect))
    service = Service(id=draw(st.sampled_from(_SERVICE_IDS)), spec=make_service().spec)
    task = make_task(
        service,
        id=tid,
        node_id=draw(st.sampled_from(_NODES)),
        state=draw(st.sampled_from(TaskState)),
        desired_state=draw(st.sampled_from([S.RUNNING, S.SHUTDOWN])),
    )
    return tid, put(task, draw(_expect))


@st.composite
def _command(draw: st.DrawFn) -> dict[str, Any]:
    at = draw(st.floats(0, 1e6, allow_nan=False))
    kind = draw(st.sampled_from(["txn", "txn", "txn", "status", "barrier"]))
    if kind == "barrier":
        return barrier()
    if kind == "status":
        updates = draw(
            st.dictionaries(
                st.sampled_from(_TASK_IDS),
                st.builds(TaskStatus, st.sampled_from(TaskState), st.text(max_size=3)),
                max_size=3,
            )
        )
        return task_status(draw(st.sampled_from(_NODES[1:])), updates, at)
    ops = draw(
        st.lists(
            st.one_of(_service_op(), _task_op()), min_size=1, max_size=4, unique_by=lambda o: o[0]
        )
    )
    return txn([op for _, op in ops], at=at, atomic=draw(st.booleans()))


@settings(max_examples=150, deadline=None)
@given(st.lists(_command(), max_size=30))
def test_the_same_commands_give_the_same_state(commands: list[dict[str, Any]]) -> None:
    direct, via_log = Store(), Store()
    events_direct, events_log = _recorder(direct), _recorder(via_log)
    for command in commands:
        # One replica gets the command as built, the other as the Raft log carries it.
        result = direct.apply(command)
        assert via_log.apply(json.loads(json.dumps(command))) == result
        _assert_indexes_match_tables(direct)
    assert direct.snapshot() == via_log.snapshot()
    assert events_direct == events_log
    assert [e.revision for e in events_direct] == list(range(1, direct.revision + 1))


# --- the state hash: kept incrementally, equal to one computed from scratch -------


def _hash_from_scratch(store: Store) -> str:
    total = sum(object_digest(obj) for kind in Kind for obj in store.list(kind))
    return f"{total % 2**256:064x}"


@settings(max_examples=150, deadline=None)
@given(st.lists(_command(), max_size=30))
def test_the_incremental_state_hash_equals_one_from_scratch(
    commands: list[dict[str, Any]],
) -> None:
    # Atomic txns with a failing op exercise the rollback; deletes and
    # overwrites take digests out of the sum.
    store, replica = Store(), Store()
    for command in commands:
        store.apply(command)
        replica.apply(json.loads(json.dumps(command)))
        assert store.state_hash() == (store.revision, _hash_from_scratch(store))
    assert replica.state_hash() == store.state_hash()
    restored = Store()
    restored.import_state(pickle.loads(pickle.dumps(store.export_state())))
    assert restored.state_hash() == store.state_hash()


def test_a_rolled_back_txn_leaves_the_state_hash_as_it_was() -> None:
    store, task = _with_task()
    before = store.state_hash()
    running = replace(task, status=TaskStatus(S.RUNNING))
    result = _write(
        store,
        put(running, task.version),
        put(make_service(id="s-new"), MUST_NOT_EXIST),
        delete(Kind.TASK, "missing"),
    )
    assert _error(result) == "not_found"
    assert store.state_hash() == before


def test_the_state_hash_changes_with_any_field_and_names_every_field() -> None:
    store, task = _with_task()
    before = store.state_hash()[1]
    _write(store, put(replace(task, service_name="other"), None))
    assert store.state_hash()[1] != before
    # The digest is the dataclass repr: a field left out of it would be
    # left out of the hash.
    for model in (Cluster, Node, Service, ServiceSpec, Task, TaskStatus, Resources, RestartPolicy):
        assert all(f.repr for f in dataclasses.fields(model)), model
