"""Role keeping: a node's manager, run while the cluster wants one (node promote / demote).

Every node process keeps a stream to the leader (``Dispatcher.WatchRole``)
saying which role the cluster wants for the node. When that is manager, the
process trades its certificate for a manager one (``Dispatcher.Promote``, in
``Manager.start``) and runs a ``Manager`` on its data dir next to its agent.
When it no longer is (demoted: the node is out of Raft already), the process
stops the manager and drops its manager state, so that a restart runs a
worker only. The agent runs throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import shutil
import socket
from collections.abc import Callable

import grpc

from warren.agent.agent import Agent, manager_channel
from warren.core.errors import Unavailable, WarrenError
from warren.core.models import NodeRole
from warren.manager.manager import Manager, ManagerState
from warren.node.options import ManagerOptions
from warren.node.state import NodeState
from warren.proto import warren_pb2 as pb
from warren.proto import warren_pb2_grpc as pb_grpc
from warren.proto.errors import error_from_rpc, leader_hint
from warren.security.ca import CertificateAuthority, load_key
from warren.security.tls import IdentityFiles, identity_from_pem

log = logging.getLogger(__name__)

# What a manager keeps in its data dir on top of a worker's. manager.json goes
# last: a dir that still holds it is cleaned up again when it restarts.
_MANAGER_FILES = ("etcd", "raft", "raft-peers.json", "certs/ca-key.pem", "manager.json")
_MIN_BACKOFF = 0.2
_MAX_BACKOFF = 5.0
_MAX_RETRY = 30.0


def _busy_port(options: ManagerOptions) -> str:
    """Which of the manager's ports cannot be bound, if any."""
    family = socket.AF_INET6 if ":" in options.listen_addr else socket.AF_INET
    for port in (options.api_port, options.rest_port, options.metrics_port, options.raft_port):
        try:
            with socket.create_server((options.listen_addr, port), family=family):
                pass
        except OSError as exc:
            return f"{options.listen_addr}:{port}: {exc.strerror or exc}"
    return ""


