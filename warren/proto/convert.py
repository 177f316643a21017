"""Models <-> protobuf messages, through the strict dict codec.

Message fields mirror model fields by name. Only fields that are set travel
(proto3 drops zero values unless a field is ``optional``), so the model's own
defaults fill the gaps and int64 stays an int (``MessageToDict`` would make it
a string).
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from collections.abc import Iterable
from dataclasses import MISSING
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from warren.core.codec import from_dict, to_dict
from warren.core.errors import InvalidArgument

log = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M", bound=Message)


def message_to_dict(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        out[field.name] = _value_to_python(field, value)
    return out


def _value_to_python(field: FieldDescriptor, value: Any) -> Any:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        return {k: _scalar_or_message(value_field, v) for k, v in value.items()}
    if field.is_repeated:
        return [_scalar_or_message(field, v) for v in value]
    return _scalar_or_message(field, value)


def _scalar_or_message(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_to_dict(value)
    return value


def from_message(cls: type[T], message: Message) -> T:
    return from_dict(cls, _with_required(cls, message_to_dict(message)))


# proto3 does not send a field that holds its zero value: a required model
# field that is absent from a message held that zero value.
_ZERO: dict[Any, Any] = {str: "", int: 0, float: 0.0, bool: False}


def _with_required(cls: type[Any], data: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    for fld in dataclasses.fields(cls):
        tp = hints[fld.name]
        value = data.get(fld.name)
        if value is None:
            required = fld.default is MISSING and fld.default_factory is MISSING
            if required and fld.name not in data and tp in _ZERO:
                data[fld.name] = _ZERO[tp]
        elif dataclasses.is_dataclass(tp) and isinstance(value, dict):
            _with_required(typing.cast(type[Any], tp), value)
    return data


def to_message(obj: Any, message_cls: type[M]) -> M:
    data = obj if isinstance(obj, dict) else to_dict(obj)
    try:
        return json_format.ParseDict(_drop_nones(data), message_cls())
    except json_format.ParseError as exc:
        raise InvalidArgument(str(exc).splitlines()[0]) from None


def encodable(objects: Iterable[Any], message_cls: type[M]) -> list[M]:
    """``objects`` as messages, leaving out (and logging) any that cannot be encoded.

    Models refuse what protobuf cannot carry, but an object stored by an older
    version may still hold such a value: it must not fail a whole listing, or
    end a node's session and with it every other service's assignments.
    """
    messages = []
    for obj in objects:
        try:
            messages.append(to_message(obj, message_cls))
        except InvalidArgument as exc:
            what = getattr(obj, "id", type(obj).__name__)
            log.error("%s %s cannot be encoded, left out: %s", type(obj).__name__, what, exc)
    return messages


def _drop_nones(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _drop_nones(v) for k, v in data.items() if v is not None}
    if isinstance(data, list):
        return [_drop_nones(v) for v in data]
    return data
