"""Global services: one slot per eligible node (``global`` is a Python keyword)."""

from __future__ import annotations

from collections.abc import Mapping

from warren.core.constraints import parse_constraint
from warren.core.models import Availability, Node, ServiceSpec
from warren.manager.orchestrator.slots import SlotKey, SlotRule


def wanted_slots(spec: ServiceSpec, nodes: Mapping[str, Node]) -> set[SlotKey]:
    # A global service keeps its task on a down or paused node; drain or a
    # constraint it no longer meets evicts it.
    return {
        (0, node.id)
        for node in nodes.values()
        if node.availability != Availability.DRAIN
        and all(parse_constraint(expr).matches(node) for expr in spec.placement.constraints)
    }


def slot_rule(node: Node) -> SlotRule:
    """A node's task starts only while the node takes work (not paused or down)."""
    return SlotRule(wanted=True, can_create=node.schedulable)
