"""The REST read path's encoding: the codec's documents without default-valued
fields (they decode to the same objects), cached per version."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from wire_strategies import model_strategy, specs

from warren.core.codec import from_dict, to_dict, to_json, to_sparse_json
from warren.core.models import ContainerSpec, Node, Service, ServiceSpec, Task
from warren.manager.encoded import EncodedObjects


@settings(max_examples=100, deadline=None)
@given(specs)
def test_to_json_is_the_codecs_document(spec: ServiceSpec) -> None:
    task = Task("t1", "s1", spec.name, spec, 2, slot=1, version=7)
    assert json.loads(to_json(task)) == json.loads(json.dumps(to_dict(task)))


@settings(max_examples=60, deadline=None)
@given(st.one_of(model_strategy(Task), model_strategy(Service), model_strategy(Node)))
def test_sparse_json_decodes_to_the_same_object(obj: Any) -> None:
    document = json.loads(to_sparse_json(obj))
    assert from_dict(type(obj), document) == obj
    _assert_defaults_left_out(obj, document)


def _assert_defaults_left_out(obj: Any, document: Any) -> None:
    """Every field equal to its default is absent, at every depth; the others are there."""
    if isinstance(obj, tuple):
        for item, encoded in zip(obj, document, strict=True):
            _assert_defaults_left_out(item, encoded)
        return
    if not dataclasses.is_dataclass(obj):
        return
    for fld in dataclasses.fields(obj):
        value = getattr(obj, fld.name)
        if fld.default is not dataclasses.MISSING:
            is_default = value == fld.default
        elif fld.default_factory is not dataclasses.MISSING:
            is_default = value == fld.default_factory()
        else:
            is_default = False  # required: always sent
        assert (fld.name in document) is not is_default, (type(obj).__name__, fld.name)
        if not is_default:
            _assert_defaults_left_out(value, document[fld.name])


def test_a_running_replica_of_a_plain_service_is_small() -> None:
    spec = ServiceSpec(name="web", container=ContainerSpec(image="busybox"), replicas=3)
    task = Task("t1", "s1", "web", spec, 1, slot=2, node_id="n1", version=7)
    assert json.loads(to_sparse_json(task)) == {
        "id": "t1",
        "service_id": "s1",
        "service_name": "web",
        "spec": {"name": "web", "container": {"image": "busybox"}, "replicas": 3},
        "spec_version": 1,
        "slot": 2,
        "node_id": "n1",
        "version": 7,
    }  # status NEW (the default) and desired state running are left out


def _service(name: str, version: int) -> Service:
    return Service(
        id=f"id-{name}",
        spec=ServiceSpec(name=name, container=ContainerSpec(image="busybox")),
        version=version,
    )


def test_a_listing_is_a_json_array_of_every_object() -> None:
    cache = EncodedObjects()
    assert cache.array([]) == b"[]"
    services = [_service("a", 1), _service("b", 2)]
    listed = json.loads(cache.array(services, complete=True))
    assert [from_dict(Service, s) for s in listed] == services
    assert listed[0]["spec"] == {"name": "a", "container": {"image": "busybox"}}


def test_a_new_version_is_encoded_again() -> None:
    cache = EncodedObjects()
    first = _service("a", 1)
    cache.array([first])
    changed = replace(first, spec=replace(first.spec, replicas=5), version=2)
    assert json.loads(cache.array([changed]))[0]["spec"]["replicas"] == 5


def test_objects_no_longer_listed_are_dropped() -> None:
    cache = EncodedObjects()
    cache.array([_service(f"s{i}", i + 1) for i in range(10)], complete=True)
    cache.array([_service("s0", 1)], complete=True)
    assert list(cache._entries) == ["id-s0"]


def test_a_complete_listing_is_kept_until_a_write_or_a_new_revision() -> None:
    cache = EncodedObjects()
    services = [_service("a", 1)]
    calls: list[int] = []

    def listing() -> list[Service]:
        calls.append(1)
        return services

    first = cache.complete(5, listing)
    assert cache.complete(5, listing) is first and len(calls) == 1
    services = [_service("a", 1), _service("b", 6)]
    cache.written()
    assert [s["id"] for s in json.loads(cache.complete(5, listing))] == ["id-a", "id-b"]
    services = [_service("a", 1)]
    assert [s["id"] for s in json.loads(cache.complete(7, listing))] == ["id-a"]
    assert len(calls) == 3
