"""What every test directory and the benchmarks share: waiting for a condition
and running a child process.

Importable as ``support`` (tests/conftest.py puts tests/ on the path; the
benchmarks insert it themselves).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# -- waiting -----------------------------------------------------------------------


class WaitTimedOut(AssertionError, TimeoutError):
    """A condition did not hold in time: a test failure, and a TimeoutError for
    the benchmarks that report it as one."""


def _timed_out(what: str, timeout: float, last: Any) -> WaitTimedOut:
    return WaitTimedOut(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        last = condition()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, last)
        time.sleep(interval)


def holds_within(condition: Callable[[], Any], timeout: float, interval: float = 0.2) -> bool:
    """Whether ``condition`` holds within ``timeout`` (wait_for without the failure)."""
    try:
        wait_for(condition, timeout, "a condition", interval)
    except WaitTimedOut:
        return False
    return True


async def eventually(
    check: Callable[[], Any | Awaitable[Any]],
    timeout: float,
    what: str,
    interval: float = 0.01,
) -> Any:
    """wait_for inside an event loop: ``check`` may be sync or async."""
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, last)
        await asyncio.sleep(interval)


# -- child processes ---------------------------------------------------------------


def log_tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


@dataclass
class Process:
    """A child in its own session (process group) logging to a file, so that
    stopping it also stops anything it started, and a failure can show its log.
    ``start`` may be called again after it stopped (a restart, same command).
    To run it elsewhere, put a prefix that execs in place before ``args``
    (``ip netns exec NS``, ``nsenter --net=...``): the pid stays the command's."""

    name: str
    args: list[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    popen: subprocess.Popen[bytes] | None = None
    # How long SIGTERM may take before SIGKILL, and SIGKILL before giving up.
    term_grace: float = 10.0
    kill_grace: float = 20.0

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,  # never the terminal of whoever runs the tests
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def check_alive(self) -> None:
        if self.popen is not None and not self.alive:
            raise RuntimeError(f"{self.name} exited early:\n{self.tail()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to its process group and wait for it to exit."""
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)
            self.popen.wait(timeout=self.kill_grace)

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL it if it lingers."""
        if self.popen is None:
            return
        for sig, grace in ((signal.SIGTERM, self.term_grace), (signal.SIGKILL, self.kill_grace)):
            if self.popen.poll() is not None:
                break
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
        # Anything the child itself started is in its group too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)

    def tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def rss_mib(self) -> float:
        return rss_mib(self.popen.pid) if self.popen is not None else math.nan

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.popen.pid) if self.popen is not None else math.nan


def rss_mib(pid: int) -> float:
    """Resident set size from /proc (VmRSS, reported in kB)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return math.nan


def cpu_seconds(pid: int) -> float:
    """User + system CPU time from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except FileNotFoundError:
        return math.nan
    # utime and stime are fields 14 and 15; fields[0] here is field 3 (state).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
