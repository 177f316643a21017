"""Store kinds through the registry: a kind registered here (a test-only model)
is written, indexed, checked, watched and backed up with no edit to the store,
the event streams or backups."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from factories import make_node

from warren.core.errors import AlreadyExists, InvalidArgument
from warren.core.models import Cluster
from warren.manager import kinds
from warren.manager.backup import capture_state, restore_ops, state_objects
from warren.manager.events import public_kinds
from warren.manager.kinds import BackupRule, Index, Kind, KindSpec, StoreView
from warren.manager.store import (
    MUST_NOT_EXIST,
    EventAction,
    Store,
    StoreEvent,
    delete,
    object_digest,
    put,
    raise_for_result,
    txn,
)
from warren.security.backup_file import Backup, decrypt_backup, encrypt_backup
from warren.security.ca import CertificateAuthority


@dataclass(frozen=True)
class Gadget:
    id: str
    name: str
    owner: str = ""
    created_at: float = 0.0
    version: int = 0


def _owner(gadget: Gadget) -> tuple[str, ...]:
    return (gadget.owner,) if gadget.owner else ()


def _by_name(gadget: Gadget) -> tuple[str, ...]:
    return (gadget.name,)


def _unique_name(view: StoreView, old: Any, new: Gadget) -> None:
    if view.indexed(GADGET, "name", new.name) - {new.id}:
        raise AlreadyExists(f"gadget '{new.name}' already exists")


def _restore(gadget: Gadget, now: float) -> Gadget:
    return replace(gadget, owner="")


GADGET: Kind


@pytest.fixture
def gadget_kind() -> Iterator[Kind]:
    """The one module a new kind is, registered for this test only."""
    global GADGET
    GADGET = Kind.define("gadget")
    kinds.register(
        KindSpec(
            GADGET,
            Gadget,
            indexes=(Index("owner", _owner), Index("name", _by_name)),
            invariants=(_unique_name,),
            backup=BackupRule("gadgets", _restore),
        )
    )
    yield GADGET
    kinds.unregister(GADGET)


def _write(store: Store, *ops: dict[str, Any]) -> Any:
    return raise_for_result(store.apply(txn(list(ops), at=1.0)))


def test_a_registered_kind_is_a_kind_like_the_others(gadget_kind: Kind) -> None:
    assert Kind("gadget") is gadget_kind
    assert list(Kind)[-1] is gadget_kind
    assert (str(gadget_kind), gadget_kind.value, f"{gadget_kind}") == ("gadget",) * 3
    assert pickle.loads(pickle.dumps(gadget_kind)) is gadget_kind
    assert kinds.kind_of(Gadget("g1", "a")) is gadget_kind
    with pytest.raises(ValueError, match="already defined"):
        Kind.define("gadget")


def test_put_index_check_and_delete_through_the_store(gadget_kind: Kind) -> None:
    store = Store()
    events: list[StoreEvent] = []
    store.subscribe(events.extend)
    _write(store, put(Gadget("g1", "a", owner="alice"), MUST_NOT_EXIST))
    _write(store, put(Gadget("g2", "b", owner="alice"), MUST_NOT_EXIST))
    assert store.get(gadget_kind, "g1") == Gadget("g1", "a", owner="alice", version=1)
    assert store.count(gadget_kind) == 2
    assert {g.id for g in store.find_indexed(gadget_kind, "owner", "alice")} == {"g1", "g2"}
    # Its invariant holds like a built-in one.
    result = store.apply(txn([put(Gadget("g3", "a"), MUST_NOT_EXIST)], at=2.0))
    assert result == {"error": "already_exists", "message": "gadget 'a' already exists"}
    assert store.find(gadget_kind, "g3") is None
    # Moving and deleting keep the indexes in step.
    _write(store, put(replace(store.get(gadget_kind, "g2"), owner="bob"), 2))
    assert store.indexed(gadget_kind, "owner", "alice") == {"g1"}
    assert store.indexed(gadget_kind, "owner", "bob") == {"g2"}
    _write(store, delete(gadget_kind, "g1", expect=1))
    assert store.indexed(gadget_kind, "owner", "alice") == frozenset()
    assert [(e.kind, e.action, e.object.id) for e in events] == [
        (gadget_kind, EventAction.CREATE, "g1"),
        (gadget_kind, EventAction.CREATE, "g2"),
        (gadget_kind, EventAction.UPDATE, "g2"),
        (gadget_kind, EventAction.DELETE, "g1"),
    ]
    # The state hash counts it; a Raft snapshot carries it.
    _, digest = store.state_hash()
    assert int(digest, 16) == object_digest(store.get(gadget_kind, "g2"))
    copy = Store()
    copy.import_state(pickle.loads(pickle.dumps(store.export_state())))
    assert copy.state_hash() == store.state_hash()
    assert copy.indexed(gadget_kind, "owner", "bob") == {"g2"}


def test_its_events_are_public_as_it_declares(gadget_kind: Kind) -> None:
    assert public_kinds(["gadget"]) == {gadget_kind}
    assert gadget_kind in public_kinds([])
    assert Kind.CLUSTER not in public_kinds([])


def test_a_kind_that_hides_its_events_cannot_be_watched() -> None:
    secret = Kind.define("secret-gadget")
    kinds.register(KindSpec(secret, Gadget, public_events=False))
    try:
        assert secret not in public_kinds([])
        with pytest.raises(InvalidArgument, match="unknown event kind"):
            public_kinds(["secret-gadget"])
    finally:
        kinds.unregister(secret)


def test_backup_round_trip(gadget_kind: Kind) -> None:
    ca = CertificateAuthority.create("cluster-g")
    store = Store()
    cluster = Cluster(id=ca.cluster_id, ca_fingerprint=ca.fingerprint)
    _write(
        store,
        put(cluster, MUST_NOT_EXIST),
        put(Gadget("g1", "a", owner="alice"), MUST_NOT_EXIST),
    )
    state = capture_state(store)
    assert state.count("gadgets") == 1
    sealed = encrypt_backup(Backup(state, ca.cert_pem, ca.key_pem), "passphrase!")
    loaded = decrypt_backup(sealed, "passphrase!")
    assert state_objects(loaded.state)[gadget_kind] == (store.get(gadget_kind, "g1"),)
    # Restored as the kind says (here: without its owner).
    restored = Store()
    manager = make_node("m-new")
    _write(restored, *restore_ops(loaded.state, manager))
    assert restored.get(gadget_kind, "g1") == Gadget("g1", "a", owner="", version=3)
