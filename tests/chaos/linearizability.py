"""A linearizability checker for register histories (issue 10's chaos check).

Clients record each operation on a key -- ``read``, ``write`` or ``cas`` (compare and
swap) -- with the time they invoked it, the time it completed and its outcome:

- ``ok``: it took effect once, between invocation and completion. A read carries the
  value it read; a cas carries whether its compare matched (``True``: the value was
  ``expected`` and became ``new``; ``False``: the value was something else and stayed).
- ``fail``: it certainly did not take effect (a refusal such as a 4xx). It is ignored.
  A cas whose compare did not match is *not* a ``fail``: it is an ``ok`` cas with
  result ``False``, which only a value other than ``expected`` explains.
- ``unknown`` (or ``info``): timed out, connection lost. It may have taken effect at
  any moment after its invocation, or never; its completion time is infinity. An
  unknown read says nothing and is ignored.

A history is linearizable when its operations can be put in one order that respects
real time (an op that completed before another was invoked comes first) and that a
single register, starting at ``initial``, would answer exactly as recorded. Keys are
independent registers, so each key is checked alone (linearizability is
compositional). The search is Wing & Gong's with Lowe's memoization of
(linearized set, register value), as in Knossos and Porcupine; it gives up with
"unknown" after ``max_states`` configurations rather than hang. Values must be
hashable (the memo holds them).

Usage::

    recorder = Recorder()
    op = recorder.invoke("client-1", "k", "cas", expected="a", new="b")
    ...  # the request
    recorder.complete(op, "ok", True)  # or ("ok", False), ("fail",), ("unknown",)
    result = check(recorder.history(), initial=None)
    assert result.ok, result.explanation

Pure Python: nothing here imports Warren.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

Kind = Literal["read", "write", "cas"]
Outcome = Literal["ok", "fail", "unknown"]
Verdict = Literal["linearizable", "not linearizable", "unknown"]

KINDS: tuple[str, ...] = ("read", "write", "cas")
OUTCOMES: tuple[str, ...] = ("ok", "fail", "unknown", "info")

# Per key, per search: a few hundred ops explore thousands of states, not millions.
DEFAULT_MAX_STATES = 500_000
# Per (ok ops linearized, value): unknown-op sets kept to skip their supersets.
SUBSETS_KEPT = 8
# Narrowing a violation down may explore this many times max_states in all.
NARROWING_BUDGET = 3
# The explanation lists at most this many ops of the window.
WINDOW_LINES = 30
# ... of which at most this many completed before the unexplained op began.
EARLIER_WRITES = 3


@dataclass(frozen=True)
class Op:
    """One operation on one key. ``value`` is a write's argument; ``expected`` and
    ``new`` a cas's; ``result`` what an ``ok`` op returned (a read: the value read; a
    cas: whether its compare matched)."""

    id: int
    client: Hashable
    key: Hashable
    kind: Kind
    invoked: float
    completed: float = math.inf
    outcome: Outcome = "unknown"
    value: Any = None
    expected: Any = None
    new: Any = None
    result: Any = None

    def describe(self, origin: float = 0.0) -> str:
        if self.kind == "read":
            call = "read"
            answer = f" -> {self.result!r}" if self.outcome == "ok" else ""
        elif self.kind == "write":
            call, answer = f"write({self.value!r})", ""
        else:
            call = f"cas({self.expected!r} -> {self.new!r})"
            answer = ""
            if self.outcome == "ok":
                answer = " -> swapped" if self.result else " -> compare failed"
        end = "?" if math.isinf(self.completed) else f"+{self.completed - origin:.3f}s"
        return (
            f"#{self.id} client {self.client!r} {call}{answer} {self.outcome} "
            f"[+{self.invoked - origin:.3f}s, {end}]"
        )


@dataclass(frozen=True)
class KeyResult:
    key: Hashable
    verdict: Verdict
    ops: int  # the ops that count (failed ops and unknown reads left out)
    explored: int  # configurations the full-history search visited
    explanation: str


@dataclass(frozen=True)
class Result:
    verdict: Verdict
    keys: tuple[KeyResult, ...]

    @property
    def ok(self) -> bool:
        """True only when every key was shown linearizable ("unknown" is not ok)."""
        return self.verdict == "linearizable"

    @property
    def explanation(self) -> str:
        bad = [k.explanation for k in self.keys if k.verdict != "linearizable"]
        if bad:
            return "\n\n".join(bad)
        ops = sum(k.ops for k in self.keys)
        return f"linearizable: {len(self.keys)} key(s), {ops} op(s)"

    def __str__(self) -> str:
        return self.explanation


def check(
    history: Iterable[Op], initial: Any = None, *, max_states: int = DEFAULT_MAX_STATES
) -> Result:
    """Whether ``history`` is linearizable, each key a register starting at
    ``initial``; ``max_states`` bounds each key's search."""
    by_key: dict[Hashable, list[Op]] = {}
    for op in history:
        _validate(op)
        by_key.setdefault(op.key, []).append(op)
    results = tuple(
        _check_key(key, by_key[key], initial, max_states) for key in sorted(by_key, key=repr)
    )
    verdicts = {r.verdict for r in results}
    verdict: Verdict = "linearizable"
    if "not linearizable" in verdicts:
        verdict = "not linearizable"
    elif "unknown" in verdicts:
        verdict = "unknown"
    return Result(verdict, results)


