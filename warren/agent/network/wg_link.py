"""The link side of a WireGuard interface (pyroute2, the caller's network namespace):
address, MTU, up, the routes through it, and the egress MTU the mesh MTU comes from.
Both WireGuard devices share it; pyroute2's errors become Warren's here."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
from collections.abc import Iterator

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from warren.core.errors import InvalidArgument, NotFound, RuntimeFailure

_MAIN_TABLE = 254


@contextlib.contextmanager
def _netlink(action: str) -> Iterator[IPRoute]:
    try:
        with IPRoute() as ip:
            yield ip
    except NetlinkError as err:
        raise RuntimeFailure(f"{action}: {err.args[-1]} (netlink error {err.code})") from None


@contextlib.contextmanager
def _ignoring(code: int) -> Iterator[None]:
    try:
        yield
    except NetlinkError as err:
        if err.code != code:
            raise


def index_of(ip: IPRoute, name: str) -> int | None:
    found = ip.link_lookup(ifname=name)
    return int(found[0]) if found else None


def link_exists(name: str) -> bool:
    with _netlink(f"looking up {name}") as ip:
        return index_of(ip, name) is not None


def _require(ip: IPRoute, name: str) -> int:
    index = index_of(ip, name)
    if index is None:
        raise NotFound(f"interface {name} does not exist")
    return index


def bring_up(name: str, address: str, mtu: int) -> None:
    """Put the mesh address (as a host address), the MTU and the link up."""
    addr = ipaddress.ip_address(address)
    with _netlink(f"setting up {name}") as ip:
        index = _require(ip, name)
        ip.link("set", index=index, mtu=mtu)
        with _ignoring(errno.EEXIST):  # an earlier run put it there
            ip.addr("add", index=index, address=str(addr), prefixlen=addr.max_prefixlen)
        ip.link("set", index=index, state="up")


def set_mtu(name: str, mtu: int) -> None:
    with _netlink(f"setting the MTU of {name}") as ip:
        ip.link("set", index=_require(ip, name), mtu=mtu)


def mtu_of(name: str) -> int:
    with _netlink(f"reading {name}") as ip:
        links = ip.link("get", index=_require(ip, name))
        return int(links[0].get("mtu"))


def routes_via(name: str) -> tuple[str, ...]:
    """The main table's routes whose device is ``name`` (all Warren's: it owns the link)."""
    found: list[str] = []
    with _netlink(f"reading the routes of {name}") as ip:
        index = _require(ip, name)
        for family in (2, 10):  # AF_INET, AF_INET6
            for route in ip.route("dump", family=family, oif=index, table=_MAIN_TABLE):
                dst = route.get("dst")
                if dst and route.get("type") == 1:  # unicast, not local/multicast
                    found.append(f"{dst}/{route['dst_len']}")
    return tuple(found)


def change_routes(name: str, add: tuple[str, ...], remove: tuple[str, ...]) -> None:
    with _netlink(f"changing the routes of {name}") as ip:
        index = _require(ip, name)
        for net in remove:
            with _ignoring(errno.ESRCH):  # gone already
                ip.route("del", dst=net, oif=index, table=_MAIN_TABLE)
        for net in add:
            ip.route("replace", dst=net, oif=index, table=_MAIN_TABLE)


def delete_link(name: str) -> None:
    with _netlink(f"deleting {name}") as ip:
        index = index_of(ip, name)
        if index is not None:
            ip.link("del", index=index)


def egress_mtu(destination: str) -> int:
    """The MTU towards ``destination`` (a peer's address, or a default-route target):
    the route's own MTU if it has one, else its device's."""
    try:
        target = ipaddress.ip_address(destination)
    except ValueError:
        raise InvalidArgument(f"{destination!r} is not an IP address") from None
    with _netlink(f"finding the route to {target}") as ip:
        route = ip.route("get", dst=str(target))[0]
        metrics = route.get("RTA_METRICS")
        if metrics is not None and metrics.get("RTAX_MTU"):
            return int(metrics.get("RTAX_MTU"))
        return int(ip.link("get", index=route.get("oif"))[0].get("mtu"))
