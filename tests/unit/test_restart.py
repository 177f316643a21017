"""The one restart-policy decision (warren.core.restart), shared by the
orchestrator and a worker restarting tasks on its own."""

from __future__ import annotations

import pytest
from factories import make_service, make_task
from hypothesis import given, settings
from hypothesis import strategies as st

from warren.agent.executor import Ending, may_restart_locally
from warren.core.models import RestartCondition, RestartPolicy
from warren.core.restart import GIVE_UP, RestartDecision, decide_restart, restart_times
from warren.core.states import TaskState
from warren.manager.orchestrator import restart_at

S = TaskState
C = RestartCondition


@pytest.mark.parametrize(
    ("condition", "ended", "restarts"),
    [
        (C.ANY, S.FAILED, True),
        (C.ANY, S.COMPLETE, True),
        (C.ANY, S.SHUTDOWN, True),
        (C.ON_FAILURE, S.FAILED, True),
        (C.ON_FAILURE, S.REJECTED, True),
        (C.ON_FAILURE, S.COMPLETE, False),
        (C.NONE, S.FAILED, False),
    ],
)
def test_the_condition_decides_which_ends_restart(condition: C, ended: S, restarts: bool) -> None:
    decision = decide_restart(RestartPolicy(condition, delay=3.0), ended, 10.0, [], 10.0)
    assert decision == (RestartDecision(13.0) if restarts else GIVE_UP)


def test_max_attempts_counts_earlier_restarts_not_the_end_being_decided() -> None:
    policy = RestartPolicy(delay=0.0, max_attempts=2, window=10.0)
    assert decide_restart(policy, S.FAILED, 100.0, [95.0], 100.0) == RestartDecision(100.0)
    # Two restarts in the window: the next waits for the older one to leave it.
    capped = decide_restart(policy, S.FAILED, 100.0, [95.0, 99.0], 100.0)
    assert capped == RestartDecision(105.0, capped=True)
    assert decide_restart(policy, S.FAILED, 100.0, [85.0, 99.0], 100.0) == RestartDecision(100.0)
    forever = RestartPolicy(delay=0.0, max_attempts=2)
    assert decide_restart(forever, S.FAILED, 1e9, [0.0, 1.0], 1e9) == GIVE_UP


def test_a_restart_that_waited_for_the_window_counts_from_when_it_was_decided() -> None:
    policy = RestartPolicy(delay=0.0, max_attempts=1, window=10.0)
    # The end at 1 found the restart at 0 in the window, so it was restarted at 10.
    assert restart_times(policy, [1.0, 0.0]) == [0.0, 10.0]
    # So an end at 12 waits until 20, although the end at 1 has left the window.
    assert decide_restart(policy, S.FAILED, 12.0, [0.0, 1.0], 12.0) == RestartDecision(
        20.0, capped=True
    )


def test_the_delay_is_kept_when_the_window_frees_a_restart_sooner() -> None:
    policy = RestartPolicy(delay=30.0, max_attempts=1, window=10.0)
    assert decide_restart(policy, S.FAILED, 100.0, [95.0], 100.0) == RestartDecision(
        130.0, capped=True
    )


_POLICIES = st.builds(
    RestartPolicy,
    condition=st.just(C.ANY),
    delay=st.sampled_from([0.0, 1.0, 7.5]),
    max_attempts=st.integers(1, 4),
    window=st.sampled_from([0.0, 5.0, 20.0, 60.0]),
)


def _first_free_moment(policy: RestartPolicy, decided: list[float], end: float) -> float:
    """The earliest time from ``end`` on with fewer than max_attempts restarts in the window."""
    candidates = sorted({end} | {t + policy.window for t in decided if t + policy.window > end})
    for moment in candidates:
        counted = [t for t in decided if policy.window == 0 or t + policy.window > moment]
        if len(counted) < policy.max_attempts:
            return moment
    raise AssertionError("no free moment")


@settings(max_examples=300, deadline=None)
@given(_POLICIES, st.lists(st.floats(0.0, 30.0), min_size=1, max_size=25))
def test_a_crash_loop_never_gets_more_than_max_attempts_restarts_in_a_window(
    policy: RestartPolicy, runs: list[float]
) -> None:
    """A task that runs ``runs[i]`` seconds each time, restarted as decided."""
    started, ends, decided = 0.0, [], []
    for run in runs:
        end = started + run
        decision = decide_restart(policy, S.FAILED, end, ends, end)
        if decision.at is None:
            # Only a forever count gives up, and only once max_attempts were made.
            assert policy.window == 0
            assert len(ends) == policy.max_attempts
            return
        # Re-deciding when it is due agrees that it is due.
        assert decide_restart(policy, S.FAILED, end, ends, decision.at).due(decision.at)
        assert decision.at >= end + policy.delay
        decided.append(_first_free_moment(policy, decided, end))
        ends.append(end)
        started = decision.at
    assert restart_times(policy, ends) == decided
    if policy.window == 0:
        assert len(decided) <= policy.max_attempts
    for first in decided:
        in_window = [t for t in decided if first <= t < first + policy.window]
        assert len(in_window) <= policy.max_attempts


@settings(max_examples=300, deadline=None)
@given(
    _POLICIES,
    st.sampled_from([S.FAILED, S.COMPLETE]),
    st.lists(st.floats(0.0, 100.0), max_size=6),
)
def test_the_worker_restarts_locally_only_when_the_manager_would_restart_after_the_delay(
    policy: RestartPolicy, ended: S, earlier: list[float]
) -> None:
    now = 100.0
    service = make_service(restart_policy=policy)
    history = [make_task(service, state=S.FAILED, timestamp=t) for t in earlier]
    dead = make_task(service, state=ended, timestamp=now)
    manager_at = restart_at(policy, dead, [*history, dead], now)
    worker = may_restart_locally(policy, Ending(ended, "exited"), earlier, now)
    if worker:
        assert manager_at == now + policy.delay
    if manager_at is None:
        assert not worker
