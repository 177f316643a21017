"""Who is waiting for which process to exit, and who listens for container exits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from warren.agent.runtime import ExitStatus, RuntimeEvent

ProcessKey = tuple[str, str]  # (container ID, process ID: the container ID or an exec ID)


class Waiters:
    def __init__(self) -> None:
        self._futures: dict[ProcessKey, list[asyncio.Future[ExitStatus]]] = {}

    def expect(self, container_id: str, process_id: str) -> asyncio.Future[ExitStatus]:
        future: asyncio.Future[ExitStatus] = asyncio.get_running_loop().create_future()
        self._futures.setdefault((container_id, process_id), []).append(future)
        return future

    def resolve(self, container_id: str, process_id: str, status: ExitStatus) -> None:
        for future in self._futures.pop((container_id, process_id), []):
            if not future.done():
                future.set_result(status)

    def fail(self, container_id: str, error: Exception) -> None:
        """Every waiter on the container's processes gets ``error`` (it is gone)."""
        for key in [key for key in self._futures if key[0] == container_id]:
            for future in self._futures.pop(key):
                if not future.done():
                    future.set_exception(error)

    def discard(
        self, container_id: str, process_id: str, future: asyncio.Future[ExitStatus]
    ) -> None:
        futures = self._futures.get((container_id, process_id), [])
        if future in futures:
            futures.remove(future)
        if not futures:
            self._futures.pop((container_id, process_id), None)

    def pending(self) -> list[ProcessKey]:
        return list(self._futures)


class Broadcast:
    """Fans container exits out to every ``events()`` iterator."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[RuntimeEvent]] = set()

    def publish(self, event: RuntimeEvent) -> None:
        for queue in self._queues:
            queue.put_nowait(event)

    def subscribe(self) -> AsyncIterator[RuntimeEvent]:
        # The queue exists from this call on, not from the first iteration:
        # an exit right after subscribing is not lost.
        queue: asyncio.Queue[RuntimeEvent] = asyncio.Queue()
        self._queues.add(queue)
        return self._drain(queue)

    async def _drain(self, queue: asyncio.Queue[RuntimeEvent]) -> AsyncIterator[RuntimeEvent]:
        try:
            while True:
                yield await queue.get()
        finally:
            self._queues.discard(queue)
