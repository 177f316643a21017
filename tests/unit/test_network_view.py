"""The network view a node serves from, as the dispatcher builds it from the state."""

from __future__ import annotations

import base64
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warren.core.errors import InvalidArgument
from warren.core.models import (
    ContainerSpec,
    Health,
    HealthCheck,
    Node,
    NodeRole,
    NodeStatus,
    Service,
    ServiceSpec,
    Task,
    TaskStatus,
)
from warren.core.networks import (
    Endpoint,
    EndpointMode,
    EndpointSpec,
    Network,
    NetworkAttachment,
    NetworkSpec,
    NodeBlock,
    PortConfig,
    PublishMode,
    VirtualIP,
)
from warren.core.node_view import ViewEndpoint, ViewNetwork, ViewPeer
from warren.core.states import TaskState
from warren.manager.network_view import (
    ViewCache,
    network_view,
    shared_view,
    underlay_endpoint,
    view_for,
)
from warren.manager.snapshot import Snapshot


def _key(n: int) -> str:
    return base64.b64encode(bytes([n]) * 32).decode()


def _node(
    node_id: str,
    address: str,
    *,
    key: int = 0,
    port: int = 51820,
    status: NodeStatus = NodeStatus.READY,
) -> Node:
    return Node(
        id=node_id,
        role=NodeRole.WORKER,
        hostname=node_id,
        address=address,
        status=status,
        wireguard_public_key=_key(key) if key else "",
        wireguard_port=port if key else 0,
    )


FRONT = Network(
    id="net-front",
    spec=NetworkSpec("front"),
    subnet="10.32.0.0/16",
    block_prefix=24,
    blocks=(
        NodeBlock("n2", "10.32.65.0/24"),
        NodeBlock("n1", "10.32.64.0/24"),
        NodeBlock("n1", "10.32.66.0/24"),
    ),
)
BACK = Network(
    id="net-back",
    spec=NetworkSpec("back"),
    subnet="10.33.0.0/16",
    block_prefix=24,
    blocks=(NodeBlock("n2", "10.33.64.0/24"),),
)
NODES = (
    _node("n1", "192.168.1.1", key=1),
    _node("n2", "192.168.1.2", key=2, port=51821),
    _node("n3", "192.168.1.3"),  # registered no WireGuard identity: not in the mesh
)


def _service(
    name: str,
    networks: tuple[str, ...] = ("net-front",),
    *,
    health: HealthCheck | None = None,
    ports: tuple[PortConfig, ...] = (),
    mode: EndpointMode = EndpointMode.VIP,
) -> Service:
    vips = (
        tuple(VirtualIP(n, f"10.{32 if n == 'net-front' else 33}.0.9/16") for n in networks)
        if mode == EndpointMode.VIP
        else ()
    )
    spec = ServiceSpec(
        name=name,
        container=ContainerSpec(image="busybox", health=health),
        networks=networks,
        endpoint=EndpointSpec(mode=mode, ports=ports),
    )
    return Service(id=f"svc-{name}", spec=spec, endpoint=Endpoint(vips=vips, ports=ports))


def _task(
    service: Service,
    task_id: str,
    node_id: str,
    address: str,
    *,
    state: TaskState = TaskState.RUNNING,
    desired: TaskState = TaskState.RUNNING,
    health: Health = Health.NONE,
    network_id: str = "net-front",
) -> Task:
    return Task(
        id=task_id,
        service_id=service.id,
        service_name=service.spec.name,
        spec=service.spec,
        spec_version=1,
        node_id=node_id,
        desired_state=desired,
        status=TaskStatus(state=state, health=health),
        networks=(NetworkAttachment(network_id, address),),
    )


def _snapshot(
    services: tuple[Service, ...],
    tasks: tuple[Task, ...],
    nodes: tuple[Node, ...] = NODES,
    networks: tuple[Network, ...] = (FRONT, BACK),
    revision: int = 5,
) -> Snapshot:
    return Snapshot.build(
        nodes={n.id: n for n in nodes},
        services={s.id: s for s in services},
        tasks={t.id: t for t in tasks},
        networks={n.id: n for n in networks},
        revision=revision,
    )


