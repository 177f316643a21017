"""The embedded DNS server (warren/agent/network/dns.py) over real sockets on loopback
addresses, queried with dnspython; forwarding goes to a fake upstream the test runs."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from dnslib import QTYPE, RR, A, DNSRecord

from warren.agent.network.dns import (
    UDP_RECEIVE_BUFFER,
    DnsServer,
    DnsSettings,
    EmbeddedDnsServer,
    FakeDnsServer,
    Upstream,
    upstreams_from_resolv_conf,
)
from warren.agent.network.dns_view import (
    DnsClient,
    DnsNetwork,
    DnsService,
    DnsView,
    Outcome,
    ServiceOnNetwork,
)
from warren.core.errors import FailedPrecondition, InvalidArgument

CLIENT = "127.0.0.2"  # a task on network "front"
STRANGER = "127.0.0.3"  # on no network the view knows
MANY = 60  # tasks of "big": more than a 512-byte UDP answer holds
BIG_TASKS = tuple(f"10.1.1.{i}" for i in range(MANY))

VIEW = DnsView(
    networks=(DnsNetwork("n-front", "front"), DnsNetwork("n-back", "back")),
    services=(
        DnsService("web", (ServiceOnNetwork("n-front", "10.1.0.2", ("10.1.0.10", "10.1.0.11")),)),
        DnsService("db", (ServiceOnNetwork("n-back", "10.2.0.2", ("10.2.0.10",)),)),
        DnsService(
            "big",
            (ServiceOnNetwork("n-front", "10.1.0.3", tuple(f"10.1.1.{i}" for i in range(MANY))),),
        ),
    ),
    clients=(DnsClient((CLIENT,), frozenset({"n-front"})),),
)


def loopback_address() -> str:
    """A loopback address of its own for one test (all of 127/8 is local on Linux)."""
    return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


def free_port(address: str) -> int:
    """A port free for both UDP and TCP on address."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((address, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((address, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


class FakeUpstream:
    """An upstream resolver on loopback: ``example.test`` is 192.0.2.1, other names
    NXDOMAIN; silent=True answers nothing (a dead resolver)."""

    def __init__(self, silent: bool = False) -> None:
        self.address = loopback_address()
        self.port = free_port(self.address)
        self.silent = silent
        self.questions: list[tuple[str, str]] = []  # (name, "udp" | "tcp")
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    @property
    def upstream(self) -> Upstream:
        return Upstream(self.address, self.port)

    def _reply(self, data: bytes, transport: str) -> bytes | None:
        request = DNSRecord.parse(data)
        name = str(request.q.qname)
        self.questions.append((name, transport))
        if self.silent:
            return None
        reply = request.reply(ra=1, aa=0)
        if name == "example.test.":
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A("192.0.2.1"), ttl=60))
        else:
            reply.header.rcode = 3
        packed: bytes = reply.pack()
        return packed

    async def start(self) -> None:
        upstream = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                reply = upstream._reply(data, "udp")
                if reply is not None:
                    self.transport.sendto(reply, addr)  # type: ignore[attr-defined]

        async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            size = int.from_bytes(await reader.readexactly(2), "big")
            reply = self._reply(await reader.readexactly(size), "tcp")
            if reply is not None:
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
            else:
                await asyncio.sleep(30)
            writer.close()

        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(
            Udp, local_addr=(self.address, self.port)
        )
        self._tcp = await asyncio.start_server(tcp, self.address, self.port)

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()


async def running(
    upstreams: tuple[Upstream, ...] = (), **settings: float
) -> tuple[EmbeddedDnsServer, str, int]:
    address = loopback_address()
    port = free_port(address)
    server = EmbeddedDnsServer(
        VIEW,
        DnsSettings(port=port, upstreams=upstreams, **settings),  # type: ignore[arg-type]
    )
    await server.start()
    await server.add_address(address)
    return server, address, port


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def silent_upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream(silent=True)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def server(upstream: FakeUpstream) -> AsyncIterator[tuple[EmbeddedDnsServer, str, int]]:
    started = await running((upstream.upstream,))
    try:
        yield started
    finally:
        await started[0].stop()


