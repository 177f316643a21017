"""Health probes and the healthy/unhealthy decision built on them.

A probe is a command run in the container, an HTTP GET or a TCP connect. The
network probes target 127.0.0.1 *inside the container's network namespace*:
the socket is created by a short-lived thread that entered the namespace
with setns(2), and a socket stays in the namespace it was created in, so the
event loop can then use it like any other.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable

from warren.agent.runtime import Runtime
from warren.core.errors import WarrenError
from warren.core.models import Health, HealthCheck

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
# Extra time for the runtime to kill a timed-out exec and report it before
# the probe gives up on the runtime itself.
_EXEC_GRACE = 5.0
_LOCALHOST = "127.0.0.1"
# Characters sent unescaped in the request path; the rest is percent-encoded
# so a path from a service spec cannot break the request line.
_PATH_SAFE = "/?&=%:@!$'()*+,;~-._"

OnChange = Callable[[Health, str], None]


class HealthMonitor:
    """Probes a container periodically and reports health changes.

    The first probe runs at once, each next one ``interval`` after the
    previous one finished (as Docker does). ``health`` and ``last_message``
    hold the current state for callers that poll instead.
    """

    def __init__(
        self,
        check: HealthCheck,
        runtime: Runtime,
        container_id: str,
        on_change: OnChange,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.check = check
        self.health = Health.STARTING
        self.last_message = ""
        self._runtime = runtime
        self._container_id = container_id
        self._on_change = on_change
        self._clock = clock
        self._failures = 0
        self._started_at = 0.0
        self._succeeded = False

    async def run(self) -> None:
        """Probe until cancelled, calling ``on_change`` on every change of health."""
        self._started_at = self._clock()
        while True:
            probed_at = self._clock()
            self._record(await self._probe(), probed_at)
            await asyncio.sleep(self.check.interval)

    async def _probe(self) -> str | None:
        try:
            return await probe(self.check, self._runtime, self._container_id)
        except Exception as exc:
            # A probe bug must not stop monitoring: count it as a failure.
            log.exception("health probe of %s failed", self._container_id)
            return f"health check error: {exc}"

    def _record(self, message: str | None, probed_at: float) -> None:
        self.last_message = message or ""
        if message is None:
            self._succeeded = True
            self._failures = 0
            self._change(Health.HEALTHY, "")
            return
        if self._in_start_period(probed_at):
            return
        self._failures += 1
        if self._failures >= self.check.retries:
            self._change(Health.UNHEALTHY, message)

    def _in_start_period(self, probed_at: float) -> bool:
        # A success ends the start period early: the service is up, so any
        # failure after it is real.
        return not self._succeeded and probed_at - self._started_at < self.check.start_period

    def _change(self, health: Health, message: str) -> None:
        if health != self.health:
            self.health = health
            self._on_change(health, message)


async def probe(check: HealthCheck, runtime: Runtime, container_id: str) -> str | None:
    """Run ``check`` once: None when healthy, else a one-line failure message."""
    if check.cmd:
        return await _probe_cmd(check, runtime, container_id)
    port = check.http_target()[0] if check.http else check.tcp
    try:
        netns = runtime.network_namespace(container_id)
        async with asyncio.timeout(check.timeout):
            if check.http:
                return await _probe_http(netns, *check.http_target())
            await _probe_tcp(netns, port)
            return None
    except TimeoutError:
        return _timed_out(check)
    except ConnectionRefusedError:
        return f"connection refused on port {port}"
    except OSError as exc:
        return _os_error_message(exc)
    except WarrenError as exc:
        return _first_line(exc.message)


async def _probe_cmd(check: HealthCheck, runtime: Runtime, container_id: str) -> str | None:
    try:
        async with asyncio.timeout(check.timeout + _EXEC_GRACE):
            result = await runtime.exec(container_id, check.cmd, check.timeout)
    except TimeoutError:
        return _timed_out(check)
    except WarrenError as exc:
        return _first_line(exc.message)
    if result.exit_code == 0:
        return None
    output = _first_line(result.output.decode("utf-8", errors="replace"))
    return f"exit code {result.exit_code}: {output}" if output else f"exit code {result.exit_code}"


async def _probe_tcp(netns: str | None, port: int) -> None:
    sock = await connect_local(netns, port)
    sock.close()


async def _probe_http(netns: str | None, port: int, path: str) -> str | None:
    sock = await connect_local(netns, port)
    try:
        reader, writer = await asyncio.open_connection(sock=sock)
    except BaseException:
        sock.close()
        raise
    try:
        target = urllib.parse.quote(path, safe=_PATH_SAFE)
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: {_LOCALHOST}:{port}\r\n"
            "User-Agent: warren-health\r\nConnection: close\r\n\r\n".encode("ascii")
        )
        status_line = await reader.readline()
    except ValueError:  # a status line longer than the stream's limit
        status_line = b"?"
    finally:
        # No wait_closed(): a slow peer must not turn a success into a timeout.
        writer.close()
    if not status_line:
        return "connection closed without an HTTP response"
    status = _status_code(status_line)
    if status is None:
        return "invalid HTTP response"
    return None if 200 <= status < 400 else f"HTTP {status}"


def _status_code(line: bytes) -> int | None:
    """The code of an HTTP status line such as ``HTTP/1.1 200 OK``."""
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return None
    return int(parts[1])


async def connect_local(netns: str | None, port: int) -> socket.socket:
    """A non-blocking TCP socket connected to 127.0.0.1:``port`` of ``netns``.

    ``netns`` is a namespace path such as /run/netns/NAME; None is the host's.
    """
    sock = await _socket_in(netns) if netns else _new_socket()
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (_LOCALHOST, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _new_socket() -> socket.socket:
    return socket.socket(socket.AF_INET, socket.SOCK_STREAM)


async def _socket_in(netns: str) -> socket.socket:
    """A socket created in network namespace ``netns`` by a throwaway thread.

    setns(2) switches only the calling thread, so it must never run on the
    event loop's thread or a pooled one that later runs other work; the
    thread ends right after, taking its namespace with it.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[socket.socket] = loop.create_future()

    def deliver(result: socket.socket | BaseException) -> None:
        if future.cancelled():
            if isinstance(result, socket.socket):
                result.close()  # the probe timed out meanwhile
        elif isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)

    def work() -> None:
        result: socket.socket | BaseException
        try:
            result = _create_in_namespace(netns)
        except BaseException as exc:
            result = exc
        loop.call_soon_threadsafe(deliver, result)

    threading.Thread(target=work, name="warren-netns", daemon=True).start()
    return await future


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.setns.restype = ctypes.c_int
    return libc


def _create_in_namespace(netns: str) -> socket.socket:
    """Enter ``netns`` on this (dedicated) thread and create a socket there."""
    try:
        fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot open network namespace {netns}: {exc.strerror}") from exc
    try:
        if _libc().setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"cannot enter network namespace {netns}: {os.strerror(err)}")
    finally:
        os.close(fd)
    return _new_socket()


def _timed_out(check: HealthCheck) -> str:
    return f"timed out after {check.timeout:g}s"


def _os_error_message(exc: OSError) -> str:
    # "Connection reset by peer" -> "connection reset by peer", like the others.
    text = _first_line(exc.strerror or str(exc))
    return text[:1].lower() + text[1:]


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0].strip() if lines else ""
