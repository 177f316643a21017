"""The nftables planner for VIPs and published ports, checked on a strict model of the table."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warren.agent.network import nft_syntax, nftables, vip_rules
from warren.agent.network.nft_model import ModelError, NftModel, TableModel
from warren.agent.network.nftables import FakePacketFilter, ServiceProxy
from warren.agent.network.vip_rules import (
    Backend,
    DataPlane,
    PublishedPort,
    ServiceFrontend,
    pick_chain,
    plan,
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


def _weighted(backend_list: tuple[Backend, ...]) -> bool:
    return sum(b.weight for b in backend_list) > 0


def _expected_chains(plane: DataPlane) -> set[str]:
    """One pick chain per kind and numgen modulus in use."""
    frontends = [("svc", s.backends) for s in plane.services]
    frontends += [(p.mode, p.backends) for p in plane.published]
    return {
        pick_chain(kind, vip_rules.count_slots(backend_list))
        for kind, backend_list in frontends
        if _weighted(backend_list)
    }


def _keys(table: TableModel, name: str) -> set[tuple[Any, ...]]:
    return {tuple(json.loads(key)["concat"]) for key in table.maps[name]}


def _shares(table: TableModel, name: str, key: tuple[Any, ...]) -> dict[tuple[str, int], float]:
    """Each backend's share of the numgen slots of one frontend's endpoint map."""
    targets = [
        tuple(json.loads(value)["concat"])
        for slot_key, value in table.maps[name].items()
        if tuple(json.loads(slot_key)["concat"][:-1]) == key
    ]
    return {(a, p): targets.count((a, p)) / len(targets) for a, p in set(targets)}


def _check_content(table: TableModel, plane: DataPlane) -> None:
    """The table holds exactly the desired frontends, said without the planner's help."""
    own = {name for name in table.chains if name.startswith("pick-")}
    assert own == _expected_chains(plane)
    assert _keys(table, "service-ips") == {s.key for s in plane.services if _weighted(s.backends)}
    assert _keys(table, "published-ports") == {
        p.key for p in plane.published if _weighted(p.backends)
    }
    empty = {s.key for s in plane.services if not _weighted(s.backends)}
    assert _keys(table, "no-endpoint-services") == empty
    empty_ports = {p.key for p in plane.published if not _weighted(p.backends)}
    assert _keys(table, "no-endpoint-ports") == empty_ports
    assert len(table.sets["container-subnets"]) == len(plane.container_subnets)
    # Each backend gets its weight's share of the numgen values, exactly.
    frontends = [
        (f"service-endpoints-{s.protocol}", (s.vip, s.port), s.backends) for s in plane.services
    ]
    frontends += [(f"published-endpoints-{p.protocol}", (p.port,), p.backends)
                  for p in plane.published]  # fmt: skip
    expected_keys: dict[str, set[str]] = {
        f"{group}-endpoints-{proto}": set()
        for group in ("service", "published")
        for proto in ("tcp", "udp")
    }
    for name, key, backend_list in frontends:
        if _weighted(backend_list):
            total = sum(b.weight for b in backend_list)
            expected = {(b.address, b.port): b.weight / total for b in backend_list if b.weight}
            assert _shares(table, name, key) == pytest.approx(expected)
            expected_keys[name].add(json.dumps(list(key)))
    for name, keys in expected_keys.items():
        assert {json.dumps(json.loads(k)["concat"][:-1]) for k in table.maps[name]} == keys


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
    key = {"concat": list(target.key)}
    others = [s for s in plane.services if s is not target]
    # Pick chains are shared: a change may add or delete one only if no other
    # frontend goes to it, before or after.
    shared = DataPlane(tuple(others), plane.published).pick_chains()
    for command in plan(plane, desired):
        kind, name, keys = _touched(command)
        if kind == "element" and name.startswith("service-endpoints-"):
            assert name == f"service-endpoints-{target.protocol}"
            assert all(k["concat"][:2] == [target.vip, target.port] for k in keys), command
        elif kind == "element":
            assert name in ("service-ips", "no-endpoint-services")
            assert keys == [key]
        else:
            assert name.startswith("pick-svc-") and name not in shared, command


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
    # The old backend's slot element deleted, the new one's added: no chain, no rule.
    assert transaction == (
        {"delete": {"element": {"family": "ip", "table": "warren", "name": "service-endpoints-tcp",
                                "elem": [{"concat": [first.vip, 80, 0]}]}}},
        {"add": {"element": {"family": "ip", "table": "warren", "name": "service-endpoints-tcp",
                             "elem": [[{"concat": [first.vip, 80, 0]},
                                       {"concat": ["10.0.0.3", 80]}]]}}},
    )  # fmt: skip