async def ask(
    where: str, port: int, name: str, rdtype: str = "A", source: str = CLIENT, tcp: bool = False,
    timeout: float = 3.0, **query: object,
) -> dns.message.Message:  # fmt: skip
    q = dns.message.make_query(name, rdtype, **query)  # type: ignore[arg-type]
    if tcp:
        return await dns.asyncquery.tcp(q, where, timeout=timeout, port=port, source=source)
    return await dns.asyncquery.udp(q, where, timeout=timeout, port=port, source=source)


def addresses(reply: dns.message.Message) -> set[str]:
    return {rr.address for rrset in reply.answer for rr in rrset}


# -- answers from the view ------------------------------------------------------------


async def test_a_service_name_gives_its_vip_with_a_5_second_ttl(server: tuple) -> None:
    _, address, port = server
    reply = await ask(address, port, "web")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    assert addresses(reply) == {"10.1.0.2"}
    assert reply.answer[0].ttl == 5
    assert addresses(await ask(address, port, "WEB.front.")) == {"10.1.0.2"}
    # With EDNS the query takes dnslib's path instead of the fast one: the same answer.
    reply = await ask(address, port, "web", use_edns=0)
    assert addresses(reply) == {"10.1.0.2"}
    assert reply.answer[0].ttl == 5 and reply.flags & dns.flags.AA


async def test_tasks_name_gives_the_task_addresses_over_udp_and_tcp(server: tuple) -> None:
    _, address, port = server
    assert addresses(await ask(address, port, "tasks.web")) == {"10.1.0.10", "10.1.0.11"}
    reply = await ask(address, port, "tasks.web", tcp=True)
    assert addresses(reply) == {"10.1.0.10", "10.1.0.11"}


async def test_aaaa_of_a_known_name_is_noerror_without_answers(server: tuple) -> None:
    _, address, port = server
    reply = await ask(address, port, "web", "AAAA")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer == []


async def test_an_unknown_name_in_the_cluster_domain_is_nxdomain_without_forwarding(
    server: tuple, upstream: FakeUpstream
) -> None:
    _, address, port = server
    reply = await ask(address, port, "nothing.warren.internal")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert reply.flags & dns.flags.AA
    assert upstream.questions == []


async def test_a_service_on_another_network_does_not_resolve(
    server: tuple, upstream: FakeUpstream
) -> None:
    _, address, port = server
    # Not the client's: it goes upstream like any other name, which knows nothing of it.
    assert (await ask(address, port, "db")).rcode() == dns.rcode.NXDOMAIN
    assert (await ask(address, port, "db.warren.internal")).rcode() == dns.rcode.NXDOMAIN
    assert (await ask(address, port, "web", source=STRANGER)).rcode() == dns.rcode.NXDOMAIN
    assert upstream.questions == [("db.", "udp"), ("web.", "udp")]


async def test_view_updates_take_effect_at_once(server: tuple) -> None:
    dns_server, address, port = server
    moved = DnsView(
        VIEW.networks,
        (DnsService("web", (ServiceOnNetwork("n-front", "10.1.0.99"),)),),
        VIEW.clients,
    )
    dns_server.update_view(moved)
    assert addresses(await ask(address, port, "web")) == {"10.1.0.99"}
    assert (await ask(address, port, "big.warren.internal")).rcode() == dns.rcode.NXDOMAIN


# -- forwarding -------------------------------------------------------------------------


