"""The node's embedded DNS server (dnslib + asyncio, UDP and TCP).

It listens on port 53 of every per-network bridge gateway address of the node
(the set changes at run time: `add_address`, `remove_address`,
`set_addresses`); containers' resolv.conf names their network's gateway. It
answers Warren names from the node's own `DnsView` (decided by
`dns_view.answer`), swapped whole by `update_view`, so answers keep coming
while the node is cut off from the managers. Everything else goes, as the
client sent it, to the node's upstream resolvers: at most ``max_forwards`` at
a time (SERVFAIL beyond) and SERVFAIL after ``forward_timeout``.

Over UDP an answer longer than the client accepts (512 bytes, or its EDNS
size) comes back empty with the TC bit, and the client asks again over TCP.
A malformed packet is dropped with a debug log. Plain queries (one question,
no EDNS) are read and answered by `dns_wire` at a tenth of dnslib's cost;
dnslib reads everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from dnslib import (  # type: ignore[import-untyped]
    AAAA,
    CLASS,
    EDNS0,
    QTYPE,
    RCODE,
    RR,
    A,
    DNSHeader,
    DNSRecord,
)

from warren.agent.network.dns_view import DnsView, Outcome, Resolution, answer
from warren.agent.network.dns_wire import (
    FLAG_TC,
    RCODE_NOERROR,
    RCODE_NXDOMAIN,
    RCODE_SERVFAIL,
    encode_answer,
    encode_error,
    parse_simple_query,
)
from warren.core.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)

DNS_PORT = 53
RESOLV_CONF = Path("/etc/resolv.conf")
# A UDP answer longer than this needs the client's EDNS consent (RFC 1035 4.2.1).
CLASSIC_UDP_PAYLOAD = 512
# What the server offers in its own EDNS record (the DNS flag day 2020 figure).
EDNS_UDP_PAYLOAD = 1232
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024
# Datagrams read per wake-up before other work (TCP, forwards) gets a turn.
_UDP_BATCH = 64
_SO_RCVBUFFORCE = 33  # Linux's <asm-generic/socket.h>; Python's socket module lacks it
_OPCODE_QUERY = 0
_MAX_MESSAGE = 65535


@dataclass(frozen=True)
class Upstream:
    """A resolver the node forwards non-Warren names to."""

    address: str
    port: int = DNS_PORT


@dataclass(frozen=True)
class DnsSettings:
    port: int = DNS_PORT
    # None: the nameservers of resolv_conf (read at start).
    upstreams: tuple[Upstream, ...] | None = None
    resolv_conf: Path = RESOLV_CONF
    forward_timeout: float = 2.0
    max_forwards: int = 256
    max_tcp_connections: int = 128
    tcp_idle_timeout: float = 10.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise InvalidArgument(f"DNS port {self.port} is not a port number")
        if self.forward_timeout <= 0 or self.tcp_idle_timeout <= 0:
            raise InvalidArgument("DNS timeouts must be positive")
        if self.max_forwards < 1 or self.max_tcp_connections < 1:
            raise InvalidArgument("DNS concurrency limits must be at least 1")
        for upstream in self.upstreams or ():
            _checked_address(upstream.address, "DNS upstream")


@dataclass
class DnsStats:
    """Counts since start (answers the node gave itself, forwards, failures)."""

    answered: int = 0
    nxdomain: int = 0
    forwarded: int = 0
    truncated: int = 0
    servfail: int = 0
    busy: int = 0  # forwards refused (SERVFAIL) because max_forwards were in flight
    dropped: int = 0  # malformed packets


class DnsServer(Protocol):
    """The node's DNS server, as the agent drives it."""

    @property
    def listen_addresses(self) -> frozenset[str]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def add_address(self, address: str) -> None: ...

    async def remove_address(self, address: str) -> None: ...

    async def set_addresses(self, addresses: Iterable[str]) -> None: ...

    def update_view(self, view: DnsView) -> None: ...


