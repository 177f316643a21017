"""The chaos suite's linearizability checker (tests/chaos/linearizability.py): known
histories each way, a brute-force oracle on small random histories, simulated
registers (linearizable by construction) and the same with a read made impossible."""

from __future__ import annotations

import math
import random
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

_CHAOS = str(Path(__file__).resolve().parents[1] / "chaos")
if _CHAOS not in sys.path:
    sys.path.append(_CHAOS)  # appended: chaos modules never shadow the unit tests' own

from linearizability import Op, Recorder, check  # noqa: E402

INF = math.inf


def read(i: int, t0: float, t1: float, result: Any, *, key: str = "k", outcome: str = "ok") -> Op:
    return Op(i, f"c{i}", key, "read", t0, t1, outcome, result=result)  # type: ignore[arg-type]


def write(i: int, t0: float, t1: float, value: Any, *, key: str = "k", outcome: str = "ok") -> Op:
    return Op(i, f"c{i}", key, "write", t0, t1, outcome, value=value)  # type: ignore[arg-type]


def cas(
    i: int,
    t0: float,
    t1: float,
    expected: Any,
    new: Any,
    result: bool | None,
    *,
    outcome: str = "ok",
) -> Op:
    return Op(i, f"c{i}", "k", "cas", t0, t1, outcome, expected=expected, new=new, result=result)  # type: ignore[arg-type]


# -- known histories -------------------------------------------------------------------


def test_overlapping_writes_let_concurrent_reads_see_either_value() -> None:
    history = [
        write(1, 0, 10, "a"),
        write(2, 1, 9, "b"),
        read(3, 2, 3, "b"),
        read(4, 4, 5, "a"),  # a landed after b, both inside their windows
        read(5, 11, 12, "a"),
        read(6, 13, 14, "a"),
    ]
    assert check(history).ok


def test_after_overlapping_writes_the_value_cannot_flip_back() -> None:
    history = [
        write(1, 0, 10, "a"),
        write(2, 1, 9, "b"),
        read(3, 11, 12, "a"),
        read(4, 13, 14, "b"),
    ]
    result = check(history)
    assert not result.ok and result.verdict == "not linearizable"
    assert "#4 " in result.explanation


def test_a_read_before_any_write_sees_the_initial_value() -> None:
    assert check([read(1, 0, 1, None), write(2, 2, 3, "a")]).ok
    assert check([read(1, 0, 1, "zero"), write(2, 2, 3, "a")], initial="zero").ok
    assert not check([read(1, 0, 1, None), write(2, 2, 3, "a")], initial="zero").ok


@pytest.mark.parametrize("seen", ["a", "b"])
def test_an_unknown_cas_may_or_may_not_have_happened(seen: str) -> None:
    history = [
        write(1, 0, 1, "a"),
        cas(2, 2, INF, "a", "b", None, outcome="unknown"),
        read(3, 5, 6, seen),
        read(4, 7, 8, seen),
    ]
    assert check(history).ok


def test_an_unknown_cas_happens_at_most_once() -> None:
    history = [
        write(1, 0, 1, "a"),
        cas(2, 2, INF, "a", "b", None, outcome="unknown"),
        read(3, 5, 6, "b"),
        read(4, 7, 8, "a"),
    ]
    assert not check(history).ok


def test_an_unknown_write_may_land_long_after_its_client_gave_up() -> None:
    history = [
        write(1, 0, INF, "late", outcome="unknown"),
        read(2, 5, 6, None),
        write(3, 7, 8, "b"),
        read(4, 9, 10, "late"),
    ]
    assert check(history).ok


def test_an_unknown_read_says_nothing() -> None:
    assert check([write(1, 0, 1, "a"), read(2, 2, INF, "ghost", outcome="unknown")]).ok