def test_weights_become_numgen_slots() -> None:
    service = ServiceFrontend(
        "10.96.0.1", "tcp", 80,
        (Backend("10.0.0.2", 80, 90), Backend("10.0.0.3", 80, 0), Backend("10.0.0.4", 80, 10)),
    )  # fmt: skip
    table = _from_scratch(DataPlane((service,)))
    # 90/10 over their gcd: numgen mod 10, 9 slots to one backend and 1 to the other.
    (chain,) = [name for name in table.chains if name.startswith("pick-")]
    assert chain == "pick-svc-10"
    assert all('"mod": 10' in r for r in table.chains[chain] if "numgen" in r)
    slots = {
        json.loads(k)["concat"][-1]: tuple(json.loads(v)["concat"])
        for k, v in table.maps["service-endpoints-tcp"].items()
    }
    assert slots == {**{s: ("10.0.0.2", 80) for s in range(9)}, 9: ("10.0.0.4", 80)}


def test_a_weight_change_moves_the_service_to_another_pick_chain() -> None:
    def plane(*weights: int) -> DataPlane:
        backend_list = tuple(Backend(f"10.0.0.{i + 2}", 80, w) for i, w in enumerate(weights))
        other = ServiceFrontend("10.96.0.2", "tcp", 80, (Backend("10.0.0.9", 80),))
        return DataPlane((ServiceFrontend("10.96.0.1", "tcp", 80, backend_list), other))

    model = NftModel()
    model.apply(plan(None, plane(1, 1)))
    model.apply(plan(plane(1, 1), plane(1, 2)))
    assert {n for n in _table(model).chains if n.startswith("pick-")} == {
        "pick-svc-1",
        "pick-svc-3",
    }
    assert _table(model) == _from_scratch(plane(1, 2))
    # Back to the modulus the other service uses: no chain added or deleted.
    transaction = plan(plane(1, 2), plane(1))
    assert not [c for c in transaction if _touched(c)[0] != "element" and "pick-svc-1" in str(c)]
    model.apply(transaction)
    assert _table(model) == _from_scratch(plane(1))


def test_a_service_without_weight_is_rejected_rather_than_dropped() -> None:
    idle = ServiceFrontend("10.96.0.1", "udp", 53, (Backend("10.0.0.2", 53, 0),))
    table = _from_scratch(DataPlane((idle,)))
    assert _keys(table, "no-endpoint-services") == {("10.96.0.1", "udp", 53)}
    assert _keys(table, "service-ips") == set()
    assert not any(name.startswith("pick-") for name in table.chains)


def test_published_modes_differ_only_in_masquerade() -> None:
    backend = (Backend("10.0.0.2", 80),)
    for mode, masquerades in (("ingress", True), ("host", False)):
        port = PublishedPort(8080, "tcp", mode, backend)  # type: ignore[arg-type]
        rules = _from_scratch(DataPlane(published=(port,))).chains[f"pick-{mode}-1"]
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
    chain = {"family": "ip", "table": "warren", "name": "pick-svc-1"}
    for bad in (
        [{"delete": {"chain": chain}}],  # still has rules, still in the map
        [{"flush": {"chain": chain}}, {"delete": {"chain": chain}}],  # still in the map
        list(plan(None, plane))[3:],  # elements that exist already
        [{"delete": {"chain": {**chain, "name": "missing"}}}],
    ):
        with pytest.raises(ModelError):
            model.apply(bad)
        assert _table(model) == before  # all or nothing


# 19,999 numgen values to express them exactly: more than MAX_SLOTS.
_COPRIME_WEIGHTS = (Backend("10.0.0.2", 80, 10_000), Backend("10.0.0.3", 80, 9_999))


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
        (
            lambda: ServiceFrontend("10.96.0.1", "tcp", 80, _COPRIME_WEIGHTS),
            "19999 slots",
        ),
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


def test_nft_syntax_writes_the_endpoint_maps_and_refuses_what_it_does_not_know() -> None:
    plane = DataPlane((ServiceFrontend("10.96.0.1", "tcp", 80, (Backend("10.0.0.2", 8080),)),))
    script = nft_syntax.render(plan(None, plane))
    assert (
        "add map ip warren service-endpoints-udp { typeof ip daddr . udp dport"
        " . numgen random mod 1 : ip daddr . udp dport; }"
    ) in script
    assert (
        "add rule ip warren pick-svc-1 meta l4proto tcp dnat ip to ip daddr . tcp dport"
        " . numgen random mod 1 map @service-endpoints-tcp"
    ) in script
    assert (
        "add element ip warren service-endpoints-tcp { 10.96.0.1 . 80 . 0 : 10.0.0.2 . 8080 }"
    ) in script
    assert len(script.splitlines()) == len(plan(None, plane))
    chain = {"family": "ip", "table": "warren", "name": "x"}
    for bad in (
        {"replace": {"rule": {**chain, "chain": "x", "expr": []}}},
        {"add": {"rule": {**chain, "chain": "x", "expr": [{"log": None}]}}},
        {"add": {"chain": {**chain, "name": "x; flush ruleset"}}},
        {
            "add": {
                "rule": {
                    **chain,
                    "chain": "x",
                    "expr": [{"match": {"op": "<", "left": 1, "right": 2}}],
                }
            }
        },
    ):
        with pytest.raises(InvalidArgument, match="nft_syntax cannot write"):
            nft_syntax.render([bad])
