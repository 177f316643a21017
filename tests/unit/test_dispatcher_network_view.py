"""Each node's session carries its network view: at once, then on every change
of it, and only then; and a node's WireGuard identity reaches the state."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from warren.core.errors import InvalidArgument
from warren.core.models import (
    Cluster,
    ContainerSpec,
    Health,
    HealthCheck,
    Node,
    NodeRole,
    NodeStatus,
    Resources,
    Service,
    ServiceSpec,
    Task,
    TaskStatus,
)
from warren.core.networks import (
    Endpoint,
    Network,
    NetworkAttachment,
    NetworkSpec,
    NodeBlock,
    VirtualIP,
)
from warren.core.node_view import NetworkView, ViewEndpoint, ViewPeer
from warren.core.states import TaskState
from warren.manager.consensus import LocalConsensus
from warren.manager.dispatcher import Dispatcher, _Session
from warren.manager.events import EventBus
from warren.manager.sessions import (
    Assignments,
    ManagerEvent,
    NodeEvent,
    Registration,
    SessionStarted,
)
from warren.manager.store import Kind, Store, put, raise_for_result, txn
from warren.manager.writes import write

KEY_1 = base64.b64encode(b"\x01" * 32).decode()
KEY_2 = base64.b64encode(b"\x02" * 32).decode()

FRONT = Network(
    id="net-front",
    spec=NetworkSpec("front"),
    subnet="10.32.0.0/16",
    block_prefix=24,
    blocks=(NodeBlock("n1", "10.32.64.0/24"), NodeBlock("n2", "10.32.65.0/24")),
)
WEB = Service(
    id="svc-web",
    spec=ServiceSpec(
        name="web",
        container=ContainerSpec(image="busybox", health=HealthCheck(tcp=80)),
        networks=("net-front",),
    ),
    endpoint=Endpoint(vips=(VirtualIP("net-front", "10.32.0.2/16"),)),
)
BATCH = Service(
    id="svc-batch", spec=ServiceSpec(name="batch", container=ContainerSpec(image="busybox"))
)


def _node(node_id: str, **kw: Any) -> Node:
    return Node(id=node_id, role=NodeRole.WORKER, hostname=node_id, **kw)


def _web_task(task_id: str, node_id: str, address: str, health: Health) -> Task:
    return Task(
        id=task_id,
        service_id=WEB.id,
        service_name="web",
        spec=WEB.spec,
        spec_version=1,
        slot=1,
        node_id=node_id,
        status=TaskStatus(state=TaskState.RUNNING, health=health),
        networks=(NetworkAttachment("net-front", address),),
    )


class _Node:
    """One node's session, its messages gathered as they come."""

    def __init__(self, dispatcher: Dispatcher, node_id: str, registration: Registration) -> None:
        self.received: asyncio.Queue[ManagerEvent] = asyncio.Queue()
        self._leave = asyncio.Event()
        self._session = dispatcher.session(node_id, self._requests(registration), "10.0.0.9")
        self._pump = asyncio.create_task(self._read())

    async def _requests(self, registration: Registration) -> AsyncIterator[NodeEvent]:
        yield registration
        await self._leave.wait()

    async def _read(self) -> None:
        async for message in self._session:
            self.received.put_nowait(message)

    async def next(self, kind: type[Any]) -> Any:
        """The next message of ``kind`` (others are skipped)."""
        while True:
            message = await asyncio.wait_for(self.received.get(), 5.0)
            if isinstance(message, kind):
                return message

    def views_now(self) -> list[NetworkView]:
        out = []
        while not self.received.empty():
            message = self.received.get_nowait()
            if isinstance(message, NetworkView):
                out.append(message)
        return out

    async def close(self) -> None:
        self._leave.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump


@contextlib.asynccontextmanager
async def _dispatcher(
    command_format: int = 2, *objects: Any
) -> AsyncIterator[tuple[Dispatcher, LocalConsensus]]:
    store = Store()
    cluster = Cluster(id="c1", ca_fingerprint="fp", command_format=command_format)
    store.load([cluster, *objects])
    consensus = LocalConsensus(store)
    await consensus.start()
    dispatcher = Dispatcher(consensus, EventBus(store, asyncio.get_running_loop()), 60.0, list)
    running = asyncio.create_task(dispatcher.run())
    try:
        yield dispatcher, consensus
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def _put(consensus: LocalConsensus, obj: Any) -> None:
    await write(consensus, [put(obj, None)])  # whatever version it is at


