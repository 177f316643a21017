"""The replicated state machine: in-memory tables, indexes, versions, events.

Every write is a command applied in Raft log order. ``apply`` is
deterministic: it reads nothing but the command and the current state (the
proposer stamps times and IDs), and it re-checks every precondition
(compare-and-swap on object versions, unique names, forward-only task states)
because the state may have moved between proposing and applying.
"""

from __future__ import annotations

import builtins
import hashlib
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from warren.core.codec import from_dict, to_dict
from warren.core.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    WarrenError,
)
from warren.core.formats import COMMAND_FORMAT, newest_field, newest_format
from warren.core.models import Cluster, Service, Task, TaskStatus
from warren.manager.kinds import Kind as Kind
from warren.manager.kinds import kind_of, spec_of
from warren.manager.kinds.service import BY_NAME
from warren.manager.kinds.task import BY_NODE, BY_SERVICE
from warren.manager.snapshot import Snapshot

# ``expect`` in a put: the object must not exist yet.
MUST_NOT_EXIST = 0

# The state hash is the sum of every object's digest modulo this: a sum does
# not depend on order, so each put or delete updates it in O(1).
_HASH_MODULUS = 1 << 256


class EventAction(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True)
class StoreEvent:
    revision: int
    action: EventAction
    kind: Kind
    object: Any  # the model object (the old one for a delete)
    timestamp: float


Listener = Callable[[list[StoreEvent]], None]


# Command builders: the only shapes ``apply`` accepts. Plain dicts so the Raft
# log holds JSON-compatible data, never pickled application objects.
def put(obj: Any, expect: int | None) -> dict[str, Any]:
    """Write ``obj``; ``expect`` is its current version (0: must not exist, None: any)."""
    return {"put": str(kind_of(obj)), "object": to_dict(obj), "expect": expect}


def delete(kind: Kind, object_id: str, expect: int | None = None) -> dict[str, Any]:
    return {"delete": str(kind), "id": object_id, "expect": expect}


def txn(ops: list[dict[str, Any]], at: float, atomic: bool = True) -> dict[str, Any]:
    """A batch of writes. Atomic: all or none. Otherwise each op stands alone."""
    return {"op": "txn", "ops": ops, "at": at, "atomic": atomic}


def task_status(node_id: str, updates: dict[str, TaskStatus], at: float) -> dict[str, Any]:
    """A worker's status reports: merged into tasks it owns, forward-only."""
    return {
        "op": "task_status",
        "node_id": node_id,
        "updates": {task_id: to_dict(status) for task_id, status in updates.items()},
        "at": at,
    }


