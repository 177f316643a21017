"""Hypothesis strategies for models, generated from their field types and bounds.

Only fields with a syntax of their own (names, keys, constraints, signals,
paths, the health probe) have a hand-written strategy; every other field,
including one added later, gets one from ``warren.core.validation``'s bounds,
edges included.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import typing
from typing import Any

from hypothesis import strategies as st

from warren.core.errors import InvalidArgument
from warren.core.models import ContainerSpec, HealthCheck, Node, Placement, ServiceSpec, Task
from warren.core.networks import (
    Endpoint,
    EndpointSpec,
    NetworkAttachment,
    PortConfig,
    PortProtocol,
    PublishMode,
    VirtualIP,
)
from warren.core.validation import INT32_MAX, MAX_SECONDS, field_limits

# Text as models take it: any Unicode scalar value but NUL (surrogates are not
# scalar values; st.characters leaves them out unless asked).
_char = st.characters(exclude_characters="\x00", exclude_categories=("Cs",))
_text = st.text(_char, max_size=8)

_labels = st.dictionaries(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_./-]{0,15}\Z"), _text, max_size=3)

_UDP = PortProtocol.UDP

_OVERRIDES: dict[tuple[type[Any], str], st.SearchStrategy[Any]] = {
    (ServiceSpec, "name"): st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z"),
    (ContainerSpec, "image"): st.text(_char, min_size=1, max_size=8).filter(str.strip)
    | st.just("r" * 1024),
    (ContainerSpec, "env"): st.dictionaries(
        st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,10}\Z"), _text, max_size=3
    ),
    (ServiceSpec, "labels"): _labels,
    # Addresses and ports have a syntax of their own (see warren.core.networks).
    (ServiceSpec, "networks"): st.sampled_from([(), ("net-a",), ("net-a", "net-b")]),
    (EndpointSpec, "ports"): st.sampled_from(
        [
            (),
            (PortConfig(target=80, published=8080), PortConfig(target=53, protocol=_UDP)),
            (PortConfig(target=65535, published=65535, mode=PublishMode.HOST),),
        ]
    ),
    (Endpoint, "vips"): st.sampled_from([(), (VirtualIP("net-a", "10.32.0.5/16"),)]),
    (Endpoint, "ports"): st.sampled_from([(), (PortConfig(target=80, published=30000),)]),
    (Task, "networks"): st.sampled_from(
        [
            (),
            (
                NetworkAttachment("net-a", "10.32.64.7/24"),
                NetworkAttachment("net-b", "10.33.64.2/24"),
            ),
        ]
    ),
    (Node, "labels"): _labels,
    # base64 of 32 bytes, or none (see warren.core.models.check_wireguard_key).
    (Node, "wireguard_public_key"): st.just("")
    | st.binary(min_size=32, max_size=32).map(lambda raw: base64.b64encode(raw).decode()),
    (Placement, "constraints"): st.lists(
        st.sampled_from(["node.role==worker", "node.labels.zone!=a", "node.hostname==h1"]),
        max_size=2,
    ).map(tuple),
    (ContainerSpec, "stop_signal"): st.sampled_from(["SIGTERM", "SIGINT", "SIGKILL", "SIGUSR1"]),
    (ContainerSpec, "workdir"): st.sampled_from(["", "/", "/srv/\u00e9t\u00e9", "/" + "d" * 4095]),
    (ContainerSpec, "health"): st.none()
    | st.builds(
        HealthCheck,
        cmd=st.lists(_text, min_size=1, max_size=3).map(tuple),
        interval=st.floats(min_value=0.001, max_value=MAX_SECONDS),
        timeout=st.sampled_from([0.001, 1.0, float(MAX_SECONDS)]),
        retries=st.sampled_from([1, 3, INT32_MAX]),
        start_period=st.sampled_from([0.0, float(MAX_SECONDS)]),
    )
    | st.builds(HealthCheck, http=st.sampled_from(["80/", "65535/h\u00e9alth?x=1", "1"]))
    | st.builds(HealthCheck, tcp=st.integers(1, 65535)),
}


def _bounded_number(tp: type[Any], bounds: dict[str, Any]) -> st.SearchStrategy[Any]:
    low, high = bounds.get("minimum"), bounds.get("maximum")
    if tp is int:
        return st.integers(low, high) | st.sampled_from([low, high])
    edges = [v for v in (low, high) if v is not None]
    finite = st.floats(low, high, allow_nan=False, allow_infinity=False)
    return finite | st.sampled_from(edges) if edges else finite


def _strategy(tp: Any, meta: dict[str, Any]) -> st.SearchStrategy[Any]:
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not Ellipsis]
    if origin in (typing.Union, __import__("types").UnionType):
        (inner,) = [a for a in args if a is not type(None)]
        return st.none() | _strategy(inner, meta)
    if dataclasses.is_dataclass(tp):
        return model_strategy(typing.cast(type[Any], tp))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(list(tp))
    if tp is bool:
        return st.booleans()
    if tp in (int, float):
        return _bounded_number(tp, field_limits(meta, tp))
    if tp is str:
        length = field_limits(meta, tp)["max_length"]
        return _text | st.just("x" * min(length, 2048))
    if origin is tuple:
        (item,) = args
        if dataclasses.is_dataclass(item):
            return st.lists(model_strategy(typing.cast(type[Any], item)), max_size=2).map(tuple)
        return st.lists(_text, max_size=3).map(tuple)
    if origin is dict:
        return st.dictionaries(_text, _text, max_size=3)
    raise AssertionError(f"no strategy for {tp!r}: add one")


def model_strategy(cls: type[Any]) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    fields = {
        f.name: _OVERRIDES[cls, f.name]
        if (cls, f.name) in _OVERRIDES
        else _strategy(hints[f.name], dict(f.metadata))
        for f in dataclasses.fields(cls)
    }
    return st.fixed_dictionaries(fields).map(lambda kwargs: _build(cls, kwargs)).filter(bool)


def _build(cls: type[Any], kwargs: dict[str, Any]) -> Any:
    # A combination the model refuses for a reason of its own (a probe and
    # a port, say) is no example of an accepted value.
    try:
        return cls(**kwargs)
    except InvalidArgument:
        return None


specs = model_strategy(ServiceSpec)
