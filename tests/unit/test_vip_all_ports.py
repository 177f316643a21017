"""VIPs on every port (vip_rules.VipFrontend) and network isolation, on the strict
model of the table; the kernel runs them in tests/network/test_network_controller.py."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warren.agent.network import nft_syntax
from warren.agent.network.nft_model import NftModel, TableModel
from warren.agent.network.vip_rules import (
    Backend,
    DataPlane,
    ServiceFrontend,
    VipBackend,
    VipFrontend,
    build_steps,
    plan,
)
from warren.core.errors import InvalidArgument

VIPS = [f"10.96.0.{i}" for i in range(1, 5)]
TASKS = [f"10.0.0.{i}" for i in range(2, 10)]

vip_backends = st.lists(
    st.builds(VipBackend, st.sampled_from(TASKS), st.integers(0, 4)),
    max_size=4,
    unique_by=lambda b: b.address,
).map(tuple)
vip_frontends = st.lists(
    st.builds(VipFrontend, st.sampled_from(VIPS), vip_backends),
    max_size=4,
    unique_by=lambda v: v.vip,
).map(tuple)
planes = st.builds(
    lambda vips, subnets: DataPlane(container_subnets=subnets, vips=vips),
    vip_frontends,
    st.lists(st.sampled_from(["10.0.0.0/24", "10.7.0.0/16"]), unique=True, max_size=2).map(tuple),
)


def _table(model: NftModel) -> TableModel:
    table = model.table("ip", "warren")
    assert table is not None
    return table


def _from_scratch(plane: DataPlane) -> TableModel:
    model = NftModel()
    model.apply(plan(None, plane))
    return _table(model)


def _shares(table: TableModel, vip: str) -> dict[str, float]:
    targets = [
        json.loads(value)
        for key, value in table.maps["vip-endpoints"].items()
        if json.loads(key)["concat"][0] == vip
    ]
    return {address: count / len(targets) for address, count in Counter(targets).items()}


@settings(max_examples=150, deadline=None)
@given(st.lists(planes, min_size=1, max_size=6))
def test_each_step_leaves_the_table_equal_to_a_fresh_build(steps: list[DataPlane]) -> None:
    model = NftModel()
    current: DataPlane | None = None
    for desired in steps:
        model.apply(plan(current, desired))
        table = _table(model)
        assert table == _from_scratch(desired)
        served = {v.vip for v in desired.vips if any(b.weight for b in v.backends)}
        assert {json.loads(k)["concat"][0] for k in table.maps["service-vips"]} == served
        empty = {v.vip for v in desired.vips} - served
        assert {json.loads(k)["concat"][0] for k in table.maps["no-endpoint-vips"]} == empty
        for vip in desired.vips:
            total = sum(b.weight for b in vip.backends)
            if total:
                expected = {b.address: b.weight / total for b in vip.backends if b.weight}
                assert _shares(table, vip.vip) == pytest.approx(expected)
        current = desired
    model.apply(plan(current, None))
    assert model.tables == {}


def test_an_endpoint_change_touches_only_that_vips_slots() -> None:
    two, other = (VipBackend("10.0.0.2"), VipBackend("10.0.0.3")), (VipBackend("10.0.0.4"),)
    before = DataPlane(vips=(VipFrontend("10.96.0.1", two), VipFrontend("10.96.0.2", other)))
    moved = (VipBackend("10.0.0.2"), VipBackend("10.0.0.5"))
    after = DataPlane(vips=(VipFrontend("10.96.0.1", moved), before.vips[1]))
    script = nft_syntax.render(plan(before, after))
    assert script == (
        "delete element ip warren vip-endpoints { 10.96.0.1 . 1 }\n"
        "add element ip warren vip-endpoints { 10.96.0.1 . 1 : 10.0.0.5 }\n"
    )


def test_nft_syntax_writes_the_vip_map_chain_and_elements() -> None:
    plane = DataPlane(vips=(VipFrontend("10.96.0.1", (VipBackend("10.0.0.2", 3),)),))
    script = nft_syntax.render(plan(None, plane))
    for line in (
        "add map ip warren vip-endpoints { typeof ip daddr . numgen random mod 1 : ip daddr; }",
        "add rule ip warren services meta l4proto { tcp, udp } ip daddr vmap @service-vips",
        "add rule ip warren pick-vip-1 ip saddr != @container-subnets jump mark-for-masquerade",
        "add rule ip warren pick-vip-1 dnat ip to ip daddr . numgen random mod 1 "
        "map @vip-endpoints",
        "add element ip warren vip-endpoints { 10.96.0.1 . 0 : 10.0.0.2 }",
        "add element ip warren service-vips { 10.96.0.1 : goto pick-vip-1 }",
        # Isolation between networks.
        "add rule ip warren filter-forward ct state new meta mark & 16384 != 16384 ip saddr "
        "@container-subnets ip daddr @container-subnets ip saddr . ip daddr != @same-subnet drop",
    ):
        assert line in script.splitlines(), line


def test_a_port_frontend_and_a_vip_coexist_and_build_in_steps() -> None:
    plane = DataPlane(
        services=(ServiceFrontend("10.96.0.9", "tcp", 80, (Backend("10.0.0.2", 8080),)),),
        vips=tuple(VipFrontend(v, (VipBackend("10.0.0.3"),)) for v in VIPS),
    )
    steps = list(build_steps(plane, 2))
    assert [len(s.services) + len(s.vips) for s in steps] == [2, 4, 5]
    model = NftModel()
    current = None
    for step in steps:
        model.apply(plan(current, step))
        current = step
    assert _table(model) == _from_scratch(plane)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: VipBackend("10.0.0.300"), "not an IPv4 address"),
        (lambda: VipBackend("10.0.0.2", -1), "weight -1"),
        (
            lambda: VipFrontend("10.96.0.1", (VipBackend("10.0.0.2"), VipBackend("10.0.0.2"))),
            "twice",
        ),
        (
            lambda: DataPlane(vips=(VipFrontend("10.96.0.1"), VipFrontend("10.96.0.1"))),
            "listed twice",
        ),
    ],
)
def test_bad_input_is_one_line_error(build: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message) as caught:
        build()  # type: ignore[operator]
    assert "\n" not in str(caught.value)
