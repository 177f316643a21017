"""The allocator: subnets, node blocks, task addresses, VIPs and published ports.

Plain tests for each decision and each error message, and Hypothesis runs of
random operation sequences checking the invariants after every step.
"""

from __future__ import annotations

import ipaddress
from collections import Counter

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from warren.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from warren.core.networks import (
    DYNAMIC_PORTS,
    Endpoint,
    EndpointMode,
    EndpointSpec,
    Network,
    NetworkSpec,
    PortConfig,
    PortProtocol,
    PublishMode,
)
from warren.manager.allocator import (
    AllocatorState,
    ServiceHolding,
    ServiceRequest,
    TaskHolding,
    allocate_network,
    allocate_service,
    allocate_task,
    allocate_tasks,
    check_network_removable,
    release_node,
)


def _with_network(
    state: AllocatorState, name: str, subnet: str = "", network_id: str = ""
) -> tuple[AllocatorState, Network]:
    net = allocate_network(state, network_id or f"id-{name}", NetworkSpec(name, subnet), now=1.0)
    return state.with_network(net), net


def _place(state: AllocatorState, task_id: str, node_id: str, *network_ids: str) -> AllocatorState:
    return state.with_task(allocate_task(state, task_id, network_ids, node_id))


def _request(
    service_id: str,
    *network_ids: str,
    mode: EndpointMode = EndpointMode.VIP,
    ports: tuple[PortConfig, ...] = (),
) -> ServiceRequest:
    return ServiceRequest(service_id, f"svc-{service_id}", network_ids, EndpointSpec(mode, ports))


def _serve(state: AllocatorState, request: ServiceRequest) -> AllocatorState:
    endpoint = allocate_service(state, request)
    holding = ServiceHolding(request.service_id, request.name, request.network_ids, endpoint)
    return state.with_service(holding)


