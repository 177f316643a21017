"""Task addresses and service virtual IPs.

A task gets one address per network of its service, from a block its node
holds on that network (``subnets.take_block`` gives the node one when it has
none or they are full). A block's network address, its first address (the
gateway: the node's bridge) and its broadcast address are never given out, and
no address a listed task holds is. A service gets one VIP per network from the
network's VIP range, and keeps it across updates.

The search starts at a point derived from the task's or service's id rather
than at the lowest free address, so an address just freed is unlikely to be
handed out again at once (DNS answers and conntrack entries for it may still
be around for a few seconds).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Mapping

from warren.core.errors import FailedPrecondition, InvalidArgument
from warren.core.networks import EndpointMode, Network, NetworkAttachment, NodeBlock, VirtualIP
from warren.manager.allocator.state import (
    AllocatorState,
    ServiceRequest,
    TaskAllocation,
    TaskView,
    WorkingState,
    check_network_ids,
)
from warren.manager.allocator.subnets import take_block


def allocate_task(
    state: TaskView, task_id: str, network_ids: tuple[str, ...], node_id: str
) -> TaskAllocation:
    """Addresses for task ``task_id`` on node ``node_id``, one per network, in order.

    Where it plugs in: whoever sets a task's node also calls this and writes the
    task's attachments and the changed networks in the same Raft entry (the
    scheduler at placement, or a leader-only allocator controller right after
    it). Calling it again for the same task and node gives the same addresses.
    """
    if not node_id:
        raise InvalidArgument(f"task {task_id} has no node to take addresses on")
    check_network_ids(network_ids, f"task {task_id}")
    previous = state.task(task_id)
    kept = {}
    if previous is not None and previous.node_id == node_id:
        kept = {att.network_id: att for att in previous.attachments}
    taken = _TakenAddresses(state.task_addresses, task_id)
    attachments = []
    changed: dict[str, Network] = {}
    for network_id in network_ids:
        net = state.network(network_id)
        old = kept.get(network_id)
        if old is not None and _in_blocks(old.address, net.blocks_of(node_id)):
            attachments.append(old)
            continue
        net, address = _address_on(state, net, task_id, node_id, taken)
        if net is not state.network(network_id):
            changed[network_id] = net
        taken.add(int(address.ip))
        attachments.append(NetworkAttachment(network_id, str(address)))
    return TaskAllocation(task_id, node_id, tuple(attachments), tuple(changed.values()))


TaskRequest = tuple[str, tuple[str, ...], str]  # task id, network ids, node id


def allocate_tasks(
    state: AllocatorState, requests: Iterable[TaskRequest]
) -> tuple[tuple[TaskAllocation, ...], AllocatorState]:
    """``allocate_task`` for each request in turn, each seeing the ones before,
    and the state with all of them folded in. For a scheduler pass placing many
    tasks: it costs what the batch hands out, not a copy of the state per task.
    A network's latest version is in the last allocation that changed it.
    All or nothing: an error (a full network) leaves nothing half-decided."""
    working = WorkingState(state)
    allocations = []
    for task_id, network_ids, node_id in requests:
        allocation = allocate_task(working, task_id, network_ids, node_id)
        working.fold(allocation)
        allocations.append(allocation)
    return tuple(allocations), working.freeze()


class _TakenAddresses:
    """Addresses other tasks hold, and those this allocation handed out so far
    (the task's own earlier addresses are not in its way). Looked up in the
    state's index rather than copied from it: a call costs what it hands out."""

    def __init__(self, held: Mapping[int, str], task_id: str) -> None:
        self._held = held
        self._task_id = task_id
        self._new: set[int] = set()

    def add(self, address: int) -> None:
        self._new.add(address)

    def __contains__(self, address: int) -> bool:
        return address in self._new or self._held.get(address, self._task_id) != self._task_id


def _in_blocks(address: str, blocks: tuple[NodeBlock, ...]) -> bool:
    ip = ipaddress.IPv4Interface(address).ip
    return any(ip in block.network and _usable(block, int(ip)) for block in blocks)


def _address_on(
    state: TaskView, net: Network, task_id: str, node_id: str, taken: _TakenAddresses
) -> tuple[Network, ipaddress.IPv4Interface]:
    """A free address in one of the node's blocks, taking a new block if they are full."""
    for block in net.blocks_of(node_id):
        found = _free_in_block(block, task_id, taken)
        if found is not None:
            return net, found
    grown = take_block(state, net, node_id)
    (new_block,) = set(grown.blocks_of(node_id)) - set(net.blocks_of(node_id))
    found = _free_in_block(new_block, task_id, taken)
    if found is None:  # take_block hands over only blocks no listed task has an address in
        raise AssertionError(f"block {new_block.subnet} was handed over but is full")
    return grown, found


def _usable(block: NodeBlock, address: int) -> bool:
    net = block.network
    start = int(net.network_address)
    # Not the network address, the gateway (start + 1) or the broadcast address.
    return start + 2 <= address < int(net.broadcast_address)


def _free_in_block(
    block: NodeBlock, task_id: str, taken: _TakenAddresses
) -> ipaddress.IPv4Interface | None:
    net = block.network
    first = int(net.network_address) + 2
    count = net.num_addresses - 3
    found = _probe(first, count, task_id, lambda address: address not in taken)
    if found is None:
        return None
    return ipaddress.IPv4Interface((found, net.prefixlen))


def _probe(first: int, count: int, key: str, is_free: Callable[[int], bool]) -> int | None:
    """The first free value of ``first .. first+count-1``, starting at a point set by ``key``."""
    start = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % count
    for step in range(count):
        value = first + (start + step) % count
        if is_free(value):
            return value
    return None


def allocate_vips(state: AllocatorState, request: ServiceRequest) -> tuple[VirtualIP, ...]:
    """One VIP per network of the service (none in dnsrr mode); a VIP the service
    already holds on a network it stays on is kept."""
    if request.endpoint.mode is EndpointMode.DNSRR:
        for network_id in request.network_ids:
            state.network(network_id)
        return ()
    previous = state.service(request.service_id)
    current = {vip.network_id: vip for vip in previous.endpoint.vips} if previous else {}
    taken = {addr for addr, holder in state.virtual_ips.items() if holder != request.service_id}
    vips = []
    for network_id in request.network_ids:
        net = state.network(network_id)
        old = current.get(network_id)
        if old is not None and _in_vip_range(net, old, taken):
            vips.append(old)
        else:
            vips.append(VirtualIP(network_id, _new_vip(net, request, taken)))
        taken.add(int(ipaddress.IPv4Interface(vips[-1].address).ip))
    return tuple(vips)


def _in_vip_range(net: Network, vip: VirtualIP, taken: set[int]) -> bool:
    ip = ipaddress.IPv4Interface(vip.address).ip
    return ip in net.vip_range and ip != net.vip_range.network_address and int(ip) not in taken


def _new_vip(net: Network, request: ServiceRequest, taken: set[int]) -> str:
    span = net.vip_range
    # Any address of the range but the subnet's own network address.
    found = _probe(
        int(span.network_address) + 1,
        span.num_addresses - 1,
        request.service_id,
        lambda address: address not in taken,
    )
    if found is None:
        raise FailedPrecondition(
            f"network {net.spec.name} has no free virtual IP left in {span} "
            f"({span.num_addresses - 1} services hold one): put the service on another network "
            "or use --endpoint-mode dnsrr"
        )
    return f"{ipaddress.IPv4Address(found)}/{net.network.prefixlen}"
