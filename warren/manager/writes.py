"""How the manager's services write: one transaction, compare-and-swap retries,
and the operations that orphan a node's tasks.

Shared by the control services and the dispatcher, so each rule lives once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar, Protocol, TypeVar

from warren.core.errors import Conflict, NotFound
from warren.core.models import TaskStatus
from warren.core.states import TaskState
from warren.manager.consensus import Consensus
from warren.manager.store import Kind, Store, put, raise_for_result, txn

# Compare-and-swap attempts for read-modify-write updates the user did not pin.
CAS_ATTEMPTS = 5


class Versioned(Protocol):
    @property
    def version(self) -> int: ...


class Timestamped(Versioned, Protocol):
    # A dataclass (so ``replace`` applies) with an update time.
    __dataclass_fields__: ClassVar[dict[str, Any]]

    @property
    def updated_at(self) -> float: ...


V = TypeVar("V", bound=Versioned)
S = TypeVar("S", bound=Timestamped)


async def write(consensus: Consensus, ops: list[dict[str, Any]]) -> Any:
    """Propose ``ops`` as one atomic transaction; a failed precondition raises."""
    return raise_for_result(await consensus.propose(txn(ops, at=time.time())))


async def update_with_retry(
    consensus: Consensus,
    kind: Kind,
    object_id: str,
    change: Callable[[V], V | None],
    attempts: int = CAS_ATTEMPTS,
) -> V:
    """Read the object, apply ``change`` and write the result only if the object
    is still the version read; on a conflict read it again and retry.

    ``change`` returns None when there is nothing to write (the current object
    is returned as is) and may raise to refuse. Returns the object as stored.
    """
    store = consensus.store
    for _ in range(attempts):
        current: V | None = store.find(kind, object_id)
        if current is None:
            raise NotFound(f"{kind} '{object_id}' not found")
        updated = change(current)
        if updated is None:
            return current
        try:
            await write(consensus, [put(updated, current.version)])
        except Conflict:
            continue  # written meanwhile: look again
        written: V = store.get(kind, object_id)
        return written
    raise Conflict(f"{kind} '{object_id}' kept changing ({attempts} attempts); try again")


def changed(old: S, new: S) -> S | None:
    """``new``, unless it differs from ``old`` only in its update time."""
    return None if new == replace(old, updated_at=new.updated_at) else new


def orphan_node_tasks(
    store: Store, node_id: str, message: str, now: float, *, shut_down: bool
) -> list[dict[str, Any]]:
    """Operations marking every active task on a node orphaned (its node is down
    or gone), for the orchestrator to replace. ``shut_down``: the node is gone
    for good, so the task is not to run again either."""
    ops = []
    for task in store.tasks_on_node(node_id):
        if not task.status.state.is_active:
            continue
        orphaned = replace(
            task,
            desired_state=TaskState.SHUTDOWN if shut_down else task.desired_state,
            status=TaskStatus(TaskState.ORPHANED, message, timestamp=now),
            updated_at=now,
        )
        ops.append(put(orphaned, task.version))
    return ops
