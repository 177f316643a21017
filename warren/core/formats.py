"""Command formats: which model fields a log entry may carry.

Decoding is strict (an unknown field is refused), so a field a newer version
adds must not reach a manager whose code does not know it: that manager would
refuse the entry the others applied, and its state would diverge. Each field
added after format 1 says when with its metadata
(``field(default=..., metadata=since(2))``, combinable with ``bounded``), and
``COMMAND_FORMAT`` is the highest format this code reads and writes.

The cluster records the format every manager understands; a manager encodes
what it proposes for that format (``for_format``): a newer field holding its
default is left out (it decodes to the same value), and one holding anything
else is refused, because a manager of the older format could not apply it.
A model whose shape changed (``warren.core.shapes``) is written in its older
shape for a format before the change.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Union, get_args, get_origin

from warren.core import shapes
from warren.core.codec import to_dict
from warren.core.errors import InvalidArgument

# The highest command format this code reads and writes. Raise it together
# with the first field marked ``since`` the new number (or a new ``Reshape``).
# 2: ServiceSpec nested (container, resources, placement, restart).
COMMAND_FORMAT = 2
# What the cluster and node objects hold when they predate formats.
FIRST_FORMAT = 1

_SINCE = "since"


def since(command_format: int) -> dict[str, Any]:
    """Field metadata: the command format that added the field."""
    return {_SINCE: command_format}


def field_format(field: dataclasses.Field[Any]) -> int:
    return int(field.metadata.get(_SINCE, FIRST_FORMAT))


class FieldTooNew(InvalidArgument):
    """A value needs a newer command format than the one asked for."""

    def __init__(self, path: str, needs: int, command_format: int) -> None:
        self.path = path
        self.needs = needs
        super().__init__(f"{path} needs command format {needs} (encoding for {command_format})")


def for_format(cls: type[Any], data: Any, command_format: int, path: str = "") -> Any:
    """``data`` (what ``to_dict`` made of a ``cls``) as a manager reading
    ``command_format`` can decode it; ``FieldTooNew`` when it cannot."""
    if newest_format(cls) <= command_format:
        return data  # nothing in it is newer: the usual case, at no cost
    return _downgrade(cls, data, command_format, path or cls.__name__.lower())


_NEWEST: dict[Any, int] = {}


def newest_format(tp: Any) -> int:
    """The newest format of any field of ``tp``, nested ones included."""
    newest = _NEWEST.get(tp)
    if newest is None:
        _NEWEST[tp] = FIRST_FORMAT  # a model that holds itself ends here
        newest = _NEWEST[tp] = _newest_uncached(tp)
    return newest


def _newest_uncached(tp: Any) -> int:
    tp = _strip_optional(tp)
    if dataclasses.is_dataclass(tp):
        cls = typing.cast(type[Any], tp)
        hints = _hints(cls)
        newest = max(
            (max(field_format(f), newest_format(hints[f.name])) for f in dataclasses.fields(cls)),
            default=FIRST_FORMAT,
        )
        reshape = shapes.reshape_of(cls)
        return newest if reshape is None else max(newest, reshape.since)
    args = [a for a in get_args(tp) if a is not Ellipsis]
    return max((newest_format(a) for a in args), default=FIRST_FORMAT)


def newest_field(cls: type[Any], data: Any) -> tuple[int, str]:
    """(format, path) of the newest field ``data`` (a ``cls``, as ``to_dict``
    made it) holds, defaults included: the format a reader needs to decode it."""
    present = _present(cls, data, cls.__name__.lower())
    return max(present, default=(FIRST_FORMAT, ""))


def _present(tp: Any, data: Any, path: str) -> list[tuple[int, str]]:
    """(format, path) of every field present in ``data`` that is newer than 1."""
    found: list[tuple[int, str]] = []
    tp = _strip_optional(tp)
    if dataclasses.is_dataclass(tp) and isinstance(data, dict):
        reshape = shapes.reshape_of(typing.cast(type[Any], tp))
        if reshape is not None and not reshape.is_old(data):
            found.append((reshape.since, path))
        hints = _hints(typing.cast(type[Any], tp))
        for field in dataclasses.fields(tp):
            if field.name not in data:
                continue
            where = f"{path}.{field.name}"
            if field_format(field) > FIRST_FORMAT:
                found.append((field_format(field), where))
            found.extend(_present(hints[field.name], data[field.name], where))
        return found
    for item_type, key, value in _items(tp, data):
        found.extend(_present(item_type, value, f"{path}{key}"))
    return found


def _downgrade(tp: Any, data: Any, command_format: int, path: str) -> Any:
    tp = _strip_optional(tp)
    if dataclasses.is_dataclass(tp) and isinstance(data, dict):
        cls = typing.cast(type[Any], tp)
        hints = _hints(cls)
        out: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if field.name not in data:
                continue
            value, where = data[field.name], f"{path}.{field.name}"
            needs = field_format(field)
            if needs > command_format:
                if value == _encoded_default(cls, field.name):
                    continue  # decodes to the same value without it
                raise FieldTooNew(where, needs, command_format)
            out[field.name] = _downgrade(hints[field.name], value, command_format, where)
        reshape = shapes.reshape_of(cls)
        if reshape is not None and reshape.since > command_format:
            return reshape.downgrade(out)
        return out
    origin, args = get_origin(tp), get_args(tp)
    if origin is tuple and isinstance(data, list):
        (item,) = [a for a in args if a is not Ellipsis]
        return [_downgrade(item, v, command_format, f"{path}[{i}]") for i, v in enumerate(data)]
    if origin is dict and isinstance(data, dict):
        return {k: _downgrade(args[1], v, command_format, f"{path}.{k}") for k, v in data.items()}
    return data


def _items(tp: Any, data: Any) -> list[tuple[Any, str, Any]]:
    """(item type, path suffix, value) of a list or dict value."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is tuple and isinstance(data, list):
        (item,) = [a for a in args if a is not Ellipsis]
        return [(item, f"[{i}]", v) for i, v in enumerate(data)]
    if origin is dict and isinstance(data, dict):
        return [(args[1], f".{k}", v) for k, v in data.items()]
    return []


def _strip_optional(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0]
    return tp


_HINTS: dict[type[Any], Mapping[str, Any]] = {}


def _hints(cls: type[Any]) -> Mapping[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _encoded_default(cls: type[Any], name: str) -> Any:
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if field.default is not dataclasses.MISSING:
        return to_dict(field.default)
    factory = typing.cast(Callable[[], Any], field.default_factory)
    return to_dict(factory())
