"""`warren worker join`: join once with a token, then run the agent.

The data dir keeps the node's identity, so running the same command again
resumes the same node instead of joining a new one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc

from warren.agent.agent import Agent
from warren.agent.runtime import Runtime
from warren.agent.sim import SimRuntime
from warren.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Unavailable,
    WarrenError,
)
from warren.proto import warren_pb2 as pb
from warren.proto import warren_pb2_grpc as pb_grpc
from warren.proto.errors import error_from_rpc
from warren.registry.client import RegistryConfig
from warren.security.ca import generate_key, key_pem, make_csr
from warren.security.join import joiner_credentials
from warren.security.private_files import make_private, restrict_new_files
from warren.security.tls import (
    IdentityFiles,
    check_manager_leaf,
    fetch_ca_chain,
    manager_channel_options,
    pin_ca,
    write_private,
)
from warren.security.tokens import parse

log = logging.getLogger(__name__)


@dataclass
class WorkerOptions:
    data_dir: Path
    token: str | None
    managers: list[str]
    runtime: str = "containerd"
    node_name: str = field(default_factory=socket.gethostname)
    labels: dict[str, str] = field(default_factory=dict)
    containerd_socket: str = "/run/containerd/containerd.sock"
    containerd_namespace: str = "warren"
    insecure_registries: list[str] = field(default_factory=list)
    registry_config: Path | None = None
    # The manager this node runs once promoted (node promote); as for cluster init.
    advertise_addr: str = "127.0.0.1"
    listen_addr: str = "0.0.0.0"
    api_port: int = 2377
    rest_port: int = 2378
    metrics_port: int = 9090
    raft_port: int = 2379
    node_down_timeout: float = 15.0


@dataclass(frozen=True)
class NodeState:
    """What a node keeps about itself in its data dir (node.json)."""

    node_id: str
    role: str
    managers: list[str]

    @classmethod
    def load(cls, data_dir: Path) -> NodeState | None:
        try:
            raw = json.loads((data_dir / "node.json").read_text())
        except FileNotFoundError:
            return None
        return cls(raw["node_id"], raw["role"], list(raw["managers"]))

    def save(self, data_dir: Path) -> None:
        payload = {"node_id": self.node_id, "role": self.role, "managers": self.managers}
        write_private(data_dir / "node.json", json.dumps(payload).encode())


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InvalidArgument(f"invalid manager address '{address}': expected HOST:PORT")
    return host.strip("[]"), int(port)


class RuntimeOptions(Protocol):
    """The runtime settings a manager and a worker share."""

    data_dir: Path
    runtime: str
    containerd_socket: str
    containerd_namespace: str
    insecure_registries: list[str]
    registry_config: Path | None


def registry_config(options: RuntimeOptions) -> RegistryConfig:
    return RegistryConfig.load(options.registry_config, options.insecure_registries)


def make_runtime(options: RuntimeOptions) -> Runtime:
    if options.runtime == "sim":
        return SimRuntime()
    if options.runtime == "containerd":
        from warren.agent.containerd.runtime import ContainerdRuntime

        return ContainerdRuntime(
            socket=options.containerd_socket,
            namespace=options.containerd_namespace,
            state_dir=options.data_dir / "containerd",
            registry=registry_config(options),
            exclusive=True,
        )
    raise InvalidArgument(f"unknown runtime '{options.runtime}': use containerd or sim")


@dataclass(frozen=True)
class JoinRequest:
    token: str | None
    managers: list[str]
    role: str
    node_name: str
    labels: dict[str, str] = field(default_factory=dict)
    api_address: str = ""
    raft_address: str = ""
    availability: str = ""


async def request_join(join: JoinRequest) -> tuple[Any, bytes, str]:
    """Verify the manager's CA against the token, then trade a CSR for a
    certificate. Returns the manager's reply, the new private key (PEM) and
    the manager address that answered."""
    if not join.token:
        raise InvalidArgument("this data dir holds no node yet: --token is required to join")
    if not join.managers:
        raise InvalidArgument("--manager is required to join")
    token = parse(join.token)
    last_error: WarrenError = Unavailable("no manager address given")
    for manager in join.managers:
        host, port = split_address(manager)
        try:
            chain = await asyncio.to_thread(fetch_ca_chain, host, port)
            ca_pem = pin_ca(chain, token.ca_fingerprint)
            check_manager_leaf(chain, ca_pem, host)
            reply, key = await _join_with(manager, ca_pem, token.secret, join)
            return reply, key, manager
        except Unavailable as exc:
            last_error = exc
    raise last_error


async def _join_with(
    manager: str, ca_pem: bytes, secret: str, join: JoinRequest
) -> tuple[Any, bytes]:
    joiner_key, joiner_cert = joiner_credentials(secret, join.role)
    credentials = grpc.ssl_channel_credentials(ca_pem, joiner_key, joiner_cert)
    key = generate_key()
    request = pb.JoinRequest(
        secret=secret,
        role=join.role,
        csr=make_csr(key),
        hostname=join.node_name,
        labels=join.labels,
        api_address=join.api_address,
        raft_address=join.raft_address,
        availability=join.availability,
    )
    # The token goes only to a manager of the pinned CA's cluster.
    options = manager_channel_options(manager, ca_pem)
    async with grpc.aio.secure_channel(manager, credentials, options) as channel:
        try:
            reply = await pb_grpc.DispatcherStub(channel).Join(request, timeout=15)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
    if reply.ca_certificate != ca_pem:
        raise PermissionDenied("the manager answered with another CA than the pinned one")
    log.info("joined the cluster", extra={"node_id": reply.node_id, "manager": manager})
    return reply, key_pem(key)


async def request_promotion(
    identity: IdentityFiles, managers: list[str], api_address: str, raft_address: str
) -> tuple[Any, bytes]:
    """Trade this node's certificate for a manager one; the cluster must want
    it as a manager (node promote). Returns the reply, as for a joining
    manager, and the new private key (PEM)."""
    ca_pem, cert_pem, node_key = identity.load()
    credentials = grpc.ssl_channel_credentials(ca_pem, node_key, cert_pem)
    key = generate_key()
    request = pb.PromoteRequest(
        csr=make_csr(key), api_address=api_address, raft_address=raft_address
    )
    last_error: WarrenError = Unavailable("no manager address given")
    for manager in managers:
        options = manager_channel_options(manager, ca_pem)
        async with grpc.aio.secure_channel(manager, credentials, options) as channel:
            try:
                reply = await pb_grpc.DispatcherStub(channel).Promote(request, timeout=15)
            except grpc.RpcError as exc:
                last_error = error_from_rpc(exc)
                if isinstance(last_error, Unavailable):
                    continue
                raise last_error from None
        if reply.ca_certificate != ca_pem:
            raise PermissionDenied("the manager answered with another CA than the node's")
        log.info("promoted to a manager", extra={"node_id": reply.node_id, "manager": manager})
        return reply, key_pem(key)
    raise last_error


async def join_cluster(options: WorkerOptions, identity: IdentityFiles) -> NodeState:
    join = JoinRequest(options.token, options.managers, "worker", options.node_name, options.labels)
    reply, key, manager = await request_join(join)
    identity.save(reply.ca_certificate, reply.certificate, key)
    state = NodeState(reply.node_id, "worker", list(reply.managers) or [manager])
    state.save(options.data_dir)
    return state


def secure_data_dir(data_dir: Path) -> None:
    """Create the data dir 0700 and tighten what an older version left readable."""
    from warren.agent.containerd.hostfiles import is_host_file

    make_private(data_dir, shared=is_host_file)


async def serve_worker(options: WorkerOptions, stop: asyncio.Event) -> None:
    secure_data_dir(options.data_dir)
    # Before joining: a node refused its containerd namespace joins nothing.
    runtime = make_runtime(options)
    identity = IdentityFiles(options.data_dir / "certs")
    state = NodeState.load(options.data_dir)
    if state is None or not identity.exists():
        state = await join_cluster(options, identity)
    elif state.role != "worker":
        raise FailedPrecondition(f"{options.data_dir} holds a {state.role}, not a worker")
    else:
        log.info("resuming node", extra={"node_id": state.node_id})
    managers = options.managers + [m for m in state.managers if m not in options.managers]
    agent = Agent(
        node_id=state.node_id,
        managers=managers,
        identity=identity,
        runtime=runtime,
        data_dir=options.data_dir / "agent",
        hostname=options.node_name,
    )
    # Imported here: warren.manager.daemon imports this module.
    from warren.manager.promotion import RoleKeeper, manager_options

    # Runs a manager next to the agent while the cluster wants one (node promote).
    keeper = RoleKeeper(manager_options(options), state.node_id, agent)
    try:
        await run_until(run_all(agent.run(), keeper.run()), stop)
    finally:
        await keeper.close()


async def run_until(main: Any, stop: asyncio.Event) -> None:
    """Run ``main`` until it ends or ``stop`` is set; either way cancel the other."""
    task = asyncio.ensure_future(main)
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    for pending in (task, stopper):
        pending.cancel()
    await asyncio.gather(task, stopper, return_exceptions=True)
    if task in done and task.exception() is not None:
        raise task.exception()


async def run_all(*mains: Coroutine[Any, Any, None]) -> None:
    """Run side by side until all end; the first failure cancels the others."""
    tasks = [asyncio.create_task(main) for main in mains]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


def run_daemon(component: str, serve: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    """Run a daemon's ``serve(stop)`` until SIGTERM or SIGINT sets ``stop``."""
    from warren import logs

    # First: PySyncObj creates the journal and snapshots with no mode of its own.
    restrict_new_files()
    logs.setup(component)

    async def main() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        await serve(stop)

    asyncio.run(main())
    return 0


def run_worker(options: WorkerOptions) -> int:
    return run_daemon("worker", lambda stop: serve_worker(options, stop))
