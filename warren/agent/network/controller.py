"""The agent's network controller: the manager's view and the node's tasks, served.

``apply_view`` keeps the newest ``NetworkView`` and converges every part of the
data plane to it (``view_mapping`` decides what, the injected parts do it):
the bridges of the networks this node holds a block of, the nftables table
(VIPs, published ports), the DNS server (its listen addresses are the
gateways, its view the services and the local tasks) and the WireGuard mesh
(the other nodes as peers). A part that fails is logged and converged again on
the next view or by the retry loop; it never stops the agent or the others.

Tasks: the executor asks ``prepare`` for a task's name settings before the
runtime creates its container, ``attach`` once the container's namespace
exists (before it starts) and ``detach`` when the container is removed. After
an agent restart ``resync`` is told which tasks still run: their veths are
left as they are, those of tasks that are gone are removed.

Stopping: ``stop`` (the agent stops, its containers keep running) ends only
what lives in the agent's process, the DNS listeners and the retry loop; the
bridges, veths, nftables table and WireGuard interface (a wireguard-go process
runs in its own session) stay, so running containers keep their traffic and
the next agent takes them over without a change. Their names do not resolve
until it is back. When no task is attached any more, ``stop`` removes it all
as ``close`` does (the node leaves the cluster or stops serving networks):
nothing is left behind that no container uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from warren.agent.executor import needs_networking
from warren.agent.network.bridge import MAX_MTU, BridgeNetwork, NodeNetwork, TaskAttachment
from warren.agent.network.dns import DnsServer
from warren.agent.network.view_mapping import (
    LocalTask,
    covers,
    data_plane,
    dns_view,
    mesh_plan,
    node_networks,
    task_attachment,
)
from warren.agent.network.vip_rules import DataPlane, Transaction
from warren.agent.network.wireguard import MIN_MTU, InterfaceConfig, Mesh, NodeKey, WireGuardDevice
from warren.agent.runtime import ContainerNames
from warren.core.codec import from_dict, to_json
from warren.core.errors import FailedPrecondition, InvalidArgument, RuntimeFailure, WarrenError
from warren.core.models import Task
from warren.core.node_view import NetworkView
from warren.security.tls import write_private

log = logging.getLogger(__name__)

# How long a task waits for a view that serves its networks (the manager sends
# the view and the assignment separately).
VIEW_WAIT = 10.0
RETRY_INTERVAL = 10.0


class DataPlaneSync(Protocol):
    """The nftables side (``nftables.ServiceProxy``): blocking calls."""

    def sync(self, desired: DataPlane) -> Transaction:
        """Take the table to ``desired`` with the smallest transaction."""
        ...

    def close(self) -> None:
        """Delete the table."""
        ...


@dataclass(frozen=True)
class MeshSettings:
    """This node's end of the WireGuard mesh: ``interface`` must be unique across
    the machine's network namespaces with wireguard-go (its socket is global)."""

    device: WireGuardDevice
    key: NodeKey
    interface: str
    listen_port: int


def container_names(attachment: TaskAttachment) -> ContainerNames:
    """resolv.conf at the first network's gateway, the hostname at its first address."""
    first = attachment.networks[0]
    return ContainerNames(str(first.gateway.ip), str(first.address.ip))


def resolve_peer_endpoints(view: NetworkView, notes: list[str]) -> NetworkView:
    """``view`` with peers' endpoint names resolved to addresses (WireGuard takes
    addresses only); a name that does not resolve is kept, and noted."""
    peers = []
    for peer in view.peers:
        host, _, port = peer.endpoint.rpartition(":")
        try:
            ipaddress.ip_address(host.strip("[]"))
            peers.append(peer)
            continue
        except ValueError:
            pass
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except (OSError, UnicodeError) as exc:
            notes.append(f"peer node {peer.node_id}: cannot resolve {host}: {exc}")
            peers.append(peer)
            continue
        family, _, _, _, address = found[0]
        text = f"[{address[0]}]" if family == socket.AF_INET6 else address[0]
        peers.append(replace(peer, endpoint=f"{text}:{port}"))
    return replace(view, peers=tuple(peers))


