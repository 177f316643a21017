"""The nftables planner for VIPs and published ports, checked on a strict model of the table."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warren.agent.network import nftables, vip_rules
from warren.agent.network.nft_model import ModelError, NftModel, TableModel
from warren.agent.network.nftables import FakePacketFilter, ServiceProxy
from warren.agent.network.vip_rules import (
    Backend,
    DataPlane,
    PublishedPort,
    ServiceFrontend,
    endpoint_chain,
    plan,
    published_id,
    service_id,
)
from warren.core.errors import InvalidArgument

VIPS = [f"10.96.0.{i}" for i in range(1, 6)]
TASKS = [f"10.0.{i // 8}.{i % 8 + 2}" for i in range(12)]
SUBNETS = ["10.0.0.0/24", "10.0.1.0/24", "10.7.0.0/16"]

backends = st.lists(
    st.builds(Backend, st.sampled_from(TASKS), st.sampled_from([80, 8080]), st.integers(0, 5)),
    max_size=5,
    unique_by=lambda b: (b.address, b.port),
).map(tuple)
services = st.lists(
    st.builds(ServiceFrontend, st.sampled_from(VIPS), st.sampled_from(["tcp", "udp"]),
              st.sampled_from([53, 80, 443]), backends),
    max_size=5,
    unique_by=lambda s: s.key,
).map(tuple)  # fmt: skip
published = st.lists(
    st.builds(PublishedPort, st.sampled_from([8080, 9090, 30000]), st.sampled_from(["tcp", "udp"]),
              st.sampled_from(["ingress", "host"]), backends),
    max_size=3,
    unique_by=lambda p: p.key,
).map(tuple)  # fmt: skip
planes = st.builds(
    DataPlane,
    services,
    published,
    st.lists(st.sampled_from(SUBNETS), unique=True, max_size=3).map(tuple),
)


def _table(model: NftModel) -> TableModel:
    table = model.table("ip", "warren")
    assert table is not None
    return table


def _from_scratch(plane: DataPlane) -> TableModel:
    model = NftModel()
    model.apply(plan(None, plane))
    return _table(model)


def _expected_chains(plane: DataPlane) -> set[str]:
    chains = set()
    for frontend_id, chain, backend_list in [
        *((service_id(s), f"svc-{service_id(s)}", s.backends) for s in plane.services),
        *((published_id(p), published_id(p), p.backends) for p in plane.published),
    ]:
        chains.add(chain)
        chains |= {endpoint_chain(frontend_id, b) for b in backend_list}
    return chains


def _keys(table: TableModel, name: str) -> set[tuple[Any, ...]]:
    return {tuple(json.loads(key)["concat"]) for key in table.maps[name]}


def _check_content(table: TableModel, plane: DataPlane) -> None:
    """The table holds exactly the desired frontends, said without the planner's help."""
    own = {name for name in table.chains if name.startswith(("svc-", "pub-", "ep-"))}
    assert own == _expected_chains(plane)
    assert _keys(table, "service-ips") == {s.key for s in plane.services}
    assert _keys(table, "published-ports") == {p.key for p in plane.published}
    empty = {s.key for s in plane.services if not sum(b.weight for b in s.backends)}
    assert _keys(table, "no-endpoint-services") == empty
    empty_ports = {p.key for p in plane.published if not sum(b.weight for b in p.backends)}
    assert _keys(table, "no-endpoint-ports") == empty_ports
    assert len(table.sets["container-subnets"]) == len(plane.container_subnets)


@settings(max_examples=150, deadline=None)
@given(st.lists(planes, min_size=1, max_size=6))
def test_each_step_leaves_the_table_equal_to_a_fresh_build(steps: list[DataPlane]) -> None:
    model = NftModel()
    current: DataPlane | None = None
    for desired in steps:
        model.apply(plan(current, desired))
        assert _table(model) == _from_scratch(desired)
        _check_content(_table(model), desired)
        current = desired
    model.apply(plan(current, None))
    assert model.tables == {}


def _touched(command: dict[str, Any]) -> tuple[str, str, list[Any]]:
    """(kind, chain or set name, element keys) that one command changes."""
    ((_verb, body),) = command.items()
    ((kind, spec),) = body.items()
    if kind == "rule":
        return kind, spec["chain"], []
    if kind == "element":
        keys = [item[0] if isinstance(item, list) else item for item in spec["elem"]]
        return kind, spec["name"], keys
    return kind, spec.get("name", ""), []


