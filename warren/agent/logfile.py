"""Container output capture: FIFOs in, rotating JSON-lines files out.

A containerd shim writes a container's stdout and stderr into FIFOs;
``pump_fifo`` reads them and appends each line to a ``RotatingLog``, and
``read_log`` serves the files back (``warren logs``, with tail and follow).

File format: one JSON object per line, ``{"t": TIME, "s": STREAM, "l": TEXT}``
for UTF-8 output; a line that is not valid UTF-8 is stored as
``{"t": TIME, "s": STREAM, "b": BASE64}`` instead, so every byte round-trips.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import json
import logging
import os
import stat
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from warren.agent.runtime import LogEntry, LogStream

logger = logging.getLogger(__name__)

# A line without a newline is written as is once it grows past this, so a
# process printing without newlines cannot make the reader buffer forever.
MAX_LINE = 16 * 1024
_READ_CHUNK = 64 * 1024
# Bound on the final drain of a FIFO whose writer may still be writing.
_DRAIN_LIMIT = 4 * 2**20
_FILE_CHUNK = 2**20
_POLL_INTERVAL = 0.1


def rotated_path(path: Path, index: int) -> Path:
    """``<id>.log.<index>``; index 0 is the file being written."""
    return path if index == 0 else path.with_name(f"{path.name}.{index}")


def encode_entry(entry: LogEntry) -> bytes:
    record: dict[str, object] = {"t": entry.timestamp, "s": str(entry.stream)}
    try:
        record["l"] = entry.line.decode("utf-8")
    except UnicodeDecodeError:
        record["b"] = base64.b64encode(entry.line).decode("ascii")
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def decode_entry(raw: bytes) -> LogEntry | None:
    """The entry of one stored line; None for a torn or foreign line."""
    try:
        record = json.loads(raw)
        if "l" in record:
            line = str(record["l"]).encode("utf-8")
        else:
            line = base64.b64decode(record["b"], validate=True)
        return LogEntry(float(record["t"]), LogStream(record["s"]), line)
    except (ValueError, TypeError, KeyError, binascii.Error):
        return None


class RotatingLog:
    """Appends entries to ``path``; past ``max_bytes`` it rotates.

    ``max_files`` counts every file kept, the current one included: with 3,
    ``<id>.log`` is written and ``<id>.log.1`` and ``<id>.log.2`` hold older
    output. Rotation always gives ``path`` a new inode, which is how a
    following reader notices it.
    """

    def __init__(self, path: Path, max_bytes: int = 10 * 2**20, max_files: int = 3) -> None:
        if max_bytes < 1 or max_files < 1:
            raise ValueError("max_bytes and max_files must be positive")
        self.path = path
        self.max_bytes = max_bytes
        self.max_files = max_files
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Append: an agent that restarts keeps the output written before.
        self._file = _open_private_append(path)
        self._size = self._file.tell()

    def write(self, entry: LogEntry) -> None:
        data = encode_entry(entry)
        if self._size > 0 and self._size + len(data) > self.max_bytes:
            self._rotate()
        self._file.write(data)
        self._file.flush()
        self._size += len(data)

    def close(self) -> None:
        self._file.close()

    def _rotate(self) -> None:
        self._file.close()
        try:
            rotated_path(self.path, self.max_files - 1).unlink(missing_ok=True)
            for index in range(self.max_files - 2, -1, -1):
                with contextlib.suppress(FileNotFoundError):
                    rotated_path(self.path, index).rename(rotated_path(self.path, index + 1))
        finally:
            # Even after a failed rename there must be an open file to write to.
            self._file = _open_private_append(self.path)
            self._size = self._file.tell()


def _open_private_append(path: Path) -> BinaryIO:
    """Open for appending; a new file is 0600 (a service's output may hold secrets)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    return os.fdopen(fd, "ab")


def make_fifo(path: Path) -> None:
    """Create a FIFO readable by root only; an existing FIFO is reused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkfifo(path, 0o600)
    except FileExistsError:
        if not stat.S_ISFIFO(path.stat().st_mode):
            raise


class _LineSplitter:
    """Cuts a byte stream into lines and writes each as an entry."""

    def __init__(self, stream: LogStream, log: RotatingLog) -> None:
        self._stream = stream
        self._log = log
        self._partial = bytearray()
        self._failing = False

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self._partial += data
        *lines, rest = bytes(self._partial).split(b"\n")
        for line in lines:
            self._emit(line)
        while len(rest) > MAX_LINE:
            self._emit(rest[:MAX_LINE])
            rest = rest[MAX_LINE:]
        self._partial = bytearray(rest)

    def flush(self) -> None:
        if self._partial:
            self._emit(bytes(self._partial))
            self._partial.clear()

    def _emit(self, line: bytes) -> None:
        try:
            self._log.write(LogEntry(time.time(), self._stream, line))
        except OSError as exc:
            # Drop the line but keep reading: a pump that stops would leave
            # the container blocked on a full pipe.
            if not self._failing:
                logger.warning("cannot write container log %s: %s", self._log.path, exc)
            self._failing = True
        else:
            self._failing = False


def _read_available(fd: int, limit: int) -> bytes:
    """Whatever can be read from non-blocking ``fd`` now, at most about ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        try:
            chunk = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


async def pump_fifo(path: Path, stream: LogStream, log: RotatingLog) -> None:
    """Copy lines from the FIFO at ``path`` into ``log`` until cancelled."""
    # Holding the FIFO open for writing too means read() never sees EOF, so
    # neither a writer that has not attached yet nor one that reopens it ends
    # the pump; and opening O_RDWR never blocks waiting for the other side.
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    splitter = _LineSplitter(stream, log)
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(fd, readable.set)
    try:
        while True:
            await readable.wait()
            readable.clear()
            # One pipe buffer per wake-up keeps a chatty container from
            # starving the loop; the reader fires again while data remains.
            splitter.feed(_read_available(fd, _READ_CHUNK))
    finally:
        loop.remove_reader(fd)
        try:
            splitter.feed(_read_available(fd, _DRAIN_LIMIT))
            splitter.flush()
        finally:
            os.close(fd)


class _Cursor:
    """Reads stored lines from one open log file, keeping a torn last line."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.inode = os.fstat(file.fileno()).st_ino
        self._partial = b""

    def lines(self) -> Iterator[bytes]:
        """Complete lines up to the current end of the file."""
        while chunk := self.file.read(_FILE_CHUNK):
            *complete, self._partial = (self._partial + chunk).split(b"\n")
            yield from complete

    def rest(self) -> Iterator[bytes]:
        """The last line if it has no newline (the file will not grow)."""
        if self._partial:
            yield self._partial
            self._partial = b""

    def restart_if_truncated(self) -> None:
        if os.fstat(self.file.fileno()).st_size < self.file.tell():
            self.file.seek(0)
            self._partial = b""

    def close(self) -> None:
        self.file.close()


def _open(path: Path) -> _Cursor | None:
    try:
        return _Cursor(path.open("rb"))
    except FileNotFoundError:
        return None


def _open_all(path: Path) -> list[_Cursor]:
    """Cursors on the current and rotated files, oldest first.

    The current file is opened first and files already open (by inode) are
    skipped, so a rotation during the scan loses at most the oldest file
    instead of serving one file twice.
    """
    current = _open(path)
    cursors = [current] if current is not None else []
    index = 1
    while (cursor := _open(rotated_path(path, index))) is not None:
        if any(c.inode == cursor.inode for c in cursors):
            cursor.close()
        else:
            cursors.append(cursor)
        index += 1
    return cursors[::-1]


def _rotated_since(path: Path, inode: int) -> list[Path]:
    """Rotated files newer than the one with ``inode``, oldest first."""
    index = 1
    while True:
        candidate = rotated_path(path, index)
        try:
            if candidate.stat().st_ino == inode:
                return [rotated_path(path, i) for i in range(index - 1, 0, -1)]
        except FileNotFoundError:
            return []  # gone: it was rotated out, so the rest cannot be ordered
        index += 1


def _last_lines(cursors: list[_Cursor], tail: int, keep_open: _Cursor | None) -> list[bytes]:
    last: collections.deque[bytes] = collections.deque(maxlen=tail)
    for cursor in cursors:
        last.extend(cursor.lines())
        if cursor is not keep_open:
            last.extend(cursor.rest())
    return list(last)


class _Follower:
    """Serves lines appended to ``path`` after the initial read, across rotations."""

    def __init__(self, path: Path, cursor: _Cursor | None) -> None:
        self._path = path
        self._cursor = cursor

    def poll(self) -> Iterator[bytes]:
        if self._cursor is None:
            self._cursor = _open(self._path)
            if self._cursor is None:
                return
        yield from self._cursor.lines()
        try:
            inode = self._path.stat().st_ino
        except FileNotFoundError:
            return  # between the writer's rename and its reopen
        if inode != self._cursor.inode:
            yield from self._switch()
        else:
            self._cursor.restart_if_truncated()
            yield from self._cursor.lines()

    def _switch(self) -> Iterator[bytes]:
        assert self._cursor is not None
        # The old file is complete now: finish it, then any files rotated in
        # between, then start on the new current file.
        old = self._cursor
        yield from old.lines()
        yield from old.rest()
        old.close()
        for rotated in _rotated_since(self._path, old.inode):
            if (cursor := _open(rotated)) is not None:
                yield from cursor.lines()
                yield from cursor.rest()
                cursor.close()
        self._cursor = _open(self._path)
        if self._cursor is not None:
            yield from self._cursor.lines()

    def finish(self) -> Iterator[bytes]:
        if self._cursor is not None:
            yield from self._cursor.rest()

    def close(self) -> None:
        if self._cursor is not None:
            self._cursor.close()


def _entries(lines: Iterator[bytes] | list[bytes]) -> Iterator[LogEntry]:
    for raw in lines:
        if (entry := decode_entry(raw)) is not None:
            yield entry


def _existing(cursors: list[_Cursor], keep_open: _Cursor | None) -> Iterator[LogEntry]:
    for cursor in cursors:
        yield from _entries(cursor.lines())
        if cursor is not keep_open:
            yield from _entries(cursor.rest())


async def read_log(
    path: Path,
    follow: bool = False,
    tail: int | None = None,
    still_writing: Callable[[], bool] = lambda: False,
) -> AsyncGenerator[LogEntry, None]:
    """Stored entries oldest first; ``tail`` keeps the last N (0: none).

    With ``follow``, keeps polling for new entries while ``still_writing()``
    is true, and ends once it is false and everything written was served.
    """
    cursors = _open_all(path)
    # In follow mode the current file stays open: its torn last line may
    # still be completed by the writer.
    current = cursors[-1] if follow and cursors and cursors[-1].file.name == str(path) else None
    follower = _Follower(path, current)
    try:
        if tail is None:
            for entry in _existing(cursors, current):
                yield entry
        else:
            # The whole history is scanned to find the last lines: off the loop.
            lines = await asyncio.to_thread(_last_lines, cursors, tail, current)
            for entry in _entries(lines):
                yield entry
        if follow:
            async with contextlib.aclosing(_follow(follower, still_writing)) as new:
                async for entry in new:
                    yield entry
    finally:
        follower.close()
        for cursor in cursors:
            cursor.close()


async def _follow(
    follower: _Follower, still_writing: Callable[[], bool]
) -> AsyncGenerator[LogEntry, None]:
    while True:
        # Asked before reading: whatever was written before it turned false
        # is then read by this last poll.
        writing = still_writing()
        for entry in _entries(follower.poll()):
            yield entry
        if not writing:
            for entry in _entries(follower.finish()):
                yield entry
            return
        await asyncio.sleep(_POLL_INTERVAL)
