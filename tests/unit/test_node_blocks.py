"""Every node in the cluster holds a block of the default network, tasks or not;
a removed node's blocks are released.

The decision (``allocator.blocks_for_nodes``) is tested pure, with Hypothesis;
the leader's ``NodeBlockKeeper`` against a real Store through LocalConsensus.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from factories import make_node, make_task
from hypothesis import given, settings
from hypothesis import strategies as st
from support import eventually

from warren.core.models import Availability, ContainerSpec, NodeStatus, ServiceSpec, Task
from warren.core.networks import Network, NetworkAttachment, NetworkSpec, NodeBlock
from warren.core.states import TaskState
from warren.manager.allocator import (
    AllocatorState,
    NodeBlocks,
    TaskHolding,
    allocate_network,
    allocate_task,
    blocks_for_nodes,
)
from warren.manager.consensus import LocalConsensus
from warren.manager.control.networks import DEFAULT_NETWORK, NetworkControl
from warren.manager.control.services import ServiceControl
from warren.manager.controllers import NodeBlockKeeper, write_ops
from warren.manager.events import EventBus
from warren.manager.node_blocks import node_block_ops
from warren.manager.scheduler import schedule_ops
from warren.manager.store import MUST_NOT_EXIST, Kind, Store, delete, put, raise_for_result, txn


def _network(name: str, subnet: str = "", blocks: tuple[NodeBlock, ...] = ()) -> Network:
    net = allocate_network(AllocatorState(), f"id-{name}", NetworkSpec(name, subnet), now=1.0)
    return dataclasses.replace(net, blocks=blocks)


def _owners(net: Network) -> dict[str, list[str]]:
    owners: dict[str, list[str]] = {}
    for block in net.blocks:
        owners.setdefault(block.node_id, []).append(block.subnet)
    return owners


def _apply(state: AllocatorState, decided: NodeBlocks) -> AllocatorState:
    for net in decided.networks:
        state = state.with_network(net)
    return state


# -- the decision --------------------------------------------------------------------


def test_each_node_without_a_task_gets_its_own_default_block() -> None:
    default, back = _network(DEFAULT_NETWORK), _network("back", "10.33.0.0/16")
    state = AllocatorState(networks=(default, back))
    decided = blocks_for_nodes(state, ["n2", "n1"], default.id)
    (net,) = decided.networks  # only the default network changes
    assert net.id == default.id and decided.without_block == ()
    # The lowest free blocks past the VIP range (the first quarter), in node order.
    assert _owners(net) == {"n1": ["10.32.64.0/24"], "n2": ["10.32.65.0/24"]}


def test_a_node_holding_a_default_block_keeps_it_and_nothing_is_written() -> None:
    default = _network(DEFAULT_NETWORK)
    state = AllocatorState(networks=(default,))
    # n1 took its block when a task landed on it; n2 got one from this rule.
    state = state.with_task(allocate_task(state, "t1", (default.id,), "n1"))
    state = _apply(state, blocks_for_nodes(state, ["n1", "n2"], default.id))
    held = state.network(default.id).blocks
    assert len(held) == 2
    assert blocks_for_nodes(state, ["n1", "n2"], default.id) == NodeBlocks()


def test_blocks_of_a_removed_node_are_released_on_every_network() -> None:
    default = _network(
        DEFAULT_NETWORK,
        blocks=(NodeBlock("n1", "10.32.64.0/24"), NodeBlock("gone", "10.32.65.0/24")),
    )
    back = _network("back", "10.33.0.0/16", (NodeBlock("gone", "10.33.64.0/24"),))
    other = _network("other", "10.34.0.0/16", blocks=(NodeBlock("n1", "10.34.64.0/24"),))
    state = AllocatorState(networks=(default, back, other))
    decided = blocks_for_nodes(state, ["n1"], default.id)
    changed = {net.spec.name: net for net in decided.networks}
    assert set(changed) == {DEFAULT_NETWORK, "back"}
    assert changed[DEFAULT_NETWORK].blocks == (NodeBlock("n1", "10.32.64.0/24"),)
    assert changed["back"].blocks == ()


def test_a_released_block_a_stopping_task_still_has_an_address_in_is_not_given() -> None:
    default = _network(DEFAULT_NETWORK, blocks=(NodeBlock("gone", "10.32.64.0/24"),))
    stopping = TaskHolding("t1", "gone", (NetworkAttachment(default.id, "10.32.64.9/24"),))
    state = AllocatorState(networks=(default,), tasks=(stopping,))
    (net,) = blocks_for_nodes(state, ["n1"], default.id).networks
    assert net.blocks == (NodeBlock("n1", "10.32.65.0/24"),)


def test_without_a_default_network_no_block_is_given_but_removed_nodes_are_released() -> None:
    back = _network("back", blocks=(NodeBlock("gone", "10.32.64.0/24"),))
    state = AllocatorState(networks=(back,))
    for default_id in (None, "id-removed"):
        decided = blocks_for_nodes(state, ["n1"], default_id)
        assert [net.blocks for net in decided.networks] == [()]
        assert decided.without_block == ()


def test_a_full_default_network_leaves_nodes_without_a_block_and_takes_no_idle_one() -> None:
    # A /24 in /28 blocks: 4 make the VIP range, 12 go to nodes.
    default = _network(DEFAULT_NETWORK, "192.168.7.0/24")
    nodes = [f"n{i:02}" for i in range(14)]
    decided = blocks_for_nodes(AllocatorState(networks=(default,)), nodes, default.id)
    (net,) = decided.networks
    assert len(net.blocks) == 12
    assert decided.without_block == ("n12", "n13")
    # Every block is idle (no task), yet none is taken from a node holding it.
    state = AllocatorState(networks=(net,))
    assert blocks_for_nodes(state, nodes, default.id) == NodeBlocks((), ("n12", "n13"))
    # A node leaving frees a block for the next one waiting.
    (net,) = blocks_for_nodes(state, [n for n in nodes if n != "n03"], default.id).networks
    assert _owners(net)["n12"] == ["192.168.7.112/28"]


def test_a_full_network_gives_a_task_a_spare_idle_block_before_a_nodes_only_one() -> None:
    # 12 node blocks: n-b's only block (idle, lowest), two idle ones of n-a, and
    # nine with tasks. A task on a new node takes n-a's spare, not n-b's mesh address.
    held = {4: "n-b", 5: "n-a", 6: "n-a", **{index: "n-c" for index in range(7, 16)}}
    default = _network(DEFAULT_NETWORK, "192.168.7.0/24", _blocks("192.168.7", held))
    tasks = tuple(
        TaskHolding(f"t{i}", "n-c", (NetworkAttachment(default.id, f"192.168.7.{i * 16 + 2}/28"),))
        for i in range(7, 16)
    )
    state = AllocatorState(networks=(default,), tasks=tasks)
    (net,) = allocate_task(state, "new", (default.id,), "n-new").networks
    assert _owners(net)["n-new"] == ["192.168.7.80/28"]
    assert _owners(net)["n-b"] == ["192.168.7.64/28"]
    assert _owners(net)["n-a"] == ["192.168.7.96/28"]


_NODES = ("n0", "n1", "n2", "n3", "n4", "n5")
_GONE = ("x0", "x1", "x2")
# /24 networks in /28 blocks: node blocks are indexes 4 to 15.
_BLOCK_INDEXES = st.integers(4, 15)


def _blocks(prefix: str, held: dict[int, str]) -> tuple[NodeBlock, ...]:
    return tuple(NodeBlock(node, f"{prefix}.{index * 16}/28") for index, node in held.items())


@settings(max_examples=300, deadline=None)
@given(
    default_held=st.dictionaries(_BLOCK_INDEXES, st.sampled_from(_NODES + _GONE)),
    back_held=st.dictionaries(_BLOCK_INDEXES, st.sampled_from(_NODES + _GONE)),
    busy=st.sets(_BLOCK_INDEXES, max_size=4),
    members=st.sets(st.sampled_from(_NODES)),
    default_exists=st.booleans(),
)
def test_blocks_for_nodes_properties(
    default_held: dict[int, str],
    back_held: dict[int, str],
    busy: set[int],
    members: set[str],
    default_exists: bool,
) -> None:
    default = _network(DEFAULT_NETWORK, "10.1.0.0/24", _blocks("10.1.0", default_held))
    back = _network("back", "10.2.0.0/24", _blocks("10.2.0", back_held))
    # Tasks (of nodes present or gone) with an address in some default blocks.
    tasks = tuple(
        TaskHolding(
            f"t{index}", "x0", (NetworkAttachment(default.id, f"10.1.0.{index * 16 + 2}/28"),)
        )
        for index in busy
    )
    state = AllocatorState(networks=(default, back), tasks=tasks)
    default_id = default.id if default_exists else None
    decided = blocks_for_nodes(state, members, default_id)
    after = _apply(state, decided)
    before_default, after_default = default.blocks, after.network(default.id).blocks

    for old, new in ((default, after.network(default.id)), (back, after.network(back.id))):
        # Blocks of nodes in the cluster are kept; those of nodes gone are released.
        assert {b for b in old.blocks if b.node_id in members} <= set(new.blocks)
        assert all(b.node_id in members for b in new.blocks)
        # No block is held twice (the model refuses it too).
        assert len({b.subnet for b in new.blocks}) == len(new.blocks)
    assert set(after.network(back.id).blocks) <= set(back.blocks)

    given_blocks = set(after_default) - set(before_default)
    gained = Counter(b.node_id for b in given_blocks)
    # A node gets at most one block, and only when it held none.
    assert all(count == 1 for count in gained.values())
    assert all(not default.blocks_of(node) for node in gained)
    # A block given was free: no node in the cluster held it (a removed node's
    # may be given at once), no task has an address in it.
    held_before = {b.subnet for b in before_default if b.node_id in members}
    busy_subnets = {f"10.1.0.{index * 16}/28" for index in busy}
    assert not {b.subnet for b in given_blocks} & (held_before | busy_subnets)
    if not default_exists:
        assert not given_blocks and decided.without_block == ()
    else:
        # Every node holds a default block, or is reported without one when none was free.
        unserved = {n for n in members if not after.network(default.id).blocks_of(n)}
        assert unserved == set(decided.without_block)
        if unserved:
            free = set(range(4, 16)) - busy - {i for i, n in default_held.items() if n in members}
            assert len(given_blocks) == len(free)
    # Applied, the decision leaves nothing to decide: no write loop.
    again = blocks_for_nodes(after, members, default_id)
    assert again.networks == () and again.without_block == decided.without_block


# -- the leader's controller -----------------------------------------------------------


@pytest.fixture
async def consensus() -> AsyncIterator[LocalConsensus]:
    store = Store()
    default = allocate_network(AllocatorState(), "net-default", NetworkSpec(DEFAULT_NETWORK), 1.0)
    back = allocate_network(AllocatorState(), "net-back", NetworkSpec("back", "10.40.0.0/16"), 1.0)
    ops = [put(obj, MUST_NOT_EXIST) for obj in (default, back, make_node("n1"))]
    raise_for_result(store.apply(txn(ops, 1.0)))
    consensus = LocalConsensus(store)
    await consensus.start()
    try:
        yield consensus
    finally:
        await consensus.stop()


@pytest.fixture
async def keeper(consensus: LocalConsensus) -> NodeBlockKeeper:
    return NodeBlockKeeper(consensus, EventBus(consensus.store, asyncio.get_running_loop()))


def _default_blocks(store: Store) -> dict[str, list[str]]:
    network: Network = store.get(Kind.NETWORK, "net-default")
    return _owners(network)


async def _write(consensus: LocalConsensus, *ops: dict[str, object]) -> None:
    raise_for_result(await consensus.propose(txn(list(ops), at=time.time())))


async def test_nodes_get_default_blocks_and_a_removed_node_releases_its_own(
    consensus: LocalConsensus, keeper: NodeBlockKeeper
) -> None:
    store = consensus.store
    # A registered node with no task gets a block of the default network, no other.
    assert await keeper.keep_blocks() == 1
    assert _default_blocks(store) == {"n1": ["10.32.64.0/24"]}
    assert store.get(Kind.NETWORK, "net-back").blocks == ()
    # Every node holds one: a pass writes nothing (no write loop).
    revision = store.revision
    assert await keeper.keep_blocks() == 0
    assert store.revision == revision
    # A second node (down: it is in the cluster all the same) gets a different block.
    await _write(consensus, put(make_node("n2", status=NodeStatus.DOWN), MUST_NOT_EXIST))
    assert await keeper.keep_blocks() == 1
    assert _default_blocks(store) == {"n1": ["10.32.64.0/24"], "n2": ["10.32.65.0/24"]}
    # Removed (the node's object deleted, as `warren node rm` does): its block is released.
    node = store.get(Kind.NODE, "n1")
    await _write(consensus, delete(Kind.NODE, node.id, node.version))
    assert await keeper.keep_blocks() == 1
    assert _default_blocks(store) == {"n2": ["10.32.65.0/24"]}
    assert await keeper.keep_blocks() == 0


async def test_a_node_that_is_down_keeps_its_block(
    consensus: LocalConsensus, keeper: NodeBlockKeeper
) -> None:
    await keeper.keep_blocks()
    node = consensus.store.get(Kind.NODE, "n1")
    down = dataclasses.replace(node, status=NodeStatus.DOWN, availability=Availability.DRAIN)
    await _write(consensus, put(down, node.version))
    assert await keeper.keep_blocks() == 0
    assert _default_blocks(consensus.store) == {"n1": ["10.32.64.0/24"]}


async def test_a_decision_the_network_changed_under_is_refused_then_decided_again(
    consensus: LocalConsensus, keeper: NodeBlockKeeper
) -> None:
    store = consensus.store
    stale = node_block_ops(store.snapshot(), time.time())
    # Meanwhile the scheduler gave n1 a block for a task (the same lowest free one).
    network = store.get(Kind.NETWORK, "net-default")
    taken = dataclasses.replace(network, blocks=(NodeBlock("n1", "10.32.64.0/24"),))
    await _write(consensus, put(taken, network.version))
    await _write(consensus, put(make_node("n2"), MUST_NOT_EXIST))
    # Applied, the stale write's version check fails: nothing is given twice.
    assert await write_ops(consensus, list(stale.ops)) == 1
    assert _default_blocks(store) == {"n1": ["10.32.64.0/24"]}
    assert await keeper.keep_blocks() == 1
    assert _default_blocks(store) == {"n1": ["10.32.64.0/24"], "n2": ["10.32.65.0/24"]}


async def test_without_the_default_network_nodes_get_none_until_it_is_made(
    consensus: LocalConsensus, keeper: NodeBlockKeeper
) -> None:
    # A cluster made before networks has no default network (it cannot be
    # removed; the leader makes it, as `NetworkControl.ensure_default`).
    store = consensus.store
    old = store.get(Kind.NETWORK, "net-default")
    await _write(consensus, delete(Kind.NETWORK, old.id, old.version))
    assert await keeper.keep_blocks() == 0
    assert store.get(Kind.NETWORK, "net-back").blocks == ()
    made = await NetworkControl(consensus).create(NetworkSpec(DEFAULT_NETWORK))
    assert await keeper.keep_blocks() == 1
    assert list(_owners(store.get(Kind.NETWORK, made.id))) == ["n1"]


async def test_a_full_default_network_is_reported_once(
    consensus: LocalConsensus, caplog: pytest.LogCaptureFixture
) -> None:
    store = consensus.store
    small = allocate_network(
        AllocatorState(), "net-small", NetworkSpec(DEFAULT_NETWORK, "192.168.7.0/24"), 1.0
    )
    old = store.get(Kind.NETWORK, "net-default")
    nodes = [make_node(f"m{i:02}") for i in range(13)]
    await _write(
        consensus,
        delete(Kind.NETWORK, old.id, old.version),
        put(small, MUST_NOT_EXIST),
        *(put(node, MUST_NOT_EXIST) for node in nodes),
    )
    keeper = NodeBlockKeeper(consensus, EventBus(store, asyncio.get_running_loop()))
    with caplog.at_level(logging.WARNING, logger="warren.manager.controllers"):
        assert await keeper.keep_blocks() == 1
        assert await keeper.keep_blocks() == 0
    # 14 nodes (m00..m12 and n1), 12 blocks: the last two wait, reported once.
    assert len(store.get(Kind.NETWORK, "net-small").blocks) == 12
    (record,) = [r for r in caplog.records if "no free /28 block" in r.getMessage()]
    assert "m12, n1" in record.getMessage()


async def test_tasks_on_the_default_network_use_their_nodes_block_and_are_placed_at_once(
    consensus: LocalConsensus, keeper: NodeBlockKeeper
) -> None:
    store = consensus.store
    await keeper.keep_blocks()
    services = ServiceControl(consensus, NetworkControl(consensus))
    web = await services.create(
        ServiceSpec(name="web", container=ContainerSpec("busybox"), replicas=2)
    )
    tasks = [make_task(web, slot=slot) for slot in (1, 2)]
    await _write(consensus, *(put(task, MUST_NOT_EXIST) for task in tasks))
    # No block to take first: one scheduling pass places both, on n1's block.
    result = schedule_ops(store.snapshot(), time.time())
    assert result.placed == 2
    raise_for_result(store.apply(txn(list(result.ops), time.time(), atomic=False)))
    block = ipaddress.ip_network(_default_blocks(store)["n1"][0])
    placed: list[Task] = store.list(Kind.TASK)
    for task in placed:
        assert task.status.state == TaskState.ASSIGNED
        assert ipaddress.ip_interface(task.networks[0].address).ip in block
    assert _default_blocks(store) == {"n1": [str(block)]}


async def test_the_running_controller_serves_a_node_as_it_joins_and_leaves(
    consensus: LocalConsensus,
) -> None:
    store = consensus.store
    keeper = NodeBlockKeeper(consensus, EventBus(store, asyncio.get_running_loop()))
    running = asyncio.create_task(keeper.run())
    try:
        await eventually(lambda: "n1" in _default_blocks(store), 5.0, "n1's block")
        await _write(consensus, put(make_node("n2"), MUST_NOT_EXIST))
        await eventually(lambda: "n2" in _default_blocks(store), 5.0, "n2's block")
        node = store.get(Kind.NODE, "n1")
        await _write(consensus, delete(Kind.NODE, node.id, node.version))
        await eventually(lambda: "n1" not in _default_blocks(store), 5.0, "n1's block released")
        assert set(_default_blocks(store)) == {"n2"}
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
