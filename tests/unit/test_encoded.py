"""The REST read path's encoding: the same documents as the generic codec, cached per version."""

from __future__ import annotations

import json
from dataclasses import replace

from hypothesis import given, settings
from wire_strategies import specs

from warren.core.codec import to_dict, to_json
from warren.core.models import ContainerSpec, Service, ServiceSpec, Task
from warren.manager.encoded import EncodedObjects


@settings(max_examples=100, deadline=None)
@given(specs)
def test_to_json_is_the_codecs_document(spec: ServiceSpec) -> None:
    task = Task("t1", "s1", spec.name, spec, 2, slot=1, version=7)
    assert json.loads(to_json(task)) == json.loads(json.dumps(to_dict(task)))


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
    assert json.loads(cache.array(services, complete=True)) == [to_dict(s) for s in services]


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
