"""Every node in the cluster holds a block of the default network.

As Kubernetes gives each node a pod CIDR when it registers (flannel, k3s), a
node takes a block of the default network as soon as it is in the cluster,
tasks or not: the block's gateway is its address in the WireGuard mesh and
where its DNS listens. A node running no task (a drained manager) still
forwards published ports to tasks on other nodes, so its packets need a source
address the peers accept, and the peers a route back to it. Blocks of nodes no
longer in the cluster are released, on every network: a node's blocks are
never released while it is in the cluster.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from warren.core.networks import Network, NodeBlock
from warren.manager.allocator.state import AllocatorState
from warren.manager.allocator.subnets import free_blocks


@dataclass(frozen=True)
class NodeBlocks:
    """What ``blocks_for_nodes`` decided: the networks that changed (each a
    complete new version, to write with a compare-and-swap on the version it
    was decided from), and the nodes the default network had no free block for."""

    networks: tuple[Network, ...] = ()
    without_block: tuple[str, ...] = ()


def blocks_for_nodes(
    state: AllocatorState, node_ids: Iterable[str], default_network_id: str | None
) -> NodeBlocks:
    """Blocks of nodes not in ``node_ids`` released (every network), and one
    block of the default network for each node of ``node_ids`` holding none on
    it: the lowest free one, never an idle block another node holds (tasks take
    those when the network is full; a node without a task can wait for one).
    Nothing changes for a node that already holds a default block: applied, the
    decision leaves nothing to decide, so the caller never writes in a loop.
    No default network (removed, or a cluster made before networks): no blocks
    are given."""
    members = frozenset(node_ids)
    changed: dict[str, Network] = {}
    for net in state.networks:
        kept = tuple(block for block in net.blocks if block.node_id in members)
        if len(kept) != len(net.blocks):
            changed[net.id] = dataclasses.replace(net, blocks=kept)
    default = _default(state, changed, default_network_id)
    if default is None:
        return NodeBlocks(tuple(changed.values()))
    needing = sorted(node for node in members if not default.blocks_of(node))
    given = tuple(
        NodeBlock(node_id, str(block))
        for node_id, block in zip(needing, free_blocks(state, default), strict=False)
    )
    if given:
        changed[default.id] = dataclasses.replace(default, blocks=(*default.blocks, *given))
    return NodeBlocks(tuple(changed.values()), tuple(needing[len(given) :]))


def _default(
    state: AllocatorState, changed: dict[str, Network], network_id: str | None
) -> Network | None:
    if network_id is None:
        return None
    found = changed.get(network_id)
    if found is not None:
        return found
    return next((net for net in state.networks if net.id == network_id), None)
