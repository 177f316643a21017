"""Process helpers shared by the local daemons: start in a new group, stop the group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class DaemonError(RuntimeError):
    """A local daemon did not start, or a tool it needs failed."""


def start_daemon(argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    """Run ``argv`` in a session of its own (so stop can signal the whole group)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the process group, wait up to ``grace`` seconds, then SIGKILL it."""
    _signal_group(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    # Also reaches children that outlived the leader.
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def wait_until(
    ready: Callable[[], bool],
    proc: subprocess.Popen[bytes],
    log: Path,
    what: str,
    timeout: float = 20.0,
) -> None:
    """Poll ``ready`` until true; fail early with the log's tail if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise DaemonError(f"{what} exited with {proc.returncode}: {log_tail(log)}")
        if time.monotonic() > deadline:
            raise DaemonError(f"{what} not ready after {timeout:.0f}s: {log_tail(log)}")
        time.sleep(0.05)


def log_tail(log: Path, lines: int = 5) -> str:
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"


def free_port() -> int:
    """A port free on 127.0.0.1 right now (the daemon may still lose a race for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def one_line(text: str) -> str:
    return " ".join(text.split())
