"""Leader-only controllers: they react to store events, with a periodic resync.

Each controller turns events into a set of things to look at, waits a short
debounce so a burst (1,000 new tasks) becomes one pass, calls a pure decision
function over a snapshot, and writes the result as compare-and-swap
operations. A write that lost a race is simply retried on the next pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from warren.core.errors import WarrenError
from warren.core.networks import Network
from warren.manager import orchestrator, scheduler
from warren.manager.consensus import Consensus
from warren.manager.events import EventBus, Subscription
from warren.manager.node_blocks import node_block_ops
from warren.manager.store import EventAction, Kind, StoreEvent, txn

log = logging.getLogger(__name__)

_DEBOUNCE = 0.02  # quiet time that ends a burst
_MAX_DELAY = 0.2  # a steady stream of events still gets a pass this often
_BATCH = 100  # operations per Raft command


async def write_ops(consensus: Consensus, ops: list[dict[str, Any]]) -> int:
    """Write best-effort batches; returns how many operations failed."""
    failures = 0
    for start in range(0, len(ops), _BATCH):
        chunk = ops[start : start + _BATCH]
        result = await consensus.propose(txn(chunk, at=time.time(), atomic=False))
        failures += sum(1 for r in result.get("results", []) if "error" in r)
    return failures


async def _gather_burst(subscription: Subscription, timeout: float | None) -> list[StoreEvent]:
    """Wait for events (or the timeout), then keep collecting until a quiet gap."""
    events: list[StoreEvent] = []
    try:
        async with asyncio.timeout(timeout):
            first = await subscription.queue.get()
    except TimeoutError:
        return events
    if first is None:
        raise asyncio.CancelledError("event subscription closed")
    events.append(first)
    deadline = time.monotonic() + _MAX_DELAY
    while time.monotonic() < deadline:
        await asyncio.sleep(_DEBOUNCE)
        more = subscription.drain()
        if not more:
            break
        events.extend(more)
    return events


class Orchestrator:
    """Keeps each service's tasks converged on its spec (replicated and global)."""

    def __init__(self, consensus: Consensus, bus: EventBus, resync_period: float = 10.0) -> None:
        self.consensus = consensus
        self.store = consensus.store
        self.bus = bus
        self.resync_period = resync_period

    async def run(self) -> None:
        subscription = self.bus.subscribe([Kind.SERVICE, Kind.TASK, Kind.NODE])
        try:
            await self._loop(subscription)
        finally:
            subscription.close()

    async def _loop(self, subscription: Subscription) -> None:
        next_resync = 0.0
        wake_at: float | None = None
        dirty: set[str] | None = None  # None: everything
        while True:
            timeout = max(0.0, min(next_resync, wake_at or next_resync) - time.monotonic())
            events = await _gather_burst(subscription, timeout)
            dirty = _dirty_services(events, dirty)
            if time.monotonic() >= next_resync or (wake_at and time.monotonic() >= wake_at):
                dirty = None
                next_resync = time.monotonic() + self.resync_period
            if dirty is not None and not dirty:
                continue
            try:
                wake = await self.converge(dirty)
            except WarrenError as exc:
                log.warning("orchestrator pass failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            dirty = set()
            wake_at = None if wake is None else time.monotonic() + max(0.0, wake - time.time())

    async def converge(self, service_ids: set[str] | None = None) -> float | None:
        """One pass over ``service_ids`` (all when None); returns the earliest wake time."""
        result = orchestrator.converge(self.store.snapshot(), service_ids, time.time())
        if result.ops:
            await write_ops(self.consensus, list(result.ops))
        return result.wake_at


def _dirty_services(events: Iterable[StoreEvent], dirty: set[str] | None) -> set[str] | None:
    if dirty is None:
        return None
    for event in events:
        if event.kind is Kind.SERVICE:
            dirty.add(event.object.id)
        elif event.kind is Kind.TASK:
            dirty.add(event.object.service_id)
        elif event.kind is Kind.NODE:
            # Node changes affect global services and tasks placed anywhere.
            return None
    return dirty


class Scheduler:
    """Places new and pending tasks; debounced so a large service is one pass."""

    def __init__(self, consensus: Consensus, bus: EventBus, resync_period: float = 10.0) -> None:
        self.consensus = consensus
        self.store = consensus.store
        self.bus = bus
        self.resync_period = resync_period

    async def run(self) -> None:
        # Networks too: tasks wait for the blocks their nodes took (scheduler).
        subscription = self.bus.subscribe([Kind.TASK, Kind.NODE, Kind.NETWORK])
        try:
            next_resync = 0.0
            while True:
                timeout = max(0.0, next_resync - time.monotonic())
                events = await _gather_burst(subscription, timeout)
                if time.monotonic() >= next_resync:
                    next_resync = time.monotonic() + self.resync_period
                elif not any(_wants_scheduling(e) for e in events):
                    continue
                try:
                    await self.schedule_pending()
                except WarrenError as exc:
                    log.warning("scheduling pass failed: %s", exc)
                    await asyncio.sleep(0.5)
        finally:
            subscription.close()

    async def schedule_pending(self) -> int:
        """Place every waiting task; returns how many were placed."""
        result = scheduler.schedule_ops(self.store.snapshot(), time.time())
        if result.ops:
            await write_ops(self.consensus, list(result.ops))
        return result.placed


def _wants_scheduling(event: StoreEvent) -> bool:
    if event.kind is Kind.NODE or event.kind is Kind.NETWORK:
        return True
    task = event.object
    # A new task to place, or a task that stopped and freed its node's resources.
    return scheduler.waiting(task) or (bool(task.node_id) and task.status.state.is_terminal)


class NodeBlockKeeper:
    """Gives every node in the cluster a block of the default network, tasks or
    not (its address in the WireGuard mesh), and releases the blocks of removed
    nodes: a pass when a node is added or removed, a network changes, and at
    each resync."""

    def __init__(self, consensus: Consensus, bus: EventBus, resync_period: float = 10.0) -> None:
        self.consensus = consensus
        self.store = consensus.store
        self.bus = bus
        self.resync_period = resync_period
        self._reported: frozenset[str] = frozenset()

    async def run(self) -> None:
        subscription = self.bus.subscribe([Kind.NODE, Kind.NETWORK])
        try:
            next_resync = 0.0
            while True:
                timeout = max(0.0, next_resync - time.monotonic())
                events = await _gather_burst(subscription, timeout)
                if time.monotonic() >= next_resync:
                    next_resync = time.monotonic() + self.resync_period
                elif not any(_changes_node_blocks(e) for e in events):
                    continue
                try:
                    await self.keep_blocks()
                except WarrenError as exc:
                    log.warning("node block pass failed: %s", exc)
                    await asyncio.sleep(0.5)
        finally:
            subscription.close()

    async def keep_blocks(self) -> int:
        """One pass; returns how many network writes were proposed and applied."""
        result = node_block_ops(self.store.snapshot(), time.time())
        self._report_without_block(result.without_block, result.default_network)
        if not result.ops:
            return 0
        return len(result.ops) - await write_ops(self.consensus, list(result.ops))

    def _report_without_block(self, nodes: tuple[str, ...], network: Network | None) -> None:
        # Once per node, not once per pass: nothing changes until a block is freed.
        new = sorted(set(nodes) - self._reported)
        self._reported = frozenset(nodes)
        if new and network is not None:
            log.warning(
                "network %s (%s) has no free /%d block for node(s) %s: they have no address "
                "in the WireGuard mesh (no ingress forwarding from them) until one is free: "
                "remove nodes that left (warren node rm); more nodes than blocks need a "
                "larger default network (cluster init --default-subnet)",
                network.spec.name,
                network.subnet,
                network.block_prefix,
                ", ".join(new),
            )


def _changes_node_blocks(event: StoreEvent) -> bool:
    # A node's status or labels changing does not move blocks; its arrival or removal does.
    return event.kind is Kind.NETWORK or event.action is not EventAction.UPDATE
