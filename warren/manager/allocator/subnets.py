"""Network subnets and the per-node blocks inside them.

- A network without ``--subnet`` takes the first free /16 (``DEFAULT_NETWORK_PREFIX``)
  of the pool (``DEFAULT_POOL``, 10.32.0.0/11: 32 such networks, clear of the
  10.0.x.x many LANs and clouds use). A subnet asked for may lie anywhere, but
  never overlaps another network's.
- A node takes a block of a network (a /24 by default) the first time a task of
  that network lands on it, and a further one only when its blocks are full.
  It keeps its blocks while it is in the cluster, tasks or not: the WireGuard
  mesh routes a node's blocks to it, so stable blocks mean peers' routes change
  only when a node first runs a network's task, not whenever its last task of
  the network stops and the next one starts. Only when a network has no free
  block left is an idle one (no task address in it) handed to the node that
  needs it, and ``release_node`` frees a node's blocks when it leaves the
  cluster.
- Every node also holds a block of the default network from the moment it is
  in the cluster, tasks or not (``nodes.blocks_for_nodes``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections import Counter
from collections.abc import Iterable, Iterator

from warren.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from warren.core.networks import (
    MAX_SUBNET_PREFIX,
    MIN_SUBNET_PREFIX,
    VIP_RANGE_BITS,
    Network,
    NetworkSpec,
    NodeBlock,
    block_prefix_for,
    parse_subnet,
)
from warren.manager.allocator.state import AllocatorState, TaskView

DEFAULT_POOL = "10.32.0.0/11"
DEFAULT_NETWORK_PREFIX = 16


def allocate_network(
    state: AllocatorState,
    network_id: str,
    spec: NetworkSpec,
    now: float,
    pool: str = DEFAULT_POOL,
    prefix: int = DEFAULT_NETWORK_PREFIX,
) -> Network:
    """A new network: ``spec.subnet`` if it is free, else the pool's first free /``prefix``."""
    for net in state.networks:
        if net.id == network_id or net.spec.name == spec.name:
            raise AlreadyExists(f"network {spec.name} already exists")
    if spec.subnet:
        subnet = parse_subnet(spec.subnet)
        clash = _overlapping(state.networks, subnet)
        if clash is not None:
            raise InvalidArgument(
                f"subnet {subnet} overlaps network {clash.spec.name} ({clash.subnet}): "
                "choose a subnet no other network uses (warren network ls shows them)"
            )
    else:
        subnet = _free_subnet(state.networks, pool, prefix)
    return Network(
        id=network_id,
        spec=spec,
        subnet=str(subnet),
        block_prefix=block_prefix_for(subnet),
        created_at=now,
        updated_at=now,
    )


def _overlapping(networks: Iterable[Network], subnet: ipaddress.IPv4Network) -> Network | None:
    return next((net for net in networks if net.network.overlaps(subnet)), None)


