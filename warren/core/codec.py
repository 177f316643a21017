"""Dataclass <-> plain dict conversion, strict on input.

One codec serves the Raft log, the REST API, the gRPC layer (via protobuf's
JSON mapping) and the worker cache. Unknown fields and wrong types are refused
with a one-line ``InvalidArgument`` rather than ignored.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar, Union, get_args, get_origin

import msgspec

from warren.core import shapes
from warren.core.errors import InvalidArgument

T = TypeVar("T")


def to_json(obj: Any) -> bytes:
    """``obj`` as JSON, the same document as ``json.dumps(to_dict(obj))`` (compiled: fast)."""
    try:
        return _JSON.encode(obj)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgument(f"cannot encode {type(obj).__name__}: {exc}") from None


_JSON = msgspec.json.Encoder()


def to_dict(obj: Any) -> Any:
    """Encode a dataclass (recursively) into JSON-compatible values."""
    cls = type(obj)
    encode = _ENCODERS.get(cls)
    if encode is None:
        encode = _ENCODERS[cls] = _encoder(cls)
    return encode(obj)


# One encoder per type, found once: every API listing and Raft command goes
# through ``to_dict``, and asking each value what it is cost 4x as much.
_ENCODERS: dict[type[Any], Callable[[Any], Any]] = {}


def _encoder(cls: type[Any]) -> Callable[[Any], Any]:
    if dataclasses.is_dataclass(cls):
        names = tuple(f.name for f in dataclasses.fields(cls))
        return lambda obj: {name: to_dict(getattr(obj, name)) for name in names}
    if issubclass(cls, enum.Enum):
        return lambda obj: obj.value
    if issubclass(cls, tuple | list):
        return lambda obj: [to_dict(v) for v in obj]
    if issubclass(cls, dict):
        return lambda obj: {k: to_dict(v) for k, v in obj.items()}
    return _as_is


def _as_is(obj: Any) -> Any:
    return obj


def to_sparse_json(obj: Any) -> bytes:
    """``obj`` as JSON without the fields equal to their default, at every depth
    (like Go's ``omitempty`` in Docker's and Kubernetes' APIs): ``from_dict``
    fills them back, so it decodes to an equal object."""
    try:
        return _JSON.encode(to_sparse_dict(obj))
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgument(f"cannot encode {type(obj).__name__}: {exc}") from None


def to_sparse_dict(obj: Any) -> Any:
    """``to_dict`` without the fields equal to their default."""
    cls = type(obj)
    encode = _SPARSE_ENCODERS.get(cls)
    if encode is None:
        encode = _SPARSE_ENCODERS[cls] = _sparse_encoder(cls)
    return encode(obj)


_SPARSE_ENCODERS: dict[type[Any], Callable[[Any], Any]] = {}
# Values written as they are; anything else is looked at.
_LEAVES = frozenset({str, int, float, bool, type(None)})
_REQUIRED_FIELD = object()


def _sparse_encoder(cls: type[Any]) -> Callable[[Any], Any]:
    if dataclasses.is_dataclass(cls):
        return _sparse_dataclass(cls)
    if issubclass(cls, enum.Enum):
        return lambda obj: obj.value
    if issubclass(cls, tuple | list):
        return lambda obj: [_sparse_value(v) for v in obj]
    if issubclass(cls, dict):
        return lambda obj: {k: _sparse_value(v) for k, v in obj.items()}
    return _as_is


def _sparse_value(value: Any) -> Any:
    return value if type(value) in _LEAVES else to_sparse_dict(value)


def _sparse_dataclass(cls: type[Any]) -> Callable[[Any], dict[str, Any]]:
    defaults = tuple((f.name, _default_of(f)) for f in dataclasses.fields(cls))

    def encode(obj: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, default in defaults:
            value = getattr(obj, name)
            if default is _REQUIRED_FIELD or value != default:
                out[name] = value if type(value) in _LEAVES else to_sparse_dict(value)
        return out

    return encode


def _default_of(fld: dataclasses.Field[Any]) -> Any:
    if fld.default is not dataclasses.MISSING:
        return fld.default
    if fld.default_factory is not dataclasses.MISSING:
        return fld.default_factory()  # models are immutable: compared, never shared
    return _REQUIRED_FIELD


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Decode ``data`` into ``cls``; missing fields take their defaults."""
    return typing.cast(T, _decode(cls, data, path or cls.__name__.lower()))


def _decode(tp: Any, value: Any, path: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _decode(args[0], value, path)
    if dataclasses.is_dataclass(tp):
        return _decode_dataclass(typing.cast(type[Any], tp), value, path)
    return _decode_plain(tp, origin, value, path)


_REQUIRED: dict[type[Any], tuple[str, ...]] = {}


def _required(cls: type[Any]) -> tuple[str, ...]:
    required = _REQUIRED.get(cls)
    if required is None:
        required = _REQUIRED[cls] = tuple(
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )
    return required


def _decode_dataclass(tp: type[Any], value: Any, path: str) -> Any:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{path}: expected an object")
    value = shapes.current_shape(tp, value, path)
    hints = _hints(tp)
    names = {f.name for f in dataclasses.fields(tp)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise InvalidArgument(f"{path}: unknown field '{unknown[0]}'")
    missing = [name for name in _required(tp) if name not in value]
    if missing:
        raise InvalidArgument(f"{path}: missing field '{missing[0]}'")
    kwargs = {k: _decode(hints[k], v, f"{path}.{k}") for k, v in value.items()}
    try:
        return tp(**kwargs)
    except InvalidArgument:
        raise
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{path}: {exc}") from None


def _decode_plain(tp: Any, origin: Any, value: Any, path: str) -> Any:
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise InvalidArgument(f"{path}: expected a list")
        (item,) = [a for a in get_args(tp) if a is not Ellipsis]
        return tuple(_decode(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise InvalidArgument(f"{path}: expected an object")
        _, vtype = get_args(tp)
        return {str(k): _decode(vtype, v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            allowed = ", ".join(str(m.value) for m in tp)
            raise InvalidArgument(f"{path}: '{value}' is not one of: {allowed}") from None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidArgument(f"{path}: expected a number")
        try:
            return float(value)
        except OverflowError:
            raise InvalidArgument(f"{path}: number out of range") from None
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgument(f"{path}: expected an integer")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise InvalidArgument(f"{path}: expected true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise InvalidArgument(f"{path}: expected a string")
        return value
    if tp is Any:
        return value
    raise InvalidArgument(f"{path}: unsupported type {tp!r}")