class Recorder:
    """Collects a history from concurrent clients (threads or tasks): ``invoke``
    just before sending a request, ``complete`` just after its answer (or its
    loss). Ops never completed count as unknown."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._ops: list[Op] = []
        self._done: list[bool] = []

    def invoke(
        self,
        client: Hashable,
        key: Hashable,
        kind: Kind,
        *,
        value: Any = None,
        expected: Any = None,
        new: Any = None,
    ) -> int:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r} (one of {KINDS})")
        now = self._clock()
        with self._lock:
            op_id = len(self._ops)
            self._ops.append(
                Op(op_id, client, key, kind, now, math.inf, "unknown", value, expected, new)
            )
            self._done.append(False)
        return op_id

    def read(self, client: Hashable, key: Hashable) -> int:
        return self.invoke(client, key, "read")

    def write(self, client: Hashable, key: Hashable, value: Any) -> int:
        return self.invoke(client, key, "write", value=value)

    def cas(self, client: Hashable, key: Hashable, expected: Any, new: Any) -> int:
        return self.invoke(client, key, "cas", expected=expected, new=new)

    def complete(self, op_id: int, outcome: str, value: Any = None) -> None:
        """``outcome`` is ok / fail / unknown (info); ``value`` is an ok read's value
        or an ok cas's success (bool), else ignored."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r} (one of {OUTCOMES})")
        now = self._clock()
        with self._lock:
            if self._done[op_id]:
                raise ValueError(f"op #{op_id} completed twice")
            op = self._ops[op_id]
            if outcome in ("unknown", "info"):
                done = replace(op, outcome="unknown")
            elif outcome == "fail":
                done = replace(op, completed=now, outcome="fail")
            else:
                done = replace(op, completed=now, outcome="ok", result=value)
            _validate(done)
            self._ops[op_id] = done
            self._done[op_id] = True

    def history(self) -> list[Op]:
        with self._lock:
            return list(self._ops)

    def check(self, initial: Any = None, *, max_states: int = DEFAULT_MAX_STATES) -> Result:
        return check(self.history(), initial, max_states=max_states)


def _validate(op: Op) -> None:
    if op.kind not in KINDS:
        raise ValueError(f"op #{op.id}: unknown kind {op.kind!r}")
    if op.outcome not in ("ok", "fail", "unknown"):
        raise ValueError(f"op #{op.id}: unknown outcome {op.outcome!r} (info is 'unknown')")
    if op.outcome == "ok":
        if not op.invoked <= op.completed < math.inf:
            raise ValueError(f"op #{op.id}: completed {op.completed} before invoked {op.invoked}")
        if op.kind == "cas" and not isinstance(op.result, bool):
            raise ValueError(f"op #{op.id}: an ok cas needs result True or False")
    try:
        hash((op.value, op.expected, op.new, op.result))
    except TypeError as e:
        raise TypeError(f"op #{op.id}: values must be hashable ({e})") from None


