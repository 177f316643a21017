"""A service's endpoint: its VIPs and its published ports, decided together."""

from __future__ import annotations

from warren.core.networks import Endpoint
from warren.manager.allocator.addresses import allocate_vips
from warren.manager.allocator.ports import allocate_ports
from warren.manager.allocator.state import AllocatorState, ServiceRequest


def allocate_service(state: AllocatorState, request: ServiceRequest) -> Endpoint:
    """What the service holds after a create or an update: VIPs it already had on
    networks it stays on and ports it already had are kept; the rest is new.

    Where it plugs in: the control service's create and update call it and write
    the result with the service (one Raft entry), so a taken port is refused
    before anything changes; VIPs on networks the service leaves are freed by
    not being in the result.
    """
    vips = allocate_vips(state, request)
    return Endpoint(vips=vips, ports=allocate_ports(state, request))
