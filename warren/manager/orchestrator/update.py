"""Rolling updates: replace outdated tasks one at a time."""

from __future__ import annotations

from collections.abc import Sequence

from warren.core.models import Task
from warren.core.states import TaskState
from warren.manager.orchestrator.slots import PlanBuilder, slot_key


def roll_update(
    spec_version: int, kept: Sequence[Task], movable: Sequence[Task], plan: PlanBuilder
) -> None:
    """Replace one outdated task, once every up-to-date task is running.

    ``kept`` are the slots' current tasks that stay; ``movable`` those of them
    an update may replace now. Outdated tasks that are not running do not hold
    the update back (they are about to be replaced) and go first: replacing
    them costs no availability. Dead ones are left to the restart policy.
    """
    if plan.create:
        return
    if any(t.status.state != TaskState.RUNNING for t in kept if t.spec_version >= spec_version):
        return
    candidates = [t for t in movable if t.spec_version < spec_version and t.status.state.is_active]
    if candidates:
        task = min(candidates, key=lambda t: (t.status.state == TaskState.RUNNING, slot_key(t)))
        plan.replace(task, slot_key(task))
