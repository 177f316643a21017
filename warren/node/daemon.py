"""Running a node: a manager with its own agent (``cluster init``, ``manager
join``, ``cluster restore``), or a worker (``worker join``) that also runs a
manager while the cluster wants one (node promote).

A data dir keeps the node's identity, so running the same command again
resumes the same node instead of joining or creating a new one.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from warren.agent.agent import Agent
from warren.agent.runtime import Runtime
from warren.agent.sim import SimRuntime
from warren.core.errors import FailedPrecondition, InvalidArgument
from warren.core.models import NodeRole
from warren.manager.manager import Manager, ManagerState
from warren.node.join import join_as_manager, join_cluster, joins_as_manager
from warren.node.networking import NodeNetworking, network_parts
from warren.node.options import (
    ManagerOptions,
    NodeOptions,
    WorkerOptions,
    manager_options,
    worker_options,
)
from warren.node.roles import RoleKeeper
from warren.node.state import NodeState
from warren.registry.client import RegistryConfig
from warren.security.private_files import make_private, restrict_new_files
from warren.security.tls import IdentityFiles

if TYPE_CHECKING:
    from warren.security.backup_file import Backup

log = logging.getLogger(__name__)


def make_runtime(options: NodeOptions) -> Runtime:
    if options.runtime == "sim":
        return SimRuntime()
    if options.runtime == "containerd":
        from warren.agent.containerd.runtime import ContainerdRuntime

        return ContainerdRuntime(
            socket=options.containerd_socket,
            namespace=options.containerd_namespace,
            state_dir=options.data_dir / "containerd",
            registry=RegistryConfig.load(options.registry_config, options.insecure_registries),
            exclusive=True,
        )
    raise InvalidArgument(f"unknown runtime '{options.runtime}': use containerd or sim")


def secure_data_dir(data_dir: Path) -> None:
    """Create the data dir 0700 and tighten what an older version left readable."""
    from warren.agent.containerd.hostfiles import is_host_file

    make_private(data_dir, shared=is_host_file)


def new_manager(options: ManagerOptions) -> Manager:
    """The node's manager; it joins the cluster first when its options say so."""
    join = partial(join_as_manager, options) if joins_as_manager(options) else None
    return Manager(options, join)


# -- a worker ----------------------------------------------------------------------------


async def serve_worker(options: WorkerOptions, stop: asyncio.Event) -> None:
    secure_data_dir(options.data_dir)
    # Before joining: a node refused its containerd namespace, or lacking what
    # networks need, joins nothing.
    runtime = make_runtime(options)
    parts = await network_parts(options)
    identity = IdentityFiles(options.data_dir / "certs")
    state = NodeState.load(options.data_dir)
    if state is None or not identity.exists():
        state = await join_cluster(options, identity)
    elif state.role != "worker":
        raise FailedPrecondition(f"{options.data_dir} holds a {state.role}, not a worker")
    else:
        log.info("resuming node", extra={"node_id": state.node_id})
    managers = options.managers + [m for m in state.managers if m not in options.managers]
    networking = parts.for_node(state.node_id)
    agent = Agent(
        node_id=state.node_id,
        managers=managers,
        identity=identity,
        runtime=runtime,
        data_dir=options.data_dir / "agent",
        hostname=options.node_name,
        wireguard=networking.identity,
        on_network_view=networking.controller.receive_view,
        networking=networking.controller,
        on_doctor=networking.doctor(runtime),
    )
    # Runs a manager next to the agent while the cluster wants one (node promote).
    keeper = RoleKeeper(manager_options(options), state.node_id, agent, new_manager)
    await networking.start()
    try:
        await run_until(run_all(agent.run(), keeper.run()), stop)
    finally:
        await keeper.close()
        await networking.shutdown()


# -- a manager and its agent -------------------------------------------------------------


def check_admin_credentials_free(options: ManagerOptions) -> None:
    """Refuse to start a new cluster whose admin credentials would replace the
    ones already in the config dir (another cluster's, or a copy the admin made).

    A restart, a join or a promotion writes no admin credentials."""
    if options.replace_admin_credentials or joins_as_manager(options):
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
    # Before the manager starts: a node refused its containerd namespace, or
    # lacking what networks need, creates nothing.
    runtime = make_runtime(options)
    parts = await network_parts(options)
    manager = new_manager(options)
    keeper: RoleKeeper | None = None
    networking: NodeNetworking | None = None
    try:
        await manager.start()
        # The advertised address: the API may listen on it alone, not on loopback.
        own = options.api_address
        others = [m for m in manager.control.manager_addresses() if m != own]
        networking = parts.for_node(manager.node_id)
        agent = Agent(
            node_id=manager.node_id,
            # Sessions are the leader's: the agent tries each manager in turn.
            managers=[own, *others],
            identity=manager.identity,
            runtime=runtime,
            data_dir=options.data_dir / "agent",
            hostname=options.node_name,
            address=options.advertise_addr,
            wireguard=networking.identity,
            on_network_view=networking.controller.receive_view,
            networking=networking.controller,
            on_doctor=networking.doctor(runtime),
        )
        # Stops the manager if the node is demoted; the agent keeps running.
        keeper = RoleKeeper(options, manager.node_id, agent, new_manager, manager)
        await networking.start()
        await run_until(run_all(agent.run(), keeper.run()), stop)
    finally:
        if keeper is not None:
            await keeper.close()
        if networking is not None:
            await networking.shutdown()
        await manager.stop()


# -- the process ---------------------------------------------------------------------------


async def run_until(main: Any, stop: asyncio.Event) -> None:
    """Run ``main`` until it ends or ``stop`` is set; either way cancel the other."""
    task = asyncio.ensure_future(main)
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    for pending in (task, stopper):
        pending.cancel()
    await asyncio.gather(task, stopper, return_exceptions=True)
    error = task.exception() if task in done else None
    if error is not None:
        raise error


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


def prepare_process(component: str) -> None:
    """What every daemon does first."""
    from warren import logs

    # First: whatever the process and its children (the etcd member) create is private.
    restrict_new_files()
    logs.setup(component)


def run_daemon(component: str, serve: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    """Run a daemon's ``serve(stop)`` until SIGTERM or SIGINT sets ``stop``."""
    prepare_process(component)

    async def main() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        await serve(stop)

    asyncio.run(main())
    return 0


def run_worker(options: WorkerOptions) -> int:
    return run_daemon("worker", lambda stop: serve_worker(options, stop))


def run_manager(options: ManagerOptions) -> int:
    return run_daemon("manager", lambda stop: serve_manager(options, stop))


def restore_manager(options: ManagerOptions, backup: Backup) -> int:
    """``warren cluster restore``: prepare the data dir, then run the manager on it."""
    from warren.manager.backup import prepare_restore, state_objects
    from warren.manager.kinds import Kind

    # Before the data dir is made: the files of the etcd member it seeds are private too.
    prepare_process("manager")
    state = backup.state
    node_id = asyncio.run(prepare_restore(options, backup))
    log.info(
        "cluster restored from a backup",
        extra={
            "cluster_id": state.cluster.id,
            "node_id": node_id,
            "backup_revision": state.revision,
            "services": state.count("services"),
            "workers": sum(
                1 for n in state_objects(state).get(Kind.NODE, ()) if n.role == NodeRole.WORKER
            ),
        },
    )
    return run_manager(options)
