"""The embedded DNS server seen from other network namespaces (lab hosts on a bridge).

The "node" host runs the server (tests/network/dns_node.py) on its lab address,
port 53, with a fake upstream resolver on its loopback; the "client" host is a
task on network front, the "outsider" a task on network back. Queries go over
the lab bridge with dnspython. The lab (namespaces, processes) is removed also
when a test fails.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from chaos import netlab

from network.dns_node import write_config
from warren.agent.network.dns_view import (
    DnsClient,
    DnsNetwork,
    DnsService,
    DnsView,
    ServiceOnNetwork,
)

pytestmark = pytest.mark.skipif(
    netlab.unavailable_reason() is not None, reason=str(netlab.unavailable_reason())
)

DNS_NODE = Path(__file__).with_name("dns_node.py")
REPO = Path(__file__).resolve().parents[2]

# Asks the server (argv[1]) each name of argv[2] (JSON [[name, type, "udp"|"tcp"], ...]);
# prints one JSON line: [[rcode, [addresses], ttl or null], ...].
CLIENT = """
import json, sys
import dns.message, dns.query, dns.rcode
out = []
for name, rdtype, transport in json.loads(sys.argv[2]):
    q = dns.message.make_query(name, rdtype)
    ask = dns.query.tcp if transport == "tcp" else dns.query.udp
    reply = ask(q, sys.argv[1], timeout=5)
    found = sorted(rr.to_text() for rrset in reply.answer for rr in rrset)
    ttl = reply.answer[0].ttl if reply.answer else None
    out.append([dns.rcode.to_text(reply.rcode()), found, ttl])
print(json.dumps(out))
"""


@pytest.fixture
def lab() -> Iterator[netlab.Lab]:
    for name in netlab.sweep_stale():
        print(f"netlab: removed stale namespace {name}")
    the_lab = netlab.Lab()
    try:
        yield the_lab
    finally:
        the_lab.close()
        assert the_lab.leftovers() == []


def start_node(lab: netlab.Lab, tmp_path: Path) -> tuple[netlab.Host, netlab.Host, netlab.Host]:
    node, client, outsider = lab.add_host("node"), lab.add_host("client"), lab.add_host("outsider")
    view = DnsView(
        networks=(DnsNetwork("nf", "front"), DnsNetwork("nb", "back")),
        services=(
            DnsService("web", (ServiceOnNetwork("nf", "10.10.0.2", ("10.10.0.10", "10.10.0.11")),)),
            DnsService("db", (ServiceOnNetwork("nb", "10.20.0.2", ("10.20.0.10",)),)),
        ),
        clients=(
            DnsClient((client.address,), frozenset({"nf"})),
            DnsClient((outsider.address,), frozenset({"nb"})),
        ),
    )
    config = write_config(tmp_path / "dns.json", view, [node.address], forward_timeout=2.0)
    log = tmp_path / "dns-node.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    server = node.spawn([sys.executable, str(DNS_NODE), str(config)], log, env=env)
    deadline = time.monotonic() + 20
    while "ready" not in log.read_text():
        assert server.poll() is None, f"DNS node exited: {log.read_text()}"
        assert time.monotonic() < deadline, f"DNS node not ready: {log.read_text()}"
        time.sleep(0.05)
    # The resolv.conf named the server's own address too; it is no upstream.
    assert "ready upstreams=127.0.0.53\n" in log.read_text()
    return node, client, outsider


def ask(host: netlab.Host, server: str, *queries: tuple[str, str, str]) -> list[list[object]]:
    done = host.run([sys.executable, "-c", CLIENT, server, json.dumps(queries)], timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_a_task_resolves_its_networks_services_from_another_namespace(
    lab: netlab.Lab, tmp_path: Path
) -> None:
    node, client, _ = start_node(lab, tmp_path)
    assert ask(
        client,
        node.address,
        ("web", "A", "udp"),
        ("web.front", "A", "udp"),
        ("tasks.web", "A", "udp"),
        ("Web.Warren.Internal.", "A", "tcp"),
        ("web", "AAAA", "udp"),
        ("example.test", "A", "udp"),
        ("example.test", "A", "tcp"),
    ) == [
        ["NOERROR", ["10.10.0.2"], 5],
        ["NOERROR", ["10.10.0.2"], 5],
        ["NOERROR", ["10.10.0.10", "10.10.0.11"], 5],
        ["NOERROR", ["10.10.0.2"], 5],
        ["NOERROR", [], None],
        # Forwarded to the node's upstream, answered as it answered.
        ["NOERROR", ["192.0.2.1"], 60],
        ["NOERROR", ["192.0.2.1"], 60],
    ]


def test_unknown_names_and_other_networks_do_not_resolve(lab: netlab.Lab, tmp_path: Path) -> None:
    node, client, outsider = start_node(lab, tmp_path)
    nxdomain = ["NXDOMAIN", [], None]
    assert (
        ask(
            client,
            node.address,
            ("nothing.warren.internal", "A", "udp"),
            ("db.warren.internal", "A", "udp"),
            # Not the client's: forwarded, and the upstream knows no such name.
            ("db", "A", "udp"),
            ("tasks.db", "A", "udp"),
            ("db.back", "A", "tcp"),
        )
        == [nxdomain] * 5
    )
    # The other way round for a task on network back.
    assert ask(
        outsider,
        node.address,
        ("db", "A", "udp"),
        ("web", "A", "udp"),
        ("web.front.warren.internal", "A", "udp"),
    ) == [["NOERROR", ["10.20.0.2"], 5], nxdomain, nxdomain]
