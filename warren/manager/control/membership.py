"""Consensus membership: managers in and out of the group, one change at a time."""

from __future__ import annotations

import asyncio
import logging

from warren.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from warren.core.models import Node, NodeRole
from warren.manager.consensus import Consensus
from warren.manager.store import Kind

log = logging.getLogger(__name__)


class Membership:
    def __init__(self, consensus: Consensus) -> None:
        self.consensus = consensus
        self.store = consensus.store
        # Membership changes go one at a time.
        self._lock = asyncio.Lock()

    def raft_peers(self) -> list[str]:
        return [m.address for m in self.consensus.members()]

    def check_new_manager(self, node: Node) -> None:
        """A manager-to-be gives both addresses, and no other manager uses its Raft one."""
        if not node.api_address or not node.raft_address:
            raise InvalidArgument("a joining manager must give its API and Raft addresses")
        for other in self.store.list(Kind.NODE):
            if other.id == node.id or other.role != NodeRole.MANAGER:
                continue
            if other.raft_address == node.raft_address:
                raise AlreadyExists(
                    f"manager '{other.hostname}' already uses Raft address {node.raft_address}"
                )

    async def add(self, node: Node) -> None:
        """Add a new manager's etcd member, as a learner, before replying to it:
        it starts with the member list this returns. A learner does not vote, so
        the quorum is the same until the leader promotes it (once caught up)."""
        async with self._lock:
            if node.raft_address in self.raft_peers():
                return  # it asked before, and crashed before starting
            await self.consensus.add_member(node.raft_address, timeout=30.0)
            log.info("manager added as an etcd learner", extra={"node_id": node.id})

    async def remove(self, node: Node, force: bool, action: str = "removing") -> None:
        """Take a manager out of Raft, unless that would cost the quorum (or
        ``force``) or it is the leader."""
        members = {m.address: m for m in self.consensus.members()}
        if node.raft_address not in members:
            return  # never made it into Raft, or already out
        if members[node.raft_address].is_leader:
            advice = (
                "remove it through another manager after stopping it, or let leadership move first"
                if action == "removing"
                else "let leadership move first (restarting its process moves it)"
            )
            raise FailedPrecondition(f"node '{node.hostname}' is the leader; {advice}")
        remaining = [m for m in members.values() if m.address != node.raft_address]
        reachable = sum(1 for m in remaining if m.reachable)
        if reachable < len(remaining) // 2 + 1 and not force:
            raise FailedPrecondition(
                f"{action} '{node.hostname}' would leave {reachable} of {len(remaining)} "
                "managers reachable: the cluster would lose quorum (use --force to do it anyway)"
            )
        async with self._lock:
            await self.consensus.remove_member(node.raft_address)
