"""Health probes (exec, HTTP, TCP, inside a network namespace) and HealthMonitor."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence

import pytest
from aiohttp import web
from support import eventually

from warren.agent.health import HealthMonitor, probe
from warren.agent.runtime import ContainerConfig, ExecResult
from warren.agent.sim import SimRuntime
from warren.core.errors import NotFound, RuntimeFailure
from warren.core.models import Health, HealthCheck

OK = ExecResult(0, b"")
FAIL = ExecResult(1, b"boom\nmore detail")
FAIL_MESSAGE = "exit code 1: boom"

ExecOutcome = ExecResult | BaseException


class ScriptedRuntime(SimRuntime):
    """Exec answers come from a queue the test feeds; network probes use ``netns``."""

    def __init__(self, netns: str | None = None) -> None:
        super().__init__()
        self.netns = netns
        self.outcomes: asyncio.Queue[ExecOutcome] = asyncio.Queue()
        self.calls = 0

    async def exec(self, container_id: str, args: Sequence[str], timeout: float) -> ExecResult:
        self.calls += 1
        outcome = await self.outcomes.get()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def network_namespace(self, container_id: str) -> str | None:
        return self.netns


class Harness:
    """A running HealthMonitor whose probes complete one by one on demand."""

    def __init__(self, check: HealthCheck) -> None:
        self.runtime = ScriptedRuntime()
        self.now = 0.0
        self.changes: list[tuple[Health, str]] = []
        self.monitor = HealthMonitor(
            check, self.runtime, "c1", self._on_change, clock=lambda: self.now
        )

    def _on_change(self, health: Health, message: str) -> None:
        self.changes.append((health, message))

    async def probe(self, *outcomes: ExecOutcome) -> None:
        """Answer the next probes; returns once each answer was recorded."""
        for outcome in outcomes:
            await self._answer(outcome)

    async def _answer(self, outcome: ExecOutcome) -> None:
        calls = self.runtime.calls
        self.runtime.outcomes.put_nowait(outcome)
        # The next probe started, so this one's result was recorded.
        await eventually(lambda: self.runtime.calls > calls, 5.0, "self.runtime.calls > calls")


def _cmd_check(retries: int = 3, start_period: float = 0.0, timeout: float = 1.0) -> HealthCheck:
    return HealthCheck(
        cmd=("check",), interval=0.001, timeout=timeout, retries=retries, start_period=start_period
    )


@contextlib.asynccontextmanager
async def _monitoring(check: HealthCheck) -> AsyncIterator[Harness]:
    harness = Harness(check)
    task = asyncio.create_task(harness.monitor.run())
    try:
        # The first probe is immediate.
        await eventually(lambda: harness.runtime.calls == 1, 5.0, "the first probe")
        yield harness
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- HealthMonitor ---


def test_health_starts_starting() -> None:
    assert Harness(_cmd_check()).monitor.health == Health.STARTING


async def test_one_success_makes_it_healthy() -> None:
    async with _monitoring(_cmd_check()) as h:
        await h.probe(OK, OK, OK)
        assert h.changes == [(Health.HEALTHY, "")]
        assert h.monitor.health == Health.HEALTHY


async def test_unhealthy_only_after_retries_consecutive_failures() -> None:
    async with _monitoring(_cmd_check(retries=3)) as h:
        await h.probe(OK, FAIL, FAIL)
        assert h.changes == [(Health.HEALTHY, "")]
        await h.probe(OK, FAIL, FAIL)  # the success reset the count
        assert h.changes == [(Health.HEALTHY, "")]
        await h.probe(FAIL)
        assert h.changes[-1] == (Health.UNHEALTHY, FAIL_MESSAGE)
        await h.probe(FAIL, ExecResult(2, b"other"))  # still unhealthy: no new report
        assert len(h.changes) == 2
        assert h.monitor.last_message == "exit code 2: other"


async def test_failures_before_any_success_make_it_unhealthy() -> None:
    async with _monitoring(_cmd_check(retries=2)) as h:
        await h.probe(FAIL)
        assert h.changes == []
        await h.probe(FAIL)
        assert h.changes == [(Health.UNHEALTHY, FAIL_MESSAGE)]


async def test_back_to_healthy_after_unhealthy() -> None:
    async with _monitoring(_cmd_check(retries=1)) as h:
        await h.probe(FAIL, OK, FAIL)
        assert h.changes == [
            (Health.UNHEALTHY, FAIL_MESSAGE),
            (Health.HEALTHY, ""),
            (Health.UNHEALTHY, FAIL_MESSAGE),
        ]


async def test_start_period_ignores_early_failures() -> None:
    async with _monitoring(_cmd_check(retries=2, start_period=10.0)) as h:
        await h.probe(FAIL, FAIL, FAIL, FAIL)
        h.now = 9.9
        await h.probe(FAIL, FAIL)
        assert h.changes == []
        assert h.monitor.health == Health.STARTING
        h.now = 10.0
        # What counts is when a probe started: the one in flight began at 9.9.
        await h.probe(FAIL, FAIL)
        assert h.changes == []
        await h.probe(FAIL)
        assert h.changes == [(Health.UNHEALTHY, FAIL_MESSAGE)]


async def test_success_in_start_period_makes_healthy_and_ends_it() -> None:
    async with _monitoring(_cmd_check(retries=1, start_period=10.0)) as h:
        await h.probe(FAIL, OK)
        assert h.changes == [(Health.HEALTHY, "")]
        await h.probe(FAIL)  # still within the period, but the service is up
        assert h.changes[-1] == (Health.UNHEALTHY, FAIL_MESSAGE)


async def test_unexpected_probe_error_counts_as_failure() -> None:
    async with _monitoring(_cmd_check(retries=1)) as h:
        await h.probe(RuntimeError("bug"))
        assert h.changes == [(Health.UNHEALTHY, "health check error: bug")]


async def test_probes_repeat_every_interval() -> None:
    runtime = SimRuntime()
    await runtime.create(ContainerConfig(container_id="c1", image="busybox"))
    await runtime.start("c1")
    changes: list[tuple[Health, str]] = []
    check = HealthCheck(cmd=("true",), interval=0.05, timeout=1.0)
    monitor = HealthMonitor(check, runtime, "c1", lambda h, m: changes.append((h, m)))
    task = asyncio.create_task(monitor.run())
    await asyncio.sleep(0.01)
    assert changes == [(Health.HEALTHY, "")]  # the first probe runs at once
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


# --- exec probe messages ---


async def _probe_with(outcome: ExecOutcome, timeout: float = 1.0) -> str | None:
    runtime = ScriptedRuntime()
    runtime.outcomes.put_nowait(outcome)
    return await probe(_cmd_check(timeout=timeout), runtime, "c1")


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (OK, None),
        (FAIL, FAIL_MESSAGE),
        (ExecResult(2, b""), "exit code 2"),
        (ExecResult(3, b"\n  indented \xff\nnext"), "exit code 3: indented \ufffd"),
        (TimeoutError(), "timed out after 1.5s"),
        (RuntimeFailure("cannot exec: not found\ndetails"), "cannot exec: not found"),
    ],
)
async def test_exec_probe_messages(outcome: ExecOutcome, expected: str | None) -> None:
    assert await _probe_with(outcome, timeout=1.5) == expected


# --- HTTP and TCP probes on the host network ---


@contextlib.asynccontextmanager
async def _http_server() -> AsyncIterator[tuple[int, list[str]]]:
    paths: list[str] = []
    release = asyncio.Event()

    async def handle(request: web.Request) -> web.StreamResponse:
        paths.append(request.path_qs)
        name = request.match_info["name"]
        if name == "slow":
            await release.wait()
        statuses = {"fail": 500, "missing": 404, "redirect": 302}
        if name == "redirect":
            raise web.HTTPFound("/ok")
        return web.Response(status=statuses.get(name, 200), text=name)

    app = web.Application()
    app.router.add_get("/{name}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield port, paths
    finally:
        release.set()
        await runner.cleanup()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _network_probe(http: str = "", tcp: int = 0, timeout: float = 2.0) -> HealthCheck:
    return HealthCheck(http=http, tcp=tcp, timeout=timeout, interval=1.0)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("ok", None),
        ("ok?x=1&y=2", None),
        ("redirect", None),
        ("fail", "HTTP 500"),
        ("missing", "HTTP 404"),
    ],
)
async def test_http_probe(path: str, expected: str | None) -> None:
    async with _http_server() as (port, paths):
        result = await probe(_network_probe(http=f"{port}/{path}"), ScriptedRuntime(), "c1")
    assert result == expected
    assert paths == ["/" + path]


async def test_http_probe_timeout() -> None:
    async with _http_server() as (port, _):
        check = _network_probe(http=f"{port}/slow", timeout=0.2)
        started = time.monotonic()
        assert await probe(check, ScriptedRuntime(), "c1") == "timed out after 0.2s"
        assert time.monotonic() - started < 1.5


async def test_http_probe_connection_refused() -> None:
    port = _free_port()
    check = _network_probe(http=f"{port}/")
    assert await probe(check, ScriptedRuntime(), "c1") == f"connection refused on port {port}"


async def test_http_probe_rejects_a_non_http_answer() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH\r\n")
        writer.close()

    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # closing with the request unread would reset
        writer.close()

    for handler, expected in [
        (answer, "invalid HTTP response"),
        (close_at_once, "connection closed without an HTTP response"),
    ]:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            result = await probe(_network_probe(http=f"{port}/"), ScriptedRuntime(), "c1")
        assert result == expected


async def test_tcp_probe() -> None:
    accepted: list[bool] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(True)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        assert await probe(_network_probe(tcp=port), ScriptedRuntime(), "c1") is None
        await eventually(lambda: accepted == [True], 5.0, "accepted == [True]")
    assert await probe(_network_probe(tcp=port), ScriptedRuntime(), "c1") == (
        f"connection refused on port {port}"
    )


async def test_unknown_container_is_reported() -> None:
    class Forgetful(ScriptedRuntime):
        def network_namespace(self, container_id: str) -> str | None:
            raise NotFound(f"container {container_id} not found")

    check = _network_probe(tcp=80)
    assert await probe(check, Forgetful(), "gone") == "container gone not found"


async def test_missing_namespace_is_reported() -> None:
    runtime = ScriptedRuntime(netns="/run/netns/warren-test-does-not-exist")
    result = await probe(_network_probe(tcp=80), runtime, "c1")
    assert result is not None
    assert result.startswith("cannot open network namespace /run/netns/warren-test-does-not-exist")


# --- a real network namespace ---


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@contextlib.contextmanager
def _namespace() -> Iterator[str]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2")
    name = f"warren-test-{secrets.token_hex(4)}"
    try:
        _ip("netns", "add", name)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create a network namespace: {exc.stderr.decode().strip()}")
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


@contextlib.contextmanager
def _server_in(namespace: str, port: int) -> Iterator[None]:
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    server = subprocess.Popen(
        ["ip", "netns", "exec", namespace, *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        server.kill()
        server.wait(timeout=10)


def _own_namespace() -> str:
    return os.readlink("/proc/thread-self/ns/net")


async def test_probe_reaches_a_server_inside_a_network_namespace() -> None:
    port = _free_port()  # free on the host, so the host probe must be refused
    loop_namespace = _own_namespace()
    with _namespace() as name, _server_in(name, port):
        inside = ScriptedRuntime(netns=f"/run/netns/{name}")
        check = _network_probe(http=f"{port}/", timeout=1.0)
        deadline = time.monotonic() + 15
        while (result := await probe(check, inside, "c1")) is not None:
            assert time.monotonic() < deadline, f"server in {name} never answered: {result}"
            await asyncio.sleep(0.1)

        assert await probe(_network_probe(tcp=port), inside, "c1") is None
        assert await probe(check, ScriptedRuntime(), "c1") == f"connection refused on port {port}"
        # setns ran on throwaway threads: the event loop's thread stayed put.
        assert _own_namespace() == loop_namespace
