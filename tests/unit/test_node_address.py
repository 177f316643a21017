"""A node's address in `node ls`: what it registers, else where its session comes from."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from factories import make_node

from warren.core.models import Cluster
from warren.manager.consensus import LocalConsensus
from warren.manager.dispatcher import Dispatcher
from warren.manager.events import EventBus
from warren.manager.grpc_api import session_messages
from warren.manager.store import Kind, Store
from warren.proto import warren_pb2 as pb


async def _register_only(register: pb.Register) -> AsyncIterator[pb.WorkerMessage]:
    yield pb.WorkerMessage(register=register)


async def _address_after_session(register: pb.Register, peer_address: str) -> str:
    store = Store()
    store.load([Cluster(id="c1", ca_fingerprint="fp"), make_node("n1")])
    consensus = LocalConsensus(store)
    await consensus.start()
    dispatcher = Dispatcher(consensus, EventBus(store, asyncio.get_running_loop()), 1.0, list)
    session = session_messages(dispatcher, "n1", _register_only(register), peer_address)
    first = await anext(session)
    assert first.WhichOneof("message") == "session"
    await session.aclose()
    return str(store.get(Kind.NODE, "n1").address)


@pytest.mark.parametrize(
    ("registered", "peer", "shown"),
    [
        # A worker registers no address: the one its session comes from.
        ("", "10.0.0.7", "10.0.0.7"),
        # A manager's local agent registers the manager's advertised address.
        ("10.0.0.1", "127.0.0.1", "10.0.0.1"),
        # Not over IP (a Unix socket): nothing better than what the node had.
        ("", "", ""),
    ],
)
async def test_a_registered_node_has_an_address(registered: str, peer: str, shown: str) -> None:
    register = pb.Register(hostname="w1", address=registered)
    assert await _address_after_session(register, peer) == shown
