"""Networks: found by name, which is unique; subnets never overlap.

The allocator decides subnets, node blocks, VIPs, ports and task addresses on
the leader; the invariants here (and those of services and tasks on what they
hold) re-check the decisions as each write is applied, so two decisions made
from the same state cannot both land. A backup keeps networks without their
node blocks: a restored cluster starts without tasks, and blocks are taken
again as tasks are placed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from warren.core.errors import AlreadyExists, InvalidArgument
from warren.core.networks import Network, parse_subnet
from warren.manager.kinds.base import BackupRule, Index, Kind, KindSpec, StoreView, register

Kind.NETWORK = Kind.define("network")
BY_NAME = "name"


def _name(network: Network) -> tuple[str, ...]:
    return (network.spec.name,)


def _unique_name(view: StoreView, old: Any, new: Network) -> None:
    owners = view.indexed(Kind.NETWORK, BY_NAME, new.spec.name)
    if owners - {new.id}:
        raise AlreadyExists(f"network '{new.spec.name}' already exists")


def _no_overlap(view: StoreView, old: Network | None, new: Network) -> None:
    if old is not None and old.subnet == new.subnet:
        return
    subnet = parse_subnet(new.subnet)
    for other in view.list(Kind.NETWORK):
        if other.id != new.id and parse_subnet(other.subnet).overlaps(subnet):
            raise InvalidArgument(
                f"subnet {new.subnet} overlaps network '{other.spec.name}' ({other.subnet})"
            )


def _restore(network: Network, now: float) -> Network:
    return replace(network, blocks=())


register(
    KindSpec(
        Kind.NETWORK,
        Network,
        indexes=(Index(BY_NAME, _name),),
        invariants=(_unique_name, _no_overlap),
        backup=BackupRule("networks", _restore),
    )
)
