"""Command formats with two versions: a test-only kind whose ``color`` field
came with format 2, stores and encoders whose code reads up to format 1 or 2."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from factories import make_node

from warren.core.codec import from_dict, to_dict
from warren.core.errors import FailedPrecondition
from warren.core.formats import COMMAND_FORMAT, FieldTooNew, for_format, newest_format, since
from warren.core.models import Cluster, ManagerFormat, NodeRole
from warren.manager import kinds
from warren.manager.command_format import (
    CommandEncoder,
    check_readable,
    manager_formats,
    raise_format,
    report_format,
)
from warren.manager.consensus import LocalConsensus
from warren.manager.kinds import Kind, KindSpec
from warren.manager.store import MUST_NOT_EXIST, Store, put, raise_for_result, txn


@dataclass(frozen=True)
class Paint:
    shade: str = ""
    gloss: bool = field(default=False, metadata=since(2))


@dataclass(frozen=True)
class Widget:
    id: str
    name: str = ""
    color: str = field(default="", metadata=since(2))
    coats: tuple[Paint, ...] = ()
    extra: Paint | None = None
    version: int = 0


@pytest.fixture
def widget() -> Iterator[Kind]:
    kind = Kind.define("widget")
    kinds.register(KindSpec(kind, Widget))
    yield kind
    kinds.unregister(kind)


def _seed(*stores: Store, command_format: int = 1) -> None:
    """The same cluster in every store: managers m1 and m2."""
    cluster = Cluster(id="c", ca_fingerprint="f", command_format=command_format)
    managers = [make_node(name, hostname=name, role=NodeRole.MANAGER) for name in ("m1", "m2")]
    objects = (cluster, *managers)
    for store in stores:
        # As a manager writes them for that store (nodes have newer fields).
        written = min(command_format, store.max_format)
        ops = [put(o, MUST_NOT_EXIST) for o in objects]
        for op, obj in zip(ops, objects, strict=True):
            op["object"] = for_format(type(obj), op["object"], written)
        raise_for_result(store.apply(txn(ops, at=1.0)))


def _apply(command: dict[str, Any], *stores: Store) -> list[Any]:
    return [store.apply(command) for store in stores]


# -- (a) a format-1 cluster: a format-2 manager writes format 1 --------------------


def test_a_newer_manager_writes_what_an_older_one_applies(widget: Kind) -> None:
    old, new = Store(max_format=1), Store(max_format=2)
    _seed(old, new)
    encoder = CommandEncoder(new, max_format=2)
    command = txn([put(Widget("w1", "plain"), MUST_NOT_EXIST)], at=2.0)
    # As the newer code encodes it, the object carries format-2 fields...
    assert "color" in command["ops"][0]["object"]
    # ...which the older code refuses: the divergence the encoder prevents.
    assert "unknown field" in old.apply(command)["message"]
    encoded = encoder.encode(command)
    assert "color" not in encoded["ops"][0]["object"]
    results = _apply(encoded, old, new)
    assert results == [{"results": [{"version": 4}]}] * 2
    assert old.get(widget, "w1") == new.get(widget, "w1") == Widget("w1", "plain", version=4)
    assert old.state_hash() == new.state_hash()


def test_a_write_that_needs_the_newer_format_names_the_managers_to_upgrade(
    widget: Kind,
) -> None:
    old, new = Store(max_format=1), Store(max_format=2)
    _seed(old, new)
    cluster = new.cluster()
    assert cluster is not None
    formats = (ManagerFormat("m2", 2),)
    raise_for_result(new.apply(txn([put(replace(cluster, manager_formats=formats), None)], 2.0)))
    encoder = CommandEncoder(new, max_format=2)
    red = txn([put(Widget("w1", color="red"), MUST_NOT_EXIST)], at=3.0)
    with pytest.raises(FailedPrecondition) as caught:
        encoder.encode(red)
    assert str(caught.value) == (
        "widget.color needs command format 2; the cluster is at 1: "
        "upgrade warren on managers m1 first"
    )
    glossy = txn([put(Widget("w2", coats=(Paint("blue", gloss=True),)), MUST_NOT_EXIST)], at=3.0)
    with pytest.raises(FailedPrecondition, match=r"widget\.coats\[0\]\.gloss needs"):
        encoder.encode(glossy)
    assert new.find(widget, "w1") is None


# -- (b) the format rises only when every manager reads it ---------------------------


async def test_the_format_rises_when_every_manager_reads_it(widget: Kind) -> None:
    consensus = LocalConsensus(Store(max_format=2))
    await consensus.start()
    store = consensus.store
    _seed(store)
    await report_format(consensus, "m2", max_format=2)
    assert await raise_format(consensus) is None  # m1 reads format 1 only
    cluster = store.cluster()
    assert cluster is not None
    assert (cluster.command_format, manager_formats(cluster)) == (1, {"m2": 2})
    await report_format(consensus, "m1", max_format=2)
    assert await raise_format(consensus) == 2
    cluster = store.cluster()
    assert cluster is not None
    assert (cluster.command_format, manager_formats(cluster)) == (2, {"m1": 2, "m2": 2})
    assert await raise_format(consensus) is None
    # Now a format-2 write goes through as it is.
    red = txn([put(Widget("w1", color="red"), MUST_NOT_EXIST)], at=3.0)
    assert CommandEncoder(store, max_format=2).encode(red) == red


async def test_a_removed_manager_does_not_hold_the_format_back(widget: Kind) -> None:
    consensus = LocalConsensus(Store(max_format=2))
    await consensus.start()
    store = consensus.store
    _seed(store)
    await report_format(consensus, "m1", max_format=2)
    await report_format(consensus, "m2", max_format=2)
    gone = make_node("m3", hostname="m3", role=NodeRole.MANAGER)
    cluster = store.cluster()
    assert cluster is not None
    formats = (*cluster.manager_formats, ManagerFormat("m3", 1))
    raise_for_result(store.apply(txn([put(replace(cluster, manager_formats=formats), None)], 1.0)))
    raise_for_result(store.apply(txn([put(gone, MUST_NOT_EXIST)], at=1.0)))
    assert await raise_format(consensus) is None
    raise_for_result(store.apply(txn([{"delete": "node", "id": "m3", "expect": None}], 1.0)))
    assert await raise_format(consensus) == 2
    cluster = store.cluster()
    assert cluster is not None
    assert manager_formats(cluster) == {"m1": 2, "m2": 2}


# -- (c) a manager that cannot read the cluster's format does not run --------------


def test_an_older_manager_refuses_a_newer_cluster(widget: Kind) -> None:
    old = Store(max_format=1)
    _seed(old, command_format=2)
    message = (
        "the cluster writes command format 2, and this warren reads formats up to 1: "
        "upgrade warren on this host to the version the other managers run"
    )
    with pytest.raises(FailedPrecondition) as caught:
        check_readable(old, max_format=1)
    assert str(caught.value) == message
    with pytest.raises(FailedPrecondition, match="upgrade warren on this host"):
        CommandEncoder(old, max_format=1).encode(txn([], at=1.0))
    check_readable(old, max_format=2)


# -- the encoding ------------------------------------------------------------------


def test_newer_fields_are_dropped_at_their_defaults_at_any_depth() -> None:
    obj = Widget("w", coats=(Paint("a"),), extra=Paint("b"))
    assert newest_format(Widget) == 2 and newest_format(Cluster) == 1
    encoded = for_format(Widget, to_dict(obj), 1)
    assert encoded == {
        "id": "w",
        "name": "",
        "coats": [{"shade": "a"}],
        "extra": {"shade": "b"},
        "version": 0,
    }
    assert from_dict(Widget, encoded) == obj
    assert for_format(Widget, to_dict(obj), 2) == to_dict(obj)
    with pytest.raises(FieldTooNew, match=r"widget\.extra\.gloss needs command format 2"):
        for_format(Widget, to_dict(replace(obj, extra=Paint(gloss=True))), 1)


def test_old_clusters_read_as_format_1_and_get_unchanged_commands_without_specs() -> None:
    # Format 2 nested ServiceSpec (see test_flat_spec.py); a node has no spec.
    assert COMMAND_FORMAT == 2
    old = {"id": "c", "ca_fingerprint": "f", "created_at": 1.0, "version": 3}
    cluster = from_dict(Cluster, old)
    assert (cluster.command_format, cluster.manager_formats) == (1, ())
    store = Store()
    _seed(store)
    unchanged = txn([put(replace(cluster, id="c2"), MUST_NOT_EXIST)], at=2.0)
    assert CommandEncoder(store).encode(unchanged) == unchanged
    # A node's WireGuard identity came with format 2: at its defaults it is
    # left out, and nothing else of the command changes.
    command = txn([put(make_node("w1"), MUST_NOT_EXIST)], at=2.0)
    node = dict(command["ops"][0]["object"])
    del node["wireguard_public_key"], node["wireguard_port"]
    expected = {**command, "ops": [{**command["ops"][0], "object": node}]}
    assert CommandEncoder(store).encode(command) == expected


def _models(tp: Any, seen: set[type[Any]]) -> None:
    """Every dataclass reachable from ``tp``, into ``seen``."""
    import dataclasses
    import typing

    for arg in typing.get_args(tp):
        _models(arg, seen)
    if not dataclasses.is_dataclass(tp) or tp in seen:
        return
    cls = typing.cast(type[Any], tp)
    seen.add(cls)
    for hint in typing.get_type_hints(cls).values():
        _models(hint, seen)


def test_fields_added_later_have_defaults() -> None:
    # An entry of an older format lacks the field: it decodes to the default.
    import dataclasses

    from warren.core.formats import field_format
    from warren.manager.kinds import spec_of

    models: set[type[Any]] = set()
    for kind in Kind:
        _models(spec_of(kind).model, models)
    later = [
        (model.__name__, f.name)
        for model in models
        for f in dataclasses.fields(model)
        if field_format(f) > 1
    ]
    assert ("Service", "endpoint") in later and ("Task", "networks") in later
    for model in models:
        for f in dataclasses.fields(model):
            if field_format(f) > 1:
                has_default = (f.default, f.default_factory) != (dataclasses.MISSING,) * 2
                assert has_default, f"{model.__name__}.{f.name}"