def test_an_unknown_op_cannot_take_effect_before_it_was_invoked() -> None:
    history = [
        write(1, 0, 1, "a"),
        cas(2, 0.5, INF, "other", "q", None, outcome="unknown"),
        read(3, 2, 3, "b"),
        write(4, 5, INF, "b", outcome="unknown"),  # invoked after the read was answered
    ]
    assert not check(history).ok


def test_each_unknown_op_takes_effect_at_most_once_even_when_alike() -> None:
    def history(copies: int) -> list[Op]:
        lost = [write(10 + n, 0, INF, "b", outcome="unknown") for n in range(copies)]
        return [
            *lost,
            read(1, 1, 2, "b"),
            write(2, 3, 4, "a"),
            read(3, 5, 6, "a"),
            read(4, 7, 8, "b"),  # a second b landed after a
        ]

    assert check(history(2)).ok
    assert not check(history(1)).ok


def test_unknown_writes_nobody_saw_do_not_blow_the_search_up() -> None:
    # Each of the 40 may or may not have happened: 2**40 sets without pruning.
    lost = [write(100 + n, n * 0.1, INF, f"lost-{n}", outcome="unknown") for n in range(40)]
    steps = []
    for n in range(20):
        steps += [write(2 * n, 10 * n, 10 * n + 1, n), read(2 * n + 1, 10 * n + 2, 10 * n + 3, n)]
    stale = read(99, 500, 501, 18)
    result = check([*lost, *steps, stale], max_states=50_000)
    assert result.verdict == "not linearizable", result.explanation
    assert "#99 " in result.explanation


def test_failed_ops_are_ignored() -> None:
    history = [
        write(1, 0, 1, "a"),
        write(2, 2, 3, "z", outcome="fail"),
        cas(3, 4, 5, "a", "y", None, outcome="fail"),
        read(4, 6, 7, "a"),
    ]
    assert check(history).ok


def test_a_failed_write_is_never_read() -> None:
    history = [write(1, 0, 1, "a"), write(2, 2, 3, "z", outcome="fail"), read(3, 4, 5, "z")]
    assert not check(history).ok


def test_a_cas_that_failed_its_compare_needs_another_value() -> None:
    explained = [
        write(1, 0, 1, "a"),
        write(2, 2, 6, "b"),
        cas(3, 3, 4, "a", "c", False),  # b landed first
        read(4, 7, 8, "b"),
    ]
    assert check(explained).ok
    unexplained = [write(1, 0, 1, "a"), cas(2, 2, 3, "a", "c", False), read(3, 4, 5, "a")]
    result = check(unexplained)
    assert not result.ok
    assert "#2 " in result.explanation and "compare failed" in result.explanation


def test_a_stale_read_after_a_completed_write_is_a_violation() -> None:
    history = [write(1, 0, 1, "a"), write(2, 2, 3, "b"), read(3, 4, 5, "a")]
    result = check(history)
    assert not result.ok
    text = result.explanation
    assert "key 'k'" in text and "#3 " in text and "read -> 'a'" in text
    assert "does not fit where the register held: 'b'" in text and "fits (" not in text
    assert "write('b')" in text  # the window shows the write it missed


def test_a_read_of_a_value_never_written_is_a_violation() -> None:
    result = check([write(1, 0, 1, "a"), read(2, 0.5, 3, "ghost")])
    assert not result.ok
    assert "#2 " in result.explanation and "'ghost'" in result.explanation


def test_two_swaps_from_the_same_value_without_a_write_between_is_a_violation() -> None:
    history = [
        write(1, 0, 1, "a"),
        cas(2, 2, 5, "a", "b", True),
        cas(3, 3, 6, "a", "c", True),
    ]
    result = check(history)
    assert not result.ok
    assert "#3 " in result.explanation
    assert "does not fit where the register held: 'b'" in result.explanation
    assert "where it fits (the register holding 'a'), the ops around it no longer do" in (
        result.explanation
    )
    # With a write of a between them, both swaps are fine.
    assert check([*history, write(4, 2.5, 5.5, "a")]).ok