class Store:
    def __init__(self, max_format: int = COMMAND_FORMAT) -> None:
        # The newest command format this code reads (see warren.core.formats).
        self.max_format = max_format
        self._lock = threading.RLock()
        self._revision = 0
        self._tables: dict[Kind, dict[str, Any]] = {kind: {} for kind in Kind}
        # Per kind, per index name: object IDs by key (see KindSpec.indexes).
        self._indexes = _empty_indexes()
        self._listeners: list[Listener] = []
        # Each object's digest, and their sum: see ``state_hash``.
        self._digests: dict[Kind, dict[str, int]] = {kind: {} for kind in Kind}
        self._hash = 0

    # -- reads ---------------------------------------------------------------

    @property
    def revision(self) -> int:
        return self._revision

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                revision=self._revision,
                nodes=dict(self._tables[Kind.NODE]),
                services=dict(self._tables[Kind.SERVICE]),
                tasks=dict(self._tables[Kind.TASK]),
                networks=dict(self._tables[Kind.NETWORK]),
                task_ids_by_service=self._frozen_index(Kind.TASK, BY_SERVICE),
                task_ids_by_node=self._frozen_index(Kind.TASK, BY_NODE),
            )

    def _frozen_index(self, kind: Kind, index: str) -> dict[str, frozenset[str]]:
        return {k: frozenset(v) for k, v in self._indexes[kind][index].items()}

    def tables(self) -> tuple[int, dict[Kind, builtins.list[Any]]]:
        """(revision, every kind's objects) at one point in time."""
        with self._lock:
            return self._revision, {
                kind: list(table.values()) for kind, table in self._tables.items()
            }

    def indexed(self, kind: Kind, index: str, key: str) -> frozenset[str]:
        """IDs of the objects of ``kind`` found under ``key`` in ``index``."""
        with self._lock:
            return frozenset(self._indexes[kind][index].get(key, ()))

    def find_indexed(self, kind: Kind, index: str, key: str) -> builtins.list[Any]:
        """The objects of ``kind`` found under ``key`` in ``index``."""
        with self._lock:
            table = self._tables[kind]
            return [table[i] for i in self._indexes[kind][index].get(key, ())]

    def get(self, kind: Kind, object_id: str) -> Any:
        with self._lock:
            obj = self._tables[kind].get(object_id)
        if obj is None:
            raise NotFound(f"{kind} '{object_id}' not found")
        return obj

    def find(self, kind: Kind, object_id: str) -> Any | None:
        with self._lock:
            return self._tables[kind].get(object_id)

    def list(self, kind: Kind) -> builtins.list[Any]:
        with self._lock:
            return list(self._tables[kind].values())

    def tasks_of_service(self, service_id: str) -> builtins.list[Task]:
        return self.find_indexed(Kind.TASK, BY_SERVICE, service_id)

    def tasks_on_node(self, node_id: str) -> builtins.list[Task]:
        return self.find_indexed(Kind.TASK, BY_NODE, node_id)

    def service_by_name(self, name: str) -> Service | None:
        # Names are unique (an invariant of the service kind).
        found: builtins.list[Service] = self.find_indexed(Kind.SERVICE, BY_NAME, name)
        return found[0] if found else None

    def cluster(self) -> Cluster | None:
        with self._lock:
            return next(iter(self._tables[Kind.CLUSTER].values()), None)

    def state_hash(self) -> tuple[int, str]:
        """(revision, sum of every object's digest): replicas that applied the
        same log agree on both, which is what consistency checks compare.

        Kept up to date as objects are written, so this is O(1) however large
        the state (it is served on the event loop)."""
        with self._lock:
            return self._revision, f"{self._hash:064x}"

    def count(self, kind: Kind) -> int:
        with self._lock:
            return len(self._tables[kind])

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    # -- the state machine ---------------------------------------------------

    def apply(self, command: dict[str, Any]) -> Any:
        """Apply one log entry; returns a JSON-compatible result, never raises."""
        events: builtins.list[StoreEvent] = []
        with self._lock:
            try:
                if command["op"] == "txn":
                    result = self._apply_txn(command, events)
                elif command["op"] == "task_status":
                    result = self._apply_task_status(command, events)
                elif command["op"] == "barrier":
                    # Proves every earlier entry is applied (new leader, restart).
                    result = {"revision": self._revision}
                else:
                    raise FailedPrecondition(f"unknown command {command['op']!r}")
            except WarrenError as exc:
                result = _error(exc)
        if events:
            for listener in list(self._listeners):
                listener(events)
        return result

    def _apply_txn(self, command: dict[str, Any], events: builtins.list[StoreEvent]) -> Any:
        at = float(command["at"])
        atomic = bool(command["atomic"])
        revision = self._revision
        undo: builtins.list[tuple[Kind, str, Any]] = []
        results: builtins.list[dict[str, Any]] = []
        for op in command["ops"]:
            # Each op sees the state the ops before it left.
            try:
                kind, object_id, old, new = self._check_op(op, at)
            except WarrenError as exc:
                if atomic:
                    self._rollback(undo, revision)
                    events.clear()
                    raise
                results.append(_error(exc))
                continue
            undo.append((kind, object_id, old))
            events.append(self._commit((kind, object_id, old, new), at))
            results.append({"version": self._revision})
        return {"results": results}

    def _rollback(self, undo: builtins.list[tuple[Kind, str, Any]], revision: int) -> None:
        """Undo committed ops of a failed atomic txn, newest first."""
        for kind, object_id, old in reversed(undo):
            self._place(kind, object_id, old)
        self._revision = revision

    def _check_op(self, op: dict[str, Any], at: float) -> tuple[Kind, str, Any, Any]:
        """Validate one op against the current state; return (kind, id, old, new)."""
        if "put" in op:
            kind = Kind(op["put"])
            spec = spec_of(kind)
            self._check_readable(spec.model, op["object"])
            new = from_dict(spec.model, op["object"])
            old = self._tables[kind].get(new.id)
            _check_version(kind, new.id, old, op["expect"])
            for invariant in spec.invariants:
                invariant(self, old, new)
            return kind, new.id, old, new
        kind = Kind(op["delete"])
        old = self._tables[kind].get(op["id"])
        if old is None:
            raise NotFound(f"{kind} '{op['id']}' not found")
        _check_version(kind, op["id"], old, op["expect"])
        return kind, op["id"], old, None

    def _commit(self, step: tuple[Kind, str, Any, Any], at: float) -> StoreEvent:
        kind, object_id, old, new = step
        self._revision += 1
        if new is None:
            self._place(kind, object_id, None)
            return StoreEvent(self._revision, EventAction.DELETE, kind, old, at)
        new = replace(new, version=self._revision)
        self._place(kind, object_id, new)
        action = EventAction.CREATE if old is None else EventAction.UPDATE
        return StoreEvent(self._revision, action, kind, new, at)

    def _apply_task_status(self, command: dict[str, Any], events: builtins.list[StoreEvent]) -> Any:
        node_id = command["node_id"]
        at = float(command["at"])
        tasks = self._tables[Kind.TASK]
        applied: builtins.list[str] = []
        refused: dict[str, str] = {}
        # Decode everything first: a malformed report changes nothing.
        for raw in command["updates"].values():
            self._check_readable(TaskStatus, raw)
        updates = {tid: from_dict(TaskStatus, raw) for tid, raw in command["updates"].items()}
        for task_id, status in updates.items():
            task = tasks.get(task_id)
            if task is None:
                refused[task_id] = "unknown task"
                continue
            if task.node_id != node_id:
                refused[task_id] = "task is not assigned to this node"
                continue
            # Forward-only: a late or repeated report never moves a task back.
            if status.state.rank < task.status.state.rank or task.status.state.is_terminal:
                refused[task_id] = f"task is already {task.status.state}"
                continue
            updated = replace(task, status=status, updated_at=at)
            events.append(self._commit((Kind.TASK, task_id, task, updated), at))
            applied.append(task_id)
        return {"applied": applied, "refused": refused}

    def _check_readable(self, model: type[Any], raw: Any) -> None:
        """Refuse a field newer than this code's format, as code without the
        field would (a proposer writing the cluster's format never sends one)."""
        if newest_format(model) <= self.max_format:
            return
        needs, where = newest_field(model, raw)
        if needs > self.max_format:
            raise InvalidArgument(
                f"{where}: unknown field (command format {needs}; "
                f"this manager reads up to {self.max_format})"
            )

    def _place(self, kind: Kind, object_id: str, obj: Any | None) -> None:
        """Put ``obj`` in its table (None: remove the object there), keeping
        the indexes and the state hash in step."""
        current = self._tables[kind].pop(object_id, None)
        if current is not None:
            self._unindex(kind, current)
            removed = self._digests[kind].pop(object_id)
            self._hash = (self._hash - removed) % _HASH_MODULUS
        if obj is not None:
            self._tables[kind][object_id] = obj
            self._index(kind, obj)
            digest = object_digest(obj)
            self._digests[kind][object_id] = digest
            self._hash = (self._hash + digest) % _HASH_MODULUS

    def _index(self, kind: Kind, obj: Any) -> None:
        indexes = self._indexes[kind]
        for index in spec_of(kind).indexes:
            entries = indexes[index.name]
            for key in index.keys(obj):
                entries.setdefault(key, set()).add(obj.id)

    def _unindex(self, kind: Kind, obj: Any) -> None:
        indexes = self._indexes[kind]
        for index in spec_of(kind).indexes:
            for key in index.keys(obj):
                _discard(indexes[index.name], key, obj.id)

    # -- state images (etcd's compaction) ----------------------------------------

    def export_state(self) -> dict[str, Any]:
        """The whole state by reference (a state image copies the tables it encodes)."""
        return {"revision": self._revision, "tables": self._tables}

    def import_state(self, state: dict[str, Any]) -> None:
        with self._lock:
            self._revision = state["revision"]
            self._tables = {kind: {} for kind in Kind}
            self._digests = {kind: {} for kind in Kind}
            self._hash = 0
            self._indexes = _empty_indexes()
            for kind in Kind:
                for object_id, obj in state["tables"].get(kind, {}).items():
                    self._place(kind, object_id, obj)

    def load(self, objects: Iterable[Any]) -> None:
        """Seed objects directly (tests and restore only; bypasses the log)."""
        with self._lock:
            for obj in objects:
                kind = kind_of(obj)
                self._revision += 1
                self._place(kind, obj.id, replace(obj, version=self._revision))


