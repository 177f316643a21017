"""The manager: an etcd member's keeper serving the gRPC, REST and metrics APIs, and
running the controllers while it leads.

``warren.node`` runs it (``cluster init``, ``manager join``, a promoted node);
re-running on a data dir that already holds a manager resumes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from warren.core.errors import FailedPrecondition, Unavailable, WarrenError
from warren.core.models import Availability, Node, NodeRole, NodeStatus, new_id
from warren.core.networks import NetworkSpec
from warren.manager import command_format, join_tokens
from warren.manager.allocator import AllocatorState, allocate_network
from warren.manager.consensus import Consensus, LocalConsensus
from warren.manager.control import ControlService
from warren.manager.control.networks import DEFAULT_NETWORK
from warren.manager.controllers import NodeBlockKeeper, Orchestrator, Scheduler
from warren.manager.dispatcher import Dispatcher
from warren.manager.etcd.consensus import EtcdConsensus
from warren.manager.etcd.setup import new_consensus, refuse_pysyncobj_data
from warren.manager.events import EventBus
from warren.manager.grpc_api import ServerCredentials, start_grpc
from warren.manager.images import RegistryImageResolver
from warren.manager.metrics import Metrics, start_metrics
from warren.manager.rest import build_app, server_ssl_context, start_rest
from warren.manager.store import MUST_NOT_EXIST, Store, barrier, put, raise_for_result, txn
from warren.registry.client import RegistryConfig
from warren.security.ca import CertificateAuthority, generate_key, key_pem, load_key
from warren.security.tls import IdentityFiles, write_private

log = logging.getLogger(__name__)


class ManagerSettings(Protocol):
    """What a manager is configured with (``warren.node.options.ManagerOptions``)."""

    data_dir: Path
    advertise_addr: str
    listen_addr: str
    api_port: int
    rest_port: int
    metrics_port: int
    raft_port: int
    runtime: str
    insecure_registries: list[str]
    registry_config: Path | None
    availability: Availability
    node_down_timeout: float
    config_dir: Path
    node_name: str
    labels: dict[str, str]
    default_subnet: str

    @property
    def api_address(self) -> str: ...

    @property
    def raft_address(self) -> str: ...


@dataclass(frozen=True)
class ManagerCredentials:
    """What a manager joining a cluster is handed (``warren.node.join`` asks for it)."""

    node_id: str
    ca_certificate: bytes
    ca_key: bytes
    certificate: bytes
    key: bytes
    raft_peers: list[str]


# Joins the cluster: given to a manager whose data dir holds no manager yet and
# that is to join one (with a token, or promoted) instead of creating one.
JoinCluster = Callable[[], Awaitable[ManagerCredentials]]


@dataclass(frozen=True)
class ManagerState:
    """What a manager keeps about itself (manager.json); written last at init."""

    node_id: str
    cluster_id: str

    @classmethod
    def load(cls, data_dir: Path) -> ManagerState | None:
        try:
            raw = json.loads((data_dir / "manager.json").read_text())
        except FileNotFoundError:
            return None
        return cls(raw["node_id"], raw["cluster_id"])

    def save(self, data_dir: Path) -> None:
        payload = {"node_id": self.node_id, "cluster_id": self.cluster_id}
        write_private(data_dir / "manager.json", json.dumps(payload).encode())


class Manager:
    def __init__(self, options: ManagerSettings, join: JoinCluster | None = None) -> None:
        self.options = options
        self._join = join
        self.data_dir = options.data_dir
        self.identity = IdentityFiles(self.data_dir / "certs")
        self.store = Store()
        self.consensus: Consensus = LocalConsensus(self.store)  # replaced in start()
        self._leader_work: asyncio.Task[None] | None = None
        # Set when the manager cannot go on (its etcd member failed for good).
        self.failed = asyncio.Event()
        self._closers: list[Callable[[], Awaitable[Any]]] = []
        self._stopped = False

    # -- bootstrap -----------------------------------------------------------------

    def _load_or_create_ca(self, state: ManagerState | None) -> tuple[CertificateAuthority, str]:
        ca_key_path = self.data_dir / "certs" / "ca-key.pem"
        if state is not None:
            ca_pem, own_cert, own_key = self.identity.load()
            ca = CertificateAuthority.from_pem(ca_pem, ca_key_path.read_bytes())
            self._renew_own_certificate(ca, state.node_id, own_cert, own_key)
            return ca, state.node_id
        if (self.data_dir / "etcd").exists():
            raise FailedPrecondition(
                f"{self.data_dir} holds a partly initialised manager; remove it and run init again"
            )
        ca = CertificateAuthority.create(new_id())
        node_id = new_id()
        key = generate_key()
        cert = ca.issue_for_key(key.public_key(), node_id, "manager", [self.options.advertise_addr])
        write_private(ca_key_path, ca.key_pem)
        self.identity.save(ca.cert_pem, cert, key_pem(key))
        return ca, node_id

    def _renew_own_certificate(
        self, ca: CertificateAuthority, node_id: str, cert: bytes, key: bytes
    ) -> None:
        """Reissue this manager's certificate (same key) when it is not what the
        CA issues today for its advertised address: one issued before clients
        checked the manager name, or for an address it no longer advertises.
        Clients refuse a manager whose certificate does not name the address
        they dial."""
        sans = [self.options.advertise_addr]
        if ca.is_current(cert, node_id, "manager", sans):
            return
        public_key = load_key(key).public_key()
        renewed = ca.issue_for_key(public_key, node_id, "manager", sans)
        self.identity.save(ca.cert_pem, renewed, key)
        log.info("manager certificate reissued", extra={"node_id": node_id, "names": sans})

    def _write_admin_identity(self, ca: CertificateAuthority) -> None:
        key = generate_key()
        cert = ca.issue_for_key(key.public_key(), "admin", "admin")
        config_dir = self.options.config_dir
        IdentityFiles(config_dir).save(ca.cert_pem, cert, key_pem(key))
        config = {"managers": [self.options.api_address]}
        write_private(config_dir / "config.json", json.dumps(config).encode())

    async def _wait_ready(self, timeout: float = 30.0) -> None:
        """Wait for a leader and for every journaled entry to be applied."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                await self.consensus.propose(barrier(), timeout=2.0)
                return
            except Unavailable:
                await asyncio.sleep(0.05)
        raise Unavailable("no Raft leader elected; is a majority of managers up?")

    async def _initialise_cluster(self, ca: CertificateAuthority, node_id: str) -> None:
        now = time.time()
        cluster = join_tokens.new_cluster(ca, now)
        node = Node(
            id=node_id,
            role=NodeRole.MANAGER,
            hostname=self.options.node_name,
            address=self.options.advertise_addr,
            labels=dict(self.options.labels),
            availability=self.options.availability,
            status=NodeStatus.UNKNOWN,
            api_address=self.options.api_address,
            raft_address=self.options.raft_address,
            created_at=now,
            updated_at=now,
        )
        # The network services join unless told otherwise.
        default = NetworkSpec(name=DEFAULT_NETWORK, subnet=self.options.default_subnet)
        network = allocate_network(AllocatorState(), new_id(), default, now)
        ops = [put(cluster, MUST_NOT_EXIST), put(node, MUST_NOT_EXIST)]
        ops.append(put(network, MUST_NOT_EXIST))
        raise_for_result(await self.consensus.propose(txn(ops, at=now)))

    # -- run -------------------------------------------------------------------------

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        state = ManagerState.load(self.data_dir)
        # A manager that has run before resumes: it never joins again.
        join = self._join if state is None else None
        joining = join is not None
        refuse_pysyncobj_data(self.data_dir)
        peers: list[str] | None = None  # etcd's member list, for a new member only
        if join is not None:
            ca, node_id, peers = await self._join_cluster(join)
        else:
            ca, node_id = self._load_or_create_ca(state)
        self.node_id = node_id
        if peers is None:
            peers = [self.options.raft_address]
        self.consensus = new_consensus(
            self.store,
            self.options,
            ca,
            peers,
            new_member=join is not None or state is None,
            node_id=node_id,
            on_fatal=self._on_member_failed,
        )
        await self.consensus.start()
        self._closers.append(self.consensus.stop)
        await self._wait_ready(timeout=90.0 if joining else 30.0)
        # Before anything is recorded: a joining manager is not marked as joined.
        command_format.check_readable(self.store)
        if joining:
            ManagerState(node_id, ca.cluster_id).save(self.data_dir)
            log.info("manager joined", extra={"node_id": node_id, "peers": peers})
        elif state is None:
            await self._initialise_cluster(ca, node_id)
            self._write_admin_identity(ca)
            ManagerState(node_id, ca.cluster_id).save(self.data_dir)
            log.info("cluster initialised", extra={"cluster_id": ca.cluster_id, "node_id": node_id})
        else:
            log.info("manager resumed", extra={"node_id": node_id, "revision": self.store.revision})
        await command_format.report_format(self.consensus, node_id)
        await command_format.raise_format(self.consensus)
        await self._serve(ca)

    async def _join_cluster(self, join: JoinCluster) -> tuple[CertificateAuthority, str, list[str]]:
        joined = await join()
        write_private(self.data_dir / "certs" / "ca-key.pem", joined.ca_key)
        self.identity.save(joined.ca_certificate, joined.certificate, joined.key)
        peers = sorted({*joined.raft_peers, self.options.raft_address})
        return (
            CertificateAuthority.from_pem(joined.ca_certificate, joined.ca_key),
            joined.node_id,
            peers,
        )

    def _on_member_failed(self, reason: str) -> None:
        """The etcd member could not be kept running: stop serving from it."""
        log.error("etcd member failed for good (%s): the manager stops", reason)
        consensus = self.consensus
        if isinstance(consensus, EtcdConsensus):
            consensus.fail(reason)
        self.failed.set()

    async def _serve(self, ca: CertificateAuthority) -> None:
        options = self.options
        loop = asyncio.get_running_loop()
        self.bus = EventBus(self.store, loop)
        images = None
        if options.runtime != "sim":
            images = RegistryImageResolver(
                RegistryConfig.load(options.registry_config, options.insecure_registries)
            )
        self.control = ControlService(self.consensus, ca, images)
        self.metrics = Metrics(self.store, self.consensus)
        self.dispatcher = Dispatcher(
            self.consensus, self.bus, options.node_down_timeout, self.control.manager_addresses
        )
        ca_pem, cert_pem, key = self.identity.load()
        credentials = ServerCredentials(self.control, ca_pem, cert_pem, key)
        grpc_server = await start_grpc(
            self.control,
            self.bus,
            self.dispatcher,
            self.metrics,
            f"{options.listen_addr}:{options.api_port}",
            credentials,
        )
        self._closers.append(lambda: grpc_server.stop(1.0))
        rest = await start_rest(
            build_app(self.control, self.bus, self.metrics),
            options.listen_addr,
            options.rest_port,
            server_ssl_context(ca_pem, cert_pem, key),
        )
        self._closers.append(rest.cleanup)
        metrics_runner = await start_metrics(
            self.metrics, options.listen_addr, options.metrics_port
        )
        self._closers.append(metrics_runner.cleanup)
        self.consensus.on_leadership_change(self._on_leadership)
        if self.consensus.is_leader:
            self._on_leadership(True)
        log.info(
            "manager serving",
            extra={
                "api": options.api_port,
                "rest": options.rest_port,
                "metrics": options.metrics_port,
            },
        )

    def _on_leadership(self, leader: bool) -> None:
        # A late callback must not start controllers in a stopped (demoted) manager.
        if leader and self._leader_work is None and not self._stopped:
            self._leader_work = asyncio.create_task(self._lead())
        elif not leader and self._leader_work is not None:
            self._leader_work.cancel()
            self._leader_work = None
            # Workers must move to the new leader, or it marks them all down.
            self.dispatcher.close_sessions()

    async def _lead(self) -> None:
        # A new leader first applies everything committed before it acts.
        await self._wait_ready()
        await self._seal_legacy_join_tokens()
        await self._raise_command_format()
        await self._add_default_network()
        log.info("leading: controllers started")
        async with asyncio.TaskGroup() as group:
            group.create_task(self.dispatcher.run())
            group.create_task(Orchestrator(self.consensus, self.bus).run())
            group.create_task(Scheduler(self.consensus, self.bus).run())
            group.create_task(NodeBlockKeeper(self.consensus, self.bus).run())

    async def _raise_command_format(self) -> None:
        # Not fatal either: the format rises when the next manager reports.
        try:
            moved = await command_format.raise_format(self.consensus)
        except WarrenError as exc:
            log.warning("could not move the cluster to a newer command format: %s", exc)
            return
        if moved is not None:
            log.info("the cluster moved to command format %d", moved)

    async def _add_default_network(self) -> None:
        # A cluster made before networks existed gets the network services join
        # by default. Not fatal: the next leader tries again.
        try:
            made = await self.control.networks.ensure_default()
        except WarrenError as exc:
            log.warning("could not create the default network: %s", exc)
            return
        if made is not None:
            log.info("created the default network %s (%s)", made.id, made.subnet)

    async def _seal_legacy_join_tokens(self) -> None:
        # Not fatal: the controllers must run, and the next leader tries again.
        try:
            if await self.control.seal_legacy_join_tokens():
                log.info("plain-text join-token secrets (from an older version) sealed")
        except WarrenError as exc:
            log.warning("could not seal plain-text join-token secrets: %s", exc)

    async def stop(self) -> None:
        self._stopped = True
        if self._leader_work is not None:
            self._leader_work.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._leader_work
            self._leader_work = None
        # Emptied first: a demoted node's manager is stopped before its process ends.
        closers, self._closers = self._closers, []
        for close in reversed(closers):
            with contextlib.suppress(Exception):
                await close()
