"""The DNS resolver's decisions (warren/agent/network/dns_view.py), without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warren.agent.network.dns_view import (
    FORWARD,
    NXDOMAIN,
    QTYPE_A,
    QTYPE_AAAA,
    QTYPE_ANY,
    TTL,
    DnsClient,
    DnsNetwork,
    DnsService,
    DnsView,
    Outcome,
    Resolution,
    ServiceOnNetwork,
    answer,
)
from warren.core.errors import InvalidArgument

FRONT = DnsNetwork("n-front", "front")
BACK = DnsNetwork("n-back", "back")
WEB = DnsService(
    "web",
    (
        ServiceOnNetwork("n-front", "10.1.0.2", ("10.1.0.10", "10.1.0.11")),
        ServiceOnNetwork("n-back", "10.2.0.2", ("10.2.0.10", "10.2.0.11")),
    ),
)
DB = DnsService("db", (ServiceOnNetwork("n-back", "10.2.0.3", ("10.2.0.20",)),))
# Endpoint mode dnsrr: no VIP, the name gives the healthy tasks.
CACHE = DnsService("cache", (ServiceOnNetwork("n-front", None, ("10.1.0.30", "10.1.0.31")),))
FRONT_CLIENT = "10.1.0.100"
BACK_CLIENT = "10.2.0.100"
BOTH_CLIENT_FRONT, BOTH_CLIENT_BACK = "10.1.0.101", "10.2.0.101"
VIEW = DnsView(
    networks=(FRONT, BACK),
    services=(WEB, DB, CACHE),
    clients=(
        DnsClient((FRONT_CLIENT,), frozenset({"n-front"})),
        DnsClient((BACK_CLIENT,), frozenset({"n-back"})),
        DnsClient((BOTH_CLIENT_FRONT, BOTH_CLIENT_BACK), frozenset({"n-front", "n-back"})),
    ),
)


def addresses(qname: str, client: str = FRONT_CLIENT, qtype: int = QTYPE_A) -> set[str]:
    resolution = answer(VIEW, qname, qtype, client)
    assert resolution.outcome is Outcome.ANSWER, resolution
    return set(resolution.addresses)


def test_a_service_name_gives_its_vip_on_the_clients_network() -> None:
    assert answer(VIEW, "web", QTYPE_A, FRONT_CLIENT) == Resolution(Outcome.ANSWER, ("10.1.0.2",))
    assert addresses("web", BACK_CLIENT) == {"10.2.0.2"}
    assert addresses("web.front") == {"10.1.0.2"}
    assert answer(VIEW, "web", QTYPE_A, FRONT_CLIENT).ttl == TTL == 5


def test_tasks_name_gives_the_healthy_task_addresses() -> None:
    assert addresses("tasks.web") == {"10.1.0.10", "10.1.0.11"}
    assert addresses("tasks.web.front") == {"10.1.0.10", "10.1.0.11"}
    assert addresses("tasks.db", BACK_CLIENT) == {"10.2.0.20"}


def test_a_dnsrr_service_name_gives_its_tasks() -> None:
    assert addresses("cache") == {"10.1.0.30", "10.1.0.31"}
    assert addresses("tasks.cache") == {"10.1.0.30", "10.1.0.31"}


def test_names_are_case_insensitive_with_or_without_the_trailing_dot() -> None:
    for qname in ("WEB", "Web.", "web.FRONT.", "TASKS.web", "web.Warren.Internal."):
        assert addresses(qname) == ({"10.1.0.10", "10.1.0.11"} if "tasks" in qname.lower()
                                    else {"10.1.0.2"})  # fmt: skip


def test_names_in_the_cluster_domain() -> None:
    assert addresses("web.warren.internal") == {"10.1.0.2"}
    assert addresses("web.front.warren.internal.") == {"10.1.0.2"}
    assert addresses("tasks.web.front.warren.internal") == {"10.1.0.10", "10.1.0.11"}
    # The node is the authority there: unknown names do not go upstream.
    assert answer(VIEW, "nothing.warren.internal", QTYPE_A, FRONT_CLIENT) == NXDOMAIN
    assert answer(VIEW, "warren.internal", QTYPE_A, FRONT_CLIENT).outcome is Outcome.ANSWER


def test_a_client_on_two_networks_sees_both_from_either_address() -> None:
    for client in (BOTH_CLIENT_FRONT, BOTH_CLIENT_BACK):
        assert addresses("web", client) == {"10.1.0.2", "10.2.0.2"}
        assert addresses("db", client) == {"10.2.0.3"}
        assert addresses("web.back", client) == {"10.2.0.2"}


def test_a_service_on_a_network_the_client_is_not_on_is_unknown_to_it() -> None:
    assert answer(VIEW, "db", QTYPE_A, FRONT_CLIENT) == FORWARD
    assert answer(VIEW, "tasks.db", QTYPE_A, FRONT_CLIENT) == FORWARD
    assert answer(VIEW, "web.back", QTYPE_A, FRONT_CLIENT) == FORWARD
    assert answer(VIEW, "db.warren.internal", QTYPE_A, FRONT_CLIENT) == NXDOMAIN
    # An address the view does not know (the node itself, a stranger) sees no service.
    assert answer(VIEW, "web", QTYPE_A, "10.9.9.9") == FORWARD


def test_other_names_are_forwarded() -> None:
    for qname in ("example.com", "nothing", "tasks.nothing", "web.nonet", ".", ""):
        assert answer(VIEW, qname, QTYPE_A, FRONT_CLIENT) == FORWARD, qname


def test_aaaa_and_other_types_of_a_known_name_give_no_records_not_nxdomain() -> None:
    for qtype in (QTYPE_AAAA, 15, 16):  # AAAA, MX, TXT
        assert answer(VIEW, "web", qtype, FRONT_CLIENT) == Resolution(Outcome.ANSWER, ())
    assert addresses("web", qtype=QTYPE_ANY) == {"10.1.0.2"}


def test_ipv6_addresses_answer_aaaa_only() -> None:
    net = DnsNetwork("n6", "six")
    view = DnsView(
        networks=(net,),
        services=(DnsService("api", (ServiceOnNetwork("n6", "fd00::2", ("fd00::10",)),)),),
        clients=(DnsClient(("fd00::100",), frozenset({"n6"})),),
    )
    assert answer(view, "api", QTYPE_AAAA, "fd00::100").addresses == ("fd00::2",)
    assert answer(view, "api", QTYPE_A, "fd00::100").addresses == ()


def test_dotted_service_and_network_names() -> None:
    net = DnsNetwork("n1", "prod.net")
    view = DnsView(
        networks=(net,),
        services=(DnsService("api.v2", (ServiceOnNetwork("n1", "10.5.0.2", ("10.5.0.9",)),)),),
        clients=(DnsClient(("10.5.0.100",), frozenset({"n1"})),),
    )
    for qname in ("api.v2", "api.v2.prod.net", "api.v2.prod.net.warren.internal"):
        assert answer(view, qname, QTYPE_A, "10.5.0.100").addresses == ("10.5.0.2",), qname
    assert answer(view, "tasks.api.v2.prod.net", QTYPE_A, "10.5.0.100").addresses == ("10.5.0.9",)


def test_a_service_called_tasks_still_resolves() -> None:
    net = DnsNetwork("n1", "net")
    view = DnsView(
        networks=(net,),
        services=(
            DnsService("tasks", (ServiceOnNetwork("n1", "10.5.0.2"),)),
            DnsService("web", (ServiceOnNetwork("n1", "10.5.0.3", ("10.5.0.9",)),)),
        ),
        clients=(DnsClient(("10.5.0.100",), frozenset({"n1"})),),
    )
    assert answer(view, "tasks", QTYPE_A, "10.5.0.100").addresses == ("10.5.0.2",)
    assert answer(view, "tasks.net", QTYPE_A, "10.5.0.100").addresses == ("10.5.0.2",)
    assert answer(view, "tasks.web", QTYPE_A, "10.5.0.100").addresses == ("10.5.0.9",)


def test_a_custom_domain() -> None:
    view = DnsView(VIEW.networks, VIEW.services, VIEW.clients, domain="Cluster.Example.")
    assert view.domain == "cluster.example"
    assert answer(view, "web.cluster.example", QTYPE_A, FRONT_CLIENT).addresses == ("10.1.0.2",)
    assert answer(view, "web.warren.internal", QTYPE_A, FRONT_CLIENT) == FORWARD


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: DnsView(networks=(FRONT, FRONT)), "appears twice"),
        (lambda: DnsView(networks=(DnsNetwork("", "x"),)), "needs an id and a name"),
        (lambda: DnsView(services=(WEB,)), "unknown network 'n-front'"),
        (
            lambda: DnsView((FRONT,), (DnsService("w", (ServiceOnNetwork("n-front", "nope"),)),)),
            "'nope' is not an IP address",
        ),
        (
            lambda: DnsView((FRONT,), clients=(DnsClient(("10.0.0.1",), frozenset({"zz"})),)),
            "unknown network 'zz'",
        ),
        (lambda: DnsView((FRONT,), clients=(DnsClient(("x",), frozenset()),)), "not an IP"),
        (lambda: DnsView(domain="."), "not a domain name"),
        (lambda: DnsView(domain="a..b"), "not a domain name"),
    ],
)
def test_a_malformed_view_is_refused_with_one_line(build: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message) as caught:
        build()  # type: ignore[operator]
    assert "\n" not in str(caught.value)


# -- properties over random views ------------------------------------------------------

LABELS = st.sampled_from(["web", "db", "api", "cache", "tasks", "front", "back", "a.b", "x"])


@st.composite
def views(draw: st.DrawFn) -> DnsView:
    """Networks 0..3 with subnets 10.N.0.0/16; services with endpoints on some of them;
    clients with an address on each of their networks."""
    count = draw(st.integers(1, 4))
    networks = tuple(
        DnsNetwork(f"id{n}", draw(LABELS) if draw(st.booleans()) else f"net{n}")
        for n in range(count)
    )
    host = st.integers(2, 250)
    services = []
    for name in draw(st.lists(LABELS, max_size=5)):
        on = draw(st.sets(st.integers(0, count - 1), max_size=count))
        endpoints = tuple(
            ServiceOnNetwork(
                f"id{n}",
                None if draw(st.booleans()) else f"10.{n}.1.{draw(host)}",
                tuple(f"10.{n}.2.{h}" for h in draw(st.lists(host, max_size=4))),
            )
            for n in sorted(on)
        )
        services.append(DnsService(draw(st.sampled_from([name, name.upper()])), endpoints))
    clients = []
    for index in range(draw(st.integers(0, 3))):
        on = draw(st.sets(st.integers(0, count - 1), min_size=1, max_size=count))
        clients.append(
            DnsClient(
                tuple(f"10.{n}.3.{index}" for n in sorted(on)), frozenset(f"id{n}" for n in on)
            )
        )
    return DnsView(networks, tuple(services), tuple(clients))


def query_names() -> st.SearchStrategy[str]:
    parts = st.lists(LABELS, min_size=1, max_size=3).map(".".join)
    prefix = st.sampled_from(["", "tasks.", "TASKS."])
    suffix = st.sampled_from(["", ".", ".warren.internal", ".warren.internal."])
    return st.tuples(prefix, parts, suffix).map("".join)


def clients_of(view: DnsView) -> st.SearchStrategy[str]:
    known = [a for client in view.clients for a in client.addresses]
    return st.sampled_from([*known, "10.99.3.1"])


# No deadline: a loaded 2-core machine stalls examples, which says nothing of the code.
@settings(deadline=None)
@given(st.data())
def test_a_client_never_gets_an_address_of_a_network_it_is_not_on(data: st.DataObject) -> None:
    view = data.draw(views())
    client = data.draw(clients_of(view))
    qname = data.draw(query_names())
    qtype = data.draw(st.sampled_from([QTYPE_A, QTYPE_AAAA, QTYPE_ANY]))
    client_networks = {n for c in view.clients if client in c.addresses for n in c.network_ids}
    resolution = answer(view, qname, qtype, client)
    # Network N's addresses are 10.N.x.x: every answer is on one of the client's networks.
    for address in resolution.addresses:
        assert f"id{address.split('.')[1]}" in client_networks, (qname, client, address)
    if resolution.outcome is Outcome.NXDOMAIN:
        assert ".warren.internal" in qname
    assert answer(view, qname.swapcase(), qtype, client) == resolution


@settings(deadline=None)
@given(st.data())
def test_every_shared_service_resolves_to_its_vips_and_tasks(data: st.DataObject) -> None:
    view = data.draw(views())
    client = data.draw(clients_of(view))
    client_networks = {n for c in view.clients if client in c.addresses for n in c.network_ids}
    for service in view.services:
        shared = [e for e in service.networks if e.network_id in client_networks]
        tasks = answer(view, f"tasks.{service.name}", QTYPE_A, client)
        if not shared:
            continue
        assert tasks.outcome is Outcome.ANSWER
        # Names can collide (case, "tasks.", dots): what a service holds is included.
        assert {a for e in shared for a in e.task_addresses} <= set(tasks.addresses)
        by_name = answer(view, service.name, QTYPE_A, client)
        expected = {a for e in shared for a in ((e.vip,) if e.vip else e.task_addresses)}
        assert expected <= set(by_name.addresses)