@settings(max_examples=150, deadline=None)
@given(planes, backends, st.data())
def test_a_change_to_one_service_touches_only_that_service(
    plane: DataPlane, new_backends: tuple[Backend, ...], data: st.DataObject
) -> None:
    if not plane.services:
        plane = DataPlane((ServiceFrontend("10.96.0.9", "tcp", 80),), plane.published)
    target = data.draw(st.sampled_from(plane.services))
    changed = ServiceFrontend(target.vip, target.protocol, target.port, new_backends)
    desired = DataPlane(
        tuple(changed if s is target else s for s in plane.services),
        plane.published,
        plane.container_subnets,
    )
    own = service_id(target)
    key = {"concat": list(target.key)}
    for command in plan(plane, desired):
        kind, name, keys = _touched(command)
        if kind == "element":
            assert name in ("service-ips", "no-endpoint-services")
            assert keys == [key]
        else:
            assert name == f"svc-{own}" or name.startswith(f"ep-{own}-"), command


def test_an_endpoint_change_is_small_whatever_the_number_of_services() -> None:
    many = tuple(
        ServiceFrontend(f"10.96.{i // 250}.{i % 250 + 1}", "tcp", 80, (Backend("10.0.0.2", 80),))
        for i in range(1000)
    )
    before = DataPlane(many)
    first = many[500]
    changed = ServiceFrontend(first.vip, "tcp", 80, (Backend("10.0.0.3", 80),))
    after = DataPlane((*many[:500], changed, *many[501:]))
    transaction = plan(before, after)
    # The new endpoint chain and its 2 rules, the service chain's flush and 2 rules,
    # the old endpoint chain's flush and delete.
    assert len(transaction) == 8


def test_weights_become_consecutive_numgen_ranges() -> None:
    service = ServiceFrontend(
        "10.96.0.1", "tcp", 80,
        (Backend("10.0.0.2", 80, 90), Backend("10.0.0.3", 80, 0), Backend("10.0.0.4", 80, 10)),
    )  # fmt: skip
    table = _from_scratch(DataPlane((service,)))
    (numgen_rule,) = [r for r in table.chains["svc-10.96.0.1-tcp-80"] if "numgen" in r]
    vmap = json.loads(numgen_rule)[0]["vmap"]
    assert vmap["key"]["numgen"]["mod"] == 100
    assert [choice[0] for choice in vmap["data"]["set"]] == [
        {"range": [0, 89]},
        {"range": [90, 99]},
    ]
    # A weight-0 backend keeps its chain (a weight change only rewrites the service
    # chain), but no range leads to it.
    assert "ep-10.96.0.1-tcp-80-10.0.0.3-80" in table.chains
    assert all("10.0.0.3" not in r for r in table.chains["svc-10.96.0.1-tcp-80"])


def test_a_service_without_weight_is_rejected_rather_than_dropped() -> None:
    idle = ServiceFrontend("10.96.0.1", "udp", 53, (Backend("10.0.0.2", 53, 0),))
    table = _from_scratch(DataPlane((idle,)))
    assert _keys(table, "no-endpoint-services") == {("10.96.0.1", "udp", 53)}
    assert not any("numgen" in r for r in table.chains["svc-10.96.0.1-udp-53"])


def test_published_modes_differ_only_in_masquerade() -> None:
    backend = (Backend("10.0.0.2", 80),)
    for mode, masquerades in (("ingress", True), ("host", False)):
        port = PublishedPort(8080, "tcp", mode, backend)  # type: ignore[arg-type]
        rules = _from_scratch(DataPlane(published=(port,))).chains["pub-tcp-8080"]
        assert any("mark-for-masquerade" in r for r in rules) is masquerades


def test_first_sync_replaces_a_leftover_table_and_teardown_deletes_it() -> None:
    model = NftModel()
    stale = {"family": "ip", "table": "warren", "name": "stale"}
    model.apply([{"add": {"table": {"family": "ip", "name": "warren"}}}, {"add": {"chain": stale}}])
    plane = DataPlane((ServiceFrontend("10.96.0.1", "tcp", 80, (Backend("10.0.0.2", 80),)),))
    model.apply(plan(None, plane))
    assert "stale" not in _table(model).chains
    model.apply(plan(plane, None))
    assert model.tables == {}
    assert plan(None, None) == ()
    assert plan(plane, plane) == ()