# -- one key ---------------------------------------------------------------------------


def _check_key(key: Hashable, ops: list[Op], initial: Any, max_states: int) -> KeyResult:
    # Failed ops did nothing; an unknown read neither changed nor showed anything.
    relevant = sorted(
        (op for op in ops if op.outcome == "ok" or (op.outcome == "unknown" and op.kind != "read")),
        key=lambda op: (op.invoked, op.id),
    )
    found = _search(relevant, initial, max_states)
    if found.linearizable:
        return KeyResult(key, "linearizable", len(relevant), found.explored, "")
    if found.linearizable is None:
        text = (
            f"key {key!r}: unknown: too large ({len(relevant)} ops; gave up after "
            f"{max_states} states)"
        )
        return KeyResult(key, "unknown", len(relevant), found.explored, text)
    text = _explain(key, relevant, initial, max_states)
    return KeyResult(key, "not linearizable", len(relevant), found.explored, text)


def _prefix(ops: Sequence[Op], until: float) -> list[Op]:
    """The history as it stood at time ``until``: ops still running then are unknown."""
    kept = []
    for op in ops:
        if op.invoked > until:
            continue
        if op.completed <= until:
            kept.append(op)
        elif op.kind != "read":
            kept.append(replace(op, completed=math.inf, outcome="unknown", result=None))
    return kept


def _explain(key: Hashable, ops: list[Op], initial: Any, max_states: int) -> str:
    """Narrow a violation down to the first completion no earlier history explains:
    linearizability is prefix-closed, so a binary search over completion times finds it."""
    times = sorted({op.completed for op in ops if op.outcome == "ok"})
    lo, hi = 0, len(times) - 1  # the prefix at times[hi] is known not linearizable
    narrowed = True
    budget = NARROWING_BUDGET * max_states
    while lo < hi:
        mid = (lo + hi) // 2
        found = _search(_prefix(ops, times[mid]), initial, min(max_states, budget))
        budget -= found.explored
        verdict = found.linearizable
        if verdict is None or budget <= 0:
            narrowed = False
            break
        if verdict:
            lo = mid + 1
        else:
            hi = mid
    until = times[hi]
    prefix = _prefix(ops, until)
    culprits = [i for i, op in enumerate(prefix) if op.completed == until]
    origin = min(op.invoked for op in ops)
    lines = [f"key {key!r} is not linearizable (initial value {initial!r})."]
    if not narrowed:
        lines.append("Narrowing it down gave up (too large); the history is unexplained by:")
        lines.extend(f"  {prefix[i].describe(origin)}" for i in culprits)
    else:
        lines.append(
            "Every op that completed before this one is explained; this one is not:"
            if len(culprits) == 1
            else "Every op that completed before these is explained; these are not:"
        )
        watched = _search(prefix, initial, max_states, watch=frozenset(culprits))
        cut_short = ", ..." if watched.linearizable is None else ""
        for i in culprits:
            lines.append(f"  {prefix[i].describe(origin)}")
            misfits = _values(watched.rejected.get(i, set()))
            fits = _values(watched.fitted.get(i, set()))
            if misfits:
                lines.append(f"    it does not fit where the register held: {misfits}{cut_short}")
            if fits:
                lines.append(
                    f"    where it fits (the register holding {fits}{cut_short}), "
                    "the ops around it no longer do"
                )
    lines.append("Ops in the window (concurrent with it, and the last writes before it):")
    window = _window(ops, [prefix[i] for i in culprits])
    lines.extend(f"  {op.describe(origin)}" for op in window[:WINDOW_LINES])
    if len(window) > WINDOW_LINES:
        lines.append(f"  ... and {len(window) - WINDOW_LINES} more")
    return "\n".join(lines)


def _values(values: set[Any]) -> str:
    return ", ".join(sorted(map(repr, values)))


