"""Entries of Warren's log in etcd, and the one step that applies them.

Every put of the log key is one entry, ordered by its etcd revision. An entry
is a store command, possibly tagged with the term of the leader that wrote it,
or a leadership claim. Applying is deterministic: every manager applies the
same entries in the same order and ends with the same store and fence.

Fencing: a leader claims its term (its etcd member's Raft term) before its
controllers run, and tags what it writes with that term. A tagged command whose
term is not the latest claim's is refused when applied, so a deposed leader
that has not noticed yet changes nothing.
"""

from __future__ import annotations

import json
from typing import Any

from warren.core.errors import InvalidArgument
from warren.manager.etcd.state_image import Fence
from warren.manager.store import Store

# The marker on a refused tagged command; ``EtcdConsensus.propose`` raises on it.
FENCED = "fenced"


def command_entry(command: dict[str, Any], term: int = 0) -> bytes:
    """A command; ``term`` > 0 tags it as the leader's of that term."""
    entry: dict[str, Any] = {"command": command}
    if term:
        entry["term"] = term
    return json.dumps(entry, separators=(",", ":")).encode()


def claim_entry(term: int, holder: str) -> bytes:
    return json.dumps({"claim": {"term": term, "holder": holder}}, separators=(",", ":")).encode()


def apply_entry(store: Store, fence: Fence, raw: bytes) -> tuple[Any, Fence]:
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
    term = int(entry.get("term", 0))
    if term and term != fence.term:
        message = (
            f"refused a write of the leader of term {term}: "
            f"the leader is now {fence.holder or 'unknown'} (term {fence.term})"
        )
        return {FENCED: True, "message": message}, fence
    return store.apply(entry["command"]), fence
