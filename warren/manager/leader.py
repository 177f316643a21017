"""Where the leader is: the API address a follower names in its NotLeader
replies (clients and agents go there at once)."""

from __future__ import annotations

from warren.core.errors import NotLeader
from warren.core.models import NodeRole
from warren.manager.consensus import Consensus
from warren.manager.store import Kind


def leader_api_address(consensus: Consensus) -> str:
    """The leader's API address, "" when there is no leader or it is not known
    yet (its node object not applied here)."""
    leader = consensus.leader
    if not leader:
        return ""
    for node in consensus.store.list(Kind.NODE):
        if node.role == NodeRole.MANAGER and node.raft_address == leader:
            return str(node.api_address)
    return ""


def require_leader(consensus: Consensus, refusal: str) -> None:
    """Raise NotLeader (``refusal``, then the leader's address) unless this
    manager leads."""
    if consensus.is_leader:
        return
    address = leader_api_address(consensus)
    raise NotLeader(f"{refusal} (leader: {address or 'unknown'})", address)
