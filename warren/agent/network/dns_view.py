"""What the node's DNS answers, decided without I/O.

A `DnsView` is the node's own picture of the cluster (networks, services with
their VIPs and healthy task addresses per network, and which networks each
local task is on); `answer` maps one question from one client address to a
`Resolution`. The server (`dns.py`) swaps whole views, so a query always sees
one consistent picture, also while the node is cut off from the managers.

Names (case-insensitive, a trailing dot or not), for a service on a network the
asking task shares:

- ``NAME`` and ``NAME.NETWORK``: the service's VIP on the shared networks, or,
  for a service without a VIP there (endpoint mode dnsrr), its healthy tasks'
  addresses;
- ``tasks.NAME`` and ``tasks.NAME.NETWORK``: the healthy tasks' addresses;
- each of these followed by the cluster domain (``web.warren.internal``).

Anything else is forwarded to the node's upstream resolvers, except names in
the cluster domain: there the node is the authority, so an unknown one is
NXDOMAIN. A service the client shares no network with is unknown to it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum

from warren.core.errors import InvalidArgument

# Short, so a replaced or unhealthy task leaves clients' caches quickly.
TTL = 5
DEFAULT_DOMAIN = "warren.internal"
TASKS_PREFIX = "tasks."

# Query types (RFC 1035, RFC 3596); everything else gets no records.
QTYPE_A = 1
QTYPE_AAAA = 28
QTYPE_ANY = 255


@dataclass(frozen=True)
class DnsNetwork:
    id: str
    name: str


@dataclass(frozen=True)
class ServiceOnNetwork:
    """A service's endpoint on one network: its VIP (None in dnsrr mode) and the
    addresses of its healthy tasks on that network."""

    network_id: str
    vip: str | None
    task_addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class DnsService:
    name: str
    networks: tuple[ServiceOnNetwork, ...]


@dataclass(frozen=True)
class DnsClient:
    """A task on this node: any of its addresses asks as a member of all its networks
    (the source address depends on which gateway it asks, not on what it is on)."""

    addresses: tuple[str, ...]
    network_ids: frozenset[str]


@dataclass(frozen=True)
class _Index:
    networks_by_name: dict[str, frozenset[str]]
    services_by_name: dict[str, tuple[DnsService, ...]]
    networks_of_client: dict[str, frozenset[str]]


@dataclass(frozen=True)
class DnsView:
    """The node's picture for DNS; validated and indexed once, when it is made."""

    networks: tuple[DnsNetwork, ...] = ()
    services: tuple[DnsService, ...] = ()
    clients: tuple[DnsClient, ...] = ()
    domain: str = DEFAULT_DOMAIN
    _index: _Index = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        domain = self.domain.strip(".").lower()
        if not domain or any(not label for label in domain.split(".")):
            raise InvalidArgument(f"DNS domain {self.domain!r} is not a domain name")
        object.__setattr__(self, "domain", domain)
        object.__setattr__(self, "_index", _build_index(self))


class Outcome(Enum):
    ANSWER = "answer"  # NOERROR, with the addresses (none: the name exists, not this type)
    NXDOMAIN = "nxdomain"
    FORWARD = "forward"  # not Warren's: ask the upstream resolvers


@dataclass(frozen=True)
class Resolution:
    outcome: Outcome
    addresses: tuple[str, ...] = ()
    ttl: int = TTL


FORWARD = Resolution(Outcome.FORWARD)
NXDOMAIN = Resolution(Outcome.NXDOMAIN)
NO_RECORDS = Resolution(Outcome.ANSWER)


def answer(view: DnsView, qname: str, qtype: int, client_address: str) -> Resolution:
    """What the node answers to client_address asking qname (type qtype)."""
    name = qname.rstrip(".").lower()
    if not name:
        return FORWARD
    relative, in_domain = _strip_domain(name, view.domain)
    if in_domain and not relative:
        return NO_RECORDS  # the domain's apex exists and holds no addresses
    client_networks = view._index.networks_of_client.get(client_address, frozenset())
    found = _lookup(view._index, relative, client_networks) if client_networks else None
    if found is None:
        return NXDOMAIN if in_domain else FORWARD
    return Resolution(Outcome.ANSWER, _of_type(found, qtype))


def _strip_domain(name: str, domain: str) -> tuple[str, bool]:
    if name == domain:
        return "", True
    if name.endswith("." + domain):
        return name[: -len(domain) - 1], True
    return name, False