async def test_other_names_are_forwarded_upstream_over_udp_and_tcp(
    server: tuple, upstream: FakeUpstream
) -> None:
    _, address, port = server
    reply = await ask(address, port, "example.test")
    assert addresses(reply) == {"192.0.2.1"}
    assert reply.answer[0].ttl == 60  # the upstream's answer, as it gave it
    reply = await ask(address, port, "example.test", tcp=True)
    assert addresses(reply) == {"192.0.2.1"}
    assert upstream.questions == [("example.test.", "udp"), ("example.test.", "tcp")]
    assert server[0].stats.forwarded == 2


async def test_a_dead_upstream_gives_servfail_after_the_timeout(
    silent_upstream: FakeUpstream,
) -> None:
    dns_server, address, port = await running((silent_upstream.upstream,), forward_timeout=0.5)
    try:
        started = time.monotonic()
        reply = await ask(address, port, "example.test")
        waited = time.monotonic() - started
        assert reply.rcode() == dns.rcode.SERVFAIL
        assert 0.4 < waited < 2.0
        assert silent_upstream.questions == [("example.test.", "udp")]
        # Answers of its own do not wait on the upstream.
        assert addresses(await ask(address, port, "web", timeout=0.3)) == {"10.1.0.2"}
    finally:
        await dns_server.stop()


async def test_the_next_upstream_is_asked_when_one_is_dead(
    silent_upstream: FakeUpstream, upstream: FakeUpstream
) -> None:
    dns_server, address, port = await running(
        (silent_upstream.upstream, upstream.upstream), forward_timeout=1.0
    )
    try:
        assert addresses(await ask(address, port, "example.test")) == {"192.0.2.1"}
    finally:
        await dns_server.stop()


async def test_forwards_beyond_the_limit_get_servfail_at_once(
    silent_upstream: FakeUpstream,
) -> None:
    dns_server, address, port = await running(
        (silent_upstream.upstream,), forward_timeout=2.0, max_forwards=2
    )
    try:
        hanging = [
            asyncio.create_task(ask(address, port, f"slow{i}.test", timeout=5)) for i in range(2)
        ]
        while len(silent_upstream.questions) < 2:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        reply = await ask(address, port, "third.test", timeout=1.0)
        assert reply.rcode() == dns.rcode.SERVFAIL
        assert time.monotonic() - started < 0.5
        assert dns_server.stats.busy == 1
        assert ("third.test.", "udp") not in silent_upstream.questions
        # Local answers are not limited.
        assert addresses(await ask(address, port, "web", timeout=0.5)) == {"10.1.0.2"}
        assert [r.rcode() for r in await asyncio.gather(*hanging)] == [dns.rcode.SERVFAIL] * 2
    finally:
        await dns_server.stop()


async def test_no_upstream_gives_servfail() -> None:
    dns_server, address, port = await running(())
    try:
        assert (await ask(address, port, "example.test")).rcode() == dns.rcode.SERVFAIL
    finally:
        await dns_server.stop()


