"""The store's kinds: what each declares, and the registry the store reads.

A kind is one module in this package: it defines its ``Kind`` (the name in
commands, events and the API), and registers a ``KindSpec`` saying which model
its objects are, how they are indexed, what every write must satisfy, whether
API clients may watch its events, and how a backup keeps it. The store, the
event streams and backups read nothing else, so a new kind needs no edit there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

# Every defined kind by name, and the specs of the registered ones, in
# registration order (the order the store lists and restores kinds in).
_KINDS: dict[str, Kind] = {}
_SPECS: dict[Kind, KindSpec] = {}
_BY_MODEL: dict[type[Any], Kind] = {}


class _KindType(type):
    def __iter__(cls) -> Iterator[Kind]:
        return iter(list(_SPECS))

    def __len__(cls) -> int:
        return len(_SPECS)


class Kind(str, metaclass=_KindType):
    """A kind of stored object: a string (its name), one instance per name.

    Used like the enum it replaces: ``Kind.NODE``, ``Kind("node")`` (the same
    object, ``ValueError`` for an unknown name), ``kind.value``, and
    ``for kind in Kind`` (the registered kinds)."""

    CLUSTER: ClassVar[Kind]
    NODE: ClassVar[Kind]
    SERVICE: ClassVar[Kind]
    TASK: ClassVar[Kind]
    NETWORK: ClassVar[Kind]

    def __new__(cls, name: str) -> Kind:
        kind = _KINDS.get(name)
        if kind is None:
            raise ValueError(f"{name!r} is not a known kind")
        return kind

    @classmethod
    def define(cls, name: str) -> Kind:
        """A new kind named ``name`` (once per name)."""
        if name in _KINDS:
            raise ValueError(f"kind {name!r} is already defined")
        kind = str.__new__(cls, name)
        _KINDS[name] = kind
        return kind

    @property
    def value(self) -> str:
        return str(self)

    def __repr__(self) -> str:
        return f"<Kind {self!s}>"


class StoreView(Protocol):
    """What an invariant may read of the store (as the write finds it)."""

    def count(self, kind: Kind) -> int: ...

    def indexed(self, kind: Kind, index: str, key: str) -> frozenset[str]: ...

    def list(self, kind: Kind) -> list[Any]: ...


# Raises a WarrenError when ``new`` may not replace ``old`` (None: a create).
Invariant = Callable[[StoreView, Any, Any], None]


@dataclass(frozen=True)
class Index:
    """Object IDs by a key: ``keys`` gives the keys one object is found under."""

    name: str
    keys: Callable[[Any], Iterable[str]]


@dataclass(frozen=True)
class BackupRule:
    """How a backup keeps a kind: its objects go in the file under ``table``;
    ``restore`` turns one into what a restored cluster starts with (None: left
    out), or is None when a restore starts without any."""

    table: str
    restore: Callable[[Any, float], Any | None] | None = None


@dataclass(frozen=True)
class KindSpec:
    kind: Kind
    model: type[Any]
    indexes: tuple[Index, ...] = ()
    invariants: tuple[Invariant, ...] = ()
    # Whether API clients may watch its events.
    public_events: bool = True
    # None: not in backups (or, for the cluster, the backup's own field).
    backup: BackupRule | None = None


def register(spec: KindSpec) -> Kind:
    if spec.kind in _SPECS or spec.model in _BY_MODEL:
        raise ValueError(f"kind {spec.kind!r} or its model is already registered")
    _SPECS[spec.kind] = spec
    _BY_MODEL[spec.model] = spec.kind
    return spec.kind


def unregister(kind: Kind) -> None:
    """Forget a kind (tests that register a kind of their own)."""
    spec = _SPECS.pop(kind)
    del _BY_MODEL[spec.model]
    del _KINDS[str(kind)]


def spec_of(kind: Kind) -> KindSpec:
    return _SPECS[kind]


def kind_of(obj: Any) -> Kind:
    """The kind of a model object."""
    kind = _BY_MODEL.get(type(obj))
    if kind is None:
        raise TypeError(f"{type(obj).__name__} is not a stored model")
    return kind


def kind_of_table(table: str) -> Kind | None:
    """The kind a backup keeps under ``table``."""
    for kind, spec in _SPECS.items():
        if spec.backup is not None and spec.backup.table == table:
            return kind
    return None


def public_kinds() -> frozenset[Kind]:
    return frozenset(kind for kind, spec in _SPECS.items() if spec.public_events)


Kind.CLUSTER = Kind.define("cluster")
Kind.NODE = Kind.define("node")
Kind.SERVICE = Kind.define("service")
Kind.TASK = Kind.define("task")