def _window(ops: list[Op], culprits: list[Op]) -> list[Op]:
    """The ops as recorded (also those completed later) that overlap the culprits,
    and the last few writes that completed before them."""
    start = min(op.invoked for op in culprits)
    end = max(op.completed for op in culprits)
    concurrent = [op for op in ops if op.invoked <= end and op.completed >= start]
    earlier = [
        op
        for op in ops
        if op.completed < start
        and op.kind != "read"
        and op.outcome == "ok"
        and op.result is not False
    ]
    earlier.sort(key=lambda op: op.completed)
    chosen = {id(op): op for op in earlier[-EARLIER_WRITES:] + concurrent}
    return sorted(chosen.values(), key=lambda op: (op.invoked, op.id))


# -- the search ------------------------------------------------------------------------

# How an op steps the register, decided once per op.
_READ, _WRITE, _CAS_SWAPPED, _CAS_COMPARE_FAILED, _CAS_MAYBE = range(5)


@dataclass
class _Found:
    linearizable: bool | None  # None: gave up after max_states
    explored: int
    # Watched op index -> register values at which it was tried and could not step,
    # and those at which it could.
    rejected: dict[int, set[Any]]
    fitted: dict[int, set[Any]]


def _step_code(op: Op) -> int:
    if op.kind == "read":
        return _READ
    if op.kind == "write":
        return _WRITE
    if op.outcome != "ok":
        return _CAS_MAYBE
    return _CAS_SWAPPED if op.result else _CAS_COMPARE_FAILED


