"""The real parts of a node's data plane, built for the node that runs this process.

``build_components`` checks what the node has (``checks``: bridges, veths,
nftables, WireGuard by kernel module or wireguard-go), says in one error what is
missing, turns IPv4 forwarding on, loads or makes the node's WireGuard key in
its state directory, lets published ports answer on 127.0.0.1
(route_localnet), and returns the parts ``NetworkComponents.controller``
assembles into a ``NetworkController``.

Everything acts in this process's network namespace: the WireGuard devices and
the DNS server's sockets cannot be sent elsewhere, so a node meant to live in
another namespace runs there (as the root tests do with ``nsenter``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from warren.agent.network.bridge import PyrouteBridgeNetwork
from warren.agent.network.checks import (
    SystemProber,
    enable_ip_forwarding,
    format_problems,
    problems,
)
from warren.agent.network.controller import (
    RETRY_INTERVAL,
    VIEW_WAIT,
    MeshSettings,
    NetworkController,
)
from warren.agent.network.dns import DnsSettings, EmbeddedDnsServer
from warren.agent.network.nftables import NftablesPacketFilter, ServiceProxy
from warren.agent.network.wg_devices import select_device
from warren.agent.network.wg_link import egress_mtu
from warren.agent.network.wireguard import (
    DEFAULT_LISTEN_PORT,
    MAX_MTU,
    MTU_OVERHEAD,
    load_or_create_key,
    mesh_mtu,
)
from warren.core.errors import FailedPrecondition, RuntimeFailure, WarrenError

log = logging.getLogger(__name__)

# The WireGuard interface. wireguard-go's control socket is named after it and
# global to the machine: nodes sharing a machine in separate namespaces need
# names of their own.
DEFAULT_INTERFACE = "warren-wg0"
# Where a route lookup finds the default route (no packet is sent).
_EGRESS_PROBE = "198.51.100.1"
VIEW_FILE = "network-view.json"
ROUTE_LOCALNET = Path("/proc/sys/net/ipv4/conf/all/route_localnet")


@dataclass
class NetworkComponents:
    """The node's real parts; ``controller`` puts them together."""

    bridges: PyrouteBridgeNetwork
    data_plane_sync: ServiceProxy
    dns: EmbeddedDnsServer
    mesh: MeshSettings
    mtu: int
    state_dir: Path

    def controller(
        self, node_id: str, view_wait: float = VIEW_WAIT, retry_interval: float = RETRY_INTERVAL
    ) -> NetworkController:
        """The node's controller; it keeps its last view in the state directory."""
        return NetworkController(
            node_id,
            self.bridges,
            self.data_plane_sync,
            self.dns,
            self.mesh,
            mtu=self.mtu,
            view_wait=view_wait,
            retry_interval=retry_interval,
            view_file=self.state_dir / VIEW_FILE,
        )


def allow_localhost_ports() -> None:
    """Published ports answer on 127.0.0.1 too (``curl 127.0.0.1:8080`` on a node):
    the kernel sends a loopback-sourced packet on to a container only with
    route_localnet, which kube-proxy sets for its NodePorts likewise."""
    try:
        ROUTE_LOCALNET.write_text("1\n")
    except OSError as exc:
        raise RuntimeFailure(
            f"cannot set {ROUTE_LOCALNET}: {exc.strerror or exc}; run the agent as root or: "
            "sysctl -w net.ipv4.conf.all.route_localnet=1"
        ) from exc


def node_mtu(destination: str = _EGRESS_PROBE) -> int:
    """The mesh MTU: the egress route's MTU minus WireGuard's overhead (1420 for a
    1500-byte underlay, which is assumed when there is no route to look up)."""
    try:
        return mesh_mtu(egress_mtu(destination))
    except WarrenError as exc:
        log.info("no route to read the underlay MTU from (%s): assuming 1500", exc)
        return mesh_mtu(MAX_MTU + MTU_OVERHEAD)


async def build_components(
    state_dir: Path,
    listen_port: int = DEFAULT_LISTEN_PORT,
    interface: str = DEFAULT_INTERFACE,
    dns_settings: DnsSettings | None = None,
    mtu: int | None = None,
) -> NetworkComponents:
    """The real parts for this node; FailedPrecondition listing what the node lacks.

    ``state_dir`` holds the WireGuard private key (0600, made on first use),
    wireguard-go's log and the last network view (``VIEW_FILE``); ``listen_port``
    is the UDP port peers reach (the one the node publishes with its public key);
    ``mtu`` None reads the egress route's.
    """
    facts = await SystemProber().probe()
    # Forwarding is the one thing the node turns on itself.
    missing = problems(replace(facts, ip_forwarding=True))
    if missing:
        raise FailedPrecondition("this node cannot serve networks:\n" + format_problems(missing))
    if not facts.ip_forwarding:
        await enable_ip_forwarding()
    await asyncio.to_thread(allow_localhost_ports)
    key = load_or_create_key(state_dir)
    # pyroute2's blocking sockets refuse to run in a thread with a running loop.
    device = await asyncio.to_thread(select_device, state_dir)
    return NetworkComponents(
        bridges=PyrouteBridgeNetwork(),
        data_plane_sync=ServiceProxy(NftablesPacketFilter()),
        dns=EmbeddedDnsServer(settings=dns_settings),
        mesh=MeshSettings(device, key, interface, listen_port),
        mtu=await asyncio.to_thread(node_mtu) if mtu is None else mtu,
        state_dir=state_dir,
    )