def _lookup(index: _Index, name: str, client_networks: frozenset[str]) -> tuple[str, ...] | None:
    """The addresses name stands for, for a client on client_networks; None if it names
    nothing this client may see. ``tasks.`` wins over a service named like that."""
    if name.startswith(TASKS_PREFIX):
        found = _find(index, name[len(TASKS_PREFIX) :], client_networks, tasks=True)
        if found is not None:
            return found
    return _find(index, name, client_networks, tasks=False)


def _find(
    index: _Index, name: str, client_networks: frozenset[str], tasks: bool
) -> tuple[str, ...] | None:
    for service_name, network_name in _splits(name):
        services = index.services_by_name.get(service_name)
        if services is None:
            continue
        allowed = client_networks
        if network_name is not None:
            allowed = allowed & index.networks_by_name.get(network_name, frozenset())
        endpoints = [
            endpoint
            for service in services
            for endpoint in service.networks
            if endpoint.network_id in allowed
        ]
        if endpoints:
            return _dedupe(_addresses(endpoint, tasks) for endpoint in endpoints)
    return None


def _splits(name: str) -> Iterator[tuple[str, str | None]]:
    """SERVICE alone, then every SERVICE.NETWORK reading (both may hold dots)."""
    yield name, None
    start = 0
    while (dot := name.find(".", start)) != -1:
        if 0 < dot < len(name) - 1:
            yield name[:dot], name[dot + 1 :]
        start = dot + 1


def _addresses(endpoint: ServiceOnNetwork, tasks: bool) -> tuple[str, ...]:
    if tasks or endpoint.vip is None:
        return endpoint.task_addresses
    return (endpoint.vip,)


def _dedupe(groups: Iterable[tuple[str, ...]]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(address for group in groups for address in group))


def _of_type(addresses: tuple[str, ...], qtype: int) -> tuple[str, ...]:
    if qtype == QTYPE_ANY:
        return addresses
    if qtype == QTYPE_A:
        return tuple(a for a in addresses if ":" not in a)
    if qtype == QTYPE_AAAA:
        return tuple(a for a in addresses if ":" in a)
    return ()


# -- building the index (validation included) ----------------------------------------


def _address(value: str, what: str) -> str:
    """value in its canonical text form (the form a socket reports a client in)."""
    try:
        return ipaddress.ip_address(value).compressed
    except ValueError:
        raise InvalidArgument(f"{what}: {value!r} is not an IP address") from None


def _build_index(view: DnsView) -> _Index:
    networks_by_name: dict[str, set[str]] = {}
    known_ids: set[str] = set()
    for network in view.networks:
        if not network.id or not network.name:
            raise InvalidArgument(f"DNS network {network!r} needs an id and a name")
        if network.id in known_ids:
            raise InvalidArgument(f"DNS network id {network.id!r} appears twice")
        known_ids.add(network.id)
        networks_by_name.setdefault(network.name.lower(), set()).add(network.id)

    services_by_name: dict[str, list[DnsService]] = {}
    for service in view.services:
        services_by_name.setdefault(service.name.lower(), []).append(_checked(service, known_ids))

    networks_of_client: dict[str, frozenset[str]] = {}
    for client in view.clients:
        unknown = client.network_ids - known_ids
        if unknown:
            raise InvalidArgument(f"DNS client on unknown network {sorted(unknown)[0]!r}")
        for address in client.addresses:
            key = _address(address, "DNS client address")
            networks_of_client[key] = networks_of_client.get(key, frozenset()) | (
                client.network_ids
            )
    return _Index(
        networks_by_name={name: frozenset(ids) for name, ids in networks_by_name.items()},
        # Names that differ only in case are one DNS name: it answers for all of them.
        services_by_name={name: tuple(found) for name, found in services_by_name.items()},
        networks_of_client=networks_of_client,
    )


def _checked(service: DnsService, known_ids: set[str]) -> DnsService:
    """service with canonical addresses; InvalidArgument if it is not well-formed."""
    if not service.name:
        raise InvalidArgument("DNS service without a name")
    endpoints = []
    for endpoint in service.networks:
        if endpoint.network_id not in known_ids:
            raise InvalidArgument(
                f"DNS service {service.name!r} is on unknown network {endpoint.network_id!r}"
            )
        what = f"DNS service {service.name!r}"
        vip = None if endpoint.vip is None else _address(endpoint.vip, f"{what} VIP")
        tasks = tuple(_address(a, f"{what} task address") for a in endpoint.task_addresses)
        endpoints.append(ServiceOnNetwork(endpoint.network_id, vip, tasks))
    return DnsService(service.name, tuple(endpoints))
