"""The shared wait and process helpers (tests/support.py) that every test and
benchmark relies on: a helper that cannot fail would hide every failure."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
from support import Process, WaitTimedOut, eventually, holds_within, wait_for


def test_wait_for_returns_the_first_truthy_value() -> None:
    values = iter([0, None, "", "found"])
    assert wait_for(lambda: next(values), 5, "a value", interval=0) == "found"


def test_wait_for_names_what_it_awaited_and_the_last_value() -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"after 0.2s waiting for the answer \(last: 0\)"):
        wait_for(lambda: 0, 0.2, "the answer", interval=0.05)
    assert time.monotonic() - started >= 0.2
    # The benchmarks report it as a timeout.
    assert issubclass(WaitTimedOut, TimeoutError)


def test_holds_within_says_whether_the_condition_held() -> None:
    assert holds_within(lambda: True, 0.1)
    assert not holds_within(lambda: False, 0.1, interval=0.02)


async def test_eventually_takes_sync_and_async_checks() -> None:
    calls = []

    async def third_time() -> int:
        calls.append(1)
        return len(calls) if len(calls) >= 3 else 0

    assert await eventually(third_time, 5, "the third call", interval=0) == 3
    assert await eventually(lambda: "yes", 5, "a sync check") == "yes"
    with pytest.raises(AssertionError, match="waiting for nothing"):
        await eventually(lambda: [], 0.05, "nothing")


def test_stop_kills_a_child_that_ignores_sigterm_and_what_it_started(tmp_path: Path) -> None:
    # The child starts a grandchild in its group, then ignores SIGTERM.
    script = (
        "import signal, subprocess, sys, time;"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        "print(p.pid, flush=True);"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        "time.sleep(60)"
    )
    process = Process("stubborn", [sys.executable, "-c", script], tmp_path / "stubborn.log")
    process.term_grace = 0.3
    process.start()
    grandchild = int(wait_for(lambda: process.tail(1).strip(), 10, "the grandchild's pid"))
    assert process.alive and process.rss_mib() > 0
    process.stop()
    assert not process.alive
    assert process.popen is not None and process.popen.returncode == -signal.SIGKILL
    assert wait_for(lambda: not _running(grandchild), 5, "the grandchild to die")


def test_check_alive_shows_the_log_of_a_child_that_exited(tmp_path: Path) -> None:
    process = Process("quitter", ["sh", "-c", "echo bad flag; exit 2"], tmp_path / "q.log")
    process.start()
    assert process.popen is not None
    process.popen.wait(timeout=10)
    with pytest.raises(RuntimeError, match="quitter exited early:\nbad flag"):
        process.check_alive()


def test_a_child_reads_nothing_from_our_stdin(tmp_path: Path) -> None:
    script = "import sys; print(repr(sys.stdin.read()), flush=True)"
    process = Process("reader", [sys.executable, "-c", script], tmp_path / "reader.log")
    # Our fd 0 has something to read while the child starts (restored after).
    read_end, write_end = os.pipe()
    os.write(write_end, b"typed")
    os.close(write_end)
    saved = os.dup(0)
    try:
        os.dup2(read_end, 0)
        process.start()
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(read_end)
    assert process.popen is not None
    assert process.popen.wait(timeout=10) == 0
    assert process.tail(1) == "''"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie waiting for init to reap it is gone for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
