"""Raft through PySyncObj: the real ``Consensus`` implementation.

PySyncObj runs its own thread; its callbacks are bridged to asyncio with
``call_soon_threadsafe``. Every proposal carries a timeout, because a command
forwarded to a dead leader never calls back otherwise.
"""

from __future__ import annotations

import _socket
import asyncio
import gzip
import json
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pysyncobj.syncobj as pysyncobj_core
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj.journal import FileJournal, MemoryJournal

from warren.core.errors import Unavailable
from warren.core.formats import COMMAND_FORMAT
from warren.manager.command_format import CommandEncoder
from warren.manager.consensus import LeadershipListener, Member
from warren.manager.join_tokens import has_plaintext, legacy_secrets
from warren.manager.store import Store

log = logging.getLogger(__name__)

# Importing PySyncObj replaced socket.inet_ntop for the whole process with its
# Windows version (pysyncobj/win_inet_pton.py assigns it outside its
# `os.name == 'nt'` check), which on Linux turns an IPv4 address into the repr
# of its bytes: pyroute2 then failed to read addresses in any process that had
# imported this module. Put the C function back.
socket.inet_ntop = _socket.inet_ntop

_LEADER_STATE = 2  # pysyncobj's _RAFT_STATE.LEADER
# Snapshots forced to scrub sealed secrets from the Raft files, one a period.
_SCRUB_ATTEMPTS = 600

_FAILURES = {
    FAIL_REASON.QUEUE_FULL: "the command queue is full",
    FAIL_REASON.MISSING_LEADER: "there is no leader (election in progress or no quorum)",
    FAIL_REASON.DISCARDED: "the command was discarded by a new leader",
    FAIL_REASON.NOT_LEADER: "the leader changed before the command committed",
    FAIL_REASON.LEADER_CHANGED: "the leader changed before the command committed",
    FAIL_REASON.REQUEST_DENIED: "the command was denied",
    FAIL_REASON.UNKNOWN_OUTCOME: "the command's outcome is unknown",
}


class _DurableJournal(FileJournal):  # type: ignore[misc]
    """PySyncObj's file journal, flushed to disk on every change.

    PySyncObj writes its journal through mmap and never msyncs it, so an entry
    it acknowledges (as leader, or to the leader as a follower) survives a
    killed process but not a power cut. Flushing in ``add`` makes the entry
    durable before PySyncObj can acknowledge it.

    PySyncObj only moves its end marker when it drops entries, leaving their
    bytes in the file; they are zeroed here, so a compaction really removes
    what the dropped entries held (plain-text secrets of an older version).
    """

    def __init__(self, journal_file: str) -> None:
        super().__init__(journal_file)
        self._tail_zeroed = False

    def add(self, command: bytes, idx: int, term: int) -> None:
        super().add(command, idx, term)
        self.flush()

    def clear(self) -> None:
        old_end = self._end()
        super().clear()
        self._zero_from_end(old_end)
        self.flush()

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        old_end = self._end()
        super().deleteEntriesFrom(entryFrom)
        self._zero_from_end(old_end)
        self.flush()

    # PySyncObj keeps the file and offset private (name-mangled): no other way in.
    def _end(self) -> int:
        return int(self._FileJournal__currentOffset)

    def _zero_from_end(self, old_end: int) -> None:
        """Zero what the dropped entries held, up to ``old_end``; the first time,
        up to the end of the file (an older version left dropped entries there)."""
        file = self._FileJournal__journalFile
        if not self._tail_zeroed:
            old_end = int(file._ResizableFile__mm.size())
            self._tail_zeroed = True
        start, chunk = self._end(), 1 << 20
        for offset in range(start, old_end, chunk):
            file.write(offset, bytes(min(chunk, old_end - offset)))


def _create_journal(journal_file: str | None = None) -> Any:
    return _DurableJournal(journal_file) if journal_file else MemoryJournal()


def encode_command(command: dict[str, Any]) -> str:
    """A store command as it is kept in the Raft log (ASCII JSON: any text survives)."""
    return json.dumps(command, separators=(",", ":"))


def decode_command(payload: str) -> dict[str, Any]:
    command: dict[str, Any] = json.loads(payload)
    return command


# PySyncObj builds its journal through this module-level name; there is no
# option to pass one in.
pysyncobj_core.createJournal = _create_journal


