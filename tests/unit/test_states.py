"""Task state machine: one order, forward-only, terminal states final."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warren.core.errors import FailedPrecondition
from warren.core.states import DESIRED_STATES, TaskState, can_transition, check_transition

S = TaskState
LIFECYCLE = [S.NEW, S.PENDING, S.ASSIGNED, S.PREPARING, S.STARTING, S.RUNNING]
TERMINAL = [S.COMPLETE, S.FAILED, S.REJECTED, S.SHUTDOWN, S.ORPHANED]
ALL_PAIRS = list(itertools.product(TaskState, repeat=2))


def test_lifecycle_states_are_ranked_in_order() -> None:
    assert [s.rank for s in LIFECYCLE] == list(range(len(LIFECYCLE)))


def test_terminal_states_share_the_rank_after_running() -> None:
    assert {s.rank for s in TERMINAL} == {S.RUNNING.rank + 1}
    assert set(LIFECYCLE) | set(TERMINAL) == set(TaskState)


def test_terminal_and_active_split_the_states() -> None:
    assert [s for s in TaskState if s.is_terminal] == TERMINAL
    assert [s for s in TaskState if s.is_active] == LIFECYCLE


def test_desired_states_are_running_and_shutdown() -> None:
    assert frozenset({S.RUNNING, S.SHUTDOWN}) == DESIRED_STATES


@given(st.sampled_from(TaskState), st.sampled_from(TaskState))
def test_can_transition_iff_rank_rises_or_stays_non_terminal(current: S, new: S) -> None:
    stays_active = new.rank == current.rank and not current.is_terminal
    expected = new.rank > current.rank or stays_active or new == current
    assert can_transition(current, new) is expected


@pytest.mark.parametrize(("current", "new"), ALL_PAIRS)
def test_every_pair_follows_the_rank_rule(current: S, new: S) -> None:
    if current.is_terminal:
        assert can_transition(current, new) is (new == current)
    else:
        assert can_transition(current, new) is (new.rank >= current.rank)


@pytest.mark.parametrize("state", LIFECYCLE)
def test_a_non_terminal_state_may_stay_put(state: S) -> None:
    assert can_transition(state, state)


@pytest.mark.parametrize("state", LIFECYCLE)
def test_any_active_state_may_end_in_any_terminal_state(state: S) -> None:
    assert all(can_transition(state, end) for end in TERMINAL)


@pytest.mark.parametrize("state", TERMINAL)
def test_a_terminal_state_never_moves(state: S) -> None:
    assert [s for s in TaskState if can_transition(state, s)] == [state]


@pytest.mark.parametrize(("current", "new"), [(S.RUNNING, S.STARTING), (S.ASSIGNED, S.NEW)])
def test_going_back_is_refused(current: S, new: S) -> None:
    assert not can_transition(current, new)


@pytest.mark.parametrize(("current", "new"), [p for p in ALL_PAIRS if not can_transition(*p)])
def test_check_transition_raises_failed_precondition(current: S, new: S) -> None:
    with pytest.raises(FailedPrecondition, match=f"from {current} to {new}"):
        check_transition(current, new)


@pytest.mark.parametrize(("current", "new"), [p for p in ALL_PAIRS if can_transition(*p)])
def test_check_transition_accepts_allowed_moves(current: S, new: S) -> None:
    check_transition(current, new)
