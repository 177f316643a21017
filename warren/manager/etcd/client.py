"""A typed asyncio client for the one etcd member a manager runs.

The wire code is aetcd's generated gRPC stubs (etcd's v3 API, learners
included); aetcd's own client is not used because it has neither learner
calls nor types. Every gRPC error becomes a Warren error here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from aetcd import rpc

from warren.core.errors import FailedPrecondition, Unavailable, WarrenError

# A snapshot of a large cluster travels in one message.
_MAX_MESSAGE = 64 * 1024 * 1024
_PUT = 0  # mvccpb.Event.EventType.PUT


class Compacted(WarrenError):
    """The revision asked for is older than etcd's compaction."""

    code = "unavailable"

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"etcd history is compacted up to revision {compact_revision}")
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class MemberStatus:
    member_id: int
    leader_id: int  # 0 while there is none
    raft_term: int
    revision: int
    is_learner: bool


@dataclass(frozen=True)
class EtcdMemberInfo:
    member_id: int
    name: str  # empty until the member has started
    peer_urls: tuple[str, ...]
    is_learner: bool


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    mod_revision: int


@dataclass(frozen=True)
class WatchEvent:
    key: bytes
    value: bytes
    revision: int
    deleted: bool


def _convert(exc: grpc.aio.AioRpcError, what: str) -> WarrenError:
    code, detail = exc.code(), exc.details() or ""
    if "compacted" in detail:
        return Compacted(0)
    if "learner" in detail:
        # A joining manager's member, until the leader promotes it.
        return Unavailable(f"{what}: this manager's etcd member is still catching up (a learner)")
    if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT):
        return FailedPrecondition(f"{what}: {detail}")
    return Unavailable(f"{what}: etcd {code.name.lower()}: {detail}")


def _member(raw: Any) -> EtcdMemberInfo:
    return EtcdMemberInfo(int(raw.ID), str(raw.name), tuple(raw.peerURLs), bool(raw.isLearner))


class EtcdClient:
    """One TLS channel to the local member (its loopback client endpoint)."""

    def __init__(self, endpoint: str, ca: bytes, cert: bytes, key: bytes) -> None:
        credentials = grpc.ssl_channel_credentials(ca, key, cert)
        self._channel = grpc.aio.secure_channel(
            endpoint,
            credentials,
            options=[
                ("grpc.max_receive_message_length", _MAX_MESSAGE),
                ("grpc.max_send_message_length", _MAX_MESSAGE),
                # Quick reconnects: the member restarts under a supervisor.
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 500),
            ],
        )
        self._kv = rpc.KVStub(self._channel)
        self._watch = rpc.WatchStub(self._channel)
        self._cluster = rpc.ClusterStub(self._channel)
        self._maintenance = rpc.MaintenanceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def put(self, key: bytes, value: bytes, timeout: float) -> int:
        """Returns the revision the put committed at."""
        try:
            response = await self._kv.Put(rpc.PutRequest(key=key, value=value), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise _convert(exc, "etcd put") from None
        return int(response.header.revision)

    async def put_if_unchanged(
        self, key: bytes, value: bytes, mod_revision: int, timeout: float
    ) -> bool:
        """Put only if ``key`` was last written at ``mod_revision`` (0: absent)."""
        compare = rpc.Compare(
            result=rpc.Compare.EQUAL,
            target=rpc.Compare.MOD,
            key=key,
            mod_revision=mod_revision,
        )
        success = rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value))
        request = rpc.TxnRequest(compare=[compare], success=[success])
        try:
            response = await self._kv.Txn(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise _convert(exc, "etcd transaction") from None
        return bool(response.succeeded)

    async def get(self, key: bytes, timeout: float, local: bool = False) -> KeyValue | None:
        """``local``: a serializable read of this member's copy (no quorum needed)."""
        request = rpc.RangeRequest(key=key, serializable=local)
        try:
            response = await self._kv.Range(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise _convert(exc, "etcd get") from None
        if not response.kvs:
            return None
        kv = response.kvs[0]
        return KeyValue(bytes(kv.key), bytes(kv.value), int(kv.mod_revision))

    async def last_write(self, key: bytes, timeout: float) -> int:
        """The revision ``key`` was last written at (0: never), read through a
        quorum: a linearizable read, without the value."""
        request = rpc.RangeRequest(key=key, keys_only=True)
        try:
            response = await self._kv.Range(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise _convert(exc, "etcd read barrier") from None
        return int(response.kvs[0].mod_revision) if response.kvs else 0

    async def compact(self, revision: int, timeout: float) -> None:
        try:
            await self._kv.Compact(rpc.CompactionRequest(revision=revision), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if "compacted" in (exc.details() or ""):
                return  # someone compacted past it already
            raise _convert(exc, "etcd compaction") from None

    async def watch(self, key: bytes, start_revision: int) -> AsyncIterator[list[WatchEvent]]:
        """Batches of events on ``key`` from ``start_revision``, in revision order.

        Raises ``Compacted`` when that revision is gone, ``Unavailable`` when
        the stream breaks."""
        create = rpc.WatchCreateRequest(key=key, start_revision=start_revision)
        call = self._watch.Watch()
        try:
            await call.write(rpc.WatchRequest(create_request=create))
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    raise Unavailable("etcd watch ended")
                if response.compact_revision:
                    raise Compacted(int(response.compact_revision))
                if response.canceled:
                    raise Unavailable(f"etcd watch cancelled: {response.cancel_reason}")
                if response.events:
                    yield [
                        WatchEvent(
                            bytes(e.kv.key),
                            bytes(e.kv.value),
                            int(e.kv.mod_revision),
                            e.type != _PUT,
                        )
                        for e in response.events
                    ]
        except grpc.aio.AioRpcError as exc:
            raise _convert(exc, "etcd watch") from None
        finally:
            call.cancel()

    async def status(self, timeout: float) -> MemberStatus:
        try:
            response = await self._maintenance.Status(rpc.StatusRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise _convert(exc, "etcd status") from None
        return MemberStatus(
            member_id=int(response.header.member_id),
            leader_id=int(response.leader),
            raft_term=int(response.raftTerm),
            revision=int(response.header.revision),
            is_learner=bool(response.isLearner),
        )

    async def members(self, timeout: float) -> list[EtcdMemberInfo]:
        try:
            response = await self._cluster.MemberList(rpc.MemberListRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise _convert(exc, "etcd member list") from None
        return [_member(m) for m in response.members]

    async def add_learner(self, peer_url: str, timeout: float) -> list[EtcdMemberInfo]:
        """Add a non-voting member; returns the members afterwards."""
        request = rpc.MemberAddRequest(peerURLs=[peer_url], isLearner=True)
        try:
            response = await self._cluster.MemberAdd(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise _convert(exc, "adding an etcd member") from None
        return [_member(m) for m in response.members]

    async def promote(self, member_id: int, timeout: float) -> None:
        """Make a learner a voter; ``FailedPrecondition`` until it has caught up."""
        try:
            await self._cluster.MemberPromote(
                rpc.MemberPromoteRequest(ID=member_id), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise _convert(exc, "promoting an etcd learner") from None

    async def remove(self, member_id: int, timeout: float) -> None:
        try:
            await self._cluster.MemberRemove(rpc.MemberRemoveRequest(ID=member_id), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise _convert(exc, "removing an etcd member") from None