async def test_the_servers_own_addresses_are_not_upstreams(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    address = loopback_address()
    resolv.write_text(f"search example\nnameserver {address}\nnameserver 192.0.2.53\n")
    dns_server = EmbeddedDnsServer(settings=DnsSettings(port=53, resolv_conf=resolv))
    await dns_server.start()
    assert dns_server.upstreams == (Upstream(address), Upstream("192.0.2.53"))
    # Binding port 53 needs root; the exclusion is what is checked, so fake the listener.
    dns_server._listeners[address] = None  # type: ignore[assignment]
    dns_server._refresh_upstreams()
    assert dns_server.upstreams == (Upstream("192.0.2.53"),)
    dns_server._listeners.clear()


def test_upstreams_from_resolv_conf() -> None:
    text = (
        "# comment\nsearch a.example\nnameserver 10.255.255.53\nnameserver fe80::1%eth0\n"
        "nameserver bogus\noptions ndots:1\nnameserver 10.255.255.53\nnameserver\n"
    )
    assert upstreams_from_resolv_conf(text) == (
        Upstream("10.255.255.53"),
        Upstream("fe80::1%eth0"),
    )


# -- truncation, malformed packets ------------------------------------------------------


async def test_a_long_udp_answer_is_truncated_and_the_client_gets_it_over_tcp(
    server: tuple,
) -> None:
    dns_server, address, port = server
    q = dns.message.make_query("tasks.big", "A")
    reply = await dns.asyncquery.udp(q, address, timeout=3, port=port, source=CLIENT)
    assert reply.flags & dns.flags.TC
    assert reply.answer == []
    reply, used_tcp = await dns.asyncquery.udp_with_fallback(
        q, address, timeout=3, port=port, source=CLIENT
    )
    assert used_tcp
    assert len(addresses(reply)) == MANY
    # A client that accepts 4096 bytes (EDNS) gets it all over UDP.
    reply = await ask(address, port, "tasks.big", use_edns=0, payload=4096)
    assert not reply.flags & dns.flags.TC
    assert len(addresses(reply)) == MANY
    assert dns_server.stats.truncated == 2


async def test_malformed_packets_are_dropped_and_the_server_keeps_answering(
    server: tuple,
) -> None:
    dns_server, address, port = server
    query = dns.message.make_query("web", "A").to_wire()
    garbage = [b"", b"\x00", b"\xff" * 40, query[:15], query[:12] + b"\xc0\x0c" * 10]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((CLIENT, 0))
        for packet in garbage:
            sock.sendto(packet, (address, port))
    # Over TCP: junk in a well-framed message is dropped; the connection still serves.
    reader, writer = await asyncio.open_connection(address, port, local_addr=(CLIENT, 0))
    writer.write(b"\x00\x05abcde" + len(query).to_bytes(2, "big") + query)
    await writer.drain()
    size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 3), "big")
    assert addresses(dns.message.from_wire(await reader.readexactly(size))) == {"10.1.0.2"}
    writer.close()
    reply = await ask(address, port, "web")
    assert addresses(reply) == {"10.1.0.2"}
    assert dns_server.stats.dropped == len(garbage) + 1


async def test_a_query_with_two_questions_is_formerr(server: tuple) -> None:
    _, address, port = server
    record = DNSRecord.question("web")
    record.add_question(*DNSRecord.question("db").questions)
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.bind((CLIENT, 0))
        sock.connect((address, port))
        await loop.sock_sendall(sock, record.pack())
        reply = DNSRecord.parse(await asyncio.wait_for(loop.sock_recv(sock, 4096), 3))
    assert reply.header.rcode == dns.rcode.FORMERR
    assert [str(q.qname) for q in reply.questions] == ["web.", "db."]
    # None at all: FORMERR without a made-up question.
    empty = dns.message.Message(id=77).to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.bind((CLIENT, 0))
        sock.connect((address, port))
        await loop.sock_sendall(sock, empty)
        reply = DNSRecord.parse(await asyncio.wait_for(loop.sock_recv(sock, 4096), 3))
    assert (reply.header.id, reply.header.rcode, reply.questions) == (77, dns.rcode.FORMERR, [])


# -- listen addresses ------------------------------------------------------------------


async def test_listen_addresses_change_at_run_time(server: tuple) -> None:
    dns_server, first, port = server
    udp_socket = dns_server._listeners[first].udp.socket
    received = udp_socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    # Root may go past net.core.rmem_max (the kernel doubles what it is given).
    assert received >= (2 * UDP_RECEIVE_BUFFER if os.geteuid() == 0 else 4096)
    second = loopback_address()
    await dns_server.set_addresses([first, second])
    assert dns_server.listen_addresses == {first, second}
    assert addresses(await ask(second, port, "web", tcp=True)) == {"10.1.0.2"}
    await dns_server.remove_address(first)
    assert dns_server.listen_addresses == {second}
    with pytest.raises(dns.exception.Timeout):
        await ask(first, port, "web", timeout=0.3)
    with pytest.raises(ConnectionRefusedError):
        await ask(first, port, "web", tcp=True)
    await dns_server.set_addresses([])
    assert dns_server.listen_addresses == frozenset()