def upstreams_from_resolv_conf(text: str) -> tuple[Upstream, ...]:
    """The nameservers of a resolv.conf, in order (lines that are not addresses are skipped)."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            with contextlib.suppress(ValueError):
                found.append(Upstream(ipaddress.ip_address(fields[1]).compressed))
    return tuple(dict.fromkeys(found))


def _checked_address(value: str, what: str) -> str:
    try:
        return ipaddress.ip_address(value).compressed
    except ValueError:
        raise InvalidArgument(f"{what}: {value!r} is not an IP address") from None


@dataclass(frozen=True)
class _Forward:
    """A query that is not Warren's: send the client's bytes upstream."""

    servfail: Callable[[], bytes]  # the reply if no upstream answers


@dataclass
class _Listener:
    udp: _UdpSocket
    tcp: asyncio.Server


class EmbeddedDnsServer:
    """The real `DnsServer`: dnslib messages over asyncio sockets."""

    def __init__(self, view: DnsView | None = None, settings: DnsSettings | None = None) -> None:
        self._view = view if view is not None else DnsView()
        self._settings = settings or DnsSettings()
        self._listeners: dict[str, _Listener] = {}
        self._upstreams: tuple[Upstream, ...] = ()
        self._usable_upstreams: tuple[Upstream, ...] = ()
        self._forward_slots = asyncio.Semaphore(self._settings.max_forwards)
        self._tasks: set[asyncio.Task[None]] = set()
        self._tcp_writers: dict[asyncio.StreamWriter, str] = {}
        self._started = False
        self.stats = DnsStats()

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def listen_addresses(self) -> frozenset[str]:
        return frozenset(self._listeners)

    @property
    def upstreams(self) -> tuple[Upstream, ...]:
        """Where non-Warren names go: the configured ones minus the server's own addresses."""
        return self._usable_upstreams

    async def start(self) -> None:
        if self._started:
            return
        if self._settings.upstreams is not None:
            self._upstreams = self._settings.upstreams
        else:
            self._upstreams = _read_upstreams(self._settings.resolv_conf)
        self._started = True
        self._refresh_upstreams()

    async def stop(self) -> None:
        self._started = False
        for address in list(self._listeners):
            await self.remove_address(address)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def add_address(self, address: str) -> None:
        """Listen on address (UDP and TCP); FailedPrecondition if it cannot."""
        address = _checked_address(address, "DNS listen address")
        if not self._started:
            raise FailedPrecondition("the DNS server is not started")
        if address in self._listeners:
            return
        self._listeners[address] = await self._listen(address)
        self._refresh_upstreams()

    async def remove_address(self, address: str) -> None:
        address = _checked_address(address, "DNS listen address")
        listener = self._listeners.pop(address, None)
        if listener is None:
            return
        listener.udp.close()
        listener.tcp.close()
        # asyncio.Server.close leaves open connections alone (Python < 3.13).
        for writer, local in list(self._tcp_writers.items()):
            if local == address:
                writer.close()
        await listener.tcp.wait_closed()
        self._refresh_upstreams()

    async def set_addresses(self, addresses: Iterable[str]) -> None:
        """Listen on exactly these addresses (the ones already bound stay bound). An
        address it cannot listen on does not keep it from the others: one
        FailedPrecondition names them all at the end."""
        wanted = {_checked_address(a, "DNS listen address") for a in addresses}
        for address in self.listen_addresses - wanted:
            await self.remove_address(address)
        failures = []
        for address in sorted(wanted - self.listen_addresses):
            try:
                await self.add_address(address)
            except FailedPrecondition as exc:
                failures.append(exc.message)
        if failures:
            raise FailedPrecondition("; ".join(failures))

    def update_view(self, view: DnsView) -> None:
        # One reference swap: a query sees the old view or the new one, never a mix.
        self._view = view

    async def _listen(self, address: str) -> _Listener:
        port = self._settings.port
        try:
            udp = _UdpSocket.bind(self, address, port)
        except OSError as exc:
            raise _cannot_listen(address, port, "UDP", exc) from exc
        try:
            tcp = await asyncio.start_server(self._serve_tcp, address, port, reuse_address=True)
        except OSError as exc:
            udp.close()
            raise _cannot_listen(address, port, "TCP", exc) from exc
        return _Listener(udp, tcp)

    def _refresh_upstreams(self) -> None:
        own = self._listeners.keys()
        port = self._settings.port
        self._usable_upstreams = tuple(
            u for u in self._upstreams if not (u.address in own and u.port == port)
        )

    # -- queries ------------------------------------------------------------------------

    def _handle(self, data: bytes, client: str, udp: bool) -> bytes | _Forward | None:
        """The reply to data, a query to forward, or None to drop it."""
        simple = parse_simple_query(data)
        if simple is None:
            return self._handle_with_dnslib(data, client, udp)
        resolution = answer(self._view, simple.name, simple.qtype, client)
        if resolution.outcome is Outcome.FORWARD:
            return _Forward(partial(encode_error, simple, RCODE_SERVFAIL))
        if resolution.outcome is Outcome.NXDOMAIN:
            self.stats.nxdomain += 1
            rcode = RCODE_NXDOMAIN
        else:
            self.stats.answered += 1
            rcode = RCODE_NOERROR
        limit = CLASSIC_UDP_PAYLOAD if udp else _MAX_MESSAGE
        reply = encode_answer(simple, rcode, _shuffled(resolution.addresses), resolution.ttl, limit)
        if reply[2] & (FLAG_TC >> 8):
            self.stats.truncated += 1
        return reply

    def _handle_with_dnslib(self, data: bytes, client: str, udp: bool) -> bytes | _Forward | None:
        """Any query the fast path does not read (EDNS, unusual names, errors)."""
        try:
            request = DNSRecord.parse(data)
        except Exception as exc:  # dnslib raises many kinds on garbage
            self.stats.dropped += 1
            log.debug("dropped a malformed DNS packet from %s: %s", client, exc)
            return None
        header = request.header
        if header.qr:
            self.stats.dropped += 1
            log.debug("dropped a DNS response sent to the server by %s", client)
            return None
        if header.opcode != _OPCODE_QUERY:
            return _error_reply(request, RCODE.NOTIMP)
        if len(request.questions) != 1:
            return _error_reply(request, RCODE.FORMERR)
        question = request.questions[0]
        if question.qclass != CLASS.IN:
            return _Forward(partial(_error_reply, request, RCODE.SERVFAIL))
        resolution = answer(self._view, str(question.qname), question.qtype, client)
        if resolution.outcome is Outcome.FORWARD:
            return _Forward(partial(_error_reply, request, RCODE.SERVFAIL))
        return self._local_reply(request, resolution, udp)

    def _local_reply(self, request: Any, resolution: Resolution, udp: bool) -> bytes:
        reply = request.reply(ra=1, aa=1)
        if resolution.outcome is Outcome.NXDOMAIN:
            self.stats.nxdomain += 1
            reply.header.rcode = RCODE.NXDOMAIN
        else:
            self.stats.answered += 1
            _add_addresses(reply, request.q.qname, resolution)
        client_edns = _edns_of(request)
        if client_edns is not None:
            reply.add_ar(EDNS0(udp_len=EDNS_UDP_PAYLOAD))
        packed = bytes(reply.pack())  # dnslib packs into a bytearray
        if udp and len(packed) > _udp_limit(client_edns):
            self.stats.truncated += 1
            reply.rr = []
            reply.header.tc = 1
            packed = bytes(reply.pack())
        return packed

    async def _forward(self, forward: _Forward, data: bytes, udp: bool) -> bytes:
        """The upstream's reply to data, or SERVFAIL (busy, no upstream, timeout)."""
        if self._forward_slots.locked():
            self.stats.busy += 1
            self.stats.servfail += 1
            return forward.servfail()
        async with self._forward_slots:
            self.stats.forwarded += 1
            reply = await self._ask_upstreams(data, udp)
        if reply is None:
            self.stats.servfail += 1
            return forward.servfail()
        return reply

    async def _ask_upstreams(self, data: bytes, udp: bool) -> bytes | None:
        """The first upstream's reply, each upstream in turn getting an equal share of
        what is left of forward_timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.forward_timeout
        upstreams = self._usable_upstreams
        for index, upstream in enumerate(upstreams):
            share = (deadline - loop.time()) / (len(upstreams) - index)
            ask = _ask_udp(upstream, data) if udp else _ask_tcp(upstream, data)
            try:
                async with asyncio.timeout(share):
                    return await ask
            except (TimeoutError, OSError, EOFError) as exc:
                log.debug("DNS upstream %s:%d failed: %r", upstream.address, upstream.port, exc)
        return None

    # -- UDP ----------------------------------------------------------------------------

    def _on_datagram(self, udp: _UdpSocket, data: bytes, peer: Any) -> None:
        outcome = self._handle(data, peer[0], udp=True)
        if isinstance(outcome, bytes):
            udp.sendto(outcome, peer)
        elif outcome is not None:
            self._spawn(self._forward_datagram(udp, outcome, data, peer))

    async def _forward_datagram(
        self, udp: _UdpSocket, forward: _Forward, data: bytes, peer: Any
    ) -> None:
        reply = await self._forward(forward, data, udp=True)
        udp.sendto(reply, peer)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("DNS forwarding failed", exc_info=error)

    # -- TCP ----------------------------------------------------------------------------

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._tcp_writers) >= self._settings.max_tcp_connections:
            writer.close()
            return
        local = writer.get_extra_info("sockname")[0]
        client = writer.get_extra_info("peername")[0]
        self._tcp_writers[writer] = local
        try:
            while (data := await self._read_message(reader)) is not None:
                outcome = self._handle(data, client, udp=False)
                if isinstance(outcome, _Forward):
                    outcome = await self._forward(outcome, data, udp=False)
                if outcome is not None:
                    writer.write(len(outcome).to_bytes(2, "big") + outcome)
                    await writer.drain()
        except (OSError, EOFError):
            pass  # the client went away; nothing to answer
        finally:
            self._tcp_writers.pop(writer, None)
            writer.close()

    async def _read_message(self, reader: asyncio.StreamReader) -> bytes | None:
        """The next length-prefixed message; None when the client is done or idle."""
        try:
            async with asyncio.timeout(self._settings.tcp_idle_timeout):
                size = int.from_bytes(await reader.readexactly(2), "big")
                return await reader.readexactly(size)
        except (TimeoutError, EOFError):
            return None


class _UdpSocket:
    """A UDP socket read straight from the event loop's selector, in batches: asyncio's
    DatagramTransport cost about a third more CPU per query. A reply the kernel will
    not take at once is dropped, as a full network would drop it; the client asks again."""

    def __init__(self, server: EmbeddedDnsServer, sock: socket.socket) -> None:
        self._server = server
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._open = True
        self._loop.add_reader(sock.fileno(), self._read_ready)

    @classmethod
    def bind(cls, server: EmbeddedDnsServer, address: str, port: int) -> _UdpSocket:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((address, port))
        except OSError:
            sock.close()
            raise
        _enlarge_receive_buffer(sock)
        return cls(server, sock)

    @property
    def socket(self) -> socket.socket:
        return self._sock

    def _read_ready(self) -> None:
        for _ in range(_UDP_BATCH):
            try:
                data, peer = self._sock.recvfrom(_MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("DNS UDP receive failed: %s", exc)
                return
            self._server._on_datagram(self, data, peer)

    def sendto(self, data: bytes, peer: Any) -> None:
        if not self._open:
            return
        try:
            self._sock.sendto(data, peer)
        except OSError as exc:
            log.debug("DNS reply to %s lost: %s", peer[0], exc)

    def close(self) -> None:
        if self._open:
            self._open = False
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()


# -- messages ---------------------------------------------------------------------------


def _shuffled(addresses: tuple[str, ...]) -> tuple[str, ...]:
    """A different first address each time spreads clients that take the first one."""
    if len(addresses) < 2:
        return addresses
    return tuple(random.sample(addresses, len(addresses)))


def _add_addresses(reply: Any, qname: Any, resolution: Resolution) -> None:
    for address in _shuffled(resolution.addresses):
        if ":" in address:
            reply.add_answer(RR(qname, QTYPE.AAAA, rdata=AAAA(address), ttl=resolution.ttl))
        else:
            reply.add_answer(RR(qname, QTYPE.A, rdata=A(address), ttl=resolution.ttl))


def _edns_of(request: Any) -> Any:
    """The client's OPT record, or None."""
    for record in request.ar:
        if record.rtype == QTYPE.OPT:
            return record
    return None


