"""Warren's replicated log on etcd: the real ``Consensus`` implementation.

etcd gives the order and the delivery; Warren keeps its design. A proposal is
one put of the log key: its etcd revision is its place in the log. Every
manager watches the log key through its own member and applies the entries in
revision order to its store (``log_entry.apply_entry``), so the store stays a
deterministic projection of one ordered log. A proposal returns once its entry
is committed and applied here, with the result the apply step gave.

Leadership follows etcd's Raft leader: the manager whose member leads claims
that Raft term in the log, then runs the controllers and tags its writes with
the term; the apply step refuses tagged writes of any other term (fencing). A
manager steps down as soon as its member stops leading: etcd's check-quorum
makes a cut-off leader step down within one election timeout.

The leader writes a state image every ``image_every`` entries and then
compacts etcd's history up to the image before it, so replay and etcd's
history stay bounded while a manager a little behind still resumes from the
log; one further behind loads the latest image.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import OrderedDict
from typing import Any, Protocol

from warren.core.errors import FailedPrecondition, NotLeader, Unavailable, WarrenError
from warren.core.formats import COMMAND_FORMAT
from warren.manager.command_format import CommandEncoder
from warren.manager.consensus import LeadershipListener, Member
from warren.manager.etcd import state_image
from warren.manager.etcd.client import Compacted, EtcdClient, EtcdMemberInfo, MemberStatus
from warren.manager.etcd.log_entry import FENCED, Ledger, apply_entry, claim_entry, command_entry
from warren.manager.etcd.state_image import Fence
from warren.manager.store import Store

log = logging.getLogger(__name__)

LOG_KEY = b"/warren/log"
IMAGE_KEY = b"/warren/state-image"

_KEPT_RESULTS = 20_000  # results of recent entries, for proposals still waiting
_PUT_CHECK = 0.25  # how often an unanswered put looks for a new term to copy it into
_MEMBERS_PERIOD = 0.5  # member list, reachability and learner promotion
_PEER_PROBE_TIMEOUT = 0.3


class MemberProcess(Protocol):
    """The etcd member this manager runs (``warren.manager.etcd.member``)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    @property
    def client_endpoint(self) -> str: ...

    @property
    def client_tls(self) -> tuple[bytes, bytes, bytes]: ...


def member_address(member: EtcdMemberInfo) -> str:
    """A member's Raft address: its name once started, else its peer URL's host:port."""
    if member.name:
        return member.name
    url = member.peer_urls[0] if member.peer_urls else ""
    return url.split("://", 1)[-1]