class _DurableSyncObj(SyncObj):  # type: ignore[misc]
    """PySyncObj, without losing the entries a snapshot does not cover.

    PySyncObj writes a snapshot in a forked child and drops the entries it
    covers from the journal later, on its own thread. A process stopped in
    between restarts with the new snapshot and a journal that still begins at
    the previous one; PySyncObj then clears the whole journal, and with it
    every acknowledged entry after the snapshot. Dropping only the covered
    entries first makes the journal begin where the snapshot ends.
    """

    # PySyncObj's private, name-mangled loader: there is no other way in.
    def _SyncObj__loadDumpFile(self, clearJournal: bool) -> None:
        if not clearJournal:
            self._drop_entries_the_dump_covers()
        super()._SyncObj__loadDumpFile(clearJournal)

    def _drop_entries_the_dump_covers(self) -> None:
        journal = self._SyncObj__raftLog
        try:
            dump = self._SyncObj__serializer.deserialize()
        except Exception:  # PySyncObj's own load reports an unreadable dump
            return
        before_last, last = dump[2], dump[1]
        for position in range(len(journal) - 1):
            if journal[position] == before_last and journal[position + 1] == last:
                if position:
                    journal.deleteEntriesTo(position)
                return


class _StoreConsumer(SyncObjConsumer):  # type: ignore[misc]
    """Holds the store; PySyncObj snapshots it through ``_serialize``."""

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store
        # Plain-text join-token secrets an older version journaled and that were
        # sealed since: RaftConsensus scrubs them from its files.
        self.scrub: tuple[str, ...] = ()

    @replicated  # type: ignore[untyped-decorator]
    def apply(self, payload: str) -> Any:
        before = self.store.cluster()
        result = self.store.apply(decode_command(payload))
        after = self.store.cluster()
        if before and after and has_plaintext(before) and not has_plaintext(after):
            self.scrub = legacy_secrets(before)
        return result

    def _serialize(self) -> Any:
        return self.store.export_state()

    def _deserialize(self, data: Any) -> None:
        self.store.import_state(data)


def _files_hold(directory: Path, needles: tuple[str, ...]) -> bool:
    """Whether a file in ``directory`` holds a needle (in gzip-compressed
    snapshots too)."""
    for path in directory.iterdir():
        try:
            data = path.read_bytes()
            if data[:2] == b"\x1f\x8b":
                data += gzip.decompress(data)
        except (OSError, EOFError, gzip.BadGzipFile):
            continue  # replaced meanwhile, or a snapshot being written
        if any(needle.encode() in data for needle in needles):
            return True
    return False


