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
from warren.core.errors import AlreadyExists, Conflict, FailedPrecondition, NotFound, WarrenError
from warren.core.models import Cluster, Node, Service, Task, TaskStatus
from warren.core.states import TaskState, check_transition
from warren.manager.snapshot import Snapshot

# ``expect`` in a put: the object must not exist yet.
MUST_NOT_EXIST = 0

# The state hash is the sum of every object's digest modulo this: a sum does
# not depend on order, so each put or delete updates it in O(1).
_HASH_MODULUS = 1 << 256


class Kind(StrEnum):
    CLUSTER = "cluster"
    NODE = "node"
    SERVICE = "service"
    TASK = "task"


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

_MODEL_OF: dict[Kind, type[Any]] = {
    Kind.CLUSTER: Cluster,
    Kind.NODE: Node,
    Kind.SERVICE: Service,
    Kind.TASK: Task,
}


# Command builders: the only shapes ``apply`` accepts. Plain dicts so the Raft
# log holds JSON-compatible data, never pickled application objects.
def put(obj: Any, expect: int | None) -> dict[str, Any]:
    """Write ``obj``; ``expect`` is its current version (0: must not exist, None: any)."""
    kind = next(k for k, model in _MODEL_OF.items() if isinstance(obj, model))
    return {"put": str(kind), "object": to_dict(obj), "expect": expect}


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
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._revision = 0
        self._tables: dict[Kind, dict[str, Any]] = {kind: {} for kind in Kind}
        self._tasks_by_service: dict[str, set[str]] = {}
        self._tasks_by_node: dict[str, set[str]] = {}
        self._service_ids_by_name: dict[str, str] = {}
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
                task_ids_by_service={k: frozenset(v) for k, v in self._tasks_by_service.items()},
                task_ids_by_node={k: frozenset(v) for k, v in self._tasks_by_node.items()},
            )

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
        with self._lock:
            tasks = self._tables[Kind.TASK]
            return [tasks[t] for t in self._tasks_by_service.get(service_id, ())]

    def tasks_on_node(self, node_id: str) -> builtins.list[Task]:
        with self._lock:
            tasks = self._tables[Kind.TASK]
            return [tasks[t] for t in self._tasks_by_node.get(node_id, ())]

    def service_by_name(self, name: str) -> Service | None:
        with self._lock:
            service_id = self._service_ids_by_name.get(name)
            return None if service_id is None else self._tables[Kind.SERVICE][service_id]

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
            new = from_dict(_MODEL_OF[kind], op["object"])
            old = self._tables[kind].get(new.id)
            _check_version(kind, new.id, old, op["expect"])
            self._check_invariants(kind, old, new)
            return kind, new.id, old, new
        kind = Kind(op["delete"])
        old = self._tables[kind].get(op["id"])
        if old is None:
            raise NotFound(f"{kind} '{op['id']}' not found")
        _check_version(kind, op["id"], old, op["expect"])
        return kind, op["id"], old, None

    def _check_invariants(self, kind: Kind, old: Any, new: Any) -> None:
        if kind is Kind.SERVICE:
            owner = self._service_name_owner(new.spec.name)
            if owner is not None and owner != new.id:
                raise AlreadyExists(f"service '{new.spec.name}' already exists")
        elif kind is Kind.TASK and old is not None:
            check_transition(old.status.state, new.status.state)
            if old.desired_state == TaskState.SHUTDOWN and new.desired_state == TaskState.RUNNING:
                raise FailedPrecondition(f"task {new.id} was shut down; it cannot run again")
            if old.node_id and new.node_id != old.node_id:
                raise FailedPrecondition(f"task {new.id} is already assigned to another node")
        elif kind is Kind.CLUSTER and old is None and self._tables[Kind.CLUSTER]:
            raise AlreadyExists("the cluster is already initialised")

    def _service_name_owner(self, name: str) -> str | None:
        return self._service_ids_by_name.get(name)

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
        if kind is Kind.TASK:
            self._tasks_by_service.setdefault(obj.service_id, set()).add(obj.id)
            if obj.node_id:
                self._tasks_by_node.setdefault(obj.node_id, set()).add(obj.id)
        elif kind is Kind.SERVICE:
            self._service_ids_by_name[obj.spec.name] = obj.id

    def _unindex(self, kind: Kind, obj: Any) -> None:
        if kind is Kind.TASK:
            _discard(self._tasks_by_service, obj.service_id, obj.id)
            if obj.node_id:
                _discard(self._tasks_by_node, obj.node_id, obj.id)
        elif kind is Kind.SERVICE:
            self._service_ids_by_name.pop(obj.spec.name, None)

    # -- snapshots for log compaction ----------------------------------------

    def export_state(self) -> dict[str, Any]:
        """The whole state by reference; the Raft snapshot pickles it in a forked child."""
        return {"revision": self._revision, "tables": self._tables}

    def import_state(self, state: dict[str, Any]) -> None:
        with self._lock:
            self._revision = state["revision"]
            self._tables = {kind: {} for kind in Kind}
            self._digests = {kind: {} for kind in Kind}
            self._hash = 0
            self._tasks_by_service.clear()
            self._tasks_by_node.clear()
            self._service_ids_by_name.clear()
            for kind in Kind:
                for object_id, obj in state["tables"].get(kind, {}).items():
                    self._place(kind, object_id, obj)

    def load(self, objects: Iterable[Any]) -> None:
        """Seed objects directly (tests and restore only; bypasses the log)."""
        with self._lock:
            for obj in objects:
                kind = next(k for k, model in _MODEL_OF.items() if isinstance(obj, model))
                self._revision += 1
                self._place(kind, obj.id, replace(obj, version=self._revision))


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