class EtcdConsensus:
    def __init__(
        self,
        store: Store,
        self_address: str,
        member: MemberProcess,
        *,
        max_format: int = COMMAND_FORMAT,
        image_every: int = 10_000,
        status_period: float = 0.05,
    ) -> None:
        self.store = store
        self.self_address = self_address
        self._member = member
        self._encoder = CommandEncoder(store, max_format)
        self._image_every = image_every
        self._status_period = status_period
        self._client: EtcdClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._listeners: list[LeadershipListener] = []
        # The apply side.
        self._applied = 0  # etcd revision of the last entry applied (or imaged)
        self._fence = Fence()
        self._ledger = Ledger()
        self._results: OrderedDict[int, Any] = OrderedDict()
        self._progress = asyncio.Condition()
        self._since_image = 0
        self._image_task: asyncio.Task[None] | None = None
        # The leadership side.
        self._status: MemberStatus | None = None
        self._leading = False
        self._term = 0
        self._claim_task: asyncio.Task[None] | None = None
        self._members: list[EtcdMemberInfo] = []
        self._reachable: dict[str, bool] = {}
        self._failure: str | None = None
        self._client_endpoint = ""
        self._retired: list[EtcdClient] = []

    # -- life cycle ------------------------------------------------------------------

    async def start(self) -> None:
        await self._member.start()
        self._client = self._new_client()
        self._tasks = [
            asyncio.create_task(self._follow(), name="etcd-follow"),
            asyncio.create_task(self._watch_status(), name="etcd-status"),
            asyncio.create_task(self._keep_members(), name="etcd-members"),
        ]

    async def stop(self) -> None:
        self._set_leading(False)
        tasks = [*self._tasks, self._claim_task, self._image_task]
        self._tasks, self._claim_task, self._image_task = [], None, None
        for task in tasks:
            if task is not None:
                task.cancel()
        for task in tasks:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        clients = [*self._retired, *([self._client] if self._client is not None else [])]
        self._client, self._retired = None, []
        for client in clients:
            await client.close()
        await self._member.stop()

    def fail(self, reason: str) -> None:
        """The member is gone for good: serve nothing more from it."""
        self._failure = reason
        self._set_leading(False)

    def _new_client(self) -> EtcdClient:
        self._client_endpoint = self._member.client_endpoint
        return EtcdClient(self._client_endpoint, *self._member.client_tls)

    def _running(self) -> EtcdClient:
        if self._failure is not None:
            raise Unavailable(f"this manager's etcd member failed: {self._failure}")
        if self._client is None:
            raise Unavailable("consensus is not running")
        if self._member.client_endpoint != self._client_endpoint:
            # Restarted on another port (its own was taken meanwhile).
            # The old channel is closed at stop: closing it now would cancel
            # the calls still on it (a watch, a status) as if their tasks were.
            self._retired.append(self._client)
            self._client = self._new_client()
            log.info("the etcd member moved to %s", self._client_endpoint)
        return self._client

    # -- proposals -------------------------------------------------------------------

    async def propose(self, command: dict[str, Any], timeout: float = 10.0) -> Any:
        client = self._running()
        term = self._term if self._leading else 0
        entry = command_entry(self._encoder.encode(command), term, secrets.token_hex(12))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout(timeout):
                revision = await self._put_until_committed(client, entry, deadline)
                result = await self._result_of(revision)
        except TimeoutError:
            raise Unavailable(f"write not committed within {timeout:g}s (no quorum?)") from None
        if isinstance(result, dict) and result.get(FENCED):
            raise NotLeader(str(result["message"]))
        return result

    async def _put_until_committed(self, client: EtcdClient, entry: bytes, deadline: float) -> int:
        """Put ``entry`` until a put answers; returns the revision it committed at.

        A put sent while etcd elects a leader is dropped without an answer
        (etcd gives up on it after ~6 s). So when a put has gone unanswered for
        a while and etcd's term has moved on since it was sent (an election
        happened), a copy is sent too, and whichever answers first wins; the
        entry's proposal ID makes a later copy apply as a no-op with the first
        one's result. A put that is only slow (an overloaded cluster, same term)
        is not copied: copies would add to the load."""
        loop = asyncio.get_running_loop()
        puts: set[asyncio.Task[int]] = set()
        sent_in_term = -1
        try:
            while True:
                term = self._status.raft_term if self._status is not None else -1
                if not puts or (term != sent_in_term and term != -1):
                    puts.add(loop.create_task(client.put(LOG_KEY, entry, deadline - loop.time())))
                    sent_in_term = term
                done, puts = await asyncio.wait(
                    puts, timeout=_PUT_CHECK, return_when=asyncio.FIRST_COMPLETED
                )
                for put in done:
                    error = put.exception()
                    if error is None:
                        return put.result()
                    if not isinstance(error, Unavailable):
                        raise error
                    log.debug("log put failed (%s): sending it again", error)
                if done and not puts:
                    await asyncio.sleep(0.05)
        finally:
            for put in puts:
                put.cancel()

    async def read_barrier(self, timeout: float = 5.0) -> None:
        """Return once every entry committed before the call is applied here
        (etcd's linearizable read), so a read that follows sees it."""
        client = self._running()
        try:
            async with asyncio.timeout(timeout):
                await self._wait_applied(await client.last_write(LOG_KEY, timeout))
        except TimeoutError:
            raise Unavailable(f"no quorum read within {timeout:g}s") from None

    async def _wait_applied(self, revision: int) -> None:
        async with self._progress:
            await self._progress.wait_for(lambda: self._applied >= revision)

    async def _result_of(self, revision: int) -> Any:
        await self._wait_applied(revision)
        if revision not in self._results:
            raise Unavailable(
                f"the write committed (revision {revision}) but this manager loaded a "
                "newer state image meanwhile, so its result is unknown"
            )
        return self._results.pop(revision)

    # -- applying the log ------------------------------------------------------------

    async def _follow(self) -> None:
        await self._load_image()
        while True:
            try:
                async for batch in self._running().watch(LOG_KEY, self._applied + 1):
                    for event in batch:
                        if not event.deleted and event.revision > self._applied:
                            self._apply(event.revision, event.value)
                    async with self._progress:
                        self._progress.notify_all()
                    self._maybe_write_image()
            except Compacted:
                log.info(
                    "the log is compacted past revision %d: loading the state image", self._applied
                )
                await self._load_image()
            except WarrenError as exc:
                log.debug("log watch interrupted: %s", exc)
                await asyncio.sleep(0.1)

    def _apply(self, revision: int, value: bytes) -> None:
        try:
            result, self._fence = apply_entry(self.store, self._fence, value, self._ledger)
        except WarrenError as exc:
            # Unreadable entries are skipped by every manager alike.
            result = {"error": exc.code, "message": str(exc)}
        self._applied = revision
        self._results[revision] = result
        while len(self._results) > _KEPT_RESULTS:
            self._results.popitem(last=False)
        self._since_image += 1

    async def _load_image(self) -> None:
        """Load the latest state image when it is ahead of what is applied here
        (read from the local member: it holds the image before any compaction)."""
        while True:
            try:
                found = await self._running().get(IMAGE_KEY, timeout=10.0, local=True)
                break
            except WarrenError as exc:
                log.debug("state image not readable yet: %s", exc)
                await asyncio.sleep(0.1)
        if found is None or state_image.image_revision(found.value) <= self._applied:
            return
        image = await asyncio.to_thread(state_image.decode, found.value)
        self.store.import_state(image.store_state)
        self._fence = image.fence
        self._ledger = Ledger(image.ledger)
        self._applied = image.log_revision
        self._results.clear()
        self._since_image = 0
        async with self._progress:
            self._progress.notify_all()
        log.info("loaded the state image of revision %d", image.log_revision)

    def _maybe_write_image(self) -> None:
        if not self._leading or self._since_image < self._image_every or self._image_task:
            return
        image = state_image.capture(
            self._applied, self._fence, self.store.export_state(), tuple(self._ledger.entries())
        )
        self._since_image = 0
        self._image_task = asyncio.create_task(self._write_image(image), name="etcd-image")

    async def _write_image(self, image: state_image.StateImage) -> None:
        try:
            client = self._running()
            data = await asyncio.to_thread(state_image.encode, image)
            current = await client.get(IMAGE_KEY, timeout=10.0)
            previous = 0 if current is None else state_image.image_revision(current.value)
            if previous >= image.log_revision:
                return
            mod = 0 if current is None else current.mod_revision
            if not await client.put_if_unchanged(IMAGE_KEY, data, mod, timeout=10.0):
                return  # another leader wrote one meanwhile
            # History after the previous image stays: a manager a little behind
            # resumes from the log rather than loading a whole image.
            if previous:
                await client.compact(previous, timeout=10.0)
            log.info("state image of revision %d written (%d bytes)", image.log_revision, len(data))
        except WarrenError as exc:
            log.warning("could not write a state image: %s", exc)
        finally:
            self._image_task = None

    # -- leadership ------------------------------------------------------------------

    async def _watch_status(self) -> None:
        while True:
            try:
                status: MemberStatus | None = await self._running().status(timeout=1.0)
            except WarrenError:
                status = None  # our own member does not answer: nothing to lead with
            self._status = status
            leads = (
                status is not None
                and status.leader_id == status.member_id
                and not status.is_learner
                and self._failure is None
            )
            if not leads or (status is not None and status.raft_term != self._term):
                self._set_leading(False)
            if leads and status is not None and not self._leading and self._claim_task is None:
                self._claim_task = asyncio.create_task(self._claim(status.raft_term))
            await asyncio.sleep(self._status_period)

    async def _claim(self, term: int) -> None:
        """Claim ``term`` in the log; lead once the claim is applied and the
        member still leads in that term."""
        try:
            client = self._running()
            revision = await client.put(LOG_KEY, claim_entry(term, self.self_address), 5.0)
            async with asyncio.timeout(5.0):
                result = await self._result_of(revision)
            status = self._status
            still = (
                status is not None
                and status.raft_term == term
                and status.leader_id == status.member_id
            )
            if isinstance(result, dict) and result.get("claimed") and still:
                self._term = term
                self._set_leading(True)
        except (WarrenError, TimeoutError) as exc:
            log.info("leadership claim for term %d failed: %s", term, exc)
        finally:
            self._claim_task = None

    def _set_leading(self, leading: bool) -> None:
        if leading == self._leading:
            return
        self._leading = leading
        log.info("leadership %s (term %d)", "acquired" if leading else "lost", self._term)
        for listener in list(self._listeners):
            listener(leading)

    def on_leadership_change(self, listener: LeadershipListener) -> None:
        self._listeners.append(listener)

    @property
    def is_leader(self) -> bool:
        return self._leading

    @property
    def leader(self) -> str | None:
        status = self._status
        if status is None or not status.leader_id:
            return None
        for member in self._members:
            if member.member_id == status.leader_id:
                return member_address(member)
        return self._fence.holder or None

    @property
    def last_log_index(self) -> int:
        return self._applied

    @property
    def fence_term(self) -> int:
        """The term of the latest leadership claim applied here."""
        return self._fence.term

    # -- membership ------------------------------------------------------------------

    async def _keep_members(self) -> None:
        while True:
            try:
                client = self._running()
                self._members = await client.members(timeout=2.0)
                await self._probe_peers()
                if self._leading:
                    await self._promote_learners(client)
            except WarrenError as exc:
                log.debug("member list not refreshed: %s", exc)
            await asyncio.sleep(_MEMBERS_PERIOD)

    async def _probe_peers(self) -> None:
        others = [member_address(m) for m in self._members]
        others = [a for a in others if a and a != self.self_address]
        results = await asyncio.gather(*(_reachable(a) for a in others))
        self._reachable = dict(zip(others, results, strict=True))

    async def _promote_learners(self, client: EtcdClient) -> None:
        for member in self._members:
            if not member.is_learner:
                continue
            try:
                await client.promote(member.member_id, timeout=2.0)
                log.info("etcd member %s promoted to voter", member_address(member))
            except WarrenError as exc:
                log.debug("learner %s not promoted yet: %s", member_address(member), exc)

    def members(self) -> list[Member]:
        status = self._status
        leader_id = status.leader_id if status is not None else 0
        out = []
        for m in self._members:
            address = member_address(m)
            reachable = address == self.self_address or self._reachable.get(address, False)
            out.append(Member(address, m.member_id == leader_id, reachable, m.is_learner))
        if not out:
            out.append(Member(self.self_address, self._leading, True))
        return sorted(out, key=lambda m: (m.address != self.self_address, m.address))

    async def add_member(self, address: str, timeout: float = 10.0) -> None:
        """Add a manager's member as a learner; the leader promotes it to a
        voter once it has caught up.

        Retried until ``timeout``: etcd takes one learner at a time, and refuses
        any change until every voter has been connected for 5 s (a manager that
        joined just before makes the cluster "unhealthy" that long)."""
        client = self._running()
        deadline = time.monotonic() + timeout
        while True:
            try:
                if not any(m.is_learner for m in await client.members(timeout=timeout)):
                    self._members = await client.add_learner(f"https://{address}", timeout)
                    return
                reason = "another manager is still joining (its etcd member is catching up)"
            except Unavailable as exc:
                reason = str(exc)
            if time.monotonic() > deadline:
                raise Unavailable(f"could not add the etcd member {address}: {reason}; retry")
            await asyncio.sleep(0.25)

    async def remove_member(self, address: str, timeout: float = 10.0) -> None:
        """Retried until ``timeout`` while etcd calls the cluster unhealthy (for
        5 s after a member joined or came back, as for adding one)."""
        client = self._running()
        deadline = time.monotonic() + timeout
        while True:
            try:
                for member in await client.members(timeout=timeout):
                    if member_address(member) == address:
                        await client.remove(member.member_id, timeout=timeout)
                        self._members = await client.members(timeout=timeout)
                        return
                raise FailedPrecondition(f"{address} is not an etcd member of this cluster")
            except Unavailable as exc:
                if time.monotonic() > deadline:
                    why = f"could not remove the etcd member {address}: {exc}"
                    raise Unavailable(why) from None
            await asyncio.sleep(0.25)


async def _reachable(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        async with asyncio.timeout(_PEER_PROBE_TIMEOUT):
            _, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    except (OSError, TimeoutError, ValueError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