async def _quiet(seconds: float = 0.3) -> None:
    # Longer than the debounce: anything due would have been sent.
    await asyncio.sleep(seconds)


REGISTRATION = Registration(
    "w1", "192.168.1.1", Resources(2.0, 1024), wireguard_public_key=KEY_1, wireguard_port=51820
)


async def test_a_session_gets_its_view_then_every_change_of_it_and_nothing_else() -> None:
    peer = _node("n2", address="192.168.1.2", wireguard_public_key=KEY_2, wireguard_port=51821)
    async with _dispatcher(2, _node("n1"), peer, FRONT, WEB, BATCH) as (dispatcher, consensus):
        node = _Node(dispatcher, "n1", REGISTRATION)
        try:
            assert isinstance(await node.next(object), SessionStarted)
            # The view comes before the first assignments: a task's network first.
            first = await node.next(object)
            assert isinstance(first, NetworkView)
            assert isinstance(await node.next(object), Assignments)
            assert [(n.id, n.blocks) for n in first.networks] == [("net-front", ("10.32.64.0/24",))]
            assert [(s.name, s.vips, s.endpoints) for s in first.services] == [
                ("web", WEB.endpoint.vips, ())
            ]
            assert first.peers == (ViewPeer("n2", KEY_2, "192.168.1.2:51821", ("10.32.65.0/24",)),)

            # A replica on the other node starts, not yet healthy: no change.
            starting = _web_task("t1", "n2", "10.32.65.2/24", Health.STARTING)
            await _put(consensus, starting)
            await _quiet()
            assert node.views_now() == []

            # It turns healthy: it is an endpoint now.
            await _put(
                consensus, replace(starting, status=replace(starting.status, health=Health.HEALTHY))
            )
            healthy = await node.next(NetworkView)
            assert healthy.services[0].endpoints == (
                ViewEndpoint("t1", "n2", "net-front", "10.32.65.2/24"),
            )
            assert healthy.revision > first.revision

            # Unrelated changes: a service on no network, its task, a label.
            await _put(consensus, replace(BATCH, spec=replace(BATCH.spec, replicas=3)))
            batch_task = Task("t9", BATCH.id, "batch", BATCH.spec, 1, slot=1, node_id="n2")
            await _put(consensus, batch_task)
            labelled = consensus.store.get(Kind.NODE, "n2")
            await _put(consensus, replace(labelled, labels={"zone": "a"}))
            await _quiet()
            assert node.views_now() == []

            # It turns unhealthy: it leaves the service's endpoints.
            current = consensus.store.get(Kind.TASK, "t1")
            await _put(
                consensus, replace(current, status=replace(current.status, health=Health.UNHEALTHY))
            )
            unhealthy = await node.next(NetworkView)
            assert unhealthy.services[0].endpoints == ()
        finally:
            await node.close()


async def test_a_node_publishes_its_wireguard_identity_and_a_new_one_replaces_it() -> None:
    async with _dispatcher(2, _node("n1"), _node("n2")) as (dispatcher, consensus):
        node = _Node(dispatcher, "n1", REGISTRATION)
        await node.next(SessionStarted)
        stored = consensus.store.get(Kind.NODE, "n1")
        assert (stored.address, stored.wireguard_public_key, stored.wireguard_port) == (
            "192.168.1.1",
            KEY_1,
            51820,
        )
        await node.close()
        # The other node sees it as a peer.
        other = _Node(dispatcher, "n2", Registration("w2", "", Resources()))
        view = await other.next(NetworkView)
        assert view.peers == (ViewPeer("n1", KEY_1, "192.168.1.1:51820", ()),)
        # n1 registers again with a new key, port and address: n2 learns it.
        moved = replace(REGISTRATION, address="192.168.1.7", wireguard_public_key=KEY_2)
        again = _Node(dispatcher, "n1", replace(moved, wireguard_port=51999))
        await again.next(SessionStarted)
        view = await other.next(NetworkView)
        assert view.peers == (ViewPeer("n1", KEY_2, "192.168.1.7:51999", ()),)
        await again.close()
        await other.close()


