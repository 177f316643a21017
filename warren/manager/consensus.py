"""The consensus boundary: a small protocol so another backend could replace Raft.

``propose`` returns only once the command is committed and applied locally
(so a caller reading the store afterwards sees its own write).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from warren.core.errors import FailedPrecondition
from warren.manager.store import Store

LeadershipListener = Callable[[bool], None]


@dataclass(frozen=True)
class Member:
    address: str  # raft host:port
    is_leader: bool
    reachable: bool
    learner: bool = False  # catching up, not voting yet


class Consensus(Protocol):
    store: Store

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def propose(self, command: dict[str, Any], timeout: float = 10.0) -> Any:
        """Replicate and apply ``command``; raise ``Unavailable`` if it cannot commit."""
        ...

    async def read_barrier(self, timeout: float = 5.0) -> None:
        """Return once every write committed before the call is applied here."""
        ...

    async def add_member(self, address: str, timeout: float = 10.0) -> None:
        """Add a member at ``address`` (a Raft host:port); one change at a time."""
        ...

    async def remove_member(self, address: str, timeout: float = 10.0) -> None: ...

    @property
    def is_leader(self) -> bool: ...

    @property
    def leader(self) -> str | None: ...

    @property
    def last_log_index(self) -> int: ...

    def members(self) -> list[Member]: ...

    def on_leadership_change(self, listener: LeadershipListener) -> None: ...


class LocalConsensus:
    """An in-process stand-in: applies at once, and leads alone. Members added
    are only listed (they never vote). For tests."""

    def __init__(self, store: Store | None = None) -> None:
        self.store = store or Store()
        self._index = 0
        self._listeners: list[LeadershipListener] = []
        self._started = False
        self._others: list[str] = []

    async def start(self) -> None:
        self._started = True
        for listener in self._listeners:
            listener(True)

    async def stop(self) -> None:
        self._started = False
        for listener in self._listeners:
            listener(False)

    async def propose(self, command: dict[str, Any], timeout: float = 10.0) -> Any:
        await asyncio.sleep(0)
        self._index += 1
        return self.store.apply(command)

    async def read_barrier(self, timeout: float = 5.0) -> None:
        await asyncio.sleep(0)  # applies at once: nothing is ever behind

    async def add_member(self, address: str, timeout: float = 10.0) -> None:
        if address == "local" or address in self._others:
            raise FailedPrecondition(f"{address} is a member already")
        self._others.append(address)

    async def remove_member(self, address: str, timeout: float = 10.0) -> None:
        if address not in self._others:
            raise FailedPrecondition(f"{address} is not a member")
        self._others.remove(address)

    @property
    def is_leader(self) -> bool:
        return self._started

    @property
    def leader(self) -> str | None:
        return "local" if self._started else None

    @property
    def last_log_index(self) -> int:
        return self._index

    def members(self) -> list[Member]:
        others = [Member(address, False, True) for address in self._others]
        return [Member("local", self._started, True), *others]

    def on_leadership_change(self, listener: LeadershipListener) -> None:
        self._listeners.append(listener)
