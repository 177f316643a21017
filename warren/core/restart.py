"""The restart policy, decided in one place: by the orchestrator when a task's
end reaches a manager, and by a worker restarting a task on its own while it
has no manager.

Docker Swarm's semantics: ``max_attempts`` caps the restarts decided within
the last ``window`` seconds (0: ever). The end being decided is not one of
them: it is what the restart would answer, so a task may be restarted while
fewer than ``max_attempts`` restarts are in the window. With a window, a capped
restart is not refused for good: it becomes due once a counted restart has
left the window, and it counts from then (not from its end), so restarts that
waited never bunch up beyond ``max_attempts`` in any window.

Callers give the times of the earlier ends that were restarted; when each of
those restarts was decided is replayed from them (``restart_times``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from warren.core.models import RestartCondition, RestartPolicy
from warren.core.states import TaskState

# Ends that a restart answers and that count toward max_attempts. An orphan
# (its node went down) or a shutdown is not a failure of the task.
COUNTED_ENDS = frozenset({TaskState.FAILED, TaskState.REJECTED, TaskState.COMPLETE})


@dataclass(frozen=True)
class RestartDecision:
    """Restart at ``at`` (due once ``now >= at``), or never when ``at`` is None."""

    at: float | None
    # max_attempts are used up now: ``at`` is when a counted restart leaves the
    # window (or the delay ends, if that is later).
    capped: bool = False

    @property
    def gives_up(self) -> bool:
        return self.at is None

    def due(self, now: float) -> bool:
        return self.at is not None and self.at <= now


GIVE_UP = RestartDecision(None)


def condition_allows(condition: RestartCondition, ended: TaskState) -> bool:
    """Whether ``condition`` restarts a task that ended in state ``ended``."""
    if condition == RestartCondition.ON_FAILURE:
        return ended in (TaskState.FAILED, TaskState.REJECTED)
    return condition == RestartCondition.ANY


def in_window(policy: RestartPolicy, restarted_at: float, now: float) -> bool:
    """Whether a restart counted at ``restarted_at`` still counts toward max_attempts.

    Written as a sum so that it stops counting exactly at ``restarted_at + window``,
    the time ``decide_restart`` gives (``now - restarted_at`` may round below it).
    """
    return policy.window == 0 or restarted_at + policy.window > now


def decide_restart(
    policy: RestartPolicy,
    ended: TaskState,
    ended_at: float,
    restarted_ends: Iterable[float],
    now: float,
) -> RestartDecision:
    """Decide whether and when to restart a task that ended in state ``ended`` at
    ``ended_at``, given when the earlier ends that were restarted happened (of
    its slot on a manager; of the task itself on a worker)."""
    if not condition_allows(policy.condition, ended):
        return GIVE_UP
    due = ended_at + policy.delay
    if policy.max_attempts == 0:
        return RestartDecision(due)
    freed = _freed_at(policy, restart_times(policy, restarted_ends), now)
    if freed is None:
        return RestartDecision(due)
    if policy.window == 0:
        return GIVE_UP
    return RestartDecision(max(due, freed), capped=True)


def restart_times(policy: RestartPolicy, restarted_ends: Iterable[float]) -> list[float]:
    """When the restart of each of ``restarted_ends`` was decided: at the end,
    or, if max_attempts were used up then, once the window freed one."""
    decided: list[float] = []
    for end in sorted(restarted_ends):
        freed = None if policy.window == 0 else _freed_at(policy, decided, end)
        decided.append(end if freed is None else max(end, freed))
    return decided


def _freed_at(policy: RestartPolicy, decided: list[float], now: float) -> float | None:
    """None if fewer than max_attempts restarts count at ``now``; else when one
    more would be allowed (with a window: once enough have left it)."""
    recent = sorted(t for t in decided if in_window(policy, t, now))
    spare = policy.max_attempts - len(recent)
    if spare > 0:
        return None
    # One restart is free again once the oldest 1 - spare counted ones have left.
    return recent[-spare] + policy.window
