"""Warren errors rebuilt from real gRPC failures, sync and grpc.aio alike.

The two stacks hand trailing metadata over differently (namedtuples from sync
calls, a ``Metadata`` of plain tuples from grpc.aio); both must give back the
error code and the leader hint a manager set.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
import pytest

from warren.core.errors import NotFound, Unavailable
from warren.proto import warren_pb2 as pb
from warren.proto import warren_pb2_grpc as pb_grpc
from warren.proto.errors import (
    ERROR_CODE_KEY,
    LEADER_KEY,
    error_from_rpc,
    leader_hint,
    trailing_metadata,
)

TRAILERS = (
    (ERROR_CODE_KEY, "not_found"),
    (LEADER_KEY, "10.0.0.1:2377"),
    ("extra-bin", b"\x00\xff"),  # binary entries are not text: left out
)


class Refusing(pb_grpc.ControlServicer):
    def GetService(self, request: pb.ServiceRef, context: Any) -> pb.Service:
        context.set_trailing_metadata(TRAILERS)
        context.abort(grpc.StatusCode.NOT_FOUND, f"service '{request.service}' not found")
        raise AssertionError("abort returns only by raising")

    def ListServices(self, request: pb.Empty, context: Any) -> pb.ListServicesResponse:
        context.abort(grpc.StatusCode.UNAVAILABLE, "no leader\nsecond line")
        raise AssertionError("abort returns only by raising")


class AsyncRefusing(pb_grpc.ControlServicer):
    async def GetService(self, request: pb.ServiceRef, context: Any) -> pb.Service:
        context.set_trailing_metadata(TRAILERS)
        await context.abort(grpc.StatusCode.NOT_FOUND, f"service '{request.service}' not found")
        raise AssertionError("abort returns only by raising")


@pytest.fixture
def sync_address() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_ControlServicer_to_server(Refusing(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


@pytest.fixture
async def async_address() -> AsyncIterator[str]:
    server = grpc.aio.server()
    pb_grpc.add_ControlServicer_to_server(AsyncRefusing(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def _assert_refusal(exc: grpc.RpcError) -> None:
    assert trailing_metadata(exc) == {ERROR_CODE_KEY: "not_found", LEADER_KEY: "10.0.0.1:2377"}
    assert leader_hint(exc) == "10.0.0.1:2377"
    error = error_from_rpc(exc)
    assert isinstance(error, NotFound)
    assert str(error) == "service 'web' not found"


def test_sync_call_error_keeps_code_and_leader(sync_address: str) -> None:
    with grpc.insecure_channel(sync_address) as channel:
        stub = pb_grpc.ControlStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.GetService(pb.ServiceRef(service="web"), timeout=5)
    _assert_refusal(raised.value)


def test_error_without_trailers_maps_the_status(sync_address: str) -> None:
    with grpc.insecure_channel(sync_address) as channel:
        stub = pb_grpc.ControlStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.ListServices(pb.Empty(), timeout=5)
    assert trailing_metadata(raised.value) == {}
    assert leader_hint(raised.value) is None
    error = error_from_rpc(raised.value)
    assert isinstance(error, Unavailable)
    assert str(error) == "no leader"


async def test_aio_call_error_keeps_code_and_leader(async_address: str) -> None:
    async with grpc.aio.insecure_channel(async_address) as channel:
        stub = pb_grpc.ControlStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.GetService(pb.ServiceRef(service="web"), timeout=5)
    _assert_refusal(raised.value)
