"""The cluster object: its summary, manager addresses, join tokens, and who may
speak for a manager."""

from __future__ import annotations

from typing import Any

from warren.core.errors import FailedPrecondition, PermissionDenied
from warren.core.models import Cluster, NodeRole
from warren.manager import join_tokens
from warren.manager.consensus import Consensus
from warren.manager.store import Kind, put
from warren.manager.writes import update_with_retry, write
from warren.security.ca import CertificateAuthority
from warren.security.tokens import JoinToken


class ClusterControl:
    def __init__(self, consensus: Consensus, ca: CertificateAuthority) -> None:
        self.consensus = consensus
        self.store = consensus.store
        self.ca = ca

    def get(self) -> Cluster:
        cluster = self.store.cluster()
        if cluster is None:
            raise FailedPrecondition("the cluster is not initialised yet")
        return cluster

    def check_manager_caller(self, node_id: str) -> None:
        """A manager certificate speaks for a manager that is still a member: a
        removed manager (or one dropped by a restore) keeps a valid
        certificate, but not its rights."""
        node = self.store.find(Kind.NODE, node_id)
        if node is None or node.role != NodeRole.MANAGER:
            raise PermissionDenied(f"manager {node_id} is not part of this cluster")

    async def read_barrier(self) -> None:
        """Make the next local read linearizable: once every write committed
        before the call is applied here (a quorum read of the log's end)."""
        await self.consensus.read_barrier()

    def manager_addresses(self) -> list[str]:
        """API addresses of every manager, for workers and the CLI to fail over."""
        managers = [n for n in self.store.list(Kind.NODE) if n.role == NodeRole.MANAGER]
        return sorted(n.api_address for n in managers if n.api_address)

    def info(self) -> dict[str, Any]:
        cluster = self.get()
        revision, state_hash = self.store.state_hash()
        return {
            "cluster_id": cluster.id,
            "ca_fingerprint": cluster.ca_fingerprint,
            "leader": self.consensus.leader or "",
            "is_leader": self.consensus.is_leader,
            "raft_last_log_index": self.consensus.last_log_index,
            "managers": self.manager_addresses(),
            "nodes": self.store.count(Kind.NODE),
            "services": self.store.count(Kind.SERVICE),
            "tasks": self.store.count(Kind.TASK),
            "revision": revision,
            "state_hash": state_hash,
        }

    def join_token(self, role: str) -> str:
        cluster = self.get()
        secret = join_tokens.token_secret(cluster, role, self.ca)
        return JoinToken(cluster.ca_fingerprint, secret).format()

    async def rotate_join_token(self, role: str) -> str:
        cluster = self.get()
        rotated = join_tokens.rotated(cluster, role, self.ca)
        await write(self.consensus, [put(rotated, cluster.version)])
        return self.join_token(role)

    async def seal_legacy_join_tokens(self) -> bool:
        """Replace plain-text token secrets in the cluster object (written before
        they were hashed) by their hash and sealed form; the tokens stay the
        same. The leader runs this at start. True if it wrote."""
        sealed = False

        def seal(cluster: Cluster) -> Cluster | None:
            nonlocal sealed
            # Looked at again on each attempt: a rotation may get there first.
            sealed = join_tokens.has_plaintext(cluster)
            return join_tokens.sealed_legacy(cluster, self.ca) if sealed else None

        await update_with_retry(self.consensus, Kind.CLUSTER, self.get().id, seal)
        return sealed
