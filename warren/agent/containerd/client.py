"""A gRPC client for containerd's API, speaking Warren's errors.

Every call carries the ``containerd-namespace`` header (containerd keeps each
namespace's containers, images and snapshots apart), and, where a caller asks
for one, a ``containerd-lease`` header that shields new content and snapshots
from the garbage collector until they are referenced.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from warren.agent.containerd.proto import (
    containers_pb2_grpc,
    content_pb2_grpc,
    diff_pb2_grpc,
    events_pb2_grpc,
    images_pb2_grpc,
    leases_pb2_grpc,
    snapshots_pb2_grpc,
    tasks_pb2_grpc,
)
from warren.core.errors import (
    AlreadyExists,
    NotFound,
    RuntimeFailure,
    Unavailable,
    WarrenError,
)

DEFAULT_SOCKET = "/run/containerd/containerd.sock"
DEFAULT_NAMESPACE = "warren"
# Image configs and manifests are small, but a content read returns up to
# 1 MiB per message; leave headroom above gRPC's 4 MiB default.
_MAX_MESSAGE = 16 * 2**20

Metadata = tuple[tuple[str, str], ...]
Request = TypeVar("Request", bound=Message)
Response = TypeVar("Response", bound=Message)


class _Stubs:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.containers = containers_pb2_grpc.ContainersStub(channel)
        self.tasks = tasks_pb2_grpc.TasksStub(channel)
        self.images = images_pb2_grpc.ImagesStub(channel)
        self.content = content_pb2_grpc.ContentStub(channel)
        self.snapshots = snapshots_pb2_grpc.SnapshotsStub(channel)
        self.diff = diff_pb2_grpc.DiffStub(channel)
        self.leases = leases_pb2_grpc.LeasesStub(channel)
        self.events = events_pb2_grpc.EventsStub(channel)


class ContainerdClient:
    def __init__(self, socket: str = DEFAULT_SOCKET, namespace: str = DEFAULT_NAMESPACE) -> None:
        self.socket = socket
        self.namespace = namespace
        self._channel: grpc.aio.Channel | None = None
        self._stubs: _Stubs | None = None

    @property
    def api(self) -> _Stubs:
        # Created on first use: a grpc.aio channel belongs to the running loop.
        if self._stubs is None:
            self._channel = grpc.aio.insecure_channel(
                f"unix://{self.socket}",
                options=[
                    ("grpc.max_receive_message_length", _MAX_MESSAGE),
                    ("grpc.max_send_message_length", _MAX_MESSAGE),
                ],
            )
            self._stubs = _Stubs(self._channel)
        return self._stubs

    def metadata(self, lease: str | None = None) -> Metadata:
        pairs = [("containerd-namespace", self.namespace)]
        if lease:
            pairs.append(("containerd-lease", lease))
        return tuple(pairs)

    async def call(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[Request, Response],
        request: Request,
        *,
        lease: str | None = None,
        timeout: float | None = None,
    ) -> Response:
        with self.translated():
            return await method(request, metadata=self.metadata(lease), timeout=timeout)

    async def stream(
        self,
        method: grpc.aio.UnaryStreamMultiCallable[Request, Response],
        request: Request,
        *,
        lease: str | None = None,
    ) -> AsyncIterator[Response]:
        """The responses of a server-streaming call, errors translated."""
        with self.translated():
            async for response in method(request, metadata=self.metadata(lease)):
                yield response

    @contextlib.contextmanager
    def translated(self) -> Iterator[None]:
        try:
            yield
        except grpc.aio.AioRpcError as exc:
            raise self.error(exc) from None

    def error(self, exc: grpc.aio.AioRpcError) -> WarrenError:
        details = exc.details() or str(exc.code())
        code = exc.code()
        if code == grpc.StatusCode.NOT_FOUND:
            return NotFound(details)
        if code == grpc.StatusCode.ALREADY_EXISTS:
            return AlreadyExists(details)
        if code == grpc.StatusCode.UNAVAILABLE:
            return Unavailable(f"containerd is not reachable at {self.socket}: {details}")
        return RuntimeFailure(f"containerd: {details}")

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel = None
        self._stubs = None
