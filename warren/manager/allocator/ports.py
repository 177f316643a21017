"""Published ports: unique cluster-wide per protocol, picked when asked for 0.

Ingress ports are open on every node, so a port is one per cluster and
protocol whatever its mode: a host-mode port is refused too if another service
publishes it, even if the two would never share a node (simpler to explain,
and the scheduler needs no port bookkeeping). ``published=0`` takes the lowest
free port of 30000-32767 (as Docker Swarm), and keeps the one it took before
on an update (matched by target, protocol and mode).
"""

from __future__ import annotations

import dataclasses

from warren.core.errors import FailedPrecondition, InvalidArgument
from warren.core.networks import DYNAMIC_PORTS, PortConfig, PortProtocol
from warren.manager.allocator.state import AllocatorState, ServiceRequest

PortKey = tuple[int, PortProtocol]


def allocate_ports(state: AllocatorState, request: ServiceRequest) -> tuple[PortConfig, ...]:
    """The service's ports with every ``published`` filled in, in the spec's order."""
    wanted = request.endpoint.ports
    users = _ports_in_use(state, request.service_id)
    for port in wanted:
        if port.published and port.key in users:
            raise InvalidArgument(
                f"published port {port} is already used by service {users[port.key]}: "
                "publish another port, or 0 to let Warren pick one"
            )
    mine: set[PortKey] = {port.key for port in wanted if port.published}
    previous = state.service(request.service_id)
    earlier = list(previous.endpoint.ports) if previous else []
    result = []
    for port in wanted:
        if not port.published:
            number = _kept(port, earlier, users, mine) or _pick(port.protocol, users, mine)
            port = dataclasses.replace(port, published=number)
            mine.add(port.key)
        result.append(port)
    return tuple(result)


def _ports_in_use(state: AllocatorState, service_id: str) -> dict[PortKey, str]:
    """Each published port and protocol other services hold, and the holder's name."""
    return {
        port.key: svc.name
        for svc in state.services
        if svc.service_id != service_id
        for port in svc.endpoint.ports
    }


def _kept(
    port: PortConfig, earlier: list[PortConfig], users: dict[PortKey, str], mine: set[PortKey]
) -> int:
    """The dynamic number this service had for the same target, protocol and mode,
    if still free (a number asked for before is not kept once 0 is asked for)."""
    for old in earlier:
        same = (old.target, old.protocol, old.mode) == (port.target, port.protocol, port.mode)
        free = old.key not in users and old.key not in mine
        if same and free and old.published in DYNAMIC_PORTS:
            earlier.remove(old)
            return old.published
    return 0


def _pick(protocol: PortProtocol, users: dict[PortKey, str], mine: set[PortKey]) -> int:
    for number in DYNAMIC_PORTS:
        key = (number, protocol)
        if key not in users and key not in mine:
            return number
    raise FailedPrecondition(
        f"no free {protocol} port is left in {DYNAMIC_PORTS.start}-{DYNAMIC_PORTS.stop - 1} to "
        "publish: give the port a number of its own (--publish PUBLISHED:TARGET)"
    )