def _ip(address: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Interface(address).ip


# -- network subnets ----------------------------------------------------------------


def test_a_network_without_a_subnet_takes_the_pools_next_free_16() -> None:
    state, first = _with_network(AllocatorState(), "a")
    assert (first.subnet, first.block_prefix, first.created_at) == ("10.32.0.0/16", 24, 1.0)
    state, _ = _with_network(state, "b", "10.33.0.0/20")
    state, third = _with_network(state, "c")
    assert third.subnet == "10.34.0.0/16"


def test_a_free_subnet_skips_a_large_network_in_the_pool() -> None:
    state, _ = _with_network(AllocatorState(), "big", "10.32.0.0/14")
    state, net = _with_network(state, "next")
    assert net.subnet == "10.36.0.0/16"


def test_the_pool_and_the_size_are_parameters() -> None:
    net = allocate_network(
        AllocatorState(), "n", NetworkSpec("n"), 0.0, pool="172.20.0.0/16", prefix=24
    )
    assert (net.subnet, net.block_prefix) == ("172.20.0.0/24", 28)


def test_an_overlapping_subnet_is_refused_naming_the_network() -> None:
    state, _ = _with_network(AllocatorState(), "front", "10.1.0.0/16")
    with pytest.raises(
        InvalidArgument,
        match=r"^subnet 10\.1\.128\.0/24 overlaps network front \(10\.1\.0\.0/16\): choose a "
        r"subnet no other network uses \(warren network ls shows them\)$",
    ):
        _with_network(state, "back", "10.1.128.0/24")
    with pytest.raises(InvalidArgument, match=r"^subnet 10\.0\.0\.0/8 overlaps network front"):
        _with_network(state, "back", "10.0.0.0/8")


def test_a_network_name_or_id_is_taken_once() -> None:
    state, _ = _with_network(AllocatorState(), "front")
    with pytest.raises(AlreadyExists, match=r"^network front already exists$"):
        _with_network(state, "front", network_id="other")


def test_an_exhausted_pool_says_how_to_go_on() -> None:
    state = AllocatorState()
    for name in ("a", "b"):
        state = state.with_network(
            allocate_network(state, name, NetworkSpec(name), 0.0, pool="10.32.0.0/15")
        )
    with pytest.raises(
        FailedPrecondition,
        match=r"^no free /16 is left in the network address pool 10\.32\.0\.0/15: remove a "
        r"network no service uses, or give the new one a subnet of its own \(--subnet CIDR\)$",
    ):
        allocate_network(state, "c", NetworkSpec("c"), 0.0, pool="10.32.0.0/15")


@pytest.mark.parametrize(
    ("pool", "prefix", "message"),
    [
        ("10.32.0.0/11", 25, r"^network size /25 is out of range: use a /8 to a /24$"),
        ("bogus", 16, r"^invalid address pool 'bogus': expected an IPv4 CIDR such as 10\.32"),
        ("10.32.0.1/11", 16, r"^invalid address pool"),
        ("10.32.0.0/20", 16, r"^address pool 10\.32\.0\.0/20 is smaller than one /16 network$"),
    ],
)
def test_a_bad_pool_is_refused(pool: str, prefix: int, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        allocate_network(AllocatorState(), "n", NetworkSpec("n"), 0.0, pool=pool, prefix=prefix)


# -- node blocks and task addresses ------------------------------------------------------


def test_a_tasks_first_address_on_a_node_takes_the_first_block_past_the_vip_range() -> None:
    state, net = _with_network(AllocatorState(), "front")
    alloc = allocate_task(state, "t1", (net.id,), "node-a")
    (changed,) = alloc.networks
    assert [(b.node_id, b.subnet) for b in changed.blocks] == [("node-a", "10.32.64.0/24")]
    (att,) = alloc.attachments
    assert att.network_id == net.id
    assert att.address.endswith("/24")
    assert _ip(att.address) in ipaddress.IPv4Network("10.32.64.0/24")
    assert str(_ip(att.address)) not in ("10.32.64.0", "10.32.64.1", "10.32.64.255")


def test_a_second_node_takes_the_next_block_and_a_second_task_reuses_the_nodes() -> None:
    state, net = _with_network(AllocatorState(), "front")
    state = _place(state, "t1", "node-a", net.id)
    other = allocate_task(state, "t2", (net.id,), "node-b")
    assert [b.subnet for b in other.networks[0].blocks_of("node-b")] == ["10.32.65.0/24"]
    same_node = allocate_task(state, "t3", (net.id,), "node-a")
    assert same_node.networks == ()
    assert _ip(same_node.attachments[0].address) in ipaddress.IPv4Network("10.32.64.0/24")


def test_allocating_a_task_again_gives_the_same_addresses() -> None:
    state, a = _with_network(AllocatorState(), "a")
    state, b = _with_network(state, "b")
    first = allocate_task(state, "t1", (a.id, b.id), "node-a")
    state = state.with_task(first)
    again = allocate_task(state, "t1", (a.id, b.id), "node-a")
    assert again.attachments == first.attachments
    assert again.networks == ()
    # On another node the task starts over there.
    moved = allocate_task(state, "t1", (a.id,), "node-b")
    assert _ip(moved.attachments[0].address) in moved.networks[0].blocks_of("node-b")[0].network


def test_a_full_block_gives_its_node_another() -> None:
    state, net = _with_network(AllocatorState(), "small", "10.9.0.0/24")
    assert net.block_prefix == 28  # 13 task addresses a block
    for n in range(14):
        state = _place(state, f"t{n}", "node-a", net.id)
    blocks = state.network(net.id).blocks_of("node-a")
    assert [b.subnet for b in blocks] == ["10.9.0.64/28", "10.9.0.80/28"]


def test_a_full_network_says_which_and_how_to_go_on() -> None:
    state, net = _with_network(AllocatorState(), "small", "10.9.0.0/24")
    for n in range(12 * 13):  # 12 node blocks of 13 addresses
        state = _place(state, f"t{n}", "node-a", net.id)
    with pytest.raises(
        FailedPrecondition,
        match=r"^network small \(10\.9\.0\.0/24\) is full: node node-b has no free address in "
        r"its blocks and every /28 block holds tasks; spread the service over more nodes or "
        r"use a network with a larger subnet \(warren network create NAME --subnet CIDR\)$",
    ):
        allocate_task(state, "last", (net.id,), "node-b")


def test_an_idle_block_goes_to_a_node_that_needs_one_when_none_is_free() -> None:
    state, net = _with_network(AllocatorState(), "small", "10.9.0.0/24")
    for n in range(12):
        state = _place(state, f"t{n}", f"node-{n}", net.id)
    assert len(state.network(net.id).blocks) == 12
    idle_block = state.network(net.id).blocks_of("node-3")[0].subnet
    state = state.without_task("t3")
    alloc = allocate_task(state, "new", (net.id,), "node-x")
    (changed,) = alloc.networks
    assert [b.subnet for b in changed.blocks_of("node-x")] == [idle_block]
    assert changed.blocks_of("node-3") == ()


def test_a_task_address_is_refused_without_a_node_or_a_known_network() -> None:
    state, net = _with_network(AllocatorState(), "front")
    with pytest.raises(InvalidArgument, match=r"^task t1 has no node to take addresses on$"):
        allocate_task(state, "t1", (net.id,), "")
    with pytest.raises(NotFound, match=r"^network 'nope' not found$"):
        allocate_task(state, "t1", ("nope",), "node-a")
    with pytest.raises(InvalidArgument, match=rf"^task t1 lists network '{net.id}' twice$"):
        allocate_task(state, "t1", (net.id, net.id), "node-a")


def test_a_node_leaving_frees_its_blocks() -> None:
    state, a = _with_network(AllocatorState(), "a")
    state, b = _with_network(state, "b")
    state = _place(state, "t1", "node-a", a.id, b.id)
    state = _place(state, "t2", "node-b", a.id)
    changed = release_node(state, "node-a")
    assert sorted(net.id for net in changed) == [a.id, b.id]
    assert all(net.blocks_of("node-a") == () for net in changed)
    assert [net.blocks_of("node-b") != () for net in changed if net.id == a.id] == [True]
    assert release_node(state, "node-z") == ()


def test_a_network_in_use_cannot_be_removed() -> None:
    state, net = _with_network(AllocatorState(), "front")
    check_network_removable(state, net.id)
    with pytest.raises(NotFound):
        check_network_removable(state, "nope")
    served = _serve(state, _request("s1", net.id))
    with pytest.raises(
        FailedPrecondition,
        match=r"^network front is used by service svc-s1: remove it from them first "
        r"\(warren service update --network-rm front SERVICE\)$",
    ):
        check_network_removable(served, net.id)
    stopping = _place(state, "t1", "node-a", net.id)
    with pytest.raises(
        FailedPrecondition,
        match=r"^network front still has 1 task\(s\) with an address on it \(stopping\): try "
        r"again once they are gone$",
    ):
        check_network_removable(stopping, net.id)


# -- virtual IPs ------------------------------------------------------------------------


def test_a_service_gets_one_vip_per_network_from_its_vip_range() -> None:
    state, a = _with_network(AllocatorState(), "a")
    state, b = _with_network(state, "b")
    endpoint = allocate_service(state, _request("s1", a.id, b.id))
    assert [vip.network_id for vip in endpoint.vips] == [a.id, b.id]
    for vip, net in zip(endpoint.vips, (a, b), strict=True):
        assert vip.address.endswith("/16")
        assert _ip(vip.address) in net.vip_range
        assert _ip(vip.address) != net.network.network_address


def test_a_vip_stays_across_updates_and_goes_with_its_network() -> None:
    state, a = _with_network(AllocatorState(), "a")
    state, b = _with_network(state, "b")
    state = _serve(state, _request("s1", a.id))
    (vip_a,) = state.services[0].endpoint.vips
    state = _serve(state, _request("s1", b.id, a.id))
    vips = state.services[0].endpoint.vips
    assert vips[1] == vip_a
    state = _serve(state, _request("s1", b.id))
    assert state.services[0].endpoint.vips == (vips[0],)


def test_dnsrr_gives_no_vip_but_still_checks_the_networks() -> None:
    state, a = _with_network(AllocatorState(), "a")
    assert allocate_service(state, _request("s1", a.id, mode=EndpointMode.DNSRR)).vips == ()
    with pytest.raises(NotFound, match=r"^network 'nope' not found$"):
        allocate_service(state, _request("s1", "nope", mode=EndpointMode.DNSRR))


def test_a_service_lists_a_network_once() -> None:
    with pytest.raises(InvalidArgument, match=r"^service svc-s1 lists network 'n' twice$"):
        _request("s1", "n", "n")


def test_a_full_vip_range_says_how_to_go_on() -> None:
    state, net = _with_network(AllocatorState(), "small", "10.9.0.0/24")
    for n in range(63):  # 10.9.0.0/26 less its first address
        state = _serve(state, _request(f"s{n}", net.id))
    with pytest.raises(
        FailedPrecondition,
        match=r"^network small has no free virtual IP left in 10\.9\.0\.0/26 \(63 services hold "
        r"one\): put the service on another network or use --endpoint-mode dnsrr$",
    ):
        allocate_service(state, _request("one-more", net.id))


# -- published ports -------------------------------------------------------------------


def test_an_explicit_port_taken_by_another_service_is_refused_naming_it() -> None:
    state = _serve(AllocatorState(), _request("s1", ports=(PortConfig(target=80, published=8080),)))
    with pytest.raises(
        InvalidArgument,
        match=r"^published port 8080/tcp is already used by service svc-s1: publish another "
        r"port, or 0 to let Warren pick one$",
    ):
        allocate_service(
            state,
            _request("s2", ports=(PortConfig(target=81, published=8080, mode=PublishMode.HOST),)),
        )
    udp = allocate_service(
        state,
        _request("s2", ports=(PortConfig(target=53, published=8080, protocol=PortProtocol.UDP),)),
    )
    assert udp.ports == (PortConfig(target=53, published=8080, protocol=PortProtocol.UDP),)
    # A service keeps its own ports on update.
    assert allocate_service(
        state, _request("s1", ports=(PortConfig(target=80, published=8080),))
    ).ports == (PortConfig(target=80, published=8080),)


def test_a_number_asked_for_before_is_not_kept_once_zero_is_asked_for() -> None:
    state = _serve(AllocatorState(), _request("s1", ports=(PortConfig(target=80, published=8080),)))
    assert allocate_service(state, _request("s1", ports=(PortConfig(target=80),))).ports == (
        PortConfig(target=80, published=30000),
    )


def test_published_zero_picks_the_lowest_free_dynamic_port_and_keeps_it() -> None:
    state = _serve(
        AllocatorState(), _request("s1", ports=(PortConfig(target=80, published=30000),))
    )
    state = _serve(state, _request("s2", ports=(PortConfig(target=80), PortConfig(target=443))))
    picked = state.service("s2")
    assert picked is not None
    assert [p.published for p in picked.endpoint.ports] == [30001, 30002]
    state = _serve(state, _request("s3", ports=(PortConfig(target=80),)))
    # s2 drops 80 and keeps 443 at the number it had.
    state = _serve(state, _request("s2", ports=(PortConfig(target=443),)))
    again = state.service("s2")
    assert again is not None
    assert again.endpoint.ports == (PortConfig(target=443, published=30002),)


def test_no_dynamic_port_left_says_how_to_go_on() -> None:
    every = tuple(PortConfig(target=80, published=n) for n in DYNAMIC_PORTS)
    holding = ServiceHolding("s1", "svc-s1", (), Endpoint(ports=every))
    state = AllocatorState(services=(holding,))
    with pytest.raises(
        FailedPrecondition,
        match=r"^no free tcp port is left in 30000-32767 to publish: give the port a number of "
        r"its own \(--publish PUBLISHED:TARGET\)$",
    ):
        allocate_service(state, _request("s2", ports=(PortConfig(target=80),)))
    udp = allocate_service(
        state, _request("s2", ports=(PortConfig(target=80, protocol=PortProtocol.UDP),))
    )
    assert udp.ports[0].published == 30000


# -- invariants over random operation sequences ------------------------------------------

# More nodes than a small network has blocks (12), two of them busy: blocks fill,
# nodes take a second one, and idle ones move to nodes that need them.
NODES = [f"node-{n}" for n in range(16)]
BUSY_NODES = NODES[:2] * 8 + NODES


def _check_task_addresses(state: AllocatorState, stale: set[str]) -> None:
    """No address twice among listed tasks; each inside a block its task's node
    holds on that network, and neither the block's network, gateway nor
    broadcast address (``stale``: tasks of a node that left, whose blocks went
    with it); no block holds another node's task's address."""
    seen = Counter(_ip(att.address) for task in state.tasks for att in task.attachments)
    assert all(count == 1 for count in seen.values()), seen.most_common(3)
    blocks = {net.id: [(b.network, b.node_id) for b in net.blocks] for net in state.networks}
    for task in state.tasks:
        for att in task.attachments:
            net = state.network(att.network_id)
            ip = _ip(att.address)
            holders = [(where, node) for where, node in blocks[net.id] if ip in where]
            assert all(node == task.node_id for _, node in holders), (task, holders)
            if task.task_id in stale:
                continue
            assert len(holders) == 1, (task, net.blocks)
            block = holders[0][0]
            assert ip not in (
                block.network_address,
                block.network_address + 1,
                block.broadcast_address,
            )
            assert att.address == f"{ip}/{net.block_prefix}"


_task_op = st.tuples(
    st.sampled_from(["place", "place", "place", "remove", "leave"]),
    st.integers(0, 60),  # task number
    st.sampled_from(BUSY_NODES),
    st.sets(st.integers(0, 1), min_size=1),  # which networks
)


@settings(max_examples=100, deadline=None)
@given(st.lists(_task_op, max_size=80))
def test_task_addresses_are_unique_in_their_nodes_blocks_and_freed_ones_never_collide(
    ops: list[tuple[str, int, str, set[int]]],
) -> None:
    # Small networks, so that blocks fill up, nodes take several and idle ones move.
    state, a = _with_network(AllocatorState(), "a", "10.9.0.0/24")
    state, b = _with_network(state, "b", "10.9.1.0/24")
    ids = (a.id, b.id)
    # Start near full: 11 of a's 12 blocks held, node-0's block full.
    for n in range(11):
        state = _place(state, f"t{n}", NODES[n], a.id, b.id)
    for n in range(11, 23):
        state = _place(state, f"t{n}", NODES[0], a.id)
    stale: set[str] = set()
    for kind, number, node, nets in ops:
        task_id = f"t{number}"
        if kind == "remove":
            state = state.without_task(task_id)
            stale.discard(task_id)
        elif kind == "leave":
            # Its tasks stay listed (stopping) until removed one by one.
            for net in release_node(state, node):
                state = state.with_network(net)
            stale |= {task.task_id for task in state.tasks if task.node_id == node}
        else:
            held = state.task(task_id)
            network_ids = tuple(ids[i] for i in sorted(nets))
            try:
                alloc = allocate_task(state, task_id, network_ids, node)
            except FailedPrecondition:
                event("network full")
                continue
            for net in alloc.networks:
                moved = len(net.blocks) == len(state.network(net.id).blocks)
                event("idle block moved" if moved else "block taken")
                if len(net.blocks_of(node)) > 1:
                    event("second block")
            if held is not None and held.node_id == node and task_id not in stale:
                kept = {att.network_id: att for att in held.attachments}
                for att in alloc.attachments:
                    assert kept.get(att.network_id, att) == att
            state = state.with_task(alloc)
            stale.discard(task_id)
        _check_task_addresses(state, stale)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 8), st.sets(st.integers(0, 2)), st.booleans(), st.booleans()),
        max_size=40,
    )
)
def test_vips_are_unique_in_range_and_stable_while_a_service_stays_on_a_network(
    ops: list[tuple[int, set[int], bool, bool]],
) -> None:
    state = AllocatorState()
    nets = []
    for name in ("a", "b", "c"):
        state, net = _with_network(state, name)
        nets.append(net)
    for number, which, dnsrr, remove in ops:
        service_id = f"s{number}"
        if remove:
            state = state.without_service(service_id)
            continue
        before = state.service(service_id)
        old = {v.network_id: v for v in before.endpoint.vips} if before else {}
        mode = EndpointMode.DNSRR if dnsrr else EndpointMode.VIP
        state = _serve(state, _request(service_id, *(nets[i].id for i in sorted(which)), mode=mode))
        after = state.service(service_id)
        assert after is not None
        for vip in after.endpoint.vips:
            assert old.get(vip.network_id, vip) == vip
            assert _ip(vip.address) in state.network(vip.network_id).vip_range
        all_vips = [_ip(v.address) for s in state.services for v in s.endpoint.vips]
        assert len(all_vips) == len(set(all_vips))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(8, 24), st.integers(0, 2**24 - 1)),
        max_size=12,
    )
)
def test_an_explicit_subnet_is_taken_exactly_when_it_overlaps_no_network(
    wanted: list[tuple[int, int]],
) -> None:
    state = AllocatorState()
    for n, (prefix, bits) in enumerate(wanted):
        subnet = ipaddress.IPv4Network(((10 << 24) | bits, prefix), strict=False)
        overlaps = any(net.network.overlaps(subnet) for net in state.networks)
        try:
            state, _ = _with_network(state, f"n{n}", str(subnet))
        except InvalidArgument as exc:
            assert overlaps and " overlaps network " in str(exc)
        else:
            assert not overlaps
        # Networks without a subnet of their own fit around them, or the pool is full.
        if n % 3 == 0:
            try:
                state, _ = _with_network(state, f"auto{n}")
            except FailedPrecondition:
                pool = ipaddress.IPv4Network("10.32.0.0/11").subnets(new_prefix=16)
                assert all(any(n.network.overlaps(s) for n in state.networks) for s in pool)
    subnets = [net.network for net in state.networks]
    for i, one in enumerate(subnets):
        assert not any(one.overlaps(other) for other in subnets[i + 1 :])