def _udp_limit(client_edns: Any) -> int:
    if client_edns is None:
        return CLASSIC_UDP_PAYLOAD
    # An OPT record's class is the requester's UDP payload size (RFC 6891 6.1.2).
    return max(CLASSIC_UDP_PAYLOAD, min(int(client_edns.rclass), _MAX_MESSAGE))


def _error_reply(request: Any, rcode: int) -> bytes:
    """A reply with rcode and the request's questions as they came (none, one or more;
    dnslib's own reply() would make one up for a request without any)."""
    header = DNSHeader(id=request.header.id, bitmap=request.header.bitmap, qr=1, ra=1, aa=0)
    header.rcode = rcode
    return bytes(DNSRecord(header, questions=list(request.questions)).pack())


async def _ask_udp(upstream: Upstream, data: bytes) -> bytes:
    """upstream's reply to data, over a socket of its own (a fresh source port per
    query, connected, so only that upstream's datagrams are read)."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in upstream.address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, (upstream.address, upstream.port))
        await loop.sock_sendall(sock, data)
        while True:
            reply = await loop.sock_recv(sock, _MAX_MESSAGE)
            if reply[:2] == data[:2]:  # the same query id; anything else is stray
                return reply


async def _ask_tcp(upstream: Upstream, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(upstream.address, upstream.port)
    try:
        writer.write(len(data).to_bytes(2, "big") + data)
        await writer.drain()
        size = int.from_bytes(await reader.readexactly(2), "big")
        return await reader.readexactly(size)
    finally:
        writer.close()


def _enlarge_receive_buffer(sock: socket.socket) -> None:
    """Room for a burst of queries (the default holds about 200): the node's
    containers may all start asking at once. Past net.core.rmem_max only as root."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, UDP_RECEIVE_BUFFER)
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)