def _free_subnet(networks: tuple[Network, ...], pool: str, prefix: int) -> ipaddress.IPv4Network:
    area = _parse_pool(pool, prefix)
    size = 2 ** (32 - prefix)
    candidate = int(area.network_address)
    last = int(area.broadcast_address)
    while candidate + size - 1 <= last:
        subnet = ipaddress.IPv4Network((candidate, prefix))
        clash = _overlapping(networks, subnet)
        if clash is None:
            return subnet
        # Skip past the network in the way, to the next aligned candidate.
        past = max(candidate + size, int(clash.network.broadcast_address) + 1)
        candidate = -(-past // size) * size
    raise FailedPrecondition(
        f"no free /{prefix} is left in the network address pool {area}: remove a network "
        "no service uses, or give the new one a subnet of its own (--subnet CIDR)"
    )


def _parse_pool(pool: str, prefix: int) -> ipaddress.IPv4Network:
    if not MIN_SUBNET_PREFIX <= prefix <= MAX_SUBNET_PREFIX:
        raise InvalidArgument(
            f"network size /{prefix} is out of range: use a /{MIN_SUBNET_PREFIX} to a "
            f"/{MAX_SUBNET_PREFIX}"
        )
    try:
        area = ipaddress.IPv4Network(pool)
    except ValueError:
        raise InvalidArgument(
            f"invalid address pool {pool!r}: expected an IPv4 CIDR such as {DEFAULT_POOL}"
        ) from None
    if area.prefixlen > prefix:
        raise InvalidArgument(f"address pool {area} is smaller than one /{prefix} network")
    return area


def take_block(state: TaskView, network: Network, node_id: str) -> Network:
    """``network`` with one more block held by ``node_id``: the lowest free one,
    else the lowest idle one another node held. Either way no listed task has
    an address in it (a node that left may have left stopping tasks behind), so
    the block is the new holder's alone."""
    busy = _busy_blocks(state, network)
    free = _lowest_free_block(network, busy)
    if free is not None:
        block = NodeBlock(node_id, str(free))
        return _with_blocks(network, (*network.blocks, block))
    idle = _idle_block(network, node_id, busy)
    if idle is None:
        raise FailedPrecondition(
            f"network {network.spec.name} ({network.subnet}) is full: node {node_id} has no "
            f"free address in its blocks and every /{network.block_prefix} block holds tasks; "
            "spread the service over more nodes or use a network with a larger subnet "
            "(warren network create NAME --subnet CIDR)"
        )
    blocks = tuple(
        NodeBlock(node_id, block.subnet) if block.subnet == idle.subnet else block
        for block in network.blocks
    )
    return _with_blocks(network, blocks)


def _with_blocks(network: Network, blocks: tuple[NodeBlock, ...]) -> Network:
    return dataclasses.replace(network, blocks=blocks)


def _busy_blocks(state: TaskView, network: Network) -> set[int]:
    """The first address of every block of ``network`` a listed task has an address in."""
    subnet = network.network
    low, high = int(subnet.network_address), int(subnet.broadcast_address)
    mask = ~(2 ** (32 - network.block_prefix) - 1)
    return {address & mask for address in state.task_addresses if low <= address <= high}


def free_blocks(state: TaskView, network: Network) -> Iterator[ipaddress.IPv4Network]:
    """The blocks of ``network`` no node holds and no listed task has an
    address in, lowest first (never an idle block another node holds)."""
    return _free_blocks(network, _busy_blocks(state, network))


def _lowest_free_block(network: Network, busy: set[int]) -> ipaddress.IPv4Network | None:
    return next(_free_blocks(network, busy), None)


def _free_blocks(network: Network, busy: set[int]) -> Iterator[ipaddress.IPv4Network]:
    subnet = network.network
    size = 2 ** (32 - network.block_prefix)
    count = 2 ** (network.block_prefix - subnet.prefixlen)
    first = count >> VIP_RANGE_BITS  # the blocks before it make the VIP range
    held = {int(block.network.network_address) for block in network.blocks}
    base = int(subnet.network_address)
    for index in range(first, count):
        start = base + index * size
        if start not in held and start not in busy:
            yield ipaddress.IPv4Network((start, network.block_prefix))


def _idle_block(network: Network, node_id: str, busy: set[int]) -> NodeBlock | None:
    idle = [
        block
        for block in network.blocks
        if block.node_id != node_id and int(block.network.network_address) not in busy
    ]
    held = Counter(block.node_id for block in network.blocks)
    # A node's only block last: on the default network it is the node's address
    # in the mesh (nodes.blocks_for_nodes), which a spare block of another is not.
    return min(
        idle,
        key=lambda block: (held[block.node_id] == 1, int(block.network.network_address)),
        default=None,
    )


def release_node(state: AllocatorState, node_id: str) -> tuple[Network, ...]:
    """The networks that held blocks for ``node_id``, without them: for when the
    node leaves the cluster. Its tasks' addresses stay taken while listed."""
    changed = []
    for net in state.networks:
        kept = tuple(block for block in net.blocks if block.node_id != node_id)
        if len(kept) != len(net.blocks):
            changed.append(_with_blocks(net, kept))
    return tuple(changed)


def check_network_removable(state: AllocatorState, network_id: str) -> None:
    """Refuse to remove a network a service is on or a task still has an address on."""
    net = state.network(network_id)
    users = sorted(svc.name for svc in state.services if network_id in svc.network_ids)
    if users:
        shown = ", ".join(users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
        raise FailedPrecondition(
            f"network {net.spec.name} is used by service {shown}: remove it from them first "
            f"(warren service update --network-rm {net.spec.name} SERVICE)"
        )
    holders = [
        task.task_id
        for task in state.tasks
        if any(att.network_id == network_id for att in task.attachments)
    ]
    if holders:
        raise FailedPrecondition(
            f"network {net.spec.name} still has {len(holders)} task(s) with an address on it "
            "(stopping): try again once they are gone"
        )
