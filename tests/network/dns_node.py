"""A node's embedded DNS server in its own process, for namespace tests and the benchmark.

Run inside a lab host's namespace: ``python dns_node.py CONFIG.json``. It serves
the view of the config on its listen addresses (port 53), with a fake upstream
resolver on 127.0.0.53 in the same namespace (``example.test`` is 192.0.2.1,
every other name NXDOMAIN), named by a resolv.conf that also names the server's
own address (which the server must leave out). It prints ``ready`` once it
answers, and runs until killed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from warren.agent.network.dns import DnsSettings, EmbeddedDnsServer
from warren.agent.network.dns_view import (
    DnsClient,
    DnsNetwork,
    DnsService,
    DnsView,
    ServiceOnNetwork,
)
from warren.agent.network.dns_wire import (
    RCODE_NOERROR,
    RCODE_NXDOMAIN,
    encode_answer,
    parse_simple_query,
)

FAKE_UPSTREAM = "127.0.0.53"
UPSTREAM_ANSWER = ("example.test.", "192.0.2.1")


def view_to_json(view: DnsView) -> dict[str, Any]:
    return {
        "networks": [[n.id, n.name] for n in view.networks],
        "services": [
            {
                "name": s.name,
                "networks": [[e.network_id, e.vip, list(e.task_addresses)] for e in s.networks],
            }
            for s in view.services
        ],
        "clients": [[list(c.addresses), sorted(c.network_ids)] for c in view.clients],
    }


def view_from_json(data: dict[str, Any]) -> DnsView:
    return DnsView(
        networks=tuple(DnsNetwork(i, n) for i, n in data["networks"]),
        services=tuple(
            DnsService(
                s["name"], tuple(ServiceOnNetwork(i, v, tuple(t)) for i, v, t in s["networks"])
            )
            for s in data["services"]
        ),
        clients=tuple(DnsClient(tuple(a), frozenset(n)) for a, n in data["clients"]),
    )


def write_config(path: Path, view: DnsView, listen: list[str], **settings: float) -> Path:
    path.write_text(
        json.dumps({"view": view_to_json(view), "listen": listen, "settings": settings})
    )
    return path


def _upstream_reply(data: bytes) -> bytes:
    # The server's own fast path keeps this fake cheap (it shares the node's CPU).
    simple = parse_simple_query(data)
    if simple is not None:
        if simple.name.lower() + "." == UPSTREAM_ANSWER[0]:
            return encode_answer(simple, RCODE_NOERROR, (UPSTREAM_ANSWER[1],), 60, 65535)
        return encode_answer(simple, RCODE_NXDOMAIN, (), 60, 65535)
    request = DNSRecord.parse(data)
    reply = request.reply(ra=1, aa=0)
    if str(request.q.qname).lower() == UPSTREAM_ANSWER[0]:
        reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(UPSTREAM_ANSWER[1]), ttl=60))
    else:
        reply.header.rcode = RCODE.NXDOMAIN
    return bytes(reply.pack())


class _FakeUpstream(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(_upstream_reply(data), addr)


async def _fake_upstream_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    size = int.from_bytes(await reader.readexactly(2), "big")
    reply = _upstream_reply(await reader.readexactly(size))
    writer.write(len(reply).to_bytes(2, "big") + reply)
    await writer.drain()
    writer.close()


async def serve(config: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(_FakeUpstream, local_addr=(FAKE_UPSTREAM, 53))
    await asyncio.start_server(_fake_upstream_tcp, FAKE_UPSTREAM, 53)
    with tempfile.NamedTemporaryFile("w", suffix="resolv.conf", delete=False) as resolv:
        own = "".join(f"nameserver {a}\n" for a in config["listen"])
        resolv.write(f"{own}nameserver {FAKE_UPSTREAM}\n")
    settings = DnsSettings(resolv_conf=Path(resolv.name), **config["settings"])
    server = EmbeddedDnsServer(view_from_json(config["view"]), settings)
    await server.start()
    Path(resolv.name).unlink()
    await server.set_addresses(config["listen"])
    upstreams = [u.address for u in server.upstreams]
    print(f"ready upstreams={','.join(upstreams)}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(json.loads(Path(sys.argv[1]).read_text())))
