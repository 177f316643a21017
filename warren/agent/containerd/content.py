"""containerd's content store: content-addressed blobs (manifests, configs, layers)."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Mapping

from warren.agent.containerd.client import ContainerdClient
from warren.agent.containerd.proto import content_pb2
from warren.core.errors import AlreadyExists, NotFound, RuntimeFailure

# containerd answers every write message; batching keeps the round trips few.
_WRITE_BATCH = 1 << 20


class ContentStore:
    def __init__(self, client: ContainerdClient) -> None:
        self._client = client

    async def labels(self, digest: str) -> dict[str, str] | None:
        """The blob's labels; None when the blob is not in the store."""
        request = content_pb2.InfoRequest(digest=digest)
        try:
            response = await self._client.call(self._client.api.content.Info, request)
        except NotFound:
            return None
        return dict(response.info.labels)

    async def set_labels(self, digest: str, labels: Mapping[str, str]) -> None:
        """Add ``labels`` to the blob's, keeping the others."""
        info = content_pb2.Info(digest=digest, labels=dict(labels))
        request = content_pb2.UpdateRequest(info=info)
        request.update_mask.paths.extend(f"labels.{key}" for key in labels)
        await self._client.call(self._client.api.content.Update, request)

    async def ensure(
        self,
        digest: str,
        size: int,
        chunks: AsyncIterable[bytes],
        labels: Mapping[str, str],
        lease: str,
    ) -> None:
        """Store the blob unless present; either way it ends up with ``labels``."""
        existing = await self.labels(digest)
        if existing is None:
            try:
                await self._write(digest, size, chunks, labels, lease)
                return
            except AlreadyExists:
                existing = {}  # written meanwhile by someone else
        missing = {k: v for k, v in labels.items() if existing.get(k) != v}
        if missing:
            await self.set_labels(digest, missing)

    async def read(self, digest: str) -> bytes:
        request = content_pb2.ReadContentRequest(digest=digest)
        parts = [
            response.data
            async for response in self._client.stream(self._client.api.content.Read, request)
        ]
        return b"".join(parts)

    async def _write(
        self,
        digest: str,
        size: int,
        chunks: AsyncIterable[bytes],
        labels: Mapping[str, str],
        lease: str,
    ) -> None:
        # Written message by message (not from a request iterator): an error
        # in ``chunks``, such as a digest mismatch, must reach the caller, and
        # grpc.aio turns one raised inside a request iterator into a cancel.
        call = self._client.api.content.Write(metadata=self._client.metadata(lease))
        response: object = None
        try:
            with self._client.translated():
                async for request in _write_requests(digest, size, chunks, labels):
                    await call.write(request)
                    response = await call.read()
                await call.done_writing()
        finally:
            call.cancel()
        # read() gives grpc.aio.EOF instead of a response if containerd closed the stream.
        if not isinstance(response, content_pb2.WriteContentResponse):
            raise RuntimeFailure(f"content store closed the write of {digest} before its commit")
        if response.digest != digest:
            raise RuntimeFailure(f"content store committed {response.digest}, not {digest}")


async def _write_requests(
    digest: str, size: int, chunks: AsyncIterable[bytes], labels: Mapping[str, str]
) -> AsyncIterator[content_pb2.WriteContentRequest]:
    # The ref names the upload; one per digest lets an interrupted write be
    # replaced by the next attempt instead of colliding with it.
    ref = f"warren-{digest}"
    offset = 0
    async for batch in _batched(chunks):
        yield content_pb2.WriteContentRequest(
            action=content_pb2.WRITE,
            ref=ref,
            total=size,
            expected=digest,
            offset=offset,
            data=batch,
        )
        offset += len(batch)
    if offset != size:
        raise RuntimeFailure(f"blob {digest}: got {offset} bytes, expected {size}")
    # The commit must carry offset == total: containerd truncates the blob to
    # the offset of every write message, data or not.
    yield content_pb2.WriteContentRequest(
        action=content_pb2.COMMIT,
        ref=ref,
        total=size,
        expected=digest,
        offset=size,
        labels=dict(labels),
    )


async def _batched(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    buffer = bytearray()
    async for chunk in chunks:
        buffer += chunk
        if len(buffer) >= _WRITE_BATCH:
            yield bytes(buffer)
            buffer.clear()
    if buffer:
        yield bytes(buffer)


async def single(data: bytes) -> AsyncIterator[bytes]:
    """``data`` as a one-chunk stream, for blobs already in memory."""
    yield data
