"""Range and text rules for every model field, checked when a model is built.

Models call ``validate(self)`` from ``__post_init__``, so the same rules hold
whichever way an object arrives (REST JSON, protobuf, a Raft log entry, the
CLI) and again when a log entry is applied. The rules are derived from each
field's type and its ``bounded(...)`` metadata, so a new field is covered the
day it is added:

- ``int``: within ``bounded`` or else int64 (what protobuf and JSON carry);
- ``float``: finite, within ``bounded``;
- ``str`` (also in tuples and as dict keys and values): valid Unicode without
  NUL (protobuf needs UTF-8, containers take C strings), at most
  ``max_length`` characters.

The bounds are the single source of truth: the OpenAPI document, the CLI's
option types and the protobuf field widths follow them.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from warren.core.errors import InvalidArgument

INT32_MAX = 2**31 - 1
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# Durations (delays, timeouts, grace periods): far above any sane setting, and
# small enough for every timer the event loop and the kernel offer.
MAX_SECONDS = 366 * 24 * 3600
# One free-form string (an env value, an argument); request bodies bound the rest.
MAX_TEXT = 65_536
_SURROGATE = re.compile("[\ud800-\udfff]")
# Echoed values in error messages are cut here.
_ECHO = 40

Rule = Callable[[Any], None]


def bounded(
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    max_length: int | None = None,
) -> dict[str, Any]:
    """Field metadata: ``field(default=..., metadata=bounded(minimum=0, maximum=10))``."""
    meta: dict[str, Any] = {}
    if minimum is not None:
        meta["minimum"] = minimum
    if maximum is not None:
        meta["maximum"] = maximum
    if max_length is not None:
        meta["max_length"] = max_length
    return meta


def field_limits(meta: Mapping[str, Any], tp: Any) -> dict[str, Any]:
    """The effective bounds of a field of type ``tp`` (defaults filled in)."""
    base = _strip_optional(tp)
    out = dict(meta)
    if base is int:
        out.setdefault("minimum", INT64_MIN)
        out.setdefault("maximum", INT64_MAX)
    elif base is str or _is_str_container(base):
        out.setdefault("max_length", MAX_TEXT)
    return out


def validate(obj: Any) -> None:
    """Check every field of the dataclass ``obj`` against its type's rules."""
    for rule in _rules_of(type(obj)):
        rule(obj)


def show(value: object) -> str:
    """A value for an error message: bounded, one line, control characters escaped."""
    if isinstance(value, int) and not isinstance(value, bool):
        digits = len(str(abs(value))) if abs(value) < 10**_ECHO else _ECHO + 1
        if digits > _ECHO:
            return "a number too large to show"
        return str(value)
    text = value if isinstance(value, str) else str(value)
    escaped = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    if len(escaped) > _ECHO:
        escaped = escaped[:_ECHO] + "..."
    return f"'{escaped}'"


def check_text(value: str, what: str, max_length: int = MAX_TEXT) -> None:
    if len(value) > max_length:
        raise InvalidArgument(f"{what} is too long ({len(value)} characters, at most {max_length})")
    if "\x00" in value:
        raise InvalidArgument(f"{what} must not contain NUL characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument(
                f"{what} is not valid Unicode text (an unpaired surrogate)"
            ) from None


def clean_text(value: str, max_length: int) -> str:
    """Text Warren writes itself (runtime errors, status messages), made valid.

    It must never be refused: a refused status report would stall a node.
    """
    if not value.isascii():
        value = _SURROGATE.sub("\ufffd", value)
    value = value.replace("\x00", "\\x00")
    return value if len(value) <= max_length else value[: max_length - 3] + "..."


def check_number(value: float, what: str, minimum: float, maximum: float) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidArgument(f"{what} must be a finite number")
    if not minimum <= value <= maximum:
        raise InvalidArgument(
            f"{what} must be between {_bound(minimum)} and {_bound(maximum)}, not {show(value)}"
        )


def _bound(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# -- rules derived from type hints --------------------------------------------------

_RULES: dict[type[Any], list[Rule]] = {}


def _rules_of(cls: type[Any]) -> list[Rule]:
    rules = _RULES.get(cls)
    if rules is None:
        hints = typing.get_type_hints(cls)
        rules = []
        for fld in dataclasses.fields(cls):
            rule = _rule(fld.name, hints[fld.name], fld.metadata)
            if rule is not None:
                rules.append(rule)
        _RULES[cls] = rules
    return rules


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _is_str_container(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not Ellipsis]
    return origin in (tuple, dict) and all(a is str for a in args)


def _rule(name: str, tp: Any, meta: Mapping[str, Any]) -> Rule | None:
    base = _strip_optional(tp)
    bounds = field_limits(meta, tp)
    check: Callable[[Any], None]
    if base is bool:
        return None
    if base is int or base is float:
        low = bounds.get("minimum", -math.inf)
        high = bounds.get("maximum", math.inf)

        def check(value: Any) -> None:
            check_number(value, name, low, high)

    elif base is str:
        length = bounds["max_length"]

        def check(value: Any) -> None:
            check_text(value, name, length)

    elif _is_str_container(base):
        length = bounds["max_length"]
        is_dict = typing.get_origin(base) is dict

        def check(value: Any) -> None:
            for item in value:
                check_text(item, f"{name} key" if is_dict else name, length)
                if is_dict:
                    check_text(value[item], f"{name} value", length)

    else:
        return None  # enums, nested models (they validate themselves)

    def rule(obj: Any) -> None:
        value = getattr(obj, name)
        if value is not None:
            check(value)

    return rule
