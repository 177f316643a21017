"""EtcdConsensus over real etcd members on loopback: the log, leadership and
its fencing, learners, state images and compaction.

Members come from the ``members`` kit of test_etcd_member (every etcd is
stopped, then anything left naming the test's dir is killed)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support import eventually
from test_etcd_member import Members, _alive, ca, members  # noqa: F401  (the fixtures)

from warren.core.errors import NotLeader, Unavailable
from warren.core.models import Node, NodeRole
from warren.manager.etcd.client import EtcdClient
from warren.manager.etcd.consensus import IMAGE_KEY, EtcdConsensus
from warren.manager.etcd.member import EtcdMember, MemberConfig
from warren.manager.store import MUST_NOT_EXIST, Kind, Store, put, raise_for_result, txn

pytestmark = pytest.mark.integration


def _create_node(name: str) -> dict[str, Any]:
    node = Node(id=name, role=NodeRole.WORKER, hostname=name)
    return txn([put(node, MUST_NOT_EXIST)], at=time.time())


class Group:
    """Consensus objects over members, stopped at the end."""

    def __init__(self, kit: Members) -> None:
        self.kit = kit
        self.all: list[EtcdConsensus] = []

    async def start(self, configs: list[MemberConfig], **options: Any) -> list[EtcdConsensus]:
        started = []
        for config in configs:
            member = self.kit.member(config)
            consensus = EtcdConsensus(Store(), config.name, member, **options)
            self.all.append(consensus)
            started.append(consensus)
        await asyncio.gather(*(c.start() for c in started))
        return started

    async def leader(self, among: list[EtcdConsensus] | None = None) -> EtcdConsensus:
        pool = among or self.all
        await eventually(lambda: any(c.is_leader for c in pool), 15.0, "a leader")
        return next(c for c in pool if c.is_leader)


@pytest.fixture
async def group(members: Members) -> AsyncIterator[Group]:  # noqa: F811
    kit = Group(members)
    try:
        yield kit
    finally:
        for consensus in kit.all:
            await consensus.stop()


async def test_writes_through_any_manager_apply_everywhere_in_one_order(group: Group) -> None:
    managers = await group.start(group.kit.configs(3))
    await group.leader()
    results = await asyncio.gather(
        *(managers[i % 3].propose(_create_node(f"n{i}")) for i in range(60))
    )
    assert all("error" not in raise_for_result(r)["results"][0] for r in results)
    last = max(m.last_log_index for m in managers)
    await eventually(lambda: all(m.last_log_index == last for m in managers), 10.0, "catch-up")
    hashes = {m.store.state_hash() for m in managers}
    assert len(hashes) == 1 and next(iter(hashes))[0] == 60
    # A write's result is this manager's own apply: a second create is refused.
    again = await managers[1].propose(_create_node("n0"))
    assert again["error"] == "already_exists", again


async def test_the_leader_is_one_member_and_a_deposed_leaders_writes_are_refused(
    group: Group,
) -> None:
    managers = await group.start(group.kit.configs(3))
    old = await group.leader()
    assert [m.is_leader for m in managers].count(True) == 1
    old_term = old.fence_term
    # Its member dies (as with its process): another leads, with a higher term.
    killed = time.monotonic()
    old_member = group.kit.started[managers.index(old)]
    assert old_member.pid is not None
    os.kill(old_member.pid, signal.SIGKILL)  # no leadership handed over
    await old.stop()
    survivors = [m for m in managers if m is not old]
    written = time.monotonic()
    survivors_write = await survivors[0].propose(_create_node("during"), timeout=8.0)
    print(f"a write sent as the leader went was applied {time.monotonic() - written:.2f}s later")
    assert "error" not in survivors_write["results"][0]
    new = await group.leader(survivors)
    print(f"new leader {time.monotonic() - killed:.2f}s after the old one stopped")
    assert new.fence_term > old_term
    # Sent the moment the leader went: a put etcd dropped unanswered during the
    # election was sent again, and the write applied once everywhere.
    for manager in survivors:
        await eventually(lambda m=manager: m.store.find(Kind.NODE, "during"), 5.0, "applied")
        assert manager.store.count(Kind.NODE) == 1
    # A deposed leader that has not noticed yet still tags with its old term:
    # simulated on a survivor (the old one is gone), its write is refused at
    # apply, on every manager, and changes nothing.
    follower = next(m for m in survivors if m is not new)
    follower._leading, follower._term = True, old_term  # what a stale leader holds
    with pytest.raises(NotLeader, match=f"term {old_term}"):
        await follower.propose(_create_node("stale"))
    follower._leading = False
    await new.propose(_create_node("fresh"))
    for manager in survivors:
        await eventually(lambda m=manager: m.store.find(Kind.NODE, "fresh"), 5.0, "the write")
        assert manager.store.find(Kind.NODE, "stale") is None


async def test_a_learner_joins_is_promoted_and_catches_up(group: Group) -> None:
    (first,) = await group.start(group.kit.configs(1))
    await group.leader()
    for i in range(30):
        await first.propose(_create_node(f"n{i}"))
    # The new member as `manager join` adds it: a learner first, then it starts.
    (config,) = group.kit.configs(1)
    await first.add_member(config.name)
    assert any(m.learner for m in first.members())
    joined_config = MemberConfig(
        **{
            **config.__dict__,
            "initial_cluster": {first.self_address: first.self_address, config.name: config.name},
            "initial_state": "existing",
            "data_dir": group.kit.root / "joined" / "etcd",  # configs() numbers from m1 again
        }
    )
    (second,) = await group.start([joined_config])
    await eventually(
        lambda: len(first.members()) == 2 and not any(m.learner for m in first.members()),
        20.0,
        "the learner promoted",
    )
    await second.propose(_create_node("from-the-new-one"))
    await eventually(lambda: second.store.count(Kind.NODE) == 31, 10.0, "the new one caught up")
    # Its own write is applied on the first one too, a moment later.
    await eventually(
        lambda: second.store.state_hash() == first.store.state_hash(), 10.0, "the same state"
    )


async def test_a_manager_behind_the_compaction_loads_the_state_image(group: Group) -> None:
    configs = group.kit.configs(3)
    managers = await group.start(configs, image_every=20)
    leader = await group.leader()
    lagging = next(m for m in managers if m is not leader)
    index = managers.index(lagging)
    await lagging.stop()  # its member too: it misses what follows
    live = [m for m in managers if m is not lagging]
    for i in range(70):
        await live[i % 2].propose(_create_node(f"n{i}"))
    # Two images at least: the history before the older one is compacted away.
    await eventually(lambda: leader._image_task is None, 10.0, "the last image written")
    leader_member = group.kit.started[managers.index(leader)]
    client = EtcdClient(leader_member.client_endpoint, *leader_member.client_tls)
    try:
        image = await client.get(IMAGE_KEY, timeout=5.0)
        assert image is not None
    finally:
        await client.close()
    # Back: it resumes from its member's data, is refused the compacted part
    # of the log, and loads the image instead.
    restarted = EtcdConsensus(Store(), configs[index].name, EtcdMember(configs[index]))
    group.kit.started.append(restarted._member)  # type: ignore[arg-type]
    group.all.append(restarted)
    await restarted.start()
    await eventually(
        lambda: restarted.store.state_hash() == leader.store.state_hash(), 20.0, "caught up"
    )
    assert restarted.store.count(Kind.NODE) == 70


async def test_without_a_quorum_a_write_fails_within_its_timeout(group: Group) -> None:
    managers = await group.start(group.kit.configs(3))
    await group.leader()
    await managers[0].propose(_create_node("before"))
    for manager in managers[1:]:
        await manager.stop()
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await managers[0].propose(_create_node("alone"), timeout=2.0)
    assert time.monotonic() - started < 3.0
    await eventually(lambda: not managers[0].is_leader, 5.0, "the lone manager to step down")


async def test_a_member_restarted_on_another_port_is_followed(group: Group) -> None:
    (config,) = group.kit.configs(1)
    # Time to take its client port before the supervisor restarts it.
    member = group.kit.member(config, restart_delays=(5.0, 0.5, 0.5, 0.5, 0.5))
    consensus = EtcdConsensus(Store(), config.name, member)
    group.all.append(consensus)
    await consensus.start()
    await group.leader()
    await consensus.propose(_create_node("before"))
    old_endpoint, old_pid = member.client_endpoint, member.pid
    assert old_pid is not None
    with socket.socket() as squatter:
        os.kill(old_pid, signal.SIGKILL)
        await eventually(lambda: not _alive(old_pid), 5.0, "the old etcd gone")
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        port = int(old_endpoint.rpartition(":")[2])

        def taken() -> bool:
            # Free once the client has closed its end of the old connections.
            try:
                squatter.bind(("127.0.0.1", port))
            except OSError:
                return False
            return True

        await eventually(taken, 4.0, "the old client port free to take")
        squatter.listen()
        await eventually(lambda: member.running and member.pid != old_pid, 20.0, "a new etcd")
    assert member.client_endpoint != old_endpoint
    result = await consensus.propose(_create_node("after"), timeout=15.0)
    assert "error" not in result["results"][0]
    await eventually(lambda: consensus.is_leader, 10.0, "leading again")