class RaftConsensus:
    def __init__(
        self,
        store: Store,
        self_address: str,
        data_dir: Path,
        peers: list[str] | None = None,
        bind_address: str | None = None,
        election_timeout: tuple[float, float] = (0.15, 0.3),
        password: str | None = None,
        compaction_entries: int = 20_000,
        max_format: int = COMMAND_FORMAT,
    ) -> None:
        self.store = store
        # Commands go into the log in the cluster's command format.
        self._encoder = CommandEncoder(store, max_format)
        self.self_address = self_address
        self._peers = list(peers or [])
        self._data_dir = data_dir
        self._bind_address = bind_address
        self._election_timeout = election_timeout
        self._password = password
        # A snapshot replaces the log once it holds this many entries.
        self._compaction_entries = compaction_entries
        self._listeners: list[LeadershipListener] = []
        self._consumer = _StoreConsumer(store)
        self._syncobj: SyncObj | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scrubber: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        conf = SyncObjConf(
            journalFile=str(self._data_dir / "journal"),
            fullDumpFile=str(self._data_dir / "snapshot"),
            dynamicMembershipChange=True,
            raftMinTimeout=self._election_timeout[0],
            raftMaxTimeout=self._election_timeout[1],
            # A leader cut off from the majority steps down soon (PySyncObj's
            # default keeps it leading for 30 s), so its workers move on.
            leaderFallbackTimeout=max(2.0, 4 * self._election_timeout[1]),
            # Without a leader, refuse at once: a command queued here would
            # commit after the caller was told it failed.
            commandsWaitLeader=False,
            # Short append period: a write waits for the next batch to commit.
            appendEntriesPeriod=0.01,
            autoTickPeriod=0.005,
            logCompactionMinEntries=self._compaction_entries,
            logCompactionMinTime=600,
            bindAddress=self._bind_address,
            password=self._password,
            onStateChanged=self._on_state_changed,
        )
        # Loading the journal replays the log into the store, so this blocks.
        self._syncobj = await asyncio.to_thread(
            _DurableSyncObj, self.self_address, self._peers, conf, [self._consumer]
        )
        self._scrubber = asyncio.create_task(self._scrub_sealed_secrets())

    async def _scrub_sealed_secrets(self, period: float = 0.5) -> None:
        """Sealed plain-text secrets of an older version must leave the Raft
        files too: force snapshots (each drops the journal entries before it)
        until no file holds them. Retried, because a snapshot can fail (its
        forked child can die) and one taken right after the sealing write still
        holds the entry before it."""
        attempts = 0
        while True:
            await asyncio.sleep(period)
            secrets = self._consumer.scrub
            if not secrets or self._syncobj is None:
                continue
            attempts += 1
            if not await asyncio.to_thread(_files_hold, self._data_dir, secrets):
                self._consumer.scrub = ()
                log.info("plain-text join-token secrets are gone from the Raft files")
            elif attempts > _SCRUB_ATTEMPTS:
                self._consumer.scrub = ()
                log.warning("plain-text join-token secrets remain in %s", self._data_dir)
            else:
                self._syncobj.forceLogCompaction()

    async def stop(self) -> None:
        if self._scrubber is not None:
            self._scrubber.cancel()
            self._scrubber = None
        if self._syncobj is not None:
            syncobj, self._syncobj = self._syncobj, None
            await asyncio.to_thread(syncobj.destroy_synchronous)

    async def propose(self, command: dict[str, Any], timeout: float = 10.0) -> Any:
        payload = encode_command(self._encoder.encode(command))
        return await self._call(
            lambda callback: self._consumer.apply(payload, callback=callback), timeout
        )

    async def read_barrier(self, timeout: float = 5.0) -> None:
        await self.propose({"op": "barrier"}, timeout)

    async def add_member(self, address: str, timeout: float = 10.0) -> None:
        """Add a Raft member (one change at a time; the caller serialises)."""
        await self._call(lambda cb: self._running().addNodeToCluster(address, callback=cb), timeout)

    async def remove_member(self, address: str, timeout: float = 10.0) -> None:
        await self._call(
            lambda cb: self._running().removeNodeFromCluster(address, callback=cb), timeout
        )

    def _running(self) -> SyncObj:
        if self._syncobj is None:
            raise Unavailable("consensus is not running")
        return self._syncobj

    async def _call(
        self, submit: Callable[[Callable[[Any, int], None]], None], timeout: float
    ) -> Any:
        """Submit through PySyncObj and await its callback on the event loop."""
        if self._syncobj is None or self._loop is None:
            raise Unavailable("consensus is not running")
        loop = self._loop
        future: asyncio.Future[Any] = loop.create_future()

        def settle(result: Any, error: int) -> None:
            if future.done():
                return
            if error == FAIL_REASON.SUCCESS:
                future.set_result(result)
            else:
                reason = _FAILURES.get(error, f"failure code {error}")
                future.set_exception(Unavailable(f"write not committed: {reason}"))

        def on_result(result: Any, error: int) -> None:
            loop.call_soon_threadsafe(settle, result, error)

        submit(on_result)
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise Unavailable(f"write not committed within {timeout:g}s (no quorum?)") from None

    @property
    def is_leader(self) -> bool:
        return self._syncobj is not None and bool(self._syncobj._isLeader())

    @property
    def leader(self) -> str | None:
        if self._syncobj is None:
            return None
        node = self._syncobj._getLeader()
        return None if node is None else str(node.id)

    @property
    def last_log_index(self) -> int:
        if self._syncobj is None:
            return 0
        return int(self._syncobj.raftCommitIndex)

    @property
    def log_length(self) -> int:
        """Entries in the journal (bounded by snapshots)."""
        return 0 if self._syncobj is None else int(self._syncobj.getStatus()["log_len"])

    def members(self) -> list[Member]:
        if self._syncobj is None:
            return []
        leader = self.leader
        out = [Member(self.self_address, leader == self.self_address, True)]
        for node in sorted(self._syncobj.otherNodes, key=lambda n: str(n.id)):
            reachable = bool(self._syncobj.isNodeConnected(node))
            out.append(Member(str(node.id), leader == node.id, reachable))
        return out

    def on_leadership_change(self, listener: LeadershipListener) -> None:
        self._listeners.append(listener)

    def _on_state_changed(self, old: int, new: int) -> None:
        # Runs on PySyncObj's thread.
        became = new == _LEADER_STATE
        if (old == _LEADER_STATE) == became or self._loop is None:
            return
        log.info("raft leadership %s", "acquired" if became else "lost")
        for listener in self._listeners:
            self._loop.call_soon_threadsafe(listener, became)