async def test_a_bad_wireguard_key_is_refused_and_changes_nothing() -> None:
    async with _dispatcher(2, _node("n1")) as (dispatcher, consensus):
        before = consensus.store.get(Kind.NODE, "n1")
        bad = replace(REGISTRATION, wireguard_public_key="not a key")
        session = dispatcher.session("n1", _once(bad))
        with pytest.raises(InvalidArgument, match="invalid WireGuard public key 'not a key'"):
            await anext(session)
        assert consensus.store.get(Kind.NODE, "n1") == before


async def test_a_cluster_still_at_format_1_keeps_nodes_out_of_the_mesh() -> None:
    # Managers of the older format could not apply the key: the session still opens.
    async with _dispatcher(1, _node("n1")) as (dispatcher, consensus):
        node = _Node(dispatcher, "n1", REGISTRATION)
        await node.next(SessionStarted)
        stored = consensus.store.get(Kind.NODE, "n1")
        assert (stored.status, stored.wireguard_public_key) == (NodeStatus.READY, "")
        await node.close()


async def _once(registration: Registration) -> AsyncIterator[NodeEvent]:
    yield registration


def test_building_views_for_a_large_cluster_is_quick() -> None:
    # 100 services of 10 tasks on 3 nodes: the shared part once, then each node's.
    store = Store()
    nodes = [
        _node(f"n{i}", address=f"192.168.1.{i}", wireguard_public_key=KEY_1, wireguard_port=51820)
        for i in range(3)
    ]
    blocks = [ipaddress.IPv4Network(f"10.32.{64 + 16 * i}.0/20") for i in range(3)]
    network = replace(
        FRONT,
        block_prefix=20,
        blocks=tuple(NodeBlock(f"n{i}", str(b)) for i, b in enumerate(blocks)),
    )
    objects: list[Any] = [*nodes, network]
    for s in range(100):
        service = replace(WEB, id=f"svc-{s}", spec=replace(WEB.spec, name=f"web{s}"))
        objects.append(service)
        for t in range(10):
            address = f"{blocks[t % 3].network_address + 2 + s * 10 + t}/20"
            task = _web_task(f"t{s}-{t}", f"n{t % 3}", address, Health.HEALTHY)
            objects.append(replace(task, service_id=service.id, service_name=service.spec.name))
    store.load(objects)
    dispatcher = Dispatcher(LocalConsensus(store), _NoBus(), 60.0, list)  # type: ignore[arg-type]
    sessions = [_Session(n.id) for n in nodes]

    started = time.perf_counter()
    views = [dispatcher._view_if_changed(s) for s in sessions]
    first = time.perf_counter() - started
    assert all(v is not None and len(v.services) == 100 for v in views)
    assert sum(len(s.endpoints) for s in views[0].services) == 1000  # type: ignore[union-attr]
    # Generous bounds for a loaded CI machine (a few ms, then about 1 ms, on a laptop).
    assert first < 0.5, f"{first * 1000:.0f} ms for the first 3 views"

    # One replica turns unhealthy: only what changed is rebuilt.
    task = store.get(Kind.TASK, "t7-1")
    unhealthy = replace(task, status=replace(task.status, health=Health.UNHEALTHY))
    raise_for_result(store.apply(txn([put(unhealthy, task.version)], at=1.0)))
    started = time.perf_counter()
    views = [dispatcher._view_if_changed(s) for s in sessions]
    again = time.perf_counter() - started
    assert all(v is not None for v in views)
    assert sum(len(s.endpoints) for s in views[0].services) == 999  # type: ignore[union-attr]
    assert again < 0.1, f"{again * 1000:.0f} ms for 3 views after one change"
    # Nothing changed: nothing to send.
    assert [dispatcher._view_if_changed(s) for s in sessions] == [None] * 3


class _NoBus:
    def subscribe(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("not used")
