"""containerd's task events: one subscription per runtime, routed to callbacks.

Exits arrive as events instead of by polling. A subscription gives no sign of
when containerd has registered it, so after (re)subscribing this publishes a
marker event of its own and counts the subscription live once the marker comes
back: whatever exits after that point is seen. ``on_reconnect`` lets the owner
look again at processes that may have exited while no stream was live.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf import any_pb2, timestamp_pb2

from warren.agent.containerd.client import ContainerdClient
from warren.agent.containerd.proto import events_pb2, task_events_pb2
from warren.agent.runtime import ExitStatus
from warren.core.errors import WarrenError

log = logging.getLogger(__name__)

TASK_EXIT = "/tasks/exit"
TASK_OOM = "/tasks/oom"
MARKER = "/warren/subscribed"
_MARKER_TYPE = "warren.events.Subscribed"
_RETRY_DELAYS = (0.1, 0.5, 1.0, 2.0)


@dataclass(frozen=True)
class ProcessExit:
    container_id: str
    process_id: str  # the container ID for its main process, else the exec ID
    status: ExitStatus


def timestamp_seconds(value: timestamp_pb2.Timestamp) -> float:
    """A protobuf Timestamp as UNIX seconds (0.0 when unset)."""
    return float(value.seconds) + float(value.nanos) / 1e9


class EventStream:
    def __init__(
        self,
        client: ContainerdClient,
        on_exit: Callable[[ProcessExit], None],
        on_oom: Callable[[str], None],
        on_reconnect: Callable[[], None],
    ) -> None:
        self._client = client
        self._on_exit = on_exit
        self._on_oom = on_oom
        self._on_reconnect = on_reconnect
        self._live = asyncio.Event()
        self._failure: WarrenError | None = None
        self._task: asyncio.Task[None] | None = None

    async def ready(self, timeout: float = 10.0) -> None:
        """Return once a subscription is live (starting one if needed)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="containerd-events")
        if self._live.is_set():
            return
        try:
            async with asyncio.timeout(timeout):
                await self._live.wait()
        except TimeoutError:
            raise self._failure or WarrenError("containerd event stream not ready") from None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                await self._follow()
            except WarrenError as exc:
                self._failure = exc
                # Once per outage: the retries of a long one would flood the log.
                level = logging.WARNING if self._live.is_set() or attempt == 0 else logging.DEBUG
                log.log(level, "containerd event stream lost: %s", exc)
            except Exception:
                # Anything else must not end the stream for good: log and resubscribe.
                log.exception("containerd event stream failed")
            attempt = 0 if self._live.is_set() else attempt + 1
            self._live.clear()
            await asyncio.sleep(_RETRY_DELAYS[min(attempt, len(_RETRY_DELAYS) - 1)])

    async def _follow(self) -> None:
        namespace = f"namespace=={self._client.namespace}"
        request = events_pb2.SubscribeRequest(
            filters=[
                f'topic=="{TASK_EXIT}",{namespace}',
                f'topic=="{TASK_OOM}",{namespace}',
                f'topic=="{MARKER}",{namespace}',
            ]
        )
        token = secrets.token_bytes(8)
        marker = asyncio.create_task(self._publish_marker(token))
        try:
            async for envelope in self._client.stream(self._client.api.events.Subscribe, request):
                self._dispatch(envelope, token)
        finally:
            marker.cancel()

    async def _publish_marker(self, token: bytes) -> None:
        # Published until seen: the first may go out before the subscription
        # is registered, and then nobody receives it.
        event = any_pb2.Any(type_url=_MARKER_TYPE, value=token)
        request = events_pb2.PublishRequest(topic=MARKER, event=event)
        delay = 0.01
        while not self._live.is_set():
            with contextlib.suppress(WarrenError):
                await self._client.call(self._client.api.events.Publish, request)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _dispatch(self, envelope: events_pb2.Envelope, token: bytes) -> None:
        if envelope.topic == MARKER:
            if envelope.event.value == token and not self._live.is_set():
                self._live.set()
                self._on_reconnect()
        elif envelope.topic == TASK_EXIT:
            event = task_events_pb2.TaskExit.FromString(envelope.event.value)
            status = ExitStatus(event.exit_status, finished_at=timestamp_seconds(event.exited_at))
            self._on_exit(ProcessExit(event.container_id, event.id, status))
        elif envelope.topic == TASK_OOM:
            self._on_oom(task_events_pb2.TaskOOM.FromString(envelope.event.value).container_id)