def test_a_lost_acknowledged_write_is_a_violation() -> None:
    history = [
        write(1, 0, 1, "a"),
        write(2, 2, 3, "b"),  # acknowledged...
        cas(3, 4, INF, "a", "c", None, outcome="unknown"),  # ...and nothing could undo it
        read(4, 5, 6, "a"),
    ]
    assert not check(history).ok


def test_keys_are_separate_registers() -> None:
    history = [
        write(1, 0, 1, "a", key="x"),
        read(2, 2, 3, "a", key="x"),
        write(3, 0, 1, "b", key="y"),
        read(4, 2, 3, "a", key="y"),  # a was written to x, not y
    ]
    result = check(history)
    assert not result.ok
    assert [k.verdict for k in result.keys] == ["linearizable", "not linearizable"]
    assert "key 'y'" in result.explanation and "key 'x'" not in result.explanation


def test_a_search_too_large_is_unknown_not_ok() -> None:
    history = simulate(_random_specs(random.Random(7), ops=120, clients=6, keys=1))
    result = check(history, max_states=20)
    assert not result.ok and result.verdict == "unknown"
    assert "too large" in result.explanation


def test_invalid_ops_are_refused() -> None:
    with pytest.raises(ValueError, match="ok cas"):
        check([cas(1, 0, 1, "a", "b", None)])
    with pytest.raises(ValueError, match="before invoked"):
        check([read(1, 2, 1, None)])
    with pytest.raises(ValueError, match="unknown kind"):
        Recorder().invoke("c", "k", "delete")  # type: ignore[arg-type]


# -- the recorder ----------------------------------------------------------------------


def test_the_recorder_times_ops_and_normalizes_outcomes() -> None:
    ticks = iter(range(100))
    recorder = Recorder(clock=lambda: float(next(ticks)))
    w = recorder.write("c1", "k", "a")
    c = recorder.cas("c2", "k", "a", "b")
    r = recorder.read("c3", "k")
    lost = recorder.write("c4", "k", "z")
    refused = recorder.write("c5", "k", "y")
    recorder.complete(w, "ok")
    recorder.complete(c, "info")
    recorder.complete(r, "ok", "b")
    recorder.complete(refused, "fail")
    ops = {op.id: op for op in recorder.history()}
    assert (ops[w].invoked, ops[w].completed, ops[w].outcome) == (0.0, 5.0, "ok")
    assert (ops[c].outcome, ops[c].completed) == ("unknown", INF)
    assert (ops[r].result, ops[r].completed) == ("b", 7.0)
    assert (ops[lost].outcome, ops[lost].completed) == ("unknown", INF)  # never completed
    assert (ops[refused].outcome, ops[refused].completed) == ("fail", 8.0)
    assert recorder.check().ok
    with pytest.raises(ValueError, match="twice"):
        recorder.complete(w, "ok")