_port = st.builds(
    PortConfig,
    target=st.integers(1, 3),
    published=st.sampled_from([0, 0, 8080, 8081, 30000, 30001]),
    protocol=st.sampled_from(PortProtocol),
    mode=st.sampled_from(PublishMode),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.lists(_port, max_size=4)), max_size=30))
def test_published_ports_are_unique_per_protocol_and_refused_only_when_taken(
    ops: list[tuple[int, list[PortConfig]]],
) -> None:
    state = AllocatorState()
    for number, ports in ops:
        try:
            spec = EndpointSpec(ports=tuple(ports))
        except InvalidArgument:
            continue  # the same port twice in one spec
        service_id = f"s{number}"
        others = {
            p.key for s in state.services if s.service_id != service_id for p in s.endpoint.ports
        }
        request = ServiceRequest(service_id, f"svc-{service_id}", (), spec)
        try:
            state = _serve(state, request)
        except InvalidArgument as exc:
            assert any(p.published and p.key in others for p in ports), exc
            continue
        held = state.service(service_id)
        assert held is not None
        for asked, got in zip(ports, held.endpoint.ports, strict=True):
            assert asked.published in (0, got.published)
            assert got.published in DYNAMIC_PORTS or got.published == asked.published
        keys = [p.key for s in state.services for p in s.endpoint.ports]
        assert len(keys) == len(set(keys))