def test_the_model_refuses_what_the_kernel_refuses() -> None:
    model = NftModel()
    plane = DataPlane((ServiceFrontend("10.96.0.1", "tcp", 80, (Backend("10.0.0.2", 80),)),))
    model.apply(plan(None, plane))
    before = _table(model)
    chain = {"family": "ip", "table": "warren", "name": "svc-10.96.0.1-tcp-80"}
    for bad in (
        [{"delete": {"chain": chain}}],  # still has rules, still in the map
        [{"flush": {"chain": chain}}, {"delete": {"chain": chain}}],  # still in the map
        list(plan(None, plane))[3:],  # elements that exist already
        [{"delete": {"chain": {**chain, "name": "missing"}}}],
    ):
        with pytest.raises(ModelError):
            model.apply(bad)
        assert _table(model) == before  # all or nothing


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Backend("10.0.0.300", 80), "not an IPv4 address"),
        (lambda: Backend("10.0.0.2", 0), "not a port"),
        (lambda: Backend("10.0.0.2", 80, -1), "weight -1"),
        (lambda: Backend("10.0.0.2", 80, True), "not an integer"),
        (lambda: ServiceFrontend("10.96.0.1", "sctp", 80), "not tcp or udp"),  # type: ignore[arg-type]
        (lambda: ServiceFrontend("fd00::1", "tcp", 80), "not an IPv4 address"),
        (
            lambda: ServiceFrontend("10.96.0.1", "tcp", 80,
                                    (Backend("10.0.0.2", 80), Backend("10.0.0.2", 80, 3))),
            "twice",
        ),
        (lambda: PublishedPort(8080, "tcp", "global"), "not ingress or host"),  # type: ignore[arg-type]
        (lambda: DataPlane(container_subnets=("10.0.0.1/24",)), "not an IPv4 network"),
        (
            lambda: DataPlane(published=(PublishedPort(80, "tcp", "host"),
                                         PublishedPort(80, "tcp", "ingress"))),
            "listed twice",
        ),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_error(build: Any, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message) as caught:
        build()
    assert "\n" not in str(caught.value)


def test_proxy_rebuilds_the_whole_table_after_a_failed_transaction() -> None:
    packet_filter = FakePacketFilter()
    proxy = ServiceProxy(packet_filter)
    one = DataPlane((ServiceFrontend("10.96.0.1", "tcp", 80, (Backend("10.0.0.2", 80),)),))
    two = DataPlane((ServiceFrontend("10.96.0.1", "tcp", 80, (Backend("10.0.0.3", 80),)),))
    proxy.sync(one)
    packet_filter.fail_next = ModelError("netlink went away")
    with pytest.raises(ModelError):
        proxy.sync(two)
    assert proxy.programmed is None
    transaction = proxy.sync(two)
    assert transaction[:3] == plan(None, two)[:3]  # add, delete, add: a replacement
    assert packet_filter.table == _from_scratch(two)
    assert proxy.sync(two) == ()
    proxy.close()
    assert packet_filter.table is None
    proxy.close()  # a missing table is no error


@settings(max_examples=100, deadline=None)
@given(planes, st.integers(1, 4))
def test_a_table_built_in_steps_equals_one_built_at_once(plane: DataPlane, size: int) -> None:
    model = NftModel()
    current: DataPlane | None = None
    for step in vip_rules.build_steps(plane, size):
        transaction = plan(current, step)
        added = [_touched(c) for c in transaction if "add" in c]
        frontends = [name for kind, name, _ in added if kind == "element"
                     and name in ("service-ips", "published-ports")]  # fmt: skip
        assert len(frontends) <= size
        model.apply(transaction)
        current = step
    assert current == plane
    assert _table(model) == _from_scratch(plane)
    with pytest.raises(InvalidArgument, match="not positive"):
        next(vip_rules.build_steps(plane, 0))


def test_proxy_builds_a_new_table_in_steps_and_replaces_an_existing_one_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(nftables, "BUILD_STEP", 2)
    services = tuple(
        ServiceFrontend(f"10.96.0.{i}", "tcp", 80, (Backend("10.0.0.2", 80),)) for i in range(1, 6)
    )
    plane = DataPlane(services, (PublishedPort(8080, "tcp", "ingress"),))
    packet_filter = FakePacketFilter()
    ServiceProxy(packet_filter).sync(plane)
    assert len(packet_filter.transactions) == 3  # 2 + 2 + 2 frontends
    assert packet_filter.table == _from_scratch(plane)
    # A restarted agent finds the table: one atomic replacement, nothing unserved.
    ServiceProxy(packet_filter).sync(plane)
    assert len(packet_filter.transactions) == 4
    assert packet_filter.transactions[-1] == plan(None, plane)
    assert packet_filter.table == _from_scratch(plane)


def test_delete_table_helper_works_without_a_table() -> None:
    model = NftModel()
    model.apply(vip_rules.delete_table())
    assert model.tables == {}
