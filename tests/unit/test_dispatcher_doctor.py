"""The network doctor through the leader's dispatcher: a request reaches every
connected node's session, their reports are gathered, and a node that does not
answer in time (or is not connected) is a failed row; and the messages' protobuf
round trips."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from test_dispatcher_network_view import _dispatcher, _node

from warren.core.doctor import (
    CheckKind,
    CheckResult,
    DoctorCheck,
    DoctorReport,
    DoctorRequest,
)
from warren.core.models import Resources
from warren.manager.dispatcher import Dispatcher
from warren.manager.grpc_api import manager_message, node_event
from warren.manager.sessions import ManagerEvent, NodeEvent, Registration, SessionStarted
from warren.proto import warren_pb2 as pb
from warren.proto.convert import to_message

OK_ROW = DoctorCheck(CheckKind.HANDSHAKE, "peer n2", CheckResult.OK, "3s ago")
FAIL_ROW = DoctorCheck(
    CheckKind.VIP, "web VIP 10.32.0.2:80", CheckResult.FAIL, "refused", "see the log"
)


class _DoctorNode:
    """A node's session whose node answers doctor requests with ``rows`` (None: silent)."""

    def __init__(
        self, dispatcher: Dispatcher, node_id: str, rows: tuple[DoctorCheck, ...] | None
    ) -> None:
        self.node_id = node_id
        self.rows = rows
        self.requests: list[DoctorRequest] = []
        self.started = asyncio.Event()
        self._outgoing: asyncio.Queue[NodeEvent | None] = asyncio.Queue()
        registration = Registration(node_id, "", Resources(1.0, 1024))
        self._outgoing.put_nowait(registration)
        self._session = dispatcher.session(node_id, self._events(), "10.0.0.9")
        self._pump = asyncio.create_task(self._read())

    async def _events(self) -> AsyncIterator[NodeEvent]:
        while (event := await self._outgoing.get()) is not None:
            yield event

    async def _read(self) -> None:
        async for message in self._session:
            self._received(message)

    def _received(self, message: ManagerEvent) -> None:
        if isinstance(message, SessionStarted):
            self.started.set()
        elif isinstance(message, DoctorRequest):
            self.requests.append(message)
            if self.rows is not None:
                # It claims another node's ID: the session's node is what counts.
                report = DoctorReport(message.request_id, "someone-else", self.rows)
                self._outgoing.put_nowait(report)

    async def close(self) -> None:
        self._outgoing.put_nowait(None)
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump


def _summary(reports: list[DoctorReport]) -> list[tuple[str, str, list[Any]]]:
    return [
        (r.node_id, r.hostname, [(c.kind, c.result, c.detail) for c in r.checks]) for r in reports
    ]


async def test_a_doctor_request_reaches_every_session_and_a_silent_node_is_a_failure() -> None:
    nodes = (_node("n1"), _node("n2"), _node("n3"), _node("n4"))
    async with _dispatcher(2, *nodes) as (dispatcher, _):
        answering = _DoctorNode(dispatcher, "n1", (OK_ROW,))
        failing = _DoctorNode(dispatcher, "n2", (FAIL_ROW,))
        silent = _DoctorNode(dispatcher, "n3", None)
        sessions = (answering, failing, silent)
        try:
            for session in sessions:
                await asyncio.wait_for(session.started.wait(), 5)
            started = asyncio.get_running_loop().time()
            reports = await dispatcher.network_doctor("web", timeout=0.5)
            waited = asyncio.get_running_loop().time() - started
        finally:
            for session in sessions:
                await session.close()
    # Each connected node was asked once, with the filter.
    for session in sessions:
        assert [r.service for r in session.requests] == ["web"]
    assert len({r.request_id for s in sessions for r in s.requests}) == 1
    assert _summary(reports) == [
        ("n1", "n1", [(CheckKind.HANDSHAKE, CheckResult.OK, "3s ago")]),
        ("n2", "n2", [(CheckKind.VIP, CheckResult.FAIL, "refused")]),
        ("n3", "n3", [(CheckKind.NODE, CheckResult.FAIL, "no answer from node n3 within 0.5s")]),
        (
            "n4",
            "n4",
            [(CheckKind.NODE, CheckResult.FAIL, "node n4 is not connected (status unknown)")],
        ),
    ]
    assert reports[2].checks[0].hint.startswith("is it down?")
    assert 0.5 <= waited < 2.0
    assert not reports[0].failed and reports[1].failed


async def test_the_doctor_returns_as_soon_as_every_node_answered() -> None:
    async with _dispatcher(2, _node("n1")) as (dispatcher, _):
        node = _DoctorNode(dispatcher, "n1", (OK_ROW,))
        try:
            await asyncio.wait_for(node.started.wait(), 5)
            started = asyncio.get_running_loop().time()
            reports = await dispatcher.network_doctor("", timeout=30)
            assert asyncio.get_running_loop().time() - started < 5
        finally:
            await node.close()
    assert _summary(reports) == [("n1", "n1", [(CheckKind.HANDSHAKE, CheckResult.OK, "3s ago")])]
    assert node.requests[0].service == ""


def test_doctor_messages_round_trip_through_protobuf() -> None:
    request = DoctorRequest("r1", "web")
    message = manager_message(request)
    assert message.WhichOneof("message") == "doctor"
    assert (message.doctor.request_id, message.doctor.service) == ("r1", "web")

    report = DoctorReport("r1", "n1", (OK_ROW, FAIL_ROW), hostname="h1")
    wire = pb.WorkerMessage(doctor=to_message(report, pb.DoctorReport))
    decoded = pb.WorkerMessage.FromString(wire.SerializeToString())
    assert node_event(decoded) == report


def test_an_unreadable_report_is_a_failed_row_not_the_end_of_the_session() -> None:
    check = pb.DoctorCheck(kind="teleport", target="x", result="ok")
    wire = pb.WorkerMessage(doctor=pb.DoctorReport(request_id="r1", node_id="n1", checks=[check]))
    event = node_event(wire)
    assert isinstance(event, DoctorReport) and event.request_id == "r1"
    assert event.checks[0].result is CheckResult.FAIL
    assert event.checks[0].detail.startswith("unreadable report:")