def test_the_state_folds_decisions_in() -> None:
    state, net = _with_network(AllocatorState(), "front")
    alloc = allocate_task(state, "t1", (net.id,), "node-a")
    folded = state.with_task(alloc)
    assert folded.task("t1") == TaskHolding("t1", "node-a", alloc.attachments)
    assert folded.network(net.id) == alloc.networks[0]
    assert folded.without_network(net.id).networks == ()
    assert state.task("t1") is None  # the original is untouched


def test_a_node_keeps_its_block_when_its_last_task_of_the_network_goes() -> None:
    state, net = _with_network(AllocatorState(), "front")
    state = _place(state, "t1", "node-a", net.id)
    block = state.network(net.id).blocks_of("node-a")
    state = state.without_task("t1")
    again = allocate_task(state, "t2", (net.id,), "node-a")
    assert again.networks == ()  # no block taken: the node's routes stay as they were
    assert _ip(again.attachments[0].address) in block[0].network


def test_a_block_a_departed_nodes_stopping_task_is_in_is_not_handed_out() -> None:
    state, net = _with_network(AllocatorState(), "front")
    state = _place(state, "t1", "node-a", net.id)
    for changed in release_node(state, "node-a"):
        state = state.with_network(changed)
    # t1 is still listed (stopping): its block stays out of use until it is gone.
    alloc = allocate_task(state, "t2", (net.id,), "node-b")
    assert [b.subnet for b in alloc.networks[0].blocks] == ["10.32.65.0/24"]
    state = state.without_task("t1")
    alloc = allocate_task(state, "t2", (net.id,), "node-b")
    assert [b.subnet for b in alloc.networks[0].blocks] == ["10.32.64.0/24"]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.sampled_from(BUSY_NODES), st.booleans())))
def test_a_batch_decides_what_one_by_one_folding_does(
    requests: list[tuple[int, str, bool]],
) -> None:
    state, a = _with_network(AllocatorState(), "a", "10.9.0.0/24")
    state, b = _with_network(state, "b")
    state = _place(state, "t0", "node-0", a.id)
    batch = [(f"t{n}", (a.id, b.id) if both else (a.id,), node) for n, node, both in requests]
    one_by_one, folded, failed = [], state, False
    try:
        for task_id, network_ids, node in batch:
            one_by_one.append(allocate_task(folded, task_id, network_ids, node))
            folded = folded.with_task(one_by_one[-1])
    except FailedPrecondition:
        failed = True
    if failed:
        with pytest.raises(FailedPrecondition):
            allocate_tasks(state, batch)
        return
    allocations, after = allocate_tasks(state, batch)
    assert list(allocations) == one_by_one
    assert sorted(after.tasks, key=lambda t: t.task_id) == sorted(
        folded.tasks, key=lambda t: t.task_id
    )
    assert sorted(after.networks, key=lambda n: n.id) == sorted(folded.networks, key=lambda n: n.id)
    assert [t.task_id for t in state.tasks] == ["t0"]  # the input is untouched
