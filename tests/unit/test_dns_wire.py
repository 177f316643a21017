"""The DNS server's fast path (warren/agent/network/dns_wire.py), checked against
dnspython's reading of the same bytes."""

from __future__ import annotations

from ipaddress import ip_address

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
from hypothesis import given, settings
from hypothesis import strategies as st

from warren.agent.network.dns_wire import (
    RCODE_NXDOMAIN,
    RCODE_SERVFAIL,
    SimpleQuery,
    encode_answer,
    encode_error,
    parse_simple_query,
)

LABEL = st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True)
NAMES = st.lists(LABEL, min_size=1, max_size=5).map(".".join)
QTYPES = st.sampled_from(["A", "AAAA", "MX", "TXT", "ANY", "SRV"])
IPV4 = st.ip_addresses(v=4).map(str)
IPV6 = st.ip_addresses(v=6).map(lambda a: a.compressed)


def query(name: str, rdtype: str = "A", **options: object) -> bytes:
    return dns.message.make_query(name, rdtype, **options).to_wire()  # type: ignore[arg-type]


# No deadline: a loaded 2-core machine stalls examples, which says nothing of the code.
@settings(deadline=None)
@given(NAMES, QTYPES, st.booleans())
def test_a_plain_query_is_read_as_sent(name: str, rdtype: str, recursion: bool) -> None:
    message = dns.message.make_query(name, rdtype)
    if not recursion:
        message.flags &= ~dns.flags.RD
    parsed = parse_simple_query(message.to_wire())
    assert parsed is not None
    assert (parsed.id, parsed.name, parsed.qtype) == (
        message.id,
        name,
        dns.rdatatype.from_text(rdtype),
    )


@settings(deadline=None)
@given(NAMES, st.lists(st.one_of(IPV4, IPV6), max_size=8, unique=True), st.integers(0, 3600))
def test_an_answer_reads_back_as_a_reply_to_the_query(
    name: str, addresses: list[str], ttl: int
) -> None:
    message = dns.message.make_query(name, "ANY")
    parsed = parse_simple_query(message.to_wire())
    assert parsed is not None
    wire = encode_answer(parsed, 0, tuple(addresses), ttl, limit=65535)
    reply = dns.message.from_wire(wire)
    assert message.is_response(reply)
    assert reply.flags & dns.flags.AA and reply.flags & dns.flags.RD
    assert reply.rcode() == dns.rcode.NOERROR
    found = [(ip_address(rr.address), rrset.ttl) for rrset in reply.answer for rr in rrset]
    assert sorted(found, key=str) == sorted(((ip_address(a), ttl) for a in addresses), key=str)
    assert all(rrset.name == dns.name.from_text(name) for rrset in reply.answer)


def test_the_clients_letter_case_comes_back() -> None:
    parsed = parse_simple_query(query("wEb.FrOnT"))
    assert parsed is not None
    reply = dns.message.from_wire(encode_answer(parsed, 0, ("10.0.0.1",), 5, 512))
    assert reply.question[0].name.to_text() == "wEb.FrOnT."


def test_past_the_limit_the_reply_is_truncated_with_the_question() -> None:
    parsed = parse_simple_query(query("tasks.big"))
    assert parsed is not None
    addresses = tuple(f"10.1.1.{i}" for i in range(40))
    wire = encode_answer(parsed, 0, addresses, 5, limit=512)
    assert len(wire) <= 512
    reply = dns.message.from_wire(wire)
    assert reply.flags & dns.flags.TC
    assert reply.answer == []
    assert reply.question[0].name.to_text() == "tasks.big."
    full = dns.message.from_wire(encode_answer(parsed, 0, addresses, 5, limit=65535))
    assert len(full.answer[0]) == 40


def test_errors_and_nxdomain() -> None:
    message = dns.message.make_query("nothing.warren.internal", "A")
    parsed = parse_simple_query(message.to_wire())
    assert parsed is not None
    nxdomain = dns.message.from_wire(encode_answer(parsed, RCODE_NXDOMAIN, (), 5, 512))
    assert nxdomain.rcode() == dns.rcode.NXDOMAIN and nxdomain.flags & dns.flags.AA
    servfail = dns.message.from_wire(encode_error(parsed, RCODE_SERVFAIL))
    assert message.is_response(servfail)
    assert servfail.rcode() == dns.rcode.SERVFAIL and not servfail.flags & dns.flags.AA


def test_anything_unusual_is_left_to_dnslib() -> None:
    plain = query("web")
    response = bytearray(plain)
    response[2] |= 0x80  # QR: a response
    notify = bytearray(plain)
    notify[2] |= 4 << 3  # opcode NOTIFY
    unusual = [
        b"",
        plain[:11],
        plain[:-1],  # short by a byte
        plain + b"\0",  # trailing garbage
        bytes(response),
        bytes(notify),
        query("web", use_edns=0),  # an OPT record
        query("web", "A", rdclass="CH"),
        query("we b.front"),  # a space in a label
        plain[:12] + b"\x05caf\xc3\xa9\x00" + plain[-4:],  # raw UTF-8 in a label
        plain[:12] + b"\xc0\x0c" + plain[-4:],  # a compression pointer as the name
        plain[:4] + b"\x00\x02" + plain[6:],  # two questions announced
    ]
    for packet in unusual:
        assert parse_simple_query(bytes(packet)) is None, packet
    # An internationalized name arrives as IDNA (xn--...): plain letters.
    parsed = parse_simple_query(query("caf\u00e9"))
    assert parsed is not None and parsed.name == "xn--caf-dma"


@settings(deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data: bytes) -> None:
    parsed = parse_simple_query(data)
    if parsed is not None:
        assert isinstance(parsed, SimpleQuery)
        encode_answer(parsed, 0, ("10.0.0.1",), 5, 512)