def _search(
    ops: Sequence[Op], initial: Any, max_states: int, watch: frozenset[int] = frozenset()
) -> _Found:
    """Wing & Gong's search with Lowe's memo over (linearized set, value).

    The events of ok ops (invocations, completions) sit in a doubly linked list in
    time order, invocations first at equal times (overlap is the lenient reading).
    The invocations before the first completion still in the list are the candidates
    to linearize next; linearizing one unlinks its two events and starts over from
    the head. When no candidate works, undo the last choice and try the candidates
    after it. Done when every ok op is linearized.

    Unknown ops have no completion: never forced, so "never took effect" is leaving
    them out. Their invocations sit in a list of their own, candidates up to that
    first completion, tried after the ok ops. They blow the search up (each may or
    may not have happened), so three prunings keep it small, none losing a
    linearization:
    - a configuration is skipped if one seen before had the same ok ops linearized,
      the same value and a subset of its unknown ops (those left out stay available,
      so it can do all this one can);
    - of unknown ops with the same effect, a later one only after the earlier ones;
    - no unknown write right after an unknown op: it would erase what that op did.
    """
    n = len(ops)
    codes = [_step_code(op) for op in ops]
    required = [op.outcome == "ok" for op in ops]
    events: list[tuple[float, int, int]] = []  # (time, 0 call / 1 return, op index)
    maybes: list[tuple[float, int]] = []  # (time, op index) of the unknown ops
    for i, op in enumerate(ops):
        if required[i]:
            events.append((op.invoked, 0, i))
            events.append((op.completed, 1, i))
        else:
            maybes.append((op.invoked, i))
    events.sort()
    maybes.sort()

    # Two linked lists in the same arrays: the ok ops' events (head 0, then 1..m)
    # and the unknown ops' invocations (head m + 1, then m + 2...); -1 ends both.
    m = len(events)
    head_maybe = m + 1
    size = m + 2 + len(maybes)
    nxt = [*range(1, size), -1]
    nxt[m] = -1
    prv = [-1, *range(0, size - 1)]
    prv[head_maybe] = -1
    op_of = [-1] * size
    is_call = [False] * size
    at = [math.inf] * size
    match = [-1] * size
    return_event = [-1] * n
    for e, (t, kind, i) in enumerate(events, start=1):
        op_of[e], is_call[e], at[e] = i, kind == 0, t
        if kind == 1:
            return_event[i] = e
    for e in range(1, m + 1):
        if is_call[e]:
            match[e] = return_event[op_of[e]]
    for e, (t, i) in enumerate(maybes, start=head_maybe + 1):
        op_of[e], is_call[e], at[e] = i, True, t

    # The unknown op invoked last before this one with the same effect, if any.
    twin = [-1] * n
    last_with: dict[tuple[int, Any, Any, Any], int] = {}
    for _, i in maybes:
        op = ops[i]
        effect = (codes[i], op.value, op.expected, op.new)
        twin[i] = last_with.get(effect, -1)
        last_with[effect] = i

    def unlink(e: int) -> None:
        nxt[prv[e]] = nxt[e]
        if nxt[e] != -1:
            prv[nxt[e]] = prv[e]

    def relink(e: int) -> None:
        nxt[prv[e]] = e
        if nxt[e] != -1:
            prv[nxt[e]] = e

    left = m // 2
    state = initial
    done_ok = 0  # bit per ok op linearized
    done_maybe = 0  # bit per unknown op linearized
    seen: dict[tuple[int, Any], list[int]] = {}
    overflow: set[tuple[int, int, Any]] = set()
    explored = 0
    stack: list[tuple[int, Any, bool, float]] = []  # (event, value before, phase, bound)
    rejected: dict[int, set[Any]] = {}
    fitted: dict[int, set[Any]] = {}
    e = nxt[0]
    trying_maybe = False  # past the ok ops' candidates, on to the unknown ones
    bound = math.inf  # meanwhile: the time of the first completion in the list
    while left:
        if not trying_maybe:
            if e == -1 or not is_call[e]:
                trying_maybe, bound = True, at[e] if e != -1 else math.inf
                e = nxt[head_maybe]
                continue
        elif e == -1 or at[e] > bound:
            if not stack:
                return _Found(False, explored, rejected, fitted)
            e, state, trying_maybe, bound = stack.pop()
            i = op_of[e]
            if required[i]:
                done_ok &= ~(1 << i)
                left += 1
                relink(match[e])
            else:
                done_maybe &= ~(1 << i)
            relink(e)
            e = nxt[e]
            continue
        i = op_of[e]
        if not required[i] and (
            (twin[i] != -1 and not (done_maybe >> twin[i]) & 1)
            or (codes[i] == _WRITE and stack and not required[op_of[stack[-1][0]]])
        ):
            e = nxt[e]
            continue
        op = ops[i]
        code = codes[i]
        if code == _READ:
            stepped, after = state == op.result, state
        elif code == _WRITE:
            stepped, after = True, op.value
        elif code == _CAS_COMPARE_FAILED:
            stepped, after = state != op.expected, state
        else:  # swapped, or unknown: a compare that fails is the same as never
            stepped, after = state == op.expected, op.new
        if i in watch:
            (fitted if stepped else rejected).setdefault(i, set()).add(state)
        if not stepped:
            e = nxt[e]
            continue
        if required[i]:
            next_ok, next_maybe = done_ok | (1 << i), done_maybe
        else:
            next_ok, next_maybe = done_ok, done_maybe | (1 << i)
        kept = seen.get((next_ok, after))
        if kept is None:
            seen[next_ok, after] = [next_maybe]
        elif _seen(kept, overflow, next_ok, next_maybe, after):
            e = nxt[e]
            continue
        if explored >= max_states:
            return _Found(None, explored, rejected, fitted)
        explored += 1
        stack.append((e, state, trying_maybe, bound))
        state, done_ok, done_maybe = after, next_ok, next_maybe
        unlink(e)
        if required[i]:
            left -= 1
            unlink(match[e])
        e, trying_maybe = nxt[0], False
    return _Found(True, explored, rejected, fitted)


def _seen(
    kept: list[int], overflow: set[tuple[int, int, Any]], done_ok: int, done_maybe: int, value: Any
) -> bool:
    """Whether this configuration, or one that can do all it can, was visited; if
    not, remember it. ``kept``: a few unknown-op sets visited with the same ok ops
    done and value (each covers its supersets); the rest go to ``overflow``."""
    if done_maybe == 0:
        if 0 in kept:
            return True
    else:
        for subset in kept:
            if not subset & ~done_maybe:
                return True
    if len(kept) < SUBSETS_KEPT:
        kept.append(done_maybe)
        return False
    config = (done_ok, done_maybe, value)
    if config in overflow:
        return True
    overflow.add(config)
    return False
