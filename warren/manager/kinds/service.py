"""Services: found by name, which is unique, and by what they hold (VIPs,
published ports), which no two services share."""

from __future__ import annotations

from typing import Any

from warren.core.errors import AlreadyExists
from warren.core.models import Service
from warren.manager.kinds.base import BackupRule, Index, Kind, KindSpec, StoreView, register

BY_NAME = "name"
BY_VIP = "vip"
BY_PORT = "published-port"


def _name(service: Service) -> tuple[str, ...]:
    return (service.spec.name,)


def _unique_name(view: StoreView, old: Any, new: Service) -> None:
    owners = view.indexed(Kind.SERVICE, BY_NAME, new.spec.name)
    if owners - {new.id}:
        raise AlreadyExists(f"service '{new.spec.name}' already exists")


def _vips(service: Service) -> tuple[str, ...]:
    return tuple(vip.ip for vip in service.endpoint.vips)


def _ports(service: Service) -> tuple[str, ...]:
    return tuple(f"{port.protocol}/{port.published}" for port in service.endpoint.ports)


def _holds_its_own(view: StoreView, old: Any, new: Service) -> None:
    for ip in _vips(new):
        if view.indexed(Kind.SERVICE, BY_VIP, ip) - {new.id}:
            raise AlreadyExists(f"virtual IP {ip} is already held by another service")
    for port in _ports(new):
        if view.indexed(Kind.SERVICE, BY_PORT, port) - {new.id}:
            raise AlreadyExists(f"published port {port} is already taken by another service")


def _restore(service: Service, now: float) -> Service:
    return service


register(
    KindSpec(
        Kind.SERVICE,
        Service,
        indexes=(Index(BY_NAME, _name), Index(BY_VIP, _vips), Index(BY_PORT, _ports)),
        invariants=(_unique_name, _holds_its_own),
        backup=BackupRule("services", _restore),
    )
)
