"""Nodes: read, update (availability, labels), remove, promote, demote."""

from __future__ import annotations

import builtins
import time
from dataclasses import replace

from warren.core.errors import FailedPrecondition, NotFound
from warren.core.models import Availability, Node, NodeRole, NodeStatus
from warren.core.validation import show
from warren.manager.consensus import Consensus
from warren.manager.control.membership import Membership
from warren.manager.control.resolve import AMBIGUOUS, DESTRUCTIVE_MIN_PREFIX, resolve
from warren.manager.leader import require_leader
from warren.manager.store import Kind, delete
from warren.manager.writes import changed, orphan_node_tasks, update_with_retry, write


class NodeControl:
    def __init__(self, consensus: Consensus, membership: Membership) -> None:
        self.consensus = consensus
        self.store = consensus.store
        self.membership = membership

    def get(self, ref: str, min_prefix: int = 1) -> Node:
        nodes: builtins.list[Node] = self.store.list(Kind.NODE)
        by_name: dict[str, Node] = {}
        for node in nodes:
            # A hostname shared by several nodes is no name at all.
            by_name[node.hostname] = node if node.hostname not in by_name else AMBIGUOUS
        return resolve(ref, {n.id: n for n in nodes}, by_name, "node", min_prefix)

    def describe(self, ref: str) -> Node:
        """A node as clients see it: with its live manager status."""
        return self._with_manager_status(self.get(ref))

    def list(self) -> builtins.list[Node]:
        nodes = [self._with_manager_status(n) for n in self.store.list(Kind.NODE)]
        return sorted(nodes, key=lambda n: (n.role != NodeRole.MANAGER, n.hostname))

    def _with_manager_status(self, node: Node) -> Node:
        if node.role != NodeRole.MANAGER:
            return node
        member = next((m for m in self.consensus.members() if m.address == node.raft_address), None)
        if member is None:
            status = "unreachable" if node.raft_address else ""
        else:
            status = (
                "leader"
                if member.is_leader
                else "catching up"
                if member.learner
                else "reachable"
                if member.reachable
                else "unreachable"
            )
        return replace(node, manager_status=status)

    async def update(
        self,
        ref: str,
        availability: Availability | None = None,
        label_add: dict[str, str] | None = None,
        label_rm: builtins.list[str] | None = None,
    ) -> Node:
        def updated(node: Node) -> Node | None:
            labels = dict(node.labels)
            for key in label_rm or []:
                if key not in labels:
                    raise NotFound(f"node '{node.hostname}' has no label {show(key)}")
                del labels[key]
            labels.update(label_add or {})
            new = replace(
                node,
                labels=labels,
                availability=availability or node.availability,
                updated_at=time.time(),
            )
            return changed(node, new)

        return await update_with_retry(self.consensus, Kind.NODE, self.get(ref).id, updated)

    async def remove(self, ref: str, force: bool = False) -> None:
        node = self.get(ref, DESTRUCTIVE_MIN_PREFIX)
        if node.role == NodeRole.MANAGER:
            # Out of Raft first, so the group never counts a member that is gone.
            await self.membership.remove(node, force)
        elif node.status == NodeStatus.READY and not force:
            raise FailedPrecondition(
                f"node '{node.hostname}' is not down and can't be removed; "
                "drain it and stop it first, or use --force"
            )
        now = time.time()
        orphans = orphan_node_tasks(self.store, node.id, "node removed", now, shut_down=True)
        await write(self.consensus, [delete(Kind.NODE, node.id, node.version), *orphans])

    async def promote(self, ref: str) -> Node:
        """Record that a worker is to become a manager. The node itself takes it
        up (``JoinControl.accept_promotion``): only it can serve the API and run Raft."""

        def wanted(node: Node) -> Node | None:
            if node.role == NodeRole.MANAGER or node.desired_role == NodeRole.MANAGER:
                return None
            if node.status != NodeStatus.READY:
                raise FailedPrecondition(
                    f"node '{node.hostname}' is {node.status}: only a ready worker can be promoted"
                )
            return replace(node, desired_role=NodeRole.MANAGER, updated_at=time.time())

        return await update_with_retry(self.consensus, Kind.NODE, self.get(ref).id, wanted)

    async def demote(self, ref: str, force: bool = False) -> Node:
        """Take a manager out of Raft and make it a worker; the node stops its
        manager when the leader tells it (``Dispatcher.watch_role``)."""
        node = self.get(ref, DESTRUCTIVE_MIN_PREFIX)
        if node.role == NodeRole.MANAGER:
            # On the leader, which cannot be the node demoted: a follower taking
            # itself out of Raft could not commit the role change after it.
            require_leader(self.consensus, "demoting a manager goes through the leader")
            managers = [n for n in self.store.list(Kind.NODE) if n.role == NodeRole.MANAGER]
            if len(managers) == 1:
                raise FailedPrecondition(
                    f"node '{node.hostname}' is the last manager; promote another node first"
                )
            # Out of Raft first: once the node reads that it is a worker, it
            # may drop its Raft state.
            await self.membership.remove(node, force, "demoting")

        def demoted(current: Node) -> Node | None:
            new = replace(
                current,
                role=NodeRole.WORKER,
                desired_role=None,  # also cancels a promotion not taken up yet
                api_address="",
                raft_address="",
                updated_at=time.time(),
            )
            return changed(current, new)

        return await update_with_retry(self.consensus, Kind.NODE, node.id, demoted)
