"""Commands written in the cluster's command format, and moving the cluster to
a newer one (see ``warren.core.formats``).

- Each manager records in the cluster object the highest format its code reads
  (``report_format``, at start).
- The cluster's format rises only when every manager reads the new one
  (``raise_format``: the leader, and each manager after it reports).
- A manager encodes every command it proposes for the cluster's format
  (``CommandEncoder``), and refuses a write that needs a newer one, naming the
  managers to upgrade.
- A manager whose code cannot read the cluster's format does not start
  (``check_readable``).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from warren.core.errors import Conflict, FailedPrecondition
from warren.core.formats import COMMAND_FORMAT, FIRST_FORMAT, FieldTooNew, for_format
from warren.core.models import Cluster, ManagerFormat, NodeRole, TaskStatus
from warren.manager.consensus import Consensus
from warren.manager.kinds import Kind, spec_of
from warren.manager.store import Store, put, raise_for_result, txn

# Writes of the cluster object retried when another write moved it meanwhile.
_ATTEMPTS = 5


def cluster_format(store: Store) -> int:
    cluster = store.cluster()
    return FIRST_FORMAT if cluster is None else cluster.command_format


def check_readable(store: Store, max_format: int = COMMAND_FORMAT) -> None:
    """Refuse to run a manager whose code cannot read the cluster's format."""
    current = cluster_format(store)
    if current > max_format:
        raise FailedPrecondition(
            f"the cluster writes command format {current}, and this warren reads formats "
            f"up to {max_format}: upgrade warren on this host to the version the other "
            "managers run"
        )


def manager_formats(cluster: Cluster) -> dict[str, int]:
    """The highest format each manager's code reads, by node ID."""
    return {m.node_id: m.command_format for m in cluster.manager_formats}


def _with_formats(cluster: Cluster, formats: dict[str, int]) -> Cluster:
    entries = tuple(ManagerFormat(i, f) for i, f in sorted(formats.items()))
    return replace(cluster, manager_formats=entries)


def _manager_ids(store: Store) -> list[str]:
    return sorted(n.id for n in store.list(Kind.NODE) if n.role == NodeRole.MANAGER)


def target_format(store: Store, cluster: Cluster) -> int:
    """The newest format every manager reads (never below the current one)."""
    formats = manager_formats(cluster)
    reads = [formats.get(i, FIRST_FORMAT) for i in _manager_ids(store)]
    return max(cluster.command_format, min(reads, default=cluster.command_format))


class CommandEncoder:
    """Encodes commands for the cluster's format, with the code's own limit."""

    def __init__(self, store: Store, max_format: int = COMMAND_FORMAT) -> None:
        self.store = store
        self.max_format = max_format

    def encode(self, command: dict[str, Any]) -> dict[str, Any]:
        current = cluster_format(self.store)
        check_readable(self.store, self.max_format)
        try:
            return _for_format(command, current)
        except FieldTooNew as exc:
            raise FailedPrecondition(self._too_new(exc, current)) from None

    def _too_new(self, exc: FieldTooNew, current: int) -> str:
        cluster = self.store.cluster()
        formats = {} if cluster is None else manager_formats(cluster)
        behind = [
            self.store.get(Kind.NODE, i).hostname or i
            for i in _manager_ids(self.store)
            if formats.get(i, FIRST_FORMAT) < exc.needs
        ]
        head = f"{exc.path} needs command format {exc.needs}; the cluster is at {current}"
        if behind:
            return f"{head}: upgrade warren on managers {', '.join(behind)} first"
        return f"{head}: every manager reads it and the cluster moves to it shortly; retry"


def _for_format(command: dict[str, Any], current: int) -> dict[str, Any]:
    if command.get("op") == "txn":
        return {**command, "ops": [_op_for_format(op, current) for op in command["ops"]]}
    if command.get("op") == "task_status":
        updates = {
            task_id: for_format(TaskStatus, raw, current, f"status[{task_id}]")
            for task_id, raw in command["updates"].items()
        }
        return {**command, "updates": updates}
    return command


def _op_for_format(op: dict[str, Any], current: int) -> dict[str, Any]:
    if "put" not in op:
        return op
    model = spec_of(Kind(op["put"])).model
    return {**op, "object": for_format(model, op["object"], current)}


async def report_format(
    consensus: Consensus, node_id: str, max_format: int = COMMAND_FORMAT
) -> None:
    """Record in the cluster the highest format this manager's code reads."""
    for _ in range(_ATTEMPTS):
        cluster = consensus.store.cluster()
        # Absent means format 1: nothing is written until a format 2 exists.
        if cluster is None or manager_formats(cluster).get(node_id, FIRST_FORMAT) == max_format:
            return
        formats = {**manager_formats(cluster), node_id: max_format}
        if await _write_cluster(consensus, _with_formats(cluster, formats), cluster):
            return
    raise Conflict("the cluster kept changing while recording this manager's command format")


async def raise_format(consensus: Consensus) -> int | None:
    """Move the cluster to the newest format every manager reads; the new
    format, or None when it is already there."""
    for _ in range(_ATTEMPTS):
        store = consensus.store
        cluster = store.cluster()
        if cluster is None:
            return None
        target = target_format(store, cluster)
        if target <= cluster.command_format:
            return None
        # Entries of removed managers no longer hold anything back: dropped.
        managers = set(_manager_ids(store))
        formats = {i: f for i, f in manager_formats(cluster).items() if i in managers}
        moved = replace(_with_formats(cluster, formats), command_format=target)
        if await _write_cluster(consensus, moved, cluster):
            return target
    raise Conflict("the cluster kept changing while moving it to a newer command format")


async def _write_cluster(consensus: Consensus, new: Cluster, old: Cluster) -> bool:
    """Compare-and-swap the cluster object; False when it moved meanwhile."""
    try:
        raise_for_result(await consensus.propose(txn([put(new, old.version)], at=time.time())))
    except Conflict:
        return False
    return True