class RoleKeeper:
    """Runs this node's manager while the cluster wants one; see the module doc."""

    def __init__(
        self,
        options: ManagerOptions,
        node_id: str,
        agent: Agent,
        new_manager: Callable[[ManagerOptions], Manager],
        manager: Manager | None = None,
    ) -> None:
        self._options = options
        # Builds the manager a promotion starts (it joins with the node's certificate).
        self._new_manager = new_manager
        self._data_dir = options.data_dir
        self._node_id = node_id
        self._identity = IdentityFiles(options.data_dir / "certs")
        # Shares its manager list with the agent: where to find the leader.
        self._agent = agent
        self.manager = manager
        # A node that was a manager starts as one without asking: the leader
        # may need its vote to be elected at all.
        self._wanted = manager is not None or ManagerState.load(self._data_dir) is not None
        self._changed = asyncio.Event()
        # The manager streaming our role (the leader), and every manager it named.
        self._leader = ""
        self._known: list[str] = []

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._watch())
            group.create_task(self._reconcile())
            group.create_task(self._end_on_member_failure())

    async def _end_on_member_failure(self, period: float = 0.5) -> None:
        """End the node when its manager's etcd member cannot be kept running
        (the manager it started at init, or one a promotion started): it must
        not serve from a dead member. A supervisor restarts the process."""
        while True:
            manager = self.manager
            if manager is not None and manager.failed.is_set():
                raise Unavailable("this node's etcd member failed and could not be restarted")
            await asyncio.sleep(period)

    async def close(self) -> None:
        manager, self.manager = self.manager, None
        if manager is not None:
            await manager.stop()

    # -- what the cluster wants ------------------------------------------------------

    def _candidates(self) -> list[str]:
        return [m for m in dict.fromkeys([*self._agent.managers, *self._known]) if m]

    async def _watch(self) -> None:
        backoff = _MIN_BACKOFF
        index = 0
        hint: str | None = None
        while True:
            candidates = self._candidates()
            if not candidates and hint is None:
                await asyncio.sleep(_MAX_BACKOFF)
                continue
            address = hint or candidates[index % len(candidates)]
            hint = None
            try:
                async with manager_channel(self._identity, address) as channel:
                    async for update in pb_grpc.DispatcherStub(channel).WatchRole(pb.Empty()):
                        backoff = _MIN_BACKOFF
                        self._on_update(address, update)
            except grpc.RpcError as exc:
                # A follower names the leader: go there at once.
                hint = leader_hint(exc)
                if hint is None:
                    log.debug("role watch on %s ended: %s", address, error_from_rpc(exc))
            except OSError as exc:  # the certificate files are being replaced
                log.debug("role watch: %s", exc)
            except WarrenError as exc:  # an address no manager certificate can name
                log.warning("role watch on %s: %s", address, exc)
            self._leader = ""
            if hint is not None:
                await asyncio.sleep(0.05)
                continue
            index += 1
            await asyncio.sleep(backoff + random.uniform(0, backoff / 2))
            backoff = min(backoff * 2, _MAX_BACKOFF)

    def _on_update(self, address: str, update: pb.RoleUpdate) -> None:
        self._leader = address
        self._known = list(update.managers)
        if self._known:
            # The agent hears of managers only when a session opens: without
            # this it would not know where to go once a promoted one leads.
            self._agent.managers = list(self._known)
        wanted = NodeRole.MANAGER in (update.role, update.desired_role)
        if wanted != self._wanted:
            log.info("the cluster wants this node as a %s", "manager" if wanted else "worker")
        self._wanted = wanted
        self._changed.set()

    # -- acting on it ------------------------------------------------------------------

    async def _reconcile(self) -> None:
        retry = 1.0
        while True:
            if self._wanted and self.manager is None:
                if await self._start_manager():
                    retry = 1.0
                else:
                    await self._wait_change(retry)
                    retry = min(retry * 2, _MAX_RETRY)
                continue
            if not self._wanted and self._holds_manager_state():
                if await self._step_down():
                    retry = 1.0
                else:
                    await self._wait_change(retry)
                    retry = min(retry * 2, _MAX_RETRY)
                continue
            await self._wait_change(None)

    async def _wait_change(self, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        self._changed.clear()

    async def _start_manager(self) -> bool:
        if ManagerState.load(self._data_dir) is None:
            # Checked before asking: once the leader adds a member that cannot
            # start, a two-member group commits nothing until it runs.
            busy = _busy_port(self._options)
            if busy:
                log.error("cannot take up the promotion: %s", busy)
                return False
        # Not cancelled if the node is demoted meanwhile: Raft starts in a
        # thread that cannot be interrupted. It is stopped once it is up.
        options = dataclasses.replace(
            self._options,
            promote=True,
            join_token=None,
            join_managers=[m for m in dict.fromkeys([self._leader, *self._candidates()]) if m],
        )
        manager = self._new_manager(options)
        self.manager = manager
        try:
            await manager.start()
        except Exception as exc:
            # Whatever went wrong, the agent keeps running; the start is tried again later.
            log.warning("could not start as a manager: %s", exc)
            self.manager = None
            await manager.stop()
            return False
        log.info("serving as a manager", extra={"node_id": self._node_id})
        return True

    def _holds_manager_state(self) -> bool:
        return self.manager is not None or any(
            (self._data_dir / name).exists() for name in _MANAGER_FILES
        )

    def _take_worker_certificate(self) -> None:
        """Swap the manager certificate for a worker one (same key) while the
        CA key is still here: a worker must not hold a certificate that serves
        as a manager's. Done before the CA key goes, so a step-down that fails
        half-way is finished by the next attempt."""
        ca_key_path = self._data_dir / "certs" / "ca-key.pem"
        ca_pem, cert, key = self._identity.load()
        if identity_from_pem(cert).role != NodeRole.MANAGER or not ca_key_path.exists():
            return
        ca = CertificateAuthority.from_pem(ca_pem, ca_key_path.read_bytes())
        worker_cert = ca.issue_for_key(load_key(key).public_key(), self._node_id, "worker")
        self._identity.save(ca_pem, worker_cert, key)

    async def _step_down(self) -> bool:
        manager, self.manager = self.manager, None
        if manager is not None:
            await manager.stop()
        try:
            self._take_worker_certificate()
            NodeState(self._node_id, "worker", self._known or self._candidates()).save(
                self._data_dir
            )
            for name in _MANAGER_FILES:
                path = self._data_dir / name
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
        except (OSError, WarrenError) as exc:
            log.error("could not drop the manager state in %s: %s", self._data_dir, exc)
            return False
        log.info("demoted: no longer a manager", extra={"node_id": self._node_id})
        return True