async def test_tcp_connections_beyond_the_limit_are_closed() -> None:
    dns_server, address, port = await running((), max_tcp_connections=1)
    try:
        first = await asyncio.open_connection(address, port, local_addr=(CLIENT, 0))
        await asyncio.sleep(0.1)  # let the server take the first one
        second_reader, second_writer = await asyncio.open_connection(address, port)
        assert await asyncio.wait_for(second_reader.read(), 2) == b""
        second_writer.close()
        # The first one still serves (several queries on one connection).
        query = dns.message.make_query("web", "A").to_wire()
        reader, writer = first
        for _ in range(2):
            writer.write(len(query).to_bytes(2, "big") + query)
            size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 3), "big")
            reply = dns.message.from_wire(await reader.readexactly(size))
            assert addresses(reply) == {"10.1.0.2"}
        writer.close()
    finally:
        await dns_server.stop()


async def test_an_open_tcp_connection_is_closed_when_its_address_goes(server: tuple) -> None:
    dns_server, address, port = server
    reader, writer = await asyncio.open_connection(address, port, local_addr=(CLIENT, 0))
    await dns_server.remove_address(address)
    assert await asyncio.wait_for(reader.read(), 2) == b""
    writer.close()


async def test_an_address_it_cannot_listen_on_is_a_clear_error(server: tuple) -> None:
    dns_server, address, port = server
    busy = loopback_address()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((busy, port))
        with pytest.raises(FailedPrecondition, match=f"DNS cannot listen on {busy} port {port}"):
            await dns_server.add_address(busy)
    with pytest.raises(FailedPrecondition, match="Cannot assign requested address"):
        await dns_server.add_address("192.0.2.77")  # on no interface
    with pytest.raises(InvalidArgument, match="not an IP address"):
        await dns_server.add_address("gateway")
    assert dns_server.listen_addresses == {address}
    # One address it cannot have does not keep it from the others.
    other = loopback_address()
    with pytest.raises(FailedPrecondition, match=r"192\.0\.2\.77") as caught:
        await dns_server.set_addresses([address, "192.0.2.77", other])
    assert "\n" not in str(caught.value)
    assert dns_server.listen_addresses == {address, other}
    assert addresses(await ask(other, port, "web")) == {"10.1.0.2"}


async def test_stop_releases_every_address() -> None:
    dns_server, address, port = await running(())
    await dns_server.stop()
    assert dns_server.listen_addresses == frozenset()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind((address, port))
    with pytest.raises(FailedPrecondition, match="not started"):
        await dns_server.add_address(address)


def test_settings_are_checked() -> None:
    with pytest.raises(InvalidArgument, match="timeouts must be positive"):
        DnsSettings(forward_timeout=0)
    with pytest.raises(InvalidArgument, match="at least 1"):
        DnsSettings(max_forwards=0)
    with pytest.raises(InvalidArgument, match="not an IP address"):
        DnsSettings(upstreams=(Upstream("resolver"),))


# -- the fake ----------------------------------------------------------------------------


async def test_the_fake_follows_the_protocol_and_answers_as_the_server_decides() -> None:
    fake = FakeDnsServer(unavailable=["10.9.0.1"])
    server: DnsServer = fake
    await server.start()
    await server.set_addresses(["10.1.0.1", "10.2.0.1"])
    with pytest.raises(FailedPrecondition):
        await server.add_address("10.9.0.1")
    await server.set_addresses(["10.2.0.1"])
    assert server.listen_addresses == {"10.2.0.1"}
    server.update_view(VIEW)
    assert fake.resolve("web", 1, CLIENT).addresses == ("10.1.0.2",)
    assert fake.resolve("db", 1, CLIENT).outcome is Outcome.FORWARD
    await server.stop()
    assert server.listen_addresses == frozenset()
