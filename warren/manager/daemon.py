"""`warren cluster init`: a manager process (Raft member, APIs, controllers) plus
a local agent, so a one-node cluster runs tasks.

Re-running it on a data dir that already holds a node resumes that node.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warren.agent.daemon import JoinRequest, registry_config, request_join, request_promotion
from warren.core.errors import FailedPrecondition, Unavailable, WarrenError
from warren.core.models import Availability, Node, NodeRole, NodeStatus, new_id
from warren.manager import join_tokens
from warren.manager.consensus import Consensus, LocalConsensus
from warren.manager.control import ControlService
from warren.manager.controllers import Orchestrator, Scheduler
from warren.manager.dispatcher import Dispatcher
from warren.manager.events import EventBus
from warren.manager.grpc_api import ServerCredentials, start_grpc
from warren.manager.images import RegistryImageResolver
from warren.manager.metrics import Metrics, start_metrics
from warren.manager.raft import RaftConsensus
from warren.manager.rest import build_app, server_ssl_context, start_rest
from warren.manager.store import MUST_NOT_EXIST, Store, barrier, put, raise_for_result, txn
from warren.security.ca import CertificateAuthority, generate_key, key_pem, load_key
from warren.security.private_files import make_private
from warren.security.tls import IdentityFiles, write_private

log = logging.getLogger(__name__)


@dataclass
class ManagerOptions:
    data_dir: Path
    advertise_addr: str = "127.0.0.1"
    listen_addr: str = "0.0.0.0"
    api_port: int = 2377
    rest_port: int = 2378
    metrics_port: int = 9090
    raft_port: int = 2379
    runtime: str = "containerd"
    availability: Availability = Availability.ACTIVE
    node_down_timeout: float = 15.0
    config_dir: Path = field(default_factory=lambda: Path.home() / ".warren")
    node_name: str = field(default_factory=socket.gethostname)
    labels: dict[str, str] = field(default_factory=dict)
    containerd_socket: str = "/run/containerd/containerd.sock"
    containerd_namespace: str = "warren"
    insecure_registries: list[str] = field(default_factory=list)
    registry_config: Path | None = None
    # `warren manager join`: join an existing cluster instead of creating one.
    join_token: str | None = None
    join_managers: list[str] = field(default_factory=list)
    # A node promoted by an admin: trade its certificate (in data_dir) for a
    # manager one at join_managers instead of joining with a token.
    promote: bool = False
    # `cluster init --force`: a new cluster may replace the admin credentials
    # another cluster left in config_dir.
    replace_admin_credentials: bool = False

    @property
    def api_address(self) -> str:
        return f"{self.advertise_addr}:{self.api_port}"

    @property
    def raft_address(self) -> str:
        return f"{self.advertise_addr}:{self.raft_port}"


def raft_password(ca: CertificateAuthority) -> str:
    """Raft traffic is encrypted and authenticated with a key only managers
    can derive: they alone hold the CA key."""
    return hashlib.sha256(b"warren-raft\0" + ca.key_pem).hexdigest()


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
    def __init__(self, options: ManagerOptions) -> None:
        self.options = options
        self.data_dir = options.data_dir
        self.identity = IdentityFiles(self.data_dir / "certs")
        self.store = Store()
        self.consensus: Consensus = LocalConsensus(self.store)  # replaced in start()
        self._leader_work: asyncio.Task[None] | None = None
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
        if (self.data_dir / "raft").exists():
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
        ops = [put(cluster, MUST_NOT_EXIST), put(node, MUST_NOT_EXIST)]
        raise_for_result(await self.consensus.propose(txn(ops, at=now)))

    # -- run -------------------------------------------------------------------------

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        state = ManagerState.load(self.data_dir)
        joining = state is None and (self.options.join_token is not None or self.options.promote)
        if joining:
            ca, node_id, peers = await self._join_cluster()
        else:
            ca, node_id = self._load_or_create_ca(state)
            peers = self._load_peers()
        self.node_id = node_id
        self.consensus = RaftConsensus(
            self.store,
            self.options.raft_address,
            self.data_dir / "raft",
            peers=peers,
            bind_address=f"{self.options.listen_addr}:{self.options.raft_port}",
            password=raft_password(ca),
        )
        await self.consensus.start()
        self._closers.append(self.consensus.stop)
        self._closers.append(self._save_peers)  # closers run last-in, first-out
        await self._wait_ready(timeout=90.0 if joining else 30.0)
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
        await self._serve(ca)

    async def _join_cluster(self) -> tuple[CertificateAuthority, str, list[str]]:
        options = self.options
        if options.promote:
            reply, key = await request_promotion(
                self.identity, options.join_managers, options.api_address, options.raft_address
            )
        else:
            join = JoinRequest(
                token=options.join_token,
                managers=options.join_managers,
                role="manager",
                node_name=options.node_name,
                labels=options.labels,
                api_address=options.api_address,
                raft_address=options.raft_address,
                availability=str(options.availability),
            )
            reply, key, _ = await request_join(join)
        write_private(self.data_dir / "certs" / "ca-key.pem", reply.ca_key)
        self.identity.save(reply.ca_certificate, reply.certificate, key)
        peers = [p for p in reply.raft_peers if p != options.raft_address]
        self._write_peers(peers)
        return (
            CertificateAuthority.from_pem(reply.ca_certificate, reply.ca_key),
            reply.node_id,
            peers,
        )

    # Raft peers survive restarts in a file; PySyncObj wants them at start.
    def _load_peers(self) -> list[str]:
        try:
            return list(json.loads((self.data_dir / "raft-peers.json").read_text()))
        except FileNotFoundError:
            return []

    def _write_peers(self, peers: list[str]) -> None:
        write_private(self.data_dir / "raft-peers.json", json.dumps(sorted(peers)).encode())

    async def _save_peers(self) -> None:
        members = [m.address for m in self.consensus.members()]
        if members:
            self._write_peers([m for m in members if m != self.options.raft_address])

    async def _keep_peers(self, period: float = 5.0) -> None:
        """Membership changes while running; a killed manager restarts from this."""
        while True:
            await asyncio.sleep(period)
            await self._save_peers()

    async def _serve(self, ca: CertificateAuthority) -> None:
        options = self.options
        loop = asyncio.get_running_loop()
        self.bus = EventBus(self.store, loop)
        images = None
        if options.runtime != "sim":
            images = RegistryImageResolver(registry_config(options))
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
        peers_keeper = asyncio.create_task(self._keep_peers())
        self._closers.append(lambda: _cancel(peers_keeper))
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
        log.info("leading: controllers started")
        async with asyncio.TaskGroup() as group:
            group.create_task(self.dispatcher.run())
            group.create_task(Orchestrator(self.consensus, self.bus).run())
            group.create_task(Scheduler(self.consensus, self.bus).run())

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


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def check_admin_credentials_free(options: ManagerOptions) -> None:
    """Refuse to start a new cluster whose admin credentials would replace the
    ones already in the config dir (another cluster's, or a copy the admin made).

    A restart, a join or a promotion writes no admin credentials."""
    from warren.agent.daemon import NodeState

    if options.replace_admin_credentials or options.join_token is not None or options.promote:
        return
    if ManagerState.load(options.data_dir) or NodeState.load(options.data_dir):
        return
    identity = IdentityFiles(options.config_dir)
    held = [
        path.name
        for path in (identity.ca_path, identity.cert_path, identity.key_path)
        if path.exists()
    ]
    if (options.config_dir / "config.json").exists():
        held.append("config.json")
    if held:
        raise FailedPrecondition(
            f"{options.config_dir} already holds admin credentials ({', '.join(held)}); "
            "a new cluster would replace them (pass --force to do so, "
            "or --config-dir DIR to write the new ones elsewhere)"
        )


async def serve_manager(options: ManagerOptions, stop: asyncio.Event) -> None:
    from warren.agent.agent import Agent
    from warren.agent.daemon import (
        NodeState,
        make_runtime,
        run_all,
        run_until,
        secure_data_dir,
        serve_worker,
    )
    from warren.manager.promotion import RoleKeeper, worker_options

    # Before anything is written: a refused start changes nothing.
    check_admin_credentials_free(options)
    secure_data_dir(options.data_dir)
    if options.config_dir.is_dir():
        make_private(options.config_dir, recursive=False)
    if ManagerState.load(options.data_dir) is None and NodeState.load(options.data_dir):
        # Demoted (node demote) by an earlier run: this data dir holds a worker.
        log.info("this node was demoted: running it as a worker")
        await serve_worker(worker_options(options), stop)
        return
    # Before the manager starts: a node refused its containerd namespace creates nothing.
    runtime = make_runtime(options)
    manager = Manager(options)
    keeper: RoleKeeper | None = None
    try:
        await manager.start()
        # The advertised address: the API may listen on it alone, not on loopback.
        own = options.api_address
        others = [m for m in manager.control.manager_addresses() if m != own]
        agent = Agent(
            node_id=manager.node_id,
            # Sessions are the leader's: the agent tries each manager in turn.
            managers=[own, *others],
            identity=manager.identity,
            runtime=runtime,
            data_dir=options.data_dir / "agent",
            hostname=options.node_name,
            address=options.advertise_addr,
        )
        # Stops the manager if the node is demoted; the agent keeps running.
        keeper = RoleKeeper(options, manager.node_id, agent, manager)
        await run_until(run_all(agent.run(), keeper.run()), stop)
    finally:
        if keeper is not None:
            await keeper.close()
        await manager.stop()


def run_manager(options: ManagerOptions) -> int:
    from warren.agent.daemon import run_daemon

    return run_daemon("manager", lambda stop: serve_manager(options, stop))
