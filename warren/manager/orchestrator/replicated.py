"""Replicated services: one slot per replica number, 1 to ``replicas``."""

from __future__ import annotations

from warren.core.models import ServiceSpec
from warren.manager.orchestrator.slots import SlotKey, SlotRule

ANY_NODE = SlotRule(wanted=True, can_create=True)


def wanted_slots(spec: ServiceSpec) -> set[SlotKey]:
    return {(n, "") for n in range(1, spec.replicas + 1)}


def slot_rule() -> SlotRule:
    """A replica may start again at once: the scheduler finds it a node."""
    return ANY_NODE
