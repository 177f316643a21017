"""Service reconciliation: compare a service's tasks with its spec and plan the
difference, slot by slot. Pure: ``operations`` turns plans into store writes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from warren.core.models import (
    Availability,
    Node,
    NodeStatus,
    RestartPolicy,
    Service,
    ServiceMode,
    Task,
)
from warren.core.states import TaskState
from warren.manager.orchestrator import global_, replicated
from warren.manager.orchestrator.restart import plan_restart, prunable
from warren.manager.orchestrator.slots import (
    UNWANTED,
    Plan,
    PlanBuilder,
    Slot,
    SlotKey,
    SlotRule,
    group_by_slot,
)
from warren.manager.orchestrator.update import roll_update


def reconcile(service: Service, tasks: Sequence[Task], nodes: Sequence[Node], now: float) -> Plan:
    """Plan how to bring ``service``'s tasks (all of them, history included) to its spec."""
    nodes_by_id = {node.id: node for node in nodes}
    wanted = _wanted_slots(service, nodes_by_id)
    slots = group_by_slot(tasks)
    policy = service.spec.restart
    plan = PlanBuilder()
    kept: list[Task] = []
    movable: list[Task] = []  # kept tasks a rolling update may replace now
    for key in sorted(wanted | slots.keys()):
        slot = Slot(key, tuple(slots.get(key, ())))
        rule = _slot_rule(key, wanted, nodes_by_id)
        survivor = _reconcile_slot(policy, slot, rule, nodes_by_id, now, plan)
        if survivor is not None:
            kept.append(survivor)
            if rule.can_create and not _node_down(survivor, nodes_by_id):
                movable.append(survivor)
        plan.remove.extend(prunable(slot.history, policy, now))
    roll_update(service.spec_version, kept, movable, plan)
    return plan.build()


def reconcile_removed_service(tasks: Sequence[Task]) -> Plan:
    """The service is gone: stop what still runs and delete what has stopped."""
    return Plan(
        shutdown=tuple(
            sorted(
                t.id
                for t in tasks
                if t.desired_state == TaskState.RUNNING and t.status.state.is_active
            )
        ),
        remove=tuple(sorted(t.id for t in tasks if t.status.state.is_terminal)),
    )


def _wanted_slots(service: Service, nodes: Mapping[str, Node]) -> set[SlotKey]:
    if service.spec.mode == ServiceMode.REPLICATED:
        return replicated.wanted_slots(service.spec)
    return global_.wanted_slots(service.spec, nodes)


def _slot_rule(key: SlotKey, wanted: set[SlotKey], nodes: Mapping[str, Node]) -> SlotRule:
    if key not in wanted:
        return UNWANTED
    slot, node_id = key
    return replicated.slot_rule() if slot else global_.slot_rule(nodes[node_id])


def _reconcile_slot(
    policy: RestartPolicy,
    slot: Slot,
    rule: SlotRule,
    nodes: Mapping[str, Node],
    now: float,
    plan: PlanBuilder,
) -> Task | None:
    """Plan one slot; return its current task if it stays as it is."""
    current = slot.current
    # Only the newest RUNNING-desired task is current; any older one is a leftover.
    plan.shutdown.extend(
        t.id for t in slot.tasks if t.desired_state == TaskState.RUNNING and t is not current
    )
    if current is None:
        if rule.can_create:
            plan.replace(None, slot.key)
        return None
    if not rule.wanted:
        plan.shutdown.append(current.id)
        return None
    if current.status.state == TaskState.ORPHANED:
        # Its node went down: not a failure of the task, so no restart policy.
        if rule.can_create:
            plan.replace(current, slot.key)
        else:
            plan.shutdown.append(current.id)
        return None
    if current.status.state.is_terminal:
        return plan_restart(policy, current, slot, rule, now, plan)
    if _evicted(current, nodes):
        plan.replace(current, slot.key)
        return None
    return current


def _evicted(task: Task, nodes: Mapping[str, Node]) -> bool:
    """On a node that was drained or removed (a down node is left to the dispatcher)."""
    if not task.node_id:
        return False
    node = nodes.get(task.node_id)
    return node is None or node.availability == Availability.DRAIN


def _node_down(task: Task, nodes: Mapping[str, Node]) -> bool:
    node = nodes.get(task.node_id)
    return node is not None and node.status == NodeStatus.DOWN
