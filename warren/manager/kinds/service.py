"""Services: found by name, which is unique."""

from __future__ import annotations

from typing import Any

from warren.core.errors import AlreadyExists
from warren.core.models import Service
from warren.manager.kinds.base import BackupRule, Index, Kind, KindSpec, StoreView, register

BY_NAME = "name"


def _name(service: Service) -> tuple[str, ...]:
    return (service.spec.name,)


def _unique_name(view: StoreView, old: Any, new: Service) -> None:
    owners = view.indexed(Kind.SERVICE, BY_NAME, new.spec.name)
    if owners - {new.id}:
        raise AlreadyExists(f"service '{new.spec.name}' already exists")


def _restore(service: Service, now: float) -> Service:
    return service


register(
    KindSpec(
        Kind.SERVICE,
        Service,
        indexes=(Index(BY_NAME, _name),),
        invariants=(_unique_name,),
        backup=BackupRule("services", _restore),
    )
)
