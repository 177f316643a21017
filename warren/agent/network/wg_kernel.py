"""The in-kernel WireGuard, configured over generic netlink with pyroute2.

Not exercised on the development machine (its kernel has no WireGuard module):
the netlink messages are unit-tested by encoding and decoding them with pyroute2.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator, Sequence
from typing import Any

from pyroute2 import IPRoute, WireGuard
from pyroute2.netlink.exceptions import NetlinkError

from warren.agent.network import wg_link
from warren.agent.network.wireguard import (
    AddPeer,
    DeviceState,
    InterfaceConfig,
    MeshPlan,
    PeerChange,
    PeerState,
    RemovePeer,
)
from warren.core.errors import AlreadyExists, InvalidArgument, RuntimeFailure


def kernel_wireguard_works() -> bool:
    """Whether this namespace can make a ``wireguard`` link (module present or loadable):
    tried for real with a throwaway link, since /sys/module misses autoloadable ones."""
    probe = f"wgprobe{secrets.token_hex(3)}"
    with IPRoute() as ip:
        try:
            ip.link("add", ifname=probe, kind="wireguard")
        except NetlinkError:
            return False
        ip.link("del", index=ip.link_lookup(ifname=probe)[0])
    return True


@contextlib.contextmanager
def _genetlink(action: str) -> Iterator[WireGuard]:
    try:
        with WireGuard() as wg:
            yield wg
    except NetlinkError as err:
        raise RuntimeFailure(f"{action}: {err.args[-1]} (netlink error {err.code})") from None
    except ValueError as err:  # pyroute2's own key checks
        raise InvalidArgument(f"{action}: {err}") from None


def kernel_peer_request(change: PeerChange) -> dict[str, Any]:
    """pyroute2's ``peer`` argument for one change (its names, base64 keys)."""
    if isinstance(change, RemovePeer):
        return {"public_key": change.public_key, "remove": True}
    if isinstance(change, AddPeer):
        peer = change.peer
        host, port = peer.endpoint.rsplit(":", 1)
        return {
            "public_key": peer.public_key,
            "endpoint_addr": host.strip("[]"),
            "endpoint_port": int(port),
            "persistent_keepalive": peer.persistent_keepalive,
            "replace_allowed_ips": True,
            "allowed_ips": list(peer.allowed_ips),
        }
    request: dict[str, Any] = {"public_key": change.public_key, "update_only": True}
    if change.endpoint is not None:
        host, port = change.endpoint.rsplit(":", 1)
        request |= {"endpoint_addr": host.strip("[]"), "endpoint_port": int(port)}
    if change.persistent_keepalive is not None:
        request["persistent_keepalive"] = change.persistent_keepalive
    if change.allowed_ips is not None:
        request |= {"replace_allowed_ips": True, "allowed_ips": list(change.allowed_ips)}
    return request


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_kernel_info(messages: Sequence[Any]) -> tuple[str, int, tuple[PeerState, ...]]:
    """(public key, listen port, peers) from WG_CMD_GET_DEVICE replies; the kernel
    splits a long peer list over several messages, repeating no peer header."""
    public_key, listen_port = "", 0
    peers: dict[str, dict[str, Any]] = {}
    for msg in messages:
        public_key = _text(msg.get_attr("WGDEVICE_A_PUBLIC_KEY") or public_key)
        listen_port = int(msg.get_attr("WGDEVICE_A_LISTEN_PORT") or listen_port)
        for peer in msg.get_attr("WGDEVICE_A_PEERS") or ():
            key = _text(peer.get_attr("WGPEER_A_PUBLIC_KEY"))
            entry = peers.setdefault(key, {"allowed": []})
            for name in ("WGPEER_A_ENDPOINT", "WGPEER_A_LAST_HANDSHAKE_TIME"):
                if peer.get_attr(name) is not None:
                    entry[name] = peer.get_attr(name)
            for name in (
                "WGPEER_A_RX_BYTES",
                "WGPEER_A_TX_BYTES",
                "WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL",
            ):
                entry[name] = int(peer.get_attr(name) or entry.get(name, 0))
            entry["allowed"] += [a.get("addr") for a in peer.get_attr("WGPEER_A_ALLOWEDIPS") or ()]
    return public_key, listen_port, tuple(_kernel_peer(k, e) for k, e in peers.items())


def _kernel_peer(key: str, entry: dict[str, Any]) -> PeerState:
    endpoint = entry.get("WGPEER_A_ENDPOINT")
    shown = None
    if endpoint and endpoint.get("port"):
        addr = endpoint["addr"]
        shown = f"[{addr}]:{endpoint['port']}" if ":" in addr else f"{addr}:{endpoint['port']}"
    handshake = entry.get("WGPEER_A_LAST_HANDSHAKE_TIME") or {}
    return PeerState(
        public_key=key,
        endpoint=shown,
        allowed_ips=tuple(sorted(str(a) for a in entry["allowed"] if a)),
        persistent_keepalive=entry["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL"],
        last_handshake=handshake.get("tv_sec", 0) + handshake.get("tv_nsec", 0) / 1e9,
        rx_bytes=entry["WGPEER_A_RX_BYTES"],
        tx_bytes=entry["WGPEER_A_TX_BYTES"],
    )


class KernelDevice:
    """The in-kernel WireGuard, configured over generic netlink with pyroute2."""

    def exists(self, name: str) -> bool:
        return wg_link.link_exists(name)

    def create(self, config: InterfaceConfig) -> None:
        name = config.name
        if wg_link.link_exists(name):
            raise AlreadyExists(f"interface {name} exists already")
        try:
            with IPRoute() as ip:
                ip.link("add", ifname=name, kind="wireguard")
        except NetlinkError as err:
            raise RuntimeFailure(f"creating {name}: {err.args[-1]}") from None
        try:
            with _genetlink(f"configuring {name}") as wg:
                wg.set(name, private_key=config.private_key, listen_port=config.listen_port)
            wg_link.bring_up(name, config.address, config.mtu)
        except BaseException:
            wg_link.delete_link(name)
            raise

    def apply(self, name: str, plan: MeshPlan) -> None:
        with _genetlink(f"configuring {name}") as wg:
            if plan.private_key or plan.listen_port is not None:
                wg.set(name, private_key=plan.private_key, listen_port=plan.listen_port)
            for change in plan.peer_changes:
                wg.set(name, peer=kernel_peer_request(change))
        if plan.mtu is not None:
            wg_link.set_mtu(name, plan.mtu)
        if plan.routes_to_add or plan.routes_to_remove:
            wg_link.change_routes(name, plan.routes_to_add, plan.routes_to_remove)

    def state(self, name: str) -> DeviceState:
        with _genetlink(f"reading {name}") as wg:
            public_key, port, peers = parse_kernel_info(list(wg.info(name)))
        return DeviceState(
            name, public_key, port, wg_link.mtu_of(name), peers, wg_link.routes_via(name)
        )

    def delete(self, name: str) -> None:
        wg_link.delete_link(name)
