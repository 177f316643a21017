"""The node's network data plane: in the kernel, or simulated.

The kernel plane (``warren.agent.network.components``: bridges, nftables, DNS,
the WireGuard mesh) is the default with containerd; a node refuses to start,
saying what is missing, when the machine cannot serve it. The sim plane is
the same controller over the fakes: addresses, VIPs and names are decided the
same way and nothing touches the machine. It is the default with the sim
runtime, and lets several test nodes share one machine's network namespace
(two kernel planes there would fight over one nftables table and port). A
sim-plane node publishes no WireGuard identity: no peer could reach it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from warren.agent.agent import DoctorHandler, WireGuardIdentity
from warren.agent.network.bridge import FakeBridgeNetwork
from warren.agent.network.components import VIEW_FILE, NetworkComponents, build_components
from warren.agent.network.controller import NetworkController
from warren.agent.network.dns import FakeDnsServer
from warren.agent.network.doctor import doctor_for
from warren.agent.network.nftables import FakePacketFilter, ServiceProxy
from warren.agent.runtime import Runtime
from warren.core.errors import InvalidArgument
from warren.node.options import NodeOptions

log = logging.getLogger(__name__)

# wireguard-go's control socket is named after the interface and global to the
# machine: a name per node lets several nodes share one (each in its own
# network namespace, as in the tests). 15 bytes at most.
_INTERFACE_PREFIX = "warren-"
_INTERFACE_ID_CHARS = 15 - len(_INTERFACE_PREFIX)


def mesh_interface(node_id: str) -> str:
    return _INTERFACE_PREFIX + node_id[:_INTERFACE_ID_CHARS]


@dataclass
class NodeNetworking:
    controller: NetworkController
    # What the node publishes of itself in the mesh (None: it is in none).
    identity: WireGuardIdentity | None

    @property
    def simulated(self) -> bool:
        return self.identity is None

    def doctor(self, runtime: Runtime) -> DoctorHandler:
        """What answers ``warren network doctor`` on this node (a sim plane lists
        its checks as skipped: nothing is probed)."""
        return doctor_for(self.controller, runtime.network_namespace, simulated=self.simulated)

    async def start(self) -> None:
        await self.controller.start()

    async def shutdown(self) -> None:
        """The node process ends. Containers still attached keep running and keep
        their traffic (the next start takes the data plane over); with none left,
        everything Warren made on the node is removed (``NetworkController.stop``)."""
        await self.controller.stop()


class NetworkParts:
    """What the node serves networks with, checked and ready before the node joins
    or starts anything (a node that cannot serve them changes nothing)."""

    def __init__(
        self, components: NetworkComponents | None, wireguard_port: int, state_dir: Path
    ) -> None:
        self._components = components  # None: simulated
        self._port = wireguard_port
        self._state_dir = state_dir

    def for_node(self, node_id: str) -> NodeNetworking:
        if self._components is None:
            simulated = NetworkController(
                node_id,
                FakeBridgeNetwork(),
                ServiceProxy(FakePacketFilter()),
                FakeDnsServer(),
                None,
                # As on the kernel plane: a node cut off from the managers
                # restarts its tasks from the last view it got.
                view_file=self._state_dir / VIEW_FILE,
            )
            return NodeNetworking(simulated, None)
        parts = self._components
        parts.mesh = replace(parts.mesh, interface=mesh_interface(node_id))
        identity = WireGuardIdentity(parts.mesh.key.public_key, self._port)
        return NodeNetworking(parts.controller(node_id), identity)


async def network_parts(options: NodeOptions) -> NetworkParts:
    """Raises FailedPrecondition naming what the machine lacks (kernel plane)."""
    if options.runtime == "sim" and options.network_plane == "kernel":
        raise InvalidArgument(
            "--network-plane kernel needs real containers: use --runtime containerd"
        )
    state_dir = options.data_dir / "network"
    if not options.kernel_network_plane:
        return NetworkParts(None, options.wireguard_port, state_dir)
    components = await build_components(state_dir, listen_port=options.wireguard_port)
    return NetworkParts(components, options.wireguard_port, state_dir)