def test_the_recorder_takes_threads_recording_at_once() -> None:
    recorder = Recorder()
    register: dict[str, Any] = {}
    lock = threading.Lock()

    def client(name: str, seed: int) -> None:
        rng = random.Random(seed)
        for n in range(60):
            key = rng.choice("xy")
            kind = rng.choice(["read", "write", "cas"])
            value = f"{name}-{n}"
            if kind == "read":
                op = recorder.read(name, key)
                with lock:
                    seen = register.get(key)
                recorder.complete(op, "ok", seen)
            elif kind == "write":
                op = recorder.write(name, key, value)
                with lock:
                    register[key] = value
                recorder.complete(op, "ok")
            else:
                with lock:
                    expected = register.get(key)
                op = recorder.cas(name, key, expected, value)
                with lock:
                    swapped = register.get(key) == expected
                    if swapped:
                        register[key] = value
                recorder.complete(op, "ok", swapped)

    threads = [threading.Thread(target=client, args=(f"c{i}", i)) for i in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(recorder.history()) == 300
    result = recorder.check()
    assert result.ok, result.explanation


# -- simulated registers ---------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One op of a simulated client: it starts when its client's previous op is
    over, takes effect ``to_effect`` later, answers ``to_answer`` after that."""

    client: int
    key: str
    kind: str
    value: int
    expected: int | None
    to_effect: float
    to_answer: float
    think: float
    # ok; unknown with or without effect; fail (no effect)
    fate: str


def simulate(specs: list[Spec]) -> list[Op]:
    """The history some clients would record of real registers: each op takes
    effect atomically at one instant inside its interval."""
    clock: dict[int, float] = {}
    timed = []
    for i, spec in enumerate(specs):
        invoked = clock.get(spec.client, 0.0)
        effect = invoked + spec.to_effect
        answered = effect + spec.to_answer
        clock[spec.client] = answered + spec.think  # also after a timeout: it moves on
        timed.append((effect, i, invoked, answered))
    registers: dict[str, Any] = {}
    ops: list[Op] = []
    for _, i, invoked, answered in sorted(timed):
        spec = specs[i]
        result: Any = None
        if spec.fate in ("ok", "unknown-applied"):
            current = registers.get(spec.key)
            if spec.kind == "read":
                result = current
            elif spec.kind == "write":
                registers[spec.key] = spec.value
            else:
                result = current == spec.expected
                if result:
                    registers[spec.key] = spec.value
        outcome = {"ok": "ok", "fail": "fail"}.get(spec.fate, "unknown")
        ops.append(
            Op(
                i,
                spec.client,
                spec.key,
                spec.kind,  # type: ignore[arg-type]
                invoked,
                INF if outcome == "unknown" else answered,
                outcome,  # type: ignore[arg-type]
                value=spec.value if spec.kind == "write" else None,
                expected=spec.expected,
                new=spec.value if spec.kind == "cas" else None,
                result=result if outcome == "ok" else None,
            )
        )
    return sorted(ops, key=lambda op: op.id)


FATES = ["ok"] * 8 + ["unknown-applied", "unknown-lost", "fail"]


def specs_strategy(max_ops: int) -> st.SearchStrategy[list[Spec]]:
    # Few values and whole-number times: many ties and many coincidences to sort out.
    value = st.integers(0, 3)
    spec = st.builds(
        Spec,
        client=st.integers(0, 3),
        key=st.sampled_from(["k", "j"]),
        kind=st.sampled_from(["read", "read", "write", "cas"]),
        value=value,
        expected=st.none() | value,
        to_effect=st.integers(0, 4).map(float),
        to_answer=st.integers(0, 4).map(float),
        think=st.integers(0, 2).map(float),
        fate=st.sampled_from(FATES),
    )
    return st.lists(spec, min_size=1, max_size=max_ops)


@settings(max_examples=100, deadline=None)
@given(specs_strategy(max_ops=30))
def test_simulated_register_histories_are_linearizable(specs: list[Spec]) -> None:
    result = check(simulate(specs))
    assert result.ok, result.explanation


@settings(max_examples=60, deadline=None)
@given(specs_strategy(max_ops=30), st.data())
def test_a_read_made_impossible_is_caught(specs: list[Spec], data: st.DataObject) -> None:
    history = simulate(specs)
    reads = [i for i, op in enumerate(history) if op.kind == "read" and op.outcome == "ok"]
    if not reads:
        history.append(read(len(history), 0, 0, None))
        reads = [len(history) - 1]
    victim = data.draw(st.sampled_from(reads))
    history[victim] = replace(history[victim], result="never written")
    result = check(history)
    assert not result.ok
    assert f"#{history[victim].id} " in result.explanation


def _random_specs(rng: random.Random, ops: int, clients: int, keys: int) -> list[Spec]:
    """Values unique per write (as chaos clients write them), timings jittered."""
    specs = []
    for n in range(ops):
        kind = rng.choice(["read", "read", "write", "cas"])
        fate = "ok" if rng.random() < 0.95 else rng.choice(FATES[8:])
        specs.append(
            Spec(
                client=rng.randrange(clients),
                key=f"k{rng.randrange(keys)}",
                kind=kind,
                value=n,
                expected=rng.choice([None, *range(max(0, n - 8), n)]),
                to_effect=rng.uniform(0, 0.05),
                to_answer=rng.uniform(0, 0.05),
                think=rng.uniform(0, 0.01),
                fate=fate,
            )
        )
    return specs


def test_a_few_hundred_ops_per_key_check_quickly() -> None:
    history = simulate(_random_specs(random.Random(10), ops=900, clients=6, keys=3))
    started = time.monotonic()
    result = check(history)
    elapsed = time.monotonic() - started
    assert result.ok, result.explanation
    assert all(k.ops >= 250 for k in result.keys)
    assert elapsed < 5, f"{elapsed:.1f}s for {len(history)} ops"

    # A violation is narrowed down (a search per step of a binary search) quickly too.
    victim = next(
        i for i, op in enumerate(history[450:], 450) if op.kind == "read" and op.outcome == "ok"
    )
    history[victim] = replace(history[victim], result="never written")
    started = time.monotonic()
    result = check(history)
    elapsed = time.monotonic() - started
    assert not result.ok and f"#{victim} " in result.explanation
    assert elapsed < 10, f"{elapsed:.1f}s to explain a violation in {len(history)} ops"


# -- against brute force ---------------------------------------------------------------


def brute_force(history: list[Op], initial: Any = None) -> bool:
    """Try every order: any op nothing still pending had to precede goes next, if
    the register allows it; unknown ops may be left out."""
    pending = [
        op
        for op in history
        if op.outcome == "ok" or (op.outcome == "unknown" and op.kind != "read")
    ]
    return _extends(pending, initial)


def _extends(pending: list[Op], state: Any) -> bool:
    if all(op.outcome == "unknown" for op in pending):
        return True
    for op in pending:
        if any(other.completed < op.invoked for other in pending):
            continue  # another op was over before this one began: it goes first
        allowed, after = _step(op, state)
        if allowed and _extends([o for o in pending if o is not op], after):
            return True
    return False


def _step(op: Op, state: Any) -> tuple[bool, Any]:
    if op.kind == "read":
        return state == op.result, state
    if op.kind == "write":
        return True, op.value
    if op.outcome == "unknown":
        return True, op.new if state == op.expected else state
    if op.result:
        return state == op.expected, op.new
    return state != op.expected, state


@st.composite
def arbitrary_histories(draw: st.DrawFn) -> list[Op]:
    """Small histories with any answers at all, many of them not linearizable."""
    ops = []
    for i in range(draw(st.integers(1, 7))):
        kind = draw(st.sampled_from(["read", "write", "cas"]))
        outcome = draw(st.sampled_from(["ok", "ok", "ok", "unknown", "fail"]))
        invoked = float(draw(st.integers(0, 6)))
        completed = INF if outcome == "unknown" else invoked + draw(st.integers(0, 4))
        value = st.none() | st.integers(0, 2)
        result = None
        if outcome == "ok" and kind == "read":
            result = draw(value)
        elif outcome == "ok" and kind == "cas":
            result = draw(st.booleans())
        ops.append(
            Op(
                i,
                f"c{i}",
                "k",
                kind,  # type: ignore[arg-type]
                invoked,
                completed,
                outcome,  # type: ignore[arg-type]
                value=draw(value) if kind == "write" else None,
                expected=draw(value) if kind == "cas" else None,
                new=draw(value) if kind == "cas" else None,
                result=result,
            )
        )
    return ops


@settings(max_examples=250, deadline=None)
@given(arbitrary_histories())
def test_the_checker_agrees_with_brute_force(history: list[Op]) -> None:
    assert check(history).ok == brute_force(history)