def _empty_indexes() -> dict[Kind, dict[str, dict[str, set[str]]]]:
    return {kind: {index.name: {} for index in spec_of(kind).indexes} for kind in Kind}


def barrier() -> dict[str, Any]:
    return {"op": "barrier"}


def object_digest(obj: Any) -> int:
    """sha256 of an object's repr, as an integer.

    The models are frozen dataclasses whose generated repr names the class
    and every field, recursively; dicts in it keep the order the Raft log gave
    them, which every replica shares. It costs a fraction of a JSON encoding,
    and this runs on every write.
    """
    return int.from_bytes(hashlib.sha256(repr(obj).encode()).digest(), "big")


def _check_version(kind: Kind, object_id: str, old: Any, expect: int | None) -> None:
    if expect is None:
        return
    if expect == MUST_NOT_EXIST:
        if old is not None:
            raise AlreadyExists(f"{kind} '{object_id}' already exists")
        return
    if old is None:
        raise NotFound(f"{kind} '{object_id}' not found")
    if old.version != expect:
        raise Conflict(f"{kind} '{object_id}' changed (version {old.version}, expected {expect})")


def _discard(index: dict[str, set[str]], key: str, value: str) -> None:
    members = index.get(key)
    if members is not None:
        members.discard(value)
        if not members:
            del index[key]


def _error(exc: WarrenError) -> dict[str, Any]:
    return {"error": exc.code, "message": exc.message}


def raise_for_result(result: Any) -> Any:
    """Turn an error result of ``apply`` back into the exception it stands for."""
    from warren.core.errors import error_from_code

    if isinstance(result, dict) and "error" in result:
        raise error_from_code(result["error"], result["message"])
    if isinstance(result, dict) and "results" in result:
        for item in result["results"]:
            if "error" in item:
                raise error_from_code(item["error"], item["message"])
    return result