def load_view(path: Path) -> NetworkView | None:
    """The view kept in ``path``; None (logged) if there is none or it is unreadable."""
    try:
        return from_dict(NetworkView, json.loads(path.read_bytes()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, WarrenError) as exc:
        log.warning("ignoring the kept network view %s: %s", path, exc)
        return None


async def _forget(path: Path) -> None:
    await asyncio.to_thread(path.unlink, missing_ok=True)


class NetworkController:
    """Serves the node's networks; see the module's docstring."""

    def __init__(
        self,
        node_id: str,
        bridges: BridgeNetwork,
        data_plane_sync: DataPlaneSync,
        dns: DnsServer,
        mesh: MeshSettings | None,
        mtu: int = 1420,
        view_wait: float = VIEW_WAIT,
        retry_interval: float = RETRY_INTERVAL,
        view_file: Path | None = None,
    ) -> None:
        if not MIN_MTU <= mtu <= MAX_MTU:
            raise InvalidArgument(f"network MTU {mtu} is outside {MIN_MTU}-{MAX_MTU}")
        self.node_id = node_id
        self.bridges = bridges
        self.data_plane_sync = data_plane_sync
        self.dns = dns
        self.mesh_settings = mesh
        self.mtu = mtu
        self.view_wait = view_wait
        self.retry_interval = retry_interval
        # The last view served, kept for the next agent: it serves (names above all)
        # from it at start, also while the managers are out of reach.
        self.view_file = view_file
        self._saved: NetworkView | None = None
        self.view: NetworkView | None = None
        # What failed in the last convergence, by part (empty: all converged).
        self.failures: dict[str, str] = {}
        self._mesh: Mesh | None = None
        self._local: dict[str, LocalTask] = {}
        self._lock = asyncio.Lock()
        self._view_changed = asyncio.Condition()
        self._retry: asyncio.Task[None] | None = None
        self._pending: NetworkView | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start the DNS server, serve the view an earlier agent kept (if any) and
        start the retry loop."""
        await self.dns.start()
        if self.view is None and self.view_file is not None:
            saved = await asyncio.to_thread(load_view, self.view_file)
            if saved is not None:
                self._saved = saved
                await self.apply_view(saved)
        if self._retry is None:
            self._retry = asyncio.create_task(self._retry_loop(), name="network-retry")

    async def stop(self) -> None:
        """The agent stops, its containers keep running: end the DNS listeners and the
        retry loop, leave the kernel's state (bridges, veths, table, mesh) serving.
        With no task attached nothing needs it: everything goes, as with ``close``."""
        try:
            attached = bool(await self.bridges.attachments())
        except WarrenError as exc:
            log.warning("cannot tell whether tasks are attached, keeping their networks: %s", exc)
            attached = True
        if not attached:
            await self.close()
            return
        await self._stop_loop()
        await self.dns.stop()

    async def close(self) -> None:
        """The node leaves: remove every interface, the table, the mesh and the listeners.

        Every part is tried; RuntimeFailure at the end names those that failed."""
        self._closed = True
        await self._stop_loop()
        failed: list[str] = []
        async with self._lock:
            await self._attempt(failed, "DNS", self.dns.stop())
            await self._attempt(failed, "task interfaces", self._detach_all())
            await self._attempt(failed, "bridges", self._remove_bridges(frozenset()))
            await self._attempt(failed, "nftables", asyncio.to_thread(self.data_plane_sync.close))
            await self._attempt(failed, "WireGuard", self._close_mesh())
            if self.view_file is not None:
                await self._attempt(failed, "the kept view", _forget(self.view_file))
            self._local.clear()
        if failed:
            raise RuntimeFailure("could not remove the node's networking: " + "; ".join(failed))

    async def _attempt(self, failed: list[str], part: str, step: Awaitable[object]) -> None:
        try:
            await step
        except Exception as exc:
            log.warning("removing %s failed: %s", part, exc)
            failed.append(f"{part}: {exc}")

    async def _stop_loop(self) -> None:
        """End the view worker and the retry loop, never in the middle of a change
        (a blocking call cancelled in its thread would run on beside the next one)."""
        self._pending = None
        worker, self._worker = self._worker, None
        if worker is not None:
            await asyncio.gather(worker, return_exceptions=True)  # ends after its view
        async with self._lock:  # the retry loop sleeps or waits for the lock
            retry, self._retry = self._retry, None
            if retry is not None:
                retry.cancel()
        if retry is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await retry

    async def _retry_loop(self) -> None:
        while True:
            await asyncio.sleep(self.retry_interval)
            if self.failures and self.view is not None:
                log.info("retrying the network parts that failed: %s", ", ".join(self.failures))
                async with self._lock:
                    await self._converge()

    # -- the view ----------------------------------------------------------------------

    async def receive_view(self, view: NetworkView) -> None:
        """Hand ``view`` over and return at once (the agent's session handler): a
        background task serves the last view received, skipping those it replaced
        meanwhile. The session delivers views in order, so the last is the newest."""
        if self._closed:
            return
        self._pending = view
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._serve_pending(), name="network-view")

    async def _serve_pending(self) -> None:
        while self._pending is not None:
            view, self._pending = self._pending, None
            await self.apply_view(view)

    async def apply_view(self, view: NetworkView) -> None:
        """Serve ``view`` now. It replaces the one served whatever its revision: a
        lower one comes from a cluster restored from a backup (or the view kept by
        an earlier agent is older than the managers' first), and is what they hold."""
        if self._closed:
            return
        if self.view is not None and view.revision < self.view.revision:
            log.info(
                "network view %d follows view %d: serving it", view.revision, self.view.revision
            )
        async with self._lock:
            self.view = view
            await self._converge()
            await self._keep(view)
        async with self._view_changed:
            self._view_changed.notify_all()

    async def _keep(self, view: NetworkView) -> None:
        if self.view_file is None or view is self._saved or view == self._saved:
            return
        try:
            await asyncio.to_thread(write_private, self.view_file, to_json(view))
            self._saved = view
        except (OSError, WarrenError) as exc:
            log.warning("cannot keep network view %d in %s: %s", view.revision, self.view_file, exc)

    async def _converge(self) -> None:
        view = self.view
        assert view is not None
        notes: list[str] = []
        networks = node_networks(view, self.mtu, notes)
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("bridges", lambda: self._converge_bridges(networks)),
            ("nftables", lambda: self._converge_nftables(data_plane(view, self.node_id, notes))),
            ("DNS", lambda: self._converge_dns(networks, notes)),
            ("WireGuard", lambda: self._converge_mesh(notes)),
        ]
        self.failures = {}
        for part, step in steps:
            try:
                await step()
            except Exception as exc:
                log.warning("network view %d: %s failed: %s", view.revision, part, exc)
                self.failures[part] = str(exc)
        for note in notes:
            log.warning("network view %d: %s", view.revision, note)

    async def _converge_bridges(self, networks: tuple[NodeNetwork, ...]) -> None:
        for network in networks:
            await self.bridges.ensure_network(network)
        await self._remove_bridges(frozenset(n.network_id for n in networks))

    async def _remove_bridges(self, wanted: frozenset[str]) -> None:
        """Remove the bridges of networks not wanted, unless tasks are still on them
        (they go with the tasks' detach)."""
        in_use = {n for nets in (await self.bridges.attachments()).values() for n in nets}
        for network_id in sorted(await self.bridges.networks() - wanted - in_use):
            await self.bridges.remove_network(network_id)

    async def _converge_nftables(self, plane: DataPlane) -> None:
        await asyncio.to_thread(self.data_plane_sync.sync, plane)

    async def _converge_dns(self, networks: tuple[NodeNetwork, ...], notes: list[str]) -> None:
        assert self.view is not None
        self.dns.update_view(dns_view(self.view, self._local.values(), notes))
        await self.dns.set_addresses(
            str(gateway.ip) for network in networks for gateway in network.gateways
        )

    async def _converge_mesh(self, notes: list[str]) -> None:
        settings = self.mesh_settings
        assert self.view is not None
        if settings is None:
            return
        view = await asyncio.to_thread(resolve_peer_endpoints, self.view, notes)
        address, peers = mesh_plan(view, self.node_id, settings.key.public_key, notes)
        if self._mesh is not None and self._mesh.config.address != address:
            await self._close_mesh()  # another node took its address first (a clash)
        if self._mesh is None:
            config = InterfaceConfig(
                settings.interface,
                settings.key.private_key,
                settings.listen_port,
                address,
                self.mtu,
            )
            self._mesh = Mesh(settings.device, config)
        await asyncio.to_thread(self._mesh.sync, peers, time.time())

    async def _close_mesh(self) -> None:
        settings = self.mesh_settings
        self._mesh = None
        if settings is not None:
            # Also an interface an earlier agent made: the device finds it by name.
            await asyncio.to_thread(settings.device.delete, settings.interface)

    # -- tasks -------------------------------------------------------------------------

    async def prepare(self, task: Task) -> ContainerNames:
        """The task's name settings, once the view serves its networks here
        (FailedPrecondition after ``view_wait`` seconds without)."""
        return container_names(await self._attachment(task, "/"))

    async def attach(self, task: Task, netns: str) -> ContainerNames:
        """Plug the task's namespace into its networks (bridges ensured, a veth each
        with its address and MTU, routes); returns its name settings."""
        attachment = await self._attachment(task, netns)
        async with self._lock:
            await self.bridges.attach(attachment)
            self._local[task.id] = LocalTask(task.id, task.networks)
            await self._serve_names(attachment)
        return container_names(attachment)

    async def _serve_names(self, attachment: TaskAttachment) -> None:
        """The DNS knows the new client and listens on its gateways (a failure is
        retried like any other part: the task's traffic does not depend on it)."""
        try:
            assert self.view is not None
            self.dns.update_view(dns_view(self.view, self._local.values()))
            for entry in attachment.networks:
                await self.dns.add_address(str(entry.gateway.ip))
        except WarrenError as exc:
            log.warning("DNS for task %s: %s", attachment.task_id, exc)
            self.failures["DNS"] = str(exc)

    async def detach(self, task_id: str) -> None:
        """Remove the task's veths (nothing if it had none)."""
        async with self._lock:
            self._local.pop(task_id, None)
            await self.bridges.detach(task_id)
            if self.view is not None:
                with contextlib.suppress(InvalidArgument):
                    self.dns.update_view(dns_view(self.view, self._local.values()))

    async def resync(self, running: Iterable[Task]) -> None:
        """After an agent restart: ``running`` are the tasks whose containers still run.
        Their attachments stay as they are (their traffic is not interrupted); every
        other task's veths are removed."""
        tasks = {task.id: task for task in running if needs_networking(task)}
        async with self._lock:
            self._local = {t.id: LocalTask(t.id, t.networks) for t in tasks.values()}
            for task_id in sorted(set(await self.bridges.attachments()) - set(tasks)):
                log.info("removing the interfaces of task %s, which no longer runs", task_id)
                await self.bridges.detach(task_id)
            if self.view is not None:
                await self._converge()

    async def _detach_all(self) -> None:
        for task_id in sorted(await self.bridges.attachments()):
            await self.bridges.detach(task_id)

    async def _attachment(self, task: Task, netns: str) -> TaskAttachment:
        if not needs_networking(task):
            raise InvalidArgument(f"task {task.id} has no network of Warren's to attach to")
        deadline = asyncio.get_running_loop().time() + self.view_wait
        async with self._view_changed:
            while self.view is None or not covers(self.view, task.networks, self.mtu):
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await self._view_changed.wait()
        if self.view is None:
            raise FailedPrecondition(
                f"task {task.id}: no network view from the managers yet, so its networks "
                "cannot be attached"
            )
        return task_attachment(self.view, task.id, task.networks, netns, self.mtu)
