"""Entries of Warren's log in etcd, and the one step that applies them.

Every put of the log key is one entry, ordered by its etcd revision. An entry
is a store command, possibly tagged with the term of the leader that wrote it,
or a leadership claim. Applying is deterministic: every manager applies the
same entries in the same order and ends with the same store and fence.

Retries: a proposer that hears nothing back (its put timed out while etcd
elected a leader) puts the same entry again; entries carry the proposal's ID,
and an ID applied already gives the first result without applying again
(the ledger of recent IDs is part of the replicated state, so every manager
skips the same copies).

Fencing: a leader claims its term (its etcd member's Raft term) before its
controllers run, and tags what it writes with that term. A tagged command whose
term is not the latest claim's is refused when applied, so a deposed leader
that has not noticed yet changes nothing.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from warren.core.errors import InvalidArgument
from warren.manager.etcd.state_image import Fence
from warren.manager.store import Store

# The marker on a refused tagged command; ``EtcdConsensus.propose`` raises on it.
FENCED = "fenced"
# Proposal IDs remembered: far more than a retry can lag behind its first copy.
LEDGER_SIZE = 5_000


class Ledger:
    """The results of the last ``LEDGER_SIZE`` proposals by ID, oldest first."""

    def __init__(self, entries: Iterable[tuple[str, Any]] = ()) -> None:
        self._results: OrderedDict[str, Any] = OrderedDict(entries)

    def result(self, proposal_id: str) -> tuple[bool, Any]:
        if proposal_id in self._results:
            return True, self._results[proposal_id]
        return False, None

    def record(self, proposal_id: str, result: Any) -> None:
        self._results[proposal_id] = result
        while len(self._results) > LEDGER_SIZE:
            self._results.popitem(last=False)

    def entries(self) -> list[tuple[str, Any]]:
        return list(self._results.items())


def command_entry(command: dict[str, Any], term: int = 0, proposal_id: str = "") -> bytes:
    """A command; ``term`` > 0 tags it as the leader's of that term; a
    ``proposal_id`` makes copies of it apply once."""
    entry: dict[str, Any] = {"command": command}
    if term:
        entry["term"] = term
    if proposal_id:
        entry["id"] = proposal_id
    return json.dumps(entry, separators=(",", ":")).encode()


def claim_entry(term: int, holder: str) -> bytes:
    return json.dumps({"claim": {"term": term, "holder": holder}}, separators=(",", ":")).encode()


def apply_entry(
    store: Store, fence: Fence, raw: bytes, ledger: Ledger | None = None
) -> tuple[Any, Fence]:
    """Apply one entry; returns its result and the fence after it."""
    try:
        entry = json.loads(raw)
    except ValueError as exc:
        raise InvalidArgument(f"unreadable log entry: {exc}") from None
    claim = entry.get("claim")
    if claim is not None:
        term, holder = int(claim["term"]), str(claim["holder"])
        # The same claim again is granted: a claimer that lost the first
        # answer (a timeout) asks again. One term has one etcd leader.
        if term > fence.term or (term == fence.term and holder == fence.holder):
            return {"claimed": True}, Fence(term, holder)
        return {"claimed": False, "term": fence.term, "holder": fence.holder}, fence
    proposal_id = str(entry.get("id", ""))
    if proposal_id and ledger is not None:
        seen, result = ledger.result(proposal_id)
        if seen:
            return result, fence  # a retried copy: applied once already
    result = _apply_command(store, fence, entry)
    if proposal_id and ledger is not None:
        ledger.record(proposal_id, result)
    return result, fence


def _apply_command(store: Store, fence: Fence, entry: dict[str, Any]) -> Any:
    term = int(entry.get("term", 0))
    if term and term != fence.term:
        message = (
            f"refused a write of the leader of term {term}: "
            f"the leader is now {fence.holder or 'unknown'} (term {fence.term})"
        )
        return {FENCED: True, "message": message}
    return store.apply(entry["command"])
