"""The writes that keep a block of the default network on every node and
release the blocks of removed nodes (``allocator.blocks_for_nodes``), decided
from a snapshot. Pure: no I/O; the ``NodeBlockKeeper`` controller writes them."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from warren.core.networks import Network
from warren.manager.allocator import blocks_for_nodes
from warren.manager.allocator.view import allocator_state
from warren.manager.control.networks import DEFAULT_NETWORK
from warren.manager.snapshot import Snapshot
from warren.manager.store import put


@dataclass(frozen=True)
class NodeBlockWrites:
    # Compare-and-swap puts of the networks that changed: one that changed
    # meanwhile (the scheduler took a block) fails, and the next pass decides again.
    ops: tuple[dict[str, Any], ...] = ()
    # Nodes the default network has no free block for, and that network.
    without_block: tuple[str, ...] = ()
    default_network: Network | None = None


def node_block_ops(snapshot: Snapshot, now: float) -> NodeBlockWrites:
    """Every node of ``snapshot`` (any status: it is in the cluster until removed)
    given a default block if it holds none; blocks of nodes not in it released."""
    default = next(
        (net for net in snapshot.networks.values() if net.spec.name == DEFAULT_NETWORK), None
    )
    # Tasks too: a block a task still has an address in (a removed node's
    # stopping task) is not free.
    state = allocator_state(snapshot.networks.values(), (), snapshot.tasks.values())
    decided = blocks_for_nodes(state, snapshot.nodes, default.id if default else None)
    ops = tuple(
        put(replace(net, updated_at=now), snapshot.networks[net.id].version)
        for net in decided.networks
    )
    return NodeBlockWrites(ops, decided.without_block, default)
