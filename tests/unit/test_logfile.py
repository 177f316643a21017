"""Container output capture: rotating JSON-lines files, FIFO pumps, read_log."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support import eventually

from warren.agent.logfile import (
    MAX_LINE,
    RotatingLog,
    decode_entry,
    make_fifo,
    pump_fifo,
    read_log,
    rotated_path,
)
from warren.agent.runtime import LogEntry, LogStream

OUT = LogStream.STDOUT
ERR = LogStream.STDERR


def _entry(i: int, stream: LogStream = OUT) -> LogEntry:
    return LogEntry(1000.0 + i, stream, f"line {i}".encode())


async def _read(path: Path, follow: bool = False, tail: int | None = None) -> list[LogEntry]:
    return [entry async for entry in read_log(path, follow=follow, tail=tail)]


# --- RotatingLog and read_log ---


async def test_entries_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "c1.log"
    log = RotatingLog(path)
    entries = [_entry(1), _entry(2, ERR), LogEntry(3.5, OUT, b"")]
    for entry in entries:
        log.write(entry)
    log.close()

    assert await _read(path) == entries


async def test_binary_and_invalid_utf8_lines_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "c1.log"
    log = RotatingLog(path)
    lines = [b"\xff\xfe\x00raw", "café ☃".encode(), b'tab\tand \\ quote"', b"\xc3"]
    for i, line in enumerate(lines):
        log.write(LogEntry(float(i), OUT, line))
    log.close()

    assert [entry.line for entry in await _read(path)] == lines


async def test_rotation_keeps_max_files_and_reads_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "c1.log"
    log = RotatingLog(path, max_bytes=200, max_files=3)
    written = [_entry(i) for i in range(40)]
    for entry in written:
        log.write(entry)
    log.close()

    assert path.exists() and rotated_path(path, 1).exists() and rotated_path(path, 2).exists()
    assert not rotated_path(path, 3).exists()
    assert all(rotated_path(path, i).stat().st_size <= 200 for i in range(3))
    stored = await _read(path)
    # The oldest output was dropped; what is left is the newest, in order.
    assert 0 < len(stored) < len(written)
    assert stored == written[-len(stored) :]


async def test_single_file_rotation_truncates(tmp_path: Path) -> None:
    path = tmp_path / "c1.log"
    log = RotatingLog(path, max_bytes=100, max_files=1)
    for i in range(10):
        log.write(_entry(i))
    log.close()

    assert not rotated_path(path, 1).exists()
    stored = await _read(path)
    assert stored and stored[-1] == _entry(9)


async def test_reopening_appends(tmp_path: Path) -> None:
    path = tmp_path / "c1.log"
    for i in range(2):
        log = RotatingLog(path)
        log.write(_entry(i))
        log.close()

    assert await _read(path) == [_entry(0), _entry(1)]


async def test_tail_across_rotated_files(tmp_path: Path) -> None:
    path = tmp_path / "c1.log"
    log = RotatingLog(path, max_bytes=120, max_files=5)
    written = [_entry(i) for i in range(12)]
    for entry in written:
        log.write(entry)
    log.close()
    assert rotated_path(path, 2).exists()

    assert await _read(path, tail=5) == written[-5:]
    assert await _read(path, tail=0) == []
    assert await _read(path, tail=1000) == await _read(path)


async def test_missing_file_reads_nothing(tmp_path: Path) -> None:
    assert await _read(tmp_path / "none.log") == []
    assert await _read(tmp_path / "none.log", follow=True, tail=3) == []


async def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "c1.log"
    log = RotatingLog(path)
    log.write(_entry(1))
    log.close()
    with path.open("ab") as file:
        file.write(b'{"t": 1, "s": "std')  # a crash in the middle of a write

    assert await _read(path) == [_entry(1)]


# --- read_log follow ---


async def test_follow_yields_new_lines_until_writing_stops(tmp_path: Path) -> None:
    path = tmp_path / "c1.log"
    log = RotatingLog(path)
    log.write(_entry(0))
    writing = True
    seen: list[LogEntry] = []

    async def consume() -> None:
        async for entry in read_log(path, follow=True, still_writing=lambda: writing):
            seen.append(entry)

    reader = asyncio.create_task(consume())
    await eventually(lambda: len(seen) == 1, 5.0, "len(seen) == 1")
    log.write(_entry(1))
    await eventually(lambda: len(seen) == 2, 5.0, "len(seen) == 2")
    assert not reader.done()

    # Written just before the writer stops: still served before the end.
    log.write(_entry(2))
    writing = False
    await asyncio.wait_for(reader, 2)
    log.close()
    assert seen == [_entry(0), _entry(1), _entry(2)]


async def test_follow_with_tail_zero_serves_only_new_lines(tmp_path: Path) -> None:
    path = tmp_path / "c1.log"
    log = RotatingLog(path)
    log.write(_entry(0))
    writing = True
    seen: list[LogEntry] = []

    async def consume() -> None:
        async for entry in read_log(path, follow=True, tail=0, still_writing=lambda: writing):
            seen.append(entry)

    reader = asyncio.create_task(consume())
    await asyncio.sleep(0.15)
    log.write(_entry(1))
    await eventually(lambda: len(seen) == 1, 5.0, "len(seen) == 1")
    writing = False
    await asyncio.wait_for(reader, 2)
    log.close()
    assert seen == [_entry(1)]


async def test_follow_waits_for_the_file_to_appear(tmp_path: Path) -> None:
    path = tmp_path / "c1.log"
    writing = True
    seen: list[LogEntry] = []

    async def consume() -> None:
        async for entry in read_log(path, follow=True, still_writing=lambda: writing):
            seen.append(entry)

    reader = asyncio.create_task(consume())
    await asyncio.sleep(0.15)
    log = RotatingLog(path)
    log.write(_entry(0))
    await eventually(lambda: len(seen) == 1, 5.0, "len(seen) == 1")
    writing = False
    await asyncio.wait_for(reader, 2)
    log.close()


async def test_follow_across_rotations_serves_every_line_once(tmp_path: Path) -> None:
    path = tmp_path / "c1.log"
    log = RotatingLog(path, max_bytes=150, max_files=4)
    writing = True
    seen: list[LogEntry] = []

    async def consume() -> None:
        async for entry in read_log(path, follow=True, still_writing=lambda: writing):
            seen.append(entry)

    reader = asyncio.create_task(consume())
    written = [_entry(i, ERR if i % 3 else OUT) for i in range(30)]
    for entry in written:
        log.write(entry)
        await asyncio.sleep(0.03)
    writing = False
    await asyncio.wait_for(reader, 2)
    log.close()

    assert rotated_path(path, 3).exists()  # several rotations happened
    assert seen == written


async def test_follow_stops_when_the_consumer_stops(tmp_path: Path) -> None:
    path = tmp_path / "c1.log"
    log = RotatingLog(path)
    log.write(_entry(0))
    stream = read_log(path, follow=True, still_writing=lambda: True)
    assert await anext(stream) == _entry(0)
    await stream.aclose()
    log.close()


# --- make_fifo and pump_fifo ---


def test_make_fifo_creates_and_reuses(tmp_path: Path) -> None:
    fifo = tmp_path / "a" / "b" / "c1-stdout"
    make_fifo(fifo)
    mode = fifo.stat().st_mode
    assert stat.S_ISFIFO(mode)
    assert stat.S_IMODE(mode) & 0o077 == 0

    make_fifo(fifo)  # reused
    assert stat.S_ISFIFO(fifo.stat().st_mode)

    regular = tmp_path / "plain"
    regular.write_text("x")
    with pytest.raises(FileExistsError):
        make_fifo(regular)


@contextlib.asynccontextmanager
async def _pumping(
    tmp_path: Path, streams: tuple[LogStream, ...] = (OUT,), **log_args: int
) -> AsyncIterator[tuple[dict[LogStream, Path], Path]]:
    """Pumps for ``streams`` into one log; yields the FIFOs and the log path."""
    log_path = tmp_path / "c1.log"
    log = RotatingLog(log_path, **log_args)
    fifos = {stream: tmp_path / f"c1-{stream}" for stream in streams}
    pumps = []
    for stream, fifo in fifos.items():
        make_fifo(fifo)
        pumps.append(asyncio.create_task(pump_fifo(fifo, stream, log)))
    await asyncio.sleep(0.01)  # let the pumps open their FIFOs
    try:
        yield fifos, log_path
    finally:
        for pump in pumps:
            pump.cancel()
        for pump in pumps:
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        log.close()


async def _open_writer(fifo: Path) -> int:
    # Blocks until a reader has the FIFO open: off the loop.
    return await asyncio.to_thread(os.open, fifo, os.O_WRONLY)


async def _stored(log_path: Path) -> list[tuple[LogStream, bytes]]:
    return [(entry.stream, entry.line) for entry in await _read(log_path)]


async def _wait_stored(log_path: Path, count: int) -> list[tuple[LogStream, bytes]]:
    deadline = time.monotonic() + 5
    while len(stored := await _stored(log_path)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"only {stored} stored")
        await asyncio.sleep(0.01)
    return stored


async def test_pump_captures_a_process_stdout_and_stderr(tmp_path: Path) -> None:
    async with _pumping(tmp_path, (OUT, ERR)) as (fifos, log_path):
        out_fd = await _open_writer(fifos[OUT])
        err_fd = await _open_writer(fifos[ERR])
        try:
            process = await asyncio.create_subprocess_exec(
                "sh", "-c", "echo a; echo b >&2; echo c", stdout=out_fd, stderr=err_fd
            )
            assert await process.wait() == 0
        finally:
            os.close(out_fd)
            os.close(err_fd)
        stored = await _wait_stored(log_path, 3)

    assert sorted(stored) == sorted([(OUT, b"a"), (ERR, b"b"), (OUT, b"c")])
    assert [line for stream, line in stored if stream == OUT] == [b"a", b"c"]
    assert all(entry.timestamp > time.time() - 60 for entry in await _read(log_path))


async def test_pump_keeps_partial_lines_until_their_newline(tmp_path: Path) -> None:
    async with _pumping(tmp_path) as (fifos, log_path):
        fd = await _open_writer(fifos[OUT])
        try:
            os.write(fd, b"par")
            await asyncio.sleep(0.05)
            assert await _stored(log_path) == []
            os.write(fd, b"tial\r\nsecond\n\nno newline")
            await _wait_stored(log_path, 3)
            await asyncio.sleep(0.05)
            assert await _stored(log_path) == [(OUT, b"partial\r"), (OUT, b"second"), (OUT, b"")]
        finally:
            os.close(fd)
    # Cancelling the pump writes the partial last line.
    assert (await _stored(log_path))[-1] == (OUT, b"no newline")


async def test_pump_flushes_an_overlong_partial_line(tmp_path: Path) -> None:
    async with _pumping(tmp_path) as (fifos, log_path):
        fd = await _open_writer(fifos[OUT])
        try:
            await asyncio.to_thread(os.write, fd, b"x" * (MAX_LINE + 100))
            stored = await _wait_stored(log_path, 1)
        finally:
            os.close(fd)
    assert stored[0] == (OUT, b"x" * MAX_LINE)
    assert await _stored(log_path) == [(OUT, b"x" * MAX_LINE), (OUT, b"x" * 100)]


async def test_pump_survives_writers_closing_and_reopening(tmp_path: Path) -> None:
    async with _pumping(tmp_path) as (fifos, log_path):
        for word in (b"one", b"two", b"three"):
            fd = await _open_writer(fifos[OUT])
            os.write(fd, word + b"\n")
            os.close(fd)
            await asyncio.sleep(0.02)
        stored = await _wait_stored(log_path, 3)
    assert stored == [(OUT, b"one"), (OUT, b"two"), (OUT, b"three")]


async def test_pump_drains_unread_data_on_cancel(tmp_path: Path) -> None:
    log_path = tmp_path / "c1.log"
    log = RotatingLog(log_path)
    fifo = tmp_path / "c1-stdout"
    make_fifo(fifo)
    pump = asyncio.create_task(pump_fifo(fifo, OUT, log))
    await asyncio.sleep(0.01)
    fd = await _open_writer(fifo)
    # Written and cancelled before the loop runs the reader callback.
    os.write(fd, b"late 1\nlate 2")
    pump.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pump
    os.close(fd)
    log.close()
    assert await _stored(log_path) == [(OUT, b"late 1"), (OUT, b"late 2")]


async def test_pump_rotates_a_busy_log(tmp_path: Path) -> None:
    async with _pumping(tmp_path, max_bytes=2000, max_files=3) as (fifos, log_path):
        fd = await _open_writer(fifos[OUT])
        try:
            data = b"".join(b"line %d\n" % i for i in range(500))
            await asyncio.to_thread(os.write, fd, data)
            await eventually(
                lambda: rotated_path(log_path, 2).exists(),
                5.0,
                "rotated_path(log_path, 2).exists()",
            )
            await eventually(
                lambda: _last_line(log_path) == b"line 499",
                5.0,
                "_last_line(log_path) == b'line 499'",
            )
        finally:
            os.close(fd)
    stored = [line for _, line in await _stored(log_path)]
    first = int(stored[0].split()[1])
    assert stored == [b"line %d" % i for i in range(first, 500)]


class _FlakyLog(RotatingLog):
    """Fails its first write, as on a full disk."""

    failed = False

    def write(self, entry: LogEntry) -> None:
        if not self.failed:
            self.failed = True
            raise OSError(28, "No space left on device")
        super().write(entry)


async def test_pump_survives_a_failing_write(tmp_path: Path) -> None:
    log_path = tmp_path / "c1.log"
    log = _FlakyLog(log_path)
    fifo = tmp_path / "c1-stdout"
    make_fifo(fifo)
    pump = asyncio.create_task(pump_fifo(fifo, OUT, log))
    await asyncio.sleep(0.01)
    fd = await _open_writer(fifo)
    try:
        os.write(fd, b"lost\n")
        await eventually(lambda: log.failed, 5.0, "log.failed")
        os.write(fd, b"kept\n")
        await _wait_stored(log_path, 1)
    finally:
        os.close(fd)
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump
        log.close()
    assert await _stored(log_path) == [(OUT, b"kept")]


def _last_line(log_path: Path) -> bytes | None:
    """The newest stored line, read synchronously (for _eventually)."""
    lines = log_path.read_bytes().splitlines() if log_path.exists() else []
    entry = decode_entry(lines[-1]) if lines else None
    return entry.line if entry else None