@pytest.mark.parametrize(
    ("key", "port"),
    [
        ("not a key", 51820),
        (base64.b64encode(b"k" * 31).decode(), 51820),  # 31 bytes
        (base64.b64encode(b"k" * 32).decode().rstrip("="), 51820),  # no padding
        (_key(1) + "\n", 51820),
        (_key(1), 65536),
        (_key(1), -1),
    ],
)
def test_a_node_publishes_a_wireguard_key_of_32_bytes_in_base64_and_a_port(
    key: str, port: int
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        replace(NODES[0], wireguard_public_key=key, wireguard_port=port)
    assert "\n" not in str(caught.value)
    assert replace(NODES[0], wireguard_public_key=_key(9), wireguard_port=65535)


def test_a_node_sees_every_network_with_its_own_blocks_and_the_other_nodes_as_peers() -> None:
    view = network_view(_snapshot((), ()), "n1")
    assert view.revision == 5
    assert view.networks == (
        ViewNetwork("net-back", "back", "10.33.0.0/16", blocks=()),
        ViewNetwork("net-front", "front", "10.32.0.0/16", ("10.32.64.0/24", "10.32.66.0/24")),
    )
    # n3 published no key; n1 is itself.
    assert view.peers == (
        ViewPeer("n2", _key(2), "192.168.1.2:51821", ("10.32.65.0/24", "10.33.64.0/24")),
    )
    assert network_view(_snapshot((), ()), "n2").peers == (
        ViewPeer("n1", _key(1), "192.168.1.1:51820", ("10.32.64.0/24", "10.32.66.0/24")),
    )
    # A node of no network (n3) still gets every peer: it may run a task tomorrow.
    assert [p.node_id for p in network_view(_snapshot((), ()), "n3").peers] == ["n1", "n2"]


def test_a_services_endpoints_are_its_running_tasks_meant_to_run() -> None:
    port = PortConfig(target=80, published=8080, mode=PublishMode.HOST)
    web = _service("web", ports=(port,))
    tasks = (
        _task(web, "t2", "n2", "10.32.65.2/24"),
        _task(web, "t1", "n1", "10.32.64.2/24"),
        _task(web, "t3", "n1", "10.32.64.3/24", state=TaskState.STARTING),
        # Being shut down (a scale-down, an update): it leaves the VIP first.
        _task(web, "t4", "n1", "10.32.64.4/24", desired=TaskState.SHUTDOWN),
        _task(web, "t5", "n2", "10.32.65.5/24", state=TaskState.FAILED),
    )
    (service,) = network_view(_snapshot((web,), tasks), "n1").services
    assert (service.id, service.name, service.mode) == ("svc-web", "web", EndpointMode.VIP)
    assert service.networks == ("net-front",)
    assert service.vips == (VirtualIP("net-front", "10.32.0.9/16"),)
    assert service.ports == (port,)
    assert service.endpoints == (
        ViewEndpoint("t1", "n1", "net-front", "10.32.64.2/24"),
        ViewEndpoint("t2", "n2", "net-front", "10.32.65.2/24"),
    )


def test_with_a_health_check_only_healthy_tasks_are_endpoints() -> None:
    checked = _service("api", health=HealthCheck(tcp=80))
    tasks = tuple(
        _task(checked, f"t-{health.value or 'none'}", "n1", f"10.32.64.{i + 2}/24", health=health)
        for i, health in enumerate(Health)
    )
    (service,) = network_view(_snapshot((checked,), tasks), "n1").services
    # Not yet checked (none, starting) is not healthy.
    assert [e.task_id for e in service.endpoints] == ["t-healthy"]
    plain = _service("web")
    unchecked = tuple(replace(t, service_id=plain.id, spec=plain.spec) for t in tasks)
    (service,) = network_view(_snapshot((plain,), unchecked), "n1").services
    assert [e.task_id for e in service.endpoints] == ["t-healthy", "t-none"]


def test_services_on_no_network_and_publishing_nothing_are_left_out() -> None:
    hidden = _service("batch", networks=())
    published = _service("edge", networks=(), ports=(PortConfig(target=80, published=30000),))
    rr = _service("db", ("net-back", "net-front"), mode=EndpointMode.DNSRR)
    view = network_view(_snapshot((hidden, published, rr), ()), "n1")
    assert [(s.name, s.vips, s.ports) for s in view.services] == [
        ("db", (), ()),
        ("edge", (), (PortConfig(target=80, published=30000),)),
    ]
    assert view.services[0].networks == ("net-back", "net-front")  # the spec's order


def test_an_address_on_a_network_the_service_left_is_no_endpoint() -> None:
    web = _service("web", ("net-back",))
    tasks = (
        _task(web, "t1", "n2", "10.33.64.2/24", network_id="net-back"),
        _task(web, "t0", "n1", "10.32.64.2/24", network_id="net-front"),  # placed before
    )
    (service,) = network_view(_snapshot((web,), tasks), "n1").services
    assert [(e.task_id, e.network_id) for e in service.endpoints] == [("t1", "net-back")]


def test_a_down_node_stays_a_peer_and_one_without_key_port_or_address_is_none() -> None:
    nodes = (
        _node("n1", "192.168.1.1", key=1),
        _node("n2", "fd00::2", key=2, status=NodeStatus.DOWN),
        _node("n4", "", key=4),
        replace(_node("n5", "192.168.1.5", key=5), wireguard_port=0),
    )
    view = network_view(_snapshot((), (), nodes=nodes), "n1")
    assert [(p.node_id, p.endpoint) for p in view.peers] == [("n2", "[fd00::2]:51820")]
    assert underlay_endpoint("wg.example.com", 1) == "wg.example.com:1"


def test_the_shared_part_is_built_once_and_each_node_adds_its_own() -> None:
    web = _service("web")
    snapshot = _snapshot((web,), (_task(web, "t1", "n1", "10.32.64.2/24"),))
    shared = shared_view(snapshot)
    for node_id in ("n1", "n2", "n3"):
        view = view_for(shared, node_id)
        assert view == network_view(snapshot, node_id)
        assert view.services is shared.services  # not rebuilt per node


_STATES = [TaskState.NEW, TaskState.STARTING, TaskState.RUNNING, TaskState.FAILED]


@st.composite
def _cluster_tasks(draw: st.DrawFn) -> tuple[tuple[Service, ...], tuple[Task, ...]]:
    services = (_service("web"), _service("api", health=HealthCheck(cmd=("true",))))
    count = draw(st.integers(0, 30))
    tasks = []
    for i in range(count):
        service = draw(st.sampled_from(services))
        node = draw(st.sampled_from(["n1", "n2"]))
        block = 64 if node == "n1" else 65
        tasks.append(
            _task(
                service,
                f"t{i:02d}",
                node,
                f"10.32.{block}.{i + 2}/24",
                state=draw(st.sampled_from(_STATES)),
                desired=draw(st.sampled_from([TaskState.RUNNING, TaskState.SHUTDOWN])),
                health=draw(st.sampled_from(list(Health))),
            )
        )
    return services, tuple(tasks)


def _healthy_enough(task: Task) -> bool:
    if task.spec.container.health is not None:
        return task.status.health == Health.HEALTHY
    return task.status.health in (Health.HEALTHY, Health.NONE)


@settings(max_examples=200, deadline=None)
@given(_cluster_tasks())
def test_endpoints_are_exactly_the_running_healthy_tasks_addresses(
    cluster: tuple[tuple[Service, ...], tuple[Task, ...]],
) -> None:
    services, tasks = cluster
    view = network_view(_snapshot(services, tasks), "n1")
    served = {(s.id, e.task_id, e.node_id, e.address) for s in view.services for e in s.endpoints}
    expected = {
        (t.service_id, t.id, t.node_id, t.networks[0].address)
        for t in tasks
        if t.status.state == TaskState.RUNNING
        and t.desired_state == TaskState.RUNNING
        and _healthy_enough(t)
    }
    assert served == expected


@settings(max_examples=100, deadline=None)
@given(_cluster_tasks(), st.randoms(use_true_random=False))
def test_equal_state_gives_an_equal_view_whatever_the_order_it_was_stored_in(
    cluster: tuple[tuple[Service, ...], tuple[Task, ...]], rng: random.Random
) -> None:
    services, tasks = cluster

    def shuffled(items: tuple[object, ...]) -> tuple[object, ...]:
        out = list(items)
        rng.shuffle(out)
        return tuple(out)

    a = _snapshot(services, tasks)
    b = _snapshot(shuffled(services), shuffled(tasks), shuffled(NODES), shuffled((FRONT, BACK)))  # type: ignore[arg-type]
    for node_id in ("n1", "n2"):
        assert network_view(a, node_id) == network_view(b, node_id)


@settings(max_examples=100, deadline=None)
@given(st.lists(_cluster_tasks(), min_size=1, max_size=4), st.randoms(use_true_random=False))
def test_a_build_that_reuses_the_last_ones_gives_what_a_fresh_build_gives(
    states: list[tuple[tuple[Service, ...], tuple[Task, ...]]], rng: random.Random
) -> None:
    cache = ViewCache()
    kept: dict[str, Task] = {}
    for services, tasks in states:
        # Some tasks are the very objects of the build before (unchanged in the
        # store), others are new objects, changed or equal.
        reused = tuple(
            kept[t.id] if t.id in kept and kept[t.id] == t and rng.random() < 0.5 else t
            for t in tasks
        )
        kept = {t.id: t for t in reused}
        snapshot = _snapshot(services, reused)
        assert shared_view(snapshot, cache) == shared_view(snapshot)
