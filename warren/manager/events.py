"""Fan-out of store events to asyncio subscribers (controllers, API streams).

The store publishes from its apply step, on whichever thread applies; the bus
moves events onto the event loop. A subscriber that falls too far
behind is closed rather than allowed to grow memory without bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

from warren.core.errors import InvalidArgument
from warren.core.validation import show
from warren.manager import kinds as registry
from warren.manager.store import Kind, Store, StoreEvent

_CLOSED = None

# What API clients may watch: each kind says (KindSpec.public_events). The
# cluster object holds the join-token secrets: it never leaves the managers
# through an event stream.
PUBLIC_KINDS = registry.public_kinds()


def public_kinds(names: Iterable[str]) -> frozenset[Kind]:
    """Parse event kind names from a client; none given means every public kind."""
    public = registry.public_kinds()
    kinds: set[Kind] = set()
    for name in names:
        kind = next((k for k in public if k.value == name.strip()), None)
        if kind is None:
            allowed = ", ".join(sorted(k.value for k in public))
            raise InvalidArgument(f"unknown event kind {show(name.strip())}: use {allowed}")
        kinds.add(kind)
    return frozenset(kinds) or public


class Subscription:
    def __init__(self, bus: EventBus, kinds: frozenset[Kind] | None, maxsize: int) -> None:
        self._bus = bus
        self.kinds = kinds
        self.queue: asyncio.Queue[StoreEvent | None] = asyncio.Queue(maxsize)
        self.overflowed = False

    def offer(self, event: StoreEvent) -> None:
        if self.kinds is not None and event.kind not in self.kinds:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True
            self.close()

    def close(self) -> None:
        self._bus.unsubscribe(self)
        # Make room for the end marker so a waiting reader wakes up.
        while self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(_CLOSED)

    async def __aiter__(self) -> AsyncIterator[StoreEvent]:
        while True:
            event = await self.queue.get()
            if event is _CLOSED:
                return
            yield event

    def drain(self) -> list[StoreEvent]:
        """Everything queued now, without waiting (for debounced consumers)."""
        out: list[StoreEvent] = []
        while not self.queue.empty():
            event = self.queue.get_nowait()
            if event is not None:
                out.append(event)
        return out


class EventBus:
    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._subscriptions: list[Subscription] = []
        store.subscribe(self._from_store)

    def _from_store(self, events: list[StoreEvent]) -> None:
        self._loop.call_soon_threadsafe(self.publish, events)

    def publish(self, events: Iterable[StoreEvent]) -> None:
        for event in events:
            for subscription in list(self._subscriptions):
                subscription.offer(event)

    def subscribe(
        self, kinds: Iterable[Kind] | None = None, maxsize: int = 100_000
    ) -> Subscription:
        subscription = Subscription(self, None if kinds is None else frozenset(kinds), maxsize)
        self._subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)
