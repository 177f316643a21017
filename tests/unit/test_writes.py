"""The shared write helpers: compare-and-swap retries, orphaning a node's tasks,
and the leader's API address for NotLeader replies."""

from __future__ import annotations

from dataclasses import replace

import pytest
from factories import make_node, make_service, make_task

from warren.core.errors import Conflict, NotFound, NotLeader
from warren.core.models import Node, NodeRole, TaskStatus
from warren.core.states import TaskState
from warren.manager.consensus import LocalConsensus
from warren.manager.leader import leader_api_address, require_leader
from warren.manager.store import Kind, Store, put, txn
from warren.manager.writes import orphan_node_tasks, update_with_retry


async def _consensus(*objects: object) -> LocalConsensus:
    store = Store()
    store.load(objects)
    consensus = LocalConsensus(store)
    await consensus.start()
    return consensus


def _write_behind_its_back(store: Store, node: Node, label: str) -> None:
    """Another writer gets there first: the version the caller read is stale."""
    store.apply(txn([put(replace(node, labels={**node.labels, label: "x"}), node.version)], at=0))


async def test_a_conflict_is_retried_on_the_object_read_again() -> None:
    consensus = await _consensus(make_node("n1"))
    seen: list[int] = []

    def relabel(node: Node) -> Node:
        seen.append(node.version)
        if len(seen) == 1:
            _write_behind_its_back(consensus.store, node, "theirs")
        return replace(node, labels={**node.labels, "ours": "y"})

    written = await update_with_retry(consensus, Kind.NODE, "n1", relabel)
    # Read twice, the second time at the other writer's version; both changes kept.
    assert len(seen) == 2 and seen[1] > seen[0]
    assert written.labels == {"theirs": "x", "ours": "y"}
    assert consensus.store.get(Kind.NODE, "n1") == written


async def test_it_gives_up_after_the_last_attempt_with_a_clear_error() -> None:
    consensus = await _consensus(make_node("n1"))
    calls = 0

    def always_beaten(node: Node) -> Node:
        nonlocal calls
        calls += 1
        _write_behind_its_back(consensus.store, node, f"theirs{calls}")
        return replace(node, labels={**node.labels, "ours": "y"})

    with pytest.raises(Conflict, match=r"^node 'n1' kept changing \(3 attempts\); try again$"):
        await update_with_retry(consensus, Kind.NODE, "n1", always_beaten, attempts=3)
    assert calls == 3
    assert "ours" not in consensus.store.get(Kind.NODE, "n1").labels


async def test_nothing_is_written_when_the_change_is_none() -> None:
    consensus = await _consensus(make_node("n1"))
    before = consensus.store.revision
    node = await update_with_retry(consensus, Kind.NODE, "n1", lambda node: None)
    assert node == consensus.store.get(Kind.NODE, "n1")
    assert consensus.store.revision == before
    # Positive control: a change is written, and moves the revision.
    await update_with_retry(consensus, Kind.NODE, "n1", lambda n: replace(n, labels={"a": "b"}))
    assert consensus.store.revision == before + 1


async def test_a_missing_object_is_not_found_and_a_refusal_is_passed_on() -> None:
    consensus = await _consensus(make_node("n1"))
    with pytest.raises(NotFound, match="node 'gone' not found"):
        await update_with_retry(consensus, Kind.NODE, "gone", lambda n: n)

    def refuse(node: Node) -> Node:
        raise Conflict("refused")

    with pytest.raises(Conflict, match=r"^refused$"):
        await update_with_retry(consensus, Kind.NODE, "n1", refuse)


async def test_only_the_active_tasks_of_the_node_are_orphaned() -> None:
    service = make_service()
    running = make_task(service, node_id="n1", state=TaskState.RUNNING)
    done = make_task(service, node_id="n1", state=TaskState.COMPLETE)
    elsewhere = make_task(service, node_id="n2", state=TaskState.RUNNING)
    consensus = await _consensus(
        make_node("n1"), make_node("n2"), service, running, done, elsewhere
    )
    store = consensus.store
    untouched = [store.get(Kind.TASK, done.id), store.get(Kind.TASK, elsewhere.id)]

    ops = orphan_node_tasks(store, "n1", "node down: silent", 5.0, shut_down=False)
    store.apply(txn(ops, at=5.0))
    orphaned = store.get(Kind.TASK, running.id)
    assert orphaned.status == TaskStatus(TaskState.ORPHANED, "node down: silent", timestamp=5.0)
    assert orphaned.desired_state == running.desired_state
    assert [store.get(Kind.TASK, done.id), store.get(Kind.TASK, elsewhere.id)] == untouched


async def test_a_removed_nodes_orphans_are_also_shut_down() -> None:
    service = make_service()
    running = make_task(service, node_id="n1", state=TaskState.RUNNING)
    consensus = await _consensus(make_node("n1"), service, running)
    ops = orphan_node_tasks(consensus.store, "n1", "node removed", 5.0, shut_down=True)
    consensus.store.apply(txn(ops, at=5.0))
    orphaned = consensus.store.get(Kind.TASK, running.id)
    assert orphaned.status.state == TaskState.ORPHANED
    assert orphaned.desired_state == TaskState.SHUTDOWN


class _Follower(LocalConsensus):
    """Consensus as a follower sees it: someone else leads."""

    def __init__(self, store: Store, leader: str | None) -> None:
        super().__init__(store)
        self._leader = leader

    @property
    def is_leader(self) -> bool:
        return False

    @property
    def leader(self) -> str | None:
        return self._leader


def _managers() -> Store:
    store = Store()
    store.load(
        [
            replace(make_node("m1", role=NodeRole.MANAGER), raft_address="10.0.0.1:4243"),
            replace(
                make_node("m2", role=NodeRole.MANAGER),
                raft_address="10.0.0.2:4243",
                api_address="10.0.0.2:4242",
            ),
            make_node("w1"),
        ]
    )
    return store


def test_the_leaders_api_address_is_its_managers() -> None:
    assert leader_api_address(_Follower(_managers(), "10.0.0.2:4243")) == "10.0.0.2:4242"
    # No leader, or one whose node this manager has not applied yet: unknown.
    assert leader_api_address(_Follower(_managers(), None)) == ""
    assert leader_api_address(_Follower(_managers(), "10.0.0.9:4243")) == ""


async def test_a_follower_refuses_naming_the_leader() -> None:
    follower = _Follower(_managers(), "10.0.0.2:4243")
    with pytest.raises(
        NotLeader, match=r"^demoting goes through the leader \(leader: 10.0.0.2:4242\)$"
    ) as caught:
        require_leader(follower, "demoting goes through the leader")
    assert caught.value.leader == "10.0.0.2:4242"
    with pytest.raises(NotLeader, match=r"\(leader: unknown\)$"):
        require_leader(_Follower(_managers(), None), "this manager is not the leader")
    # Positive control: the leader itself goes ahead.
    require_leader(await _consensus(), "not refused")