def _read_upstreams(path: Path) -> tuple[Upstream, ...]:
    try:
        text = path.read_text()
    except OSError as exc:
        log.warning("no DNS upstreams: cannot read %s: %s", path, exc.strerror)
        return ()
    return upstreams_from_resolv_conf(text)


def _cannot_listen(address: str, port: int, transport: str, exc: OSError) -> FailedPrecondition:
    reason = exc.strerror or str(exc)
    return FailedPrecondition(f"DNS cannot listen on {address} port {port} ({transport}): {reason}")


class FakeDnsServer:
    """A `DnsServer` for unit tests: no sockets; `resolve` answers as the real one decides."""

    def __init__(self, unavailable: Iterable[str] = ()) -> None:
        self.view = DnsView()
        self.started = False
        # Addresses add_address refuses, as the real server does when the address is not
        # on any interface or port 53 is taken there.
        self.unavailable = frozenset(unavailable)
        self._addresses: set[str] = set()

    @property
    def listen_addresses(self) -> frozenset[str]:
        return frozenset(self._addresses)

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False
        self._addresses.clear()

    async def add_address(self, address: str) -> None:
        address = _checked_address(address, "DNS listen address")
        if not self.started:
            raise FailedPrecondition("the DNS server is not started")
        if address in self.unavailable:
            raise FailedPrecondition(f"DNS cannot listen on {address} port {DNS_PORT}")
        self._addresses.add(address)

    async def remove_address(self, address: str) -> None:
        self._addresses.discard(_checked_address(address, "DNS listen address"))

    async def set_addresses(self, addresses: Iterable[str]) -> None:
        wanted = {_checked_address(a, "DNS listen address") for a in addresses}
        for address in self.listen_addresses - wanted:
            await self.remove_address(address)
        for address in sorted(wanted - self.listen_addresses):
            await self.add_address(address)

    def update_view(self, view: DnsView) -> None:
        self.view = view

    def resolve(self, qname: str, qtype: int, client_address: str) -> Resolution:
        return answer(self.view, qname, qtype, client_address)
