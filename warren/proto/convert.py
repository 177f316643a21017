"""Models <-> protobuf messages, through the strict dict codec.

Message fields mirror model fields by name. Only fields that are set travel
(proto3 drops zero values unless a field is ``optional``), so the model's own
defaults fill the gaps and int64 stays an int (``MessageToDict`` would make it
a string).
"""

from __future__ import annotations

from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from warren.core.codec import from_dict, to_dict
from warren.core.errors import InvalidArgument

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
    return from_dict(cls, message_to_dict(message))


def to_message(obj: Any, message_cls: type[M]) -> M:
    data = obj if isinstance(obj, dict) else to_dict(obj)
    try:
        return json_format.ParseDict(_drop_nones(data), message_cls())
    except json_format.ParseError as exc:
        raise InvalidArgument(str(exc).splitlines()[0]) from None


def _drop_nones(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _drop_nones(v) for k, v in data.items() if v is not None}
    if isinstance(data, list):
        return [_drop_nones(v) for v in data]
    return data
