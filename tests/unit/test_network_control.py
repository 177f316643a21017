"""Networks through the control plane: create, remove, services joining them
(VIPs, published ports) and tasks getting addresses as they are placed, with the
store re-checking every decision when it is applied."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import time
from typing import Any

import pytest
from factories import make_node, make_service, make_task

from warren.core.codec import from_dict
from warren.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from warren.core.models import Cluster, ContainerSpec, NetworkMode, Service, ServiceSpec, Task
from warren.core.networks import (
    EndpointMode,
    EndpointSpec,
    Network,
    NetworkSpec,
    PortConfig,
    PublishMode,
    VirtualIP,
)
from warren.core.states import TaskState
from warren.manager.allocator import AllocatorState, allocate_network
from warren.manager.consensus import LocalConsensus
from warren.manager.control.networks import DEFAULT_NETWORK, NetworkControl
from warren.manager.control.services import ServiceControl
from warren.manager.scheduler import schedule_ops
from warren.manager.store import (
    MUST_NOT_EXIST,
    Kind,
    Store,
    delete,
    put,
    raise_for_result,
    txn,
)
from warren.manager.writes import write


@pytest.fixture
def consensus() -> LocalConsensus:
    store = Store()
    default = allocate_network(AllocatorState(), "net-default", NetworkSpec(DEFAULT_NETWORK), 1.0)
    nodes = [make_node("n1"), make_node("n2")]
    raise_for_result(store.apply(txn([put(o, MUST_NOT_EXIST) for o in (default, *nodes)], 1.0)))
    return LocalConsensus(store)


@pytest.fixture
def networks(consensus: LocalConsensus) -> NetworkControl:
    return NetworkControl(consensus)


@pytest.fixture
def services(consensus: LocalConsensus, networks: NetworkControl) -> ServiceControl:
    return ServiceControl(consensus, networks)


def _spec(name: str, **changes: object) -> ServiceSpec:
    return dataclasses.replace(
        ServiceSpec(name=name, container=ContainerSpec("busybox")), **changes
    )


# -- networks ----------------------------------------------------------------------


async def test_a_network_gets_a_free_subnet_or_the_one_asked_for(
    networks: NetworkControl,
) -> None:
    picked = await networks.create(NetworkSpec("back"))
    default = networks.get(DEFAULT_NETWORK)
    assert ipaddress.ip_network(picked.subnet).prefixlen == 16
    assert not ipaddress.ip_network(picked.subnet).overlaps(ipaddress.ip_network(default.subnet))
    asked = await networks.create(NetworkSpec("lab", subnet="192.168.50.0/24"))
    assert asked.subnet == "192.168.50.0/24"
    assert [n.spec.name for n in networks.list()] == ["back", "default", "lab"]
    assert networks.get(picked.id[:8]) == picked


async def test_bad_networks_are_refused_and_change_nothing(
    networks: NetworkControl, consensus: LocalConsensus
) -> None:
    await networks.create(NetworkSpec("lab", subnet="192.168.50.0/24"))
    revision = consensus.store.revision
    with pytest.raises(InvalidArgument, match="overlaps"):
        await networks.create(NetworkSpec("other", subnet="192.168.0.0/16"))
    with pytest.raises(AlreadyExists, match="lab"):
        await networks.create(NetworkSpec("lab", subnet="10.99.0.0/16"))
    with pytest.raises(InvalidArgument):
        await networks.create(NetworkSpec("bad", subnet="10.0.0.0/33"))
    assert consensus.store.revision == revision


async def test_the_store_refuses_an_overlap_a_concurrent_create_decided() -> None:
    # Two creates decided from the same state pick the same free subnet: the
    # second is refused when it is applied.
    store = Store()
    first = allocate_network(AllocatorState(), "a", NetworkSpec("a"), 1.0)
    second = allocate_network(AllocatorState(), "b", NetworkSpec("b"), 1.0)
    assert first.subnet == second.subnet
    raise_for_result(store.apply(txn([put(first, MUST_NOT_EXIST)], 1.0)))
    result = store.apply(txn([put(second, MUST_NOT_EXIST)], 2.0))
    assert "overlaps network 'a'" in result["message"]
    assert [n.id for n in store.list(Kind.NETWORK)] == ["a"]


async def test_a_network_in_use_is_not_removed(
    networks: NetworkControl, services: ServiceControl
) -> None:
    back = await networks.create(NetworkSpec("back"))
    await services.create(_spec("api", networks=("back",)))
    with pytest.raises(FailedPrecondition, match="used by service api"):
        await networks.remove(back.id)
    await services.delete("api")
    await networks.remove(back.id)
    with pytest.raises(NotFound):
        networks.get("back")


async def test_the_default_network_stays_and_comes_to_clusters_made_without_it(
    consensus: LocalConsensus, networks: NetworkControl
) -> None:
    default = networks.get(DEFAULT_NETWORK)
    revision = consensus.store.revision
    with pytest.raises(FailedPrecondition, match="default network cannot be removed"):
        await networks.remove(DEFAULT_NETWORK)
    assert consensus.store.revision == revision
    assert await networks.ensure_default() is None  # there already: nothing written
    assert consensus.store.revision == revision

    # A cluster made before networks existed gets one once it is at format 2.
    await write(consensus, [delete(Kind.NETWORK, default.id, default.version)])
    assert await networks.ensure_default() is None  # no cluster object: format 1
    cluster = Cluster(id="c", ca_fingerprint="f", command_format=2)
    await write(consensus, [put(cluster, MUST_NOT_EXIST)])
    made = await networks.ensure_default()
    assert made is not None and networks.get(DEFAULT_NETWORK) == made
    assert networks.default_ids() == (made.id,)


# -- services on networks ---------------------------------------------------------------


async def test_a_service_joins_the_default_network_with_a_vip(
    services: ServiceControl, networks: NetworkControl
) -> None:
    web = await services.create(_spec("web"))
    default = networks.get(DEFAULT_NETWORK)
    assert web.spec.networks == (default.id,)
    (vip,) = web.endpoint.vips
    assert vip.network_id == default.id
    assert ipaddress.ip_interface(vip.address).ip in ipaddress.ip_network(default.subnet)
    # An update keeps the VIP; the spec names networks by ID once stored.
    updated = await services.update("web", dataclasses.replace(web.spec, replicas=3))
    assert updated.endpoint.vips == (vip,)


async def test_a_service_on_no_network_joins_the_default_one_when_it_publishes_a_port(
    services: ServiceControl, networks: NetworkControl
) -> None:
    # As a service made before networks existed: in its own namespace, on none.
    web = await services.create(_spec("web"))
    web = await services.update("web", dataclasses.replace(web.spec, networks=()))
    assert web.spec.networks == () and web.endpoint.vips == ()
    published = EndpointSpec(ports=(PortConfig(target=80, published=8080),))
    web = await services.update("web", dataclasses.replace(web.spec, endpoint=published))
    default = networks.get(DEFAULT_NETWORK)
    assert web.spec.networks == (default.id,)
    assert [v.network_id for v in web.endpoint.vips] == [default.id]
    assert [p.published for p in web.endpoint.ports] == [8080]


async def test_names_resolve_to_ids_and_dnsrr_or_host_networking_get_no_vip(
    services: ServiceControl, networks: NetworkControl
) -> None:
    back = await networks.create(NetworkSpec("back"))
    db = await services.create(
        _spec("db", networks=("back",), endpoint=EndpointSpec(mode=EndpointMode.DNSRR))
    )
    assert db.spec.networks == (back.id,) and db.endpoint.vips == ()
    host = _spec("agent", container=ContainerSpec("busybox", network_mode=NetworkMode.HOST))
    assert (await services.create(host)).spec.networks == ()
    with pytest.raises(NotFound, match="nowhere"):
        await services.create(_spec("lost", networks=("nowhere",)))


async def test_published_ports_are_unique_and_picked_when_not_given(
    services: ServiceControl, consensus: LocalConsensus
) -> None:
    web = await services.create(
        _spec("web", endpoint=EndpointSpec(ports=(PortConfig(target=80, published=8080),)))
    )
    assert [str(p) for p in web.endpoint.ports] == [str(PortConfig(target=80, published=8080))]
    revision = consensus.store.revision
    with pytest.raises(InvalidArgument, match=r"8080.*already used by service web"):
        await services.create(
            _spec("copy", endpoint=EndpointSpec(ports=(PortConfig(target=81, published=8080),)))
        )
    assert consensus.store.revision == revision
    picked = await services.create(
        _spec(
            "api",
            endpoint=EndpointSpec(ports=(PortConfig(target=80, mode=PublishMode.HOST),)),
        )
    )
    assert 30000 <= picked.endpoint.ports[0].published <= 32767
    # UDP is its own space.
    udp = PortConfig(target=53, published=8080, protocol="udp")  # type: ignore[arg-type]
    await services.create(_spec("dns", endpoint=EndpointSpec(ports=(udp,))))


async def test_creates_in_flight_at_once_each_get_their_own_vip_and_port(
    services: ServiceControl, consensus: LocalConsensus
) -> None:
    """Each allocates from the store as it was; the ones that lost the race
    to a VIP or a picked port allocate again (a 409 before)."""
    ingress = EndpointSpec(ports=(PortConfig(target=80),))
    created = await asyncio.gather(
        *(services.create(_spec(f"web{i}", endpoint=ingress)) for i in range(20))
    )
    vips = {vip.address for s in created for vip in s.endpoint.vips}
    ports = {p.published for s in created for p in s.endpoint.ports}
    assert len(vips) == 20 and len(ports) == 20
    # A name taken meanwhile is still refused, not retried into a second service.
    results = await asyncio.gather(
        services.create(_spec("same")), services.create(_spec("same")), return_exceptions=True
    )
    assert sorted(type(r).__name__ for r in results) == ["AlreadyExists", "Service"]
    assert len([s for s in consensus.store.list(Kind.SERVICE) if s.spec.name == "same"]) == 1


async def test_a_vip_another_manager_took_meanwhile_is_allocated_again(
    consensus: LocalConsensus, networks: NetworkControl
) -> None:
    """Another manager's create, applied between this one's allocation and its
    write, holds the same VIP: this one is refused when applied, allocates
    again from the store that now holds the other, and is written."""

    class RivalFirst(LocalConsensus):
        rival_done = False

        async def propose(self, command: dict[str, Any], timeout: float = 10.0) -> Any:
            service = command["ops"][0]["object"] if command.get("op") == "txn" else {}
            if service.get("endpoint", {}).get("vips") and not self.rival_done:
                self.rival_done = True
                rival = from_dict(Service, {**service, "id": "rival", "spec": {
                    **service["spec"], "name": "rival"}})  # fmt: skip
                raise_for_result(self.store.apply(txn([put(rival, MUST_NOT_EXIST)], 2.0)))
            return await super().propose(command, timeout)

    racing = RivalFirst(consensus.store)
    services = ServiceControl(racing, NetworkControl(racing))
    web = await services.create(_spec("web"))
    rival = consensus.store.get(Kind.SERVICE, "rival")
    assert racing.rival_done and web.endpoint.vips[0].address != rival.endpoint.vips[0].address


async def test_the_store_refuses_a_vip_or_port_another_service_holds(
    services: ServiceControl, consensus: LocalConsensus
) -> None:
    web = await services.create(
        _spec("web", endpoint=EndpointSpec(ports=(PortConfig(target=80, published=8080),)))
    )
    # As a create decided from a state without web would write it.
    clash = Service("other", _spec("other"), endpoint=web.endpoint)
    result = consensus.store.apply(txn([put(clash, MUST_NOT_EXIST)], time.time()))
    assert "already held" in result["message"] or "already taken" in result["message"]
    same_port = dataclasses.replace(web.endpoint, vips=())
    clash = Service("other", _spec("other"), endpoint=same_port)
    result = consensus.store.apply(txn([put(clash, MUST_NOT_EXIST)], time.time()))
    assert "published port tcp/8080 is already taken" in result["message"]


# -- tasks get addresses as they are placed ------------------------------------------------


def _place(store: Store) -> int:
    """One scheduling pass written as the controller writes it; how many placed."""
    result = schedule_ops(store.snapshot(), time.time())
    if result.ops:
        store.apply(txn(list(result.ops), time.time(), atomic=False))
    return result.placed


async def test_placed_tasks_get_addresses_from_their_nodes_blocks(
    services: ServiceControl, consensus: LocalConsensus
) -> None:
    store = consensus.store
    web = await services.create(_spec("web", replicas=4))
    tasks = [make_task(web, slot=slot) for slot in range(1, 5)]
    raise_for_result(store.apply(txn([put(t, MUST_NOT_EXIST) for t in tasks], 2.0)))
    # The first pass takes a block on each node it places on, and nothing else.
    assert _place(store) == 0
    network: Network = store.list(Kind.NETWORK)[0]
    blocks = {b.node_id: ipaddress.ip_network(b.subnet) for b in network.blocks}
    assert set(blocks) == {"n1", "n2"}
    # The next pass (woken by the network's write) places them with addresses.
    assert _place(store) == 4
    placed: list[Task] = store.list(Kind.TASK)
    addresses = set()
    for task in placed:
        assert task.status.state == TaskState.ASSIGNED
        (attachment,) = task.networks
        address = ipaddress.ip_interface(attachment.address)
        assert address.ip in blocks[task.node_id] and address.network == blocks[task.node_id]
        assert address.ip != next(blocks[task.node_id].hosts())  # the gateway
        addresses.add(address.ip)
    assert len(addresses) == 4


async def test_the_store_refuses_an_address_another_live_task_holds(
    services: ServiceControl, consensus: LocalConsensus
) -> None:
    store = consensus.store
    web = await services.create(_spec("web", replicas=2))
    first, second = make_task(web, slot=1), make_task(web, slot=2)
    raise_for_result(store.apply(txn([put(first, MUST_NOT_EXIST), put(second, 0)], 2.0)))
    _place(store), _place(store)
    one, two = sorted(store.list(Kind.TASK), key=lambda t: t.slot)
    stolen = dataclasses.replace(two, networks=one.networks)
    result = store.apply(txn([put(stolen, two.version)], 3.0))
    assert f"address {one.networks[0].ip} is already held" in result["message"]


def test_a_service_without_networks_is_placed_in_one_pass() -> None:
    store = Store()
    service = make_service("old")  # as stored before networks existed
    raise_for_result(store.apply(txn([put(make_node("n1"), 0), put(service, 0)], 1.0)))
    raise_for_result(store.apply(txn([put(make_task(service), MUST_NOT_EXIST)], 1.0)))
    assert _place(store) == 1
    assert store.list(Kind.TASK)[0].networks == ()


def test_vips_are_a_services_own() -> None:
    vip = VirtualIP("net", "10.32.0.5/16")
    assert vip.ip == "10.32.0.5"
