"""Nodes coming in: joining with a token, and a promoted worker taking up its
manager role. Both hand out a certificate the CA signs."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import cast

from warren.core.errors import FailedPrecondition, PermissionDenied
from warren.core.models import Availability, Node, NodeRole, new_id
from warren.manager import join_tokens
from warren.manager.consensus import Consensus
from warren.manager.control.cluster import ClusterControl
from warren.manager.control.membership import Membership
from warren.manager.store import MUST_NOT_EXIST, Kind, put
from warren.manager.writes import changed, write
from warren.security.ca import CertificateAuthority
from warren.security.tls import verified_manager_host


class JoinControl:
    def __init__(
        self,
        consensus: Consensus,
        ca: CertificateAuthority,
        cluster: ClusterControl,
        membership: Membership,
    ) -> None:
        self.consensus = consensus
        self.store = consensus.store
        self.ca = ca
        self.cluster = cluster
        self.membership = membership

    async def join(
        self,
        secret: str,
        role: str,
        csr: bytes,
        hostname: str,
        labels: dict[str, str],
        api_address: str = "",
        raft_address: str = "",
        availability: Availability = Availability.ACTIVE,
        *,
        source: str,
    ) -> tuple[Node, bytes]:
        """Admit a node holding a join token. ``source`` is the IP address the
        request came from: a manager's certificate names only what it verifies."""
        cluster = self.cluster.get()
        if not join_tokens.secret_accepted(cluster, role, secret):
            raise PermissionDenied("invalid or rotated join token")
        now = time.time()
        node = Node(
            id=new_id(),
            role=NodeRole(role),
            hostname=hostname or str(role),
            labels=labels,
            api_address=api_address if role == NodeRole.MANAGER else "",
            raft_address=raft_address if role == NodeRole.MANAGER else "",
            availability=availability,
            created_at=now,
            updated_at=now,
        )
        # Workers are clients only: their certificates name no address at all.
        sans: list[str] = []
        if node.role == NodeRole.MANAGER:
            self.membership.check_new_manager(node)
            sans = [await verified_manager_host(api_address, source)]
        certificate = self.ca.issue(csr, node.id, str(node.role), sans)
        if node.role == NodeRole.MANAGER:
            await self.membership.add(node)
        await write(self.consensus, [put(node, MUST_NOT_EXIST)])
        return node, certificate

    async def accept_promotion(
        self, node_id: str, csr: bytes, api_address: str, raft_address: str, *, source: str
    ) -> tuple[Node, bytes]:
        """A node the cluster wants as a manager asks for its manager certificate
        (``source``: the IP address the request came from).

        Also answers a node that is a manager already: one that crashed after
        this reply but before it started its manager asks again.
        """
        node = self.store.find(Kind.NODE, node_id)
        if node is None:
            raise PermissionDenied(f"node {node_id} is not part of this cluster")
        if node.role != NodeRole.MANAGER and node.desired_role != NodeRole.MANAGER:
            raise PermissionDenied(f"node '{node.hostname}' is not being promoted")
        if node.role == NodeRole.MANAGER and node.raft_address not in ("", raft_address):
            raise FailedPrecondition(
                f"node '{node.hostname}' is a manager with Raft address {node.raft_address}, "
                f"not {raft_address}"
            )
        promoted = replace(
            node,
            role=NodeRole.MANAGER,
            desired_role=None,
            api_address=api_address,
            raft_address=raft_address,
            updated_at=time.time(),
        )
        self.membership.check_new_manager(promoted)
        sans = [await verified_manager_host(api_address, source)]
        certificate = self.ca.issue(csr, node.id, str(NodeRole.MANAGER), sans)
        if changed(node, promoted) is not None:
            await write(self.consensus, [put(promoted, node.version)])
        await self.membership.add(promoted)
        return cast(Node, self.store.get(Kind.NODE, node.id)), certificate
