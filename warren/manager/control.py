"""The service layer behind both the gRPC and the REST API.

Reads come from the local store; writes are commands through consensus,
whose preconditions the state machine checks again when it applies them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any, TypeVar, cast

from warren.core.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NotLeader,
    PermissionDenied,
    WarrenError,
)
from warren.core.models import (
    Availability,
    Cluster,
    Node,
    NodeRole,
    NodeStatus,
    Service,
    ServiceMode,
    ServiceSpec,
    Task,
    TaskStatus,
    new_id,
)
from warren.core.states import TaskState
from warren.core.validation import show
from warren.manager import join_tokens
from warren.manager.consensus import Consensus
from warren.manager.images import ImageResolver
from warren.manager.store import (
    MUST_NOT_EXIST,
    Kind,
    barrier,
    delete,
    put,
    raise_for_result,
    txn,
)
from warren.security.ca import CertificateAuthority
from warren.security.tls import verified_manager_host
from warren.security.tokens import JoinToken

log = logging.getLogger(__name__)

T = TypeVar("T")

# Compare-and-swap retries for read-modify-write updates the user did not pin.
_CAS_ATTEMPTS = 5
# Removing (or demoting) by ID prefix takes at least this many characters: a
# stray digit must not delete a node. Six base-36 characters are 2 billion
# possibilities (no accidental match), yet short to type; the CLI shows 12.
DESTRUCTIVE_MIN_PREFIX = 6


class ControlService:
    def __init__(
        self,
        consensus: Consensus,
        ca: CertificateAuthority,
        images: ImageResolver | None = None,
    ) -> None:
        self.consensus = consensus
        self.store = consensus.store
        self.ca = ca
        # None: images are not pinned (the simulated runtime has no registry).
        self.images = images
        # Raft membership changes go one at a time.
        self._membership = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()

    async def _pin_image(self, spec: ServiceSpec) -> ServiceSpec:
        if self.images is None:
            return spec
        return replace(spec, image=await self.images.pin(spec.image))

    def check_manager_caller(self, node_id: str) -> None:
        """A manager certificate speaks for a manager that is still a member: a
        removed manager (or one dropped by a restore) keeps a valid
        certificate, but not its rights."""
        node = self.store.find(Kind.NODE, node_id)
        if node is None or node.role != NodeRole.MANAGER:
            raise PermissionDenied(f"manager {node_id} is not part of this cluster")

    async def read_barrier(self) -> None:
        """Make the next local read linearizable: a no-op through the leader's
        log; once it is applied here, so is every write committed before."""
        await self.consensus.propose(barrier())

    async def _write(self, ops: list[dict[str, Any]]) -> Any:
        return raise_for_result(await self.consensus.propose(txn(ops, at=time.time())))

    # -- services --------------------------------------------------------------

    async def create_service(self, spec: ServiceSpec) -> Service:
        if self.store.service_by_name(spec.name) is not None:
            raise AlreadyExists(f"service '{spec.name}' already exists")
        spec = await self._pin_image(_normalise(spec))
        now = time.time()
        service = Service(id=new_id(), spec=spec, created_at=now, updated_at=now)
        await self._write([put(service, MUST_NOT_EXIST)])
        return cast(Service, self.store.get(Kind.SERVICE, service.id))

    def get_service(self, ref: str, min_prefix: int = 1) -> Service:
        services: list[Service] = self.store.list(Kind.SERVICE)
        by_name = {s.spec.name: s for s in services}
        return _resolve(ref, {s.id: s for s in services}, by_name, "service", min_prefix)

    def list_services(self) -> list[Service]:
        return sorted(self.store.list(Kind.SERVICE), key=lambda s: s.spec.name)

    async def update_service(self, ref: str, spec: ServiceSpec, version: int = 0) -> Service:
        service = self.get_service(ref)
        if version and version != service.version:
            raise Conflict(
                f"service '{service.spec.name}' changed since it was read "
                f"(version {service.version}, not {version}); read it again"
            )
        if spec.mode != service.spec.mode:
            raise InvalidArgument("a service's mode cannot change; create a new service")
        spec = _normalise(spec)
        if spec.image != service.spec.image:
            spec = await self._pin_image(spec)
        if spec == service.spec:
            return service
        updated = replace(
            service, spec=spec, spec_version=service.spec_version + 1, updated_at=time.time()
        )
        await self._write([put(updated, service.version)])
        return cast(Service, self.store.get(Kind.SERVICE, service.id))

    async def scale_service(self, ref: str, replicas: int) -> Service:
        for _ in range(_CAS_ATTEMPTS):
            service = self.get_service(ref)
            if service.spec.mode != ServiceMode.REPLICATED:
                raise InvalidArgument(
                    f"service '{service.spec.name}' is global; only replicated services scale"
                )
            if service.spec.replicas == replicas:
                return service
            # Scaling is not a new spec version: running tasks stay as they are.
            # (replace() re-validates the spec, so a bad count is refused here.)
            updated = replace(
                service, spec=replace(service.spec, replicas=replicas), updated_at=time.time()
            )
            try:
                await self._write([put(updated, service.version)])
            except Conflict:
                continue
            return cast(Service, self.store.get(Kind.SERVICE, service.id))
        raise Conflict("service kept changing; try again")

    async def delete_service(self, ref: str) -> None:
        service = self.get_service(ref, DESTRUCTIVE_MIN_PREFIX)
        # Its tasks are shut down by the orchestrator, which sees the delete.
        await self._write([delete(Kind.SERVICE, service.id, service.version)])

    # -- nodes -------------------------------------------------------------------

    def get_node(self, ref: str, min_prefix: int = 1) -> Node:
        nodes: list[Node] = self.store.list(Kind.NODE)
        by_name: dict[str, Node] = {}
        for node in nodes:
            # A hostname shared by several nodes is no name at all.
            by_name[node.hostname] = node if node.hostname not in by_name else _AMBIGUOUS
        return _resolve(ref, {n.id: n for n in nodes}, by_name, "node", min_prefix)

    def describe_node(self, ref: str) -> Node:
        """A node as clients see it: with its live manager status."""
        return self._with_manager_status(self.get_node(ref))

    def list_nodes(self) -> list[Node]:
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
                "leader" if member.is_leader else "reachable" if member.reachable else "unreachable"
            )
        return replace(node, manager_status=status)

    async def update_node(
        self,
        ref: str,
        availability: Availability | None = None,
        label_add: dict[str, str] | None = None,
        label_rm: list[str] | None = None,
    ) -> Node:
        for _ in range(_CAS_ATTEMPTS):
            node = self.get_node(ref)
            labels = dict(node.labels)
            for key in label_rm or []:
                if key not in labels:
                    raise NotFound(f"node '{node.hostname}' has no label {show(key)}")
                del labels[key]
            labels.update(label_add or {})
            updated = replace(
                node,
                labels=labels,
                availability=availability or node.availability,
                updated_at=time.time(),
            )
            if updated == replace(node, updated_at=updated.updated_at):
                return node
            try:
                await self._write([put(updated, node.version)])
            except Conflict:
                continue
            return cast(Node, self.store.get(Kind.NODE, node.id))
        raise Conflict("node kept changing; try again")

    async def remove_node(self, ref: str, force: bool = False) -> None:
        node = self.get_node(ref, DESTRUCTIVE_MIN_PREFIX)
        if node.role == NodeRole.MANAGER:
            # Out of Raft first, so the group never counts a member that is gone.
            await self._remove_manager(node, force)
        elif node.status == NodeStatus.READY and not force:
            raise FailedPrecondition(
                f"node '{node.hostname}' is not down and can't be removed; "
                "drain it and stop it first, or use --force"
            )
        now = time.time()
        ops = [delete(Kind.NODE, node.id, node.version)]
        for task in self.store.tasks_on_node(node.id):
            if task.status.state.is_active:
                orphaned = replace(
                    task,
                    desired_state=TaskState.SHUTDOWN,
                    status=TaskStatus(TaskState.ORPHANED, "node removed", timestamp=now),
                    updated_at=now,
                )
                ops.append(put(orphaned, task.version))
        await self._write(ops)

    async def promote_node(self, ref: str) -> Node:
        """Record that a worker is to become a manager. The node itself takes it
        up (``accept_promotion``): only it can serve the API and run Raft."""
        for _ in range(_CAS_ATTEMPTS):
            node = self.get_node(ref)
            if node.role == NodeRole.MANAGER or node.desired_role == NodeRole.MANAGER:
                return node
            if node.status != NodeStatus.READY:
                raise FailedPrecondition(
                    f"node '{node.hostname}' is {node.status}: only a ready worker can be promoted"
                )
            wanted = replace(node, desired_role=NodeRole.MANAGER, updated_at=time.time())
            try:
                await self._write([put(wanted, node.version)])
            except Conflict:
                continue
            return cast(Node, self.store.get(Kind.NODE, node.id))
        raise Conflict("node kept changing; try again")

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
        self._check_new_manager(promoted)
        sans = [await verified_manager_host(api_address, source)]
        certificate = self.ca.issue(csr, node.id, str(NodeRole.MANAGER), sans)
        if promoted != replace(node, updated_at=promoted.updated_at):
            await self._write([put(promoted, node.version)])
        if raft_address not in self.raft_peers():
            # In the background, as for a joining manager: the node starts Raft
            # only once it has this reply.
            task = asyncio.create_task(self._add_member(promoted))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return cast(Node, self.store.get(Kind.NODE, node.id)), certificate

    async def demote_node(self, ref: str, force: bool = False) -> Node:
        """Take a manager out of Raft and make it a worker; the node stops its
        manager when the leader tells it (``Dispatcher.watch_role``)."""
        node = self.get_node(ref, DESTRUCTIVE_MIN_PREFIX)
        if node.role == NodeRole.MANAGER:
            # On the leader, which cannot be the node demoted: a follower taking
            # itself out of Raft could not commit the role change after it.
            self._require_leader("demoting a manager")
            managers = [n for n in self.store.list(Kind.NODE) if n.role == NodeRole.MANAGER]
            if len(managers) == 1:
                raise FailedPrecondition(
                    f"node '{node.hostname}' is the last manager; promote another node first"
                )
            # Out of Raft first: once the node reads that it is a worker, it
            # may drop its Raft state.
            await self._remove_manager(node, force, "demoting")
        for _ in range(_CAS_ATTEMPTS):
            node = self.get_node(node.id)
            demoted = replace(
                node,
                role=NodeRole.WORKER,
                desired_role=None,  # also cancels a promotion not taken up yet
                api_address="",
                raft_address="",
                updated_at=time.time(),
            )
            if demoted == replace(node, updated_at=demoted.updated_at):
                return node
            try:
                await self._write([put(demoted, node.version)])
            except Conflict:
                continue
            return cast(Node, self.store.get(Kind.NODE, node.id))
        raise Conflict("node kept changing; try again")

    # -- tasks -------------------------------------------------------------------

    def list_tasks(self, service: str = "", node: str = "") -> list[Task]:
        if service:
            tasks = self.store.tasks_of_service(self.get_service(service).id)
        elif node:
            tasks = self.store.tasks_on_node(self.get_node(node).id)
        else:
            tasks = self.store.list(Kind.TASK)
        if service and node:
            node_id = self.get_node(node).id
            tasks = [t for t in tasks if t.node_id == node_id]
        return sorted(tasks, key=lambda t: (t.service_name, t.slot, t.node_id, -t.created_at))

    def get_task(self, ref: str) -> Task:
        tasks: dict[str, Task] = {t.id: t for t in self.store.list(Kind.TASK)}
        return _resolve(ref, tasks, {}, "task")

    # -- cluster -------------------------------------------------------------------

    def cluster(self) -> Cluster:
        cluster = self.store.cluster()
        if cluster is None:
            raise FailedPrecondition("the cluster is not initialised yet")
        return cluster

    def manager_addresses(self) -> list[str]:
        """API addresses of every manager, for workers and the CLI to fail over."""
        managers = [n for n in self.store.list(Kind.NODE) if n.role == NodeRole.MANAGER]
        return sorted(n.api_address for n in managers if n.api_address)

    def cluster_info(self) -> dict[str, Any]:
        cluster = self.cluster()
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
        cluster = self.cluster()
        secret = join_tokens.token_secret(cluster, role, self.ca)
        return JoinToken(cluster.ca_fingerprint, secret).format()

    async def rotate_join_token(self, role: str) -> str:
        cluster = self.cluster()
        await self._write([put(join_tokens.rotated(cluster, role, self.ca), cluster.version)])
        return self.join_token(role)

    async def seal_legacy_join_tokens(self) -> bool:
        """Replace plain-text token secrets in the cluster object (written before
        they were hashed) by their hash and sealed form; the tokens stay the
        same. The leader runs this at start. True if it wrote."""
        for _ in range(_CAS_ATTEMPTS):
            cluster = self.cluster()
            if not join_tokens.has_plaintext(cluster):
                return False
            sealed = join_tokens.sealed_legacy(cluster, self.ca)
            try:
                await self._write([put(sealed, cluster.version)])
            except Conflict:
                continue  # a rotation got there first: look again
            # One more entry: the Raft snapshot that scrubs the old secrets from
            # the journal follows it (see raft._StoreConsumer).
            await self.consensus.propose(barrier())
            return True
        raise Conflict("the cluster object kept changing while sealing its join tokens")

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
        cluster = self.cluster()
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
            self._check_new_manager(node)
            sans = [await verified_manager_host(api_address, source)]
        certificate = self.ca.issue(csr, node.id, str(node.role), sans)
        await self._write([put(node, MUST_NOT_EXIST)])
        if node.role == NodeRole.MANAGER:
            # The new member must be running before a 2-member group can commit
            # the change, and it starts only once it has this reply: so the
            # change is made in the background, one at a time.
            task = asyncio.create_task(self._add_member(node))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return node, certificate

    def _check_new_manager(self, node: Node) -> None:
        if not node.api_address or not node.raft_address:
            raise InvalidArgument("a joining manager must give its API and Raft addresses")
        for other in self.store.list(Kind.NODE):
            if other.id == node.id or other.role != NodeRole.MANAGER:
                continue
            if other.raft_address == node.raft_address:
                raise AlreadyExists(
                    f"manager '{other.hostname}' already uses Raft address {node.raft_address}"
                )

    async def _add_member(self, node: Node) -> None:
        async with self._membership:
            current = self.store.find(Kind.NODE, node.id)
            if current is None or current.role != NodeRole.MANAGER:
                return  # removed or demoted while it waited for its turn
            try:
                await self.consensus.add_member(node.raft_address, timeout=60.0)
                log.info("manager added to raft", extra={"node_id": node.id})
            except WarrenError as exc:
                log.error("manager %s not added to raft: %s", node.id, exc)

    def _require_leader(self, what: str) -> None:
        if self.consensus.is_leader:
            return
        leader = self.consensus.leader
        managers = [n for n in self.store.list(Kind.NODE) if n.role == NodeRole.MANAGER]
        address = next((n.api_address for n in managers if leader and n.raft_address == leader), "")
        raise NotLeader(f"{what} goes through the leader (leader: {address or 'unknown'})", address)

    def raft_peers(self) -> list[str]:
        return [m.address for m in self.consensus.members()]

    async def _remove_manager(self, node: Node, force: bool, action: str = "removing") -> None:
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
        async with self._membership:
            await self.consensus.remove_member(node.raft_address)


_AMBIGUOUS: Any = object()


def _resolve(
    ref: str, by_id: dict[str, T], by_name: dict[str, T], what: str, min_prefix: int = 1
) -> T:
    """Find an object by exact ID, then name, then unique ID prefix (like Docker)
    of at least ``min_prefix`` characters."""
    if not ref:
        raise InvalidArgument(f"a {what} ID or name is required")
    if ref in by_id:
        return by_id[ref]
    found = by_name.get(ref)
    if found is _AMBIGUOUS:
        raise InvalidArgument(f"{what} name {show(ref)} is ambiguous; use its ID")
    if found is not None:
        return found
    matches = [obj for object_id, obj in by_id.items() if object_id.startswith(ref)]
    if len(matches) > 1:
        raise InvalidArgument(f"{what} ID prefix {show(ref)} is ambiguous")
    if matches and len(ref) < min_prefix:
        raise InvalidArgument(
            f"{what} ID prefix {show(ref)} is too short for this: give at least "
            f"{min_prefix} characters of the ID, the whole ID or the name"
        )
    if matches:
        return matches[0]
    raise NotFound(f"{what} {show(ref)} not found")


def _normalise(spec: ServiceSpec) -> ServiceSpec:
    # A global service has one task per node: a replica count means nothing.
    if spec.mode == ServiceMode.GLOBAL:
        return replace(spec, replicas=0)
    return spec
