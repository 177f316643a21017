"""Restarting dead tasks under their service's restart policy, and keeping a
slot's history short without forgetting the restarts that still count."""

from __future__ import annotations

from collections.abc import Sequence

from warren.core.models import RestartPolicy, Task
from warren.core.restart import (
    COUNTED_ENDS,
    RestartDecision,
    decide_restart,
    in_window,
    restart_times,
)
from warren.manager.orchestrator.slots import PlanBuilder, Slot, SlotRule

# Dead history tasks kept per slot, for `ps` and for counting restart attempts.
HISTORY_LIMIT = 5


def restart_at(
    policy: RestartPolicy, dead: Task, slot_history: Sequence[Task], now: float
) -> float | None:
    """When ``dead`` may be replaced under ``policy``: a time (due if <= ``now``), or
    None if never. ``slot_history`` is every task of the slot, ``dead`` included.

    With a window, attempts expire: the restart becomes due once enough of the
    counted restarts have left the window.
    """
    return decide(policy, dead, slot_history, now).at


def decide(
    policy: RestartPolicy, dead: Task, slot_tasks: Sequence[Task], now: float
) -> RestartDecision:
    """The restart policy's answer for ``dead``: each earlier task of its slot that
    failed, was rejected or completed was restarted."""
    restarts = [
        t.status.timestamp for t in slot_tasks if t.id != dead.id and t.status.state in COUNTED_ENDS
    ]
    return decide_restart(policy, dead.status.state, dead.status.timestamp, restarts, now)


def plan_restart(
    policy: RestartPolicy,
    dead: Task,
    slot: Slot,
    rule: SlotRule,
    now: float,
    plan: PlanBuilder,
) -> Task | None:
    """Replace a dead task if its restart policy allows; it stays current otherwise."""
    due = restart_at(policy, dead, slot.tasks, now)
    # A global slot on a paused or down node waits: the node's return re-runs us.
    if due is None or not rule.can_create:
        return dead
    if due > now:
        plan.wake(due)
        return dead
    plan.replace(dead, slot.key)
    return None


def prunable(history: Sequence[Task], policy: RestartPolicy, now: float) -> list[str]:
    """Dead history beyond the newest HISTORY_LIMIT, except restarts that still
    count toward max attempts (pruning them would reset the restart limit)."""
    dead = [t for t in reversed(history) if t.status.state.is_terminal]
    counting = _still_counting(history, policy, now)
    return [t.id for t in dead[HISTORY_LIMIT:] if t.id not in counting]


def _still_counting(history: Sequence[Task], policy: RestartPolicy, now: float) -> set[str]:
    if not policy.max_attempts:
        return set()
    restarted = sorted(
        (t for t in history if t.status.state in COUNTED_ENDS), key=lambda t: t.status.timestamp
    )
    decided = restart_times(policy, [t.status.timestamp for t in restarted])
    return {t.id for t, at in zip(restarted, decided, strict=True) if in_window(policy, at, now)}
