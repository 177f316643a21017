"""Docker-style value syntax: sizes, durations, ``KEY=VALUE`` pairs, ``NAME=N``.

The plain functions raise ``InvalidArgument``; the click types wrap them so a
bad value is refused while parsing, before anything reaches a manager.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shlex
import signal
import typing
from collections.abc import Callable
from functools import partial
from typing import Any

import click

from warren.core.errors import InvalidArgument
from warren.core.models import MAX_CPUS, MAX_MEMORY_BYTES, MAX_REPLICAS, HealthCheck
from warren.core.networks import PortConfig, PortProtocol, PublishMode
from warren.core.validation import INT32_MAX, MAX_SECONDS, field_limits, show

# Binary multiples, as Docker's --memory flags use them.
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION_PART = re.compile(rf"({_NUMBER})(ns|us|µs|ms|s|m|h)")
_DURATION_RE = re.compile(rf"(?:{_NUMBER}(?:ns|us|µs|ms|s|m|h))+")
_SECONDS_RE = re.compile(_NUMBER)


def parse_size(text: str) -> int:
    """Bytes from ``64m``, ``1.5g``, ``512k``, ``512kb``, ``1gib`` or plain ``1048576``."""
    match = _SIZE_RE.fullmatch(text.strip())
    if not match:
        raise InvalidArgument(f"invalid size '{text}': use e.g. 512k, 64m, 1.5g or plain bytes")
    number, unit = match.groups()
    size = float(number) * _SIZE_UNITS[unit.lower()]
    if size > MAX_MEMORY_BYTES:
        raise InvalidArgument(f"size '{text}' is too large: at most 1p (1 PiB)")
    return int(size)


def parse_duration(text: str) -> float:
    """Seconds from ``5s``, ``1m30s``, ``500ms``, ``2h`` or plain seconds (``2.5``)."""
    value = text.strip()
    if _SECONDS_RE.fullmatch(value):
        value += "s"
    elif not _DURATION_RE.fullmatch(value):
        raise InvalidArgument(
            f"invalid duration '{text}': use e.g. 500ms, 5s, 1m30s, 2h or plain seconds"
        )
    seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(value))
    if not math.isfinite(seconds) or seconds > MAX_SECONDS:
        raise InvalidArgument(f"duration '{text}' is too long: at most {MAX_SECONDS // 86400} days")
    return seconds


def format_seconds(seconds: float) -> str:
    return f"{seconds:g}s"


def parse_pair(text: str, what: str, value_required: bool) -> tuple[str, str]:
    """``KEY=VALUE``; a bare ``KEY`` means an empty value unless one is required."""
    key, sep, value = text.partition("=")
    if not key or (value_required and not sep):
        raise InvalidArgument(f"invalid {what} '{text}': expected KEY=VALUE")
    return key, value


def parse_command(text: str) -> tuple[str, ...]:
    """A command line split like a POSIX shell would (``--args "sh -c 'echo hi'"``)."""
    try:
        return tuple(shlex.split(text))
    except ValueError as exc:
        raise InvalidArgument(f"invalid command '{text}': {exc}") from None


def parse_scale(text: str) -> tuple[str, int]:
    """``NAME=N`` as ``service scale`` takes it."""
    name, sep, count = text.partition("=")
    if not name or not sep or not count.isdigit():
        raise InvalidArgument(f"invalid scale '{text}': expected SERVICE=REPLICAS, e.g. web=3")
    if int(count) > MAX_REPLICAS:
        raise InvalidArgument(f"invalid scale '{text}': replicas must be at most {MAX_REPLICAS}")
    return name, int(count)


def parse_signal(text: str) -> str:
    """A signal's canonical name from ``SIGTERM``, ``TERM``, ``term`` or ``15``."""
    value = text.strip().upper()
    if value.isdigit():
        try:
            return signal.Signals(int(value)).name
        except ValueError:
            pass
    else:
        name = value if value.startswith("SIG") else f"SIG{value}"
        if name in signal.Signals.__members__:
            return signal.Signals[name].name
    raise InvalidArgument(f"unknown signal '{text}': use e.g. SIGTERM, TERM or 15")


def parse_http_probe(text: str) -> str:
    """``PORT/PATH`` (or a bare ``PORT``) for an HTTP health check."""
    try:
        HealthCheck(http=text).http_target()
    except InvalidArgument:
        raise InvalidArgument(
            f"invalid HTTP health check '{text}': expected PORT/PATH, e.g. 8080/healthz"
        ) from None
    return text


def parse_registry_host(text: str) -> str:
    """``HOST[:PORT]`` of a registry, without a scheme or path."""
    value = text.strip()
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = value, ""
    valid_port = not sep or (port.isdigit() and 0 < int(port) <= 65535)
    if not host or "/" in value or not valid_port or any(c.isspace() for c in value):
        raise InvalidArgument(f"invalid registry '{text}': expected HOST:PORT, e.g. 10.0.0.5:5000")
    return value


def parse_tail(text: str) -> int:
    """``all`` (0) or a number of lines, 1 or more.

    The API reads 0 as everything, so Docker's ``--tail 0`` (no history) is refused
    rather than silently printing it all.
    """
    value = text.strip().lower()
    if value == "all":
        return 0
    if not value.isdigit() or not 0 < int(value) <= INT32_MAX:
        raise InvalidArgument(
            f"invalid tail '{text}': use a number of lines (1 to {INT32_MAX}) or 'all'"
        )
    return int(value)


_PUBLISH_KEYS = ("published", "target", "protocol", "mode")
_PUBLISH_HINT = (
    "use [PUBLISHED:]TARGET[/udp] or published=N,target=N[,protocol=tcp|udp][,mode=ingress|host]"
)


def parse_publish(text: str) -> PortConfig:
    """``--publish``: Docker's short form ``8080:80[/udp]`` (or ``80``: Warren
    picks the published port) or its long form ``published=8080,target=80,...``."""
    fields: dict[str, str] = {}
    if "=" in text:
        for part in text.split(","):
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep or key not in _PUBLISH_KEYS or key in fields:
                raise InvalidArgument(f"invalid port {show(text)}: {_PUBLISH_HINT}")
            fields[key] = value.strip()
    else:
        ports, _, protocol = text.partition("/")
        published, sep, target = ports.rpartition(":")
        fields = {"target": target, "published": published if sep else ""}
        if protocol:
            fields["protocol"] = protocol
    try:
        return PortConfig(
            target=_port_number(fields.get("target", ""), text),
            published=_port_number(fields.get("published") or "0", text),
            protocol=PortProtocol(fields.get("protocol", "tcp").lower()),
            mode=PublishMode(fields.get("mode", "ingress").lower()),
        )
    except ValueError:
        raise InvalidArgument(f"invalid port {show(text)}: {_PUBLISH_HINT}") from None


def _port_number(value: str, text: str) -> int:
    if not value.isdigit():
        raise InvalidArgument(f"invalid port {show(text)}: {_PUBLISH_HINT}")
    return int(value)


class Parsed(click.ParamType[Any]):
    """A click type around one of the parsers above."""

    def __init__(self, name: str, parser: Callable[[str], Any]) -> None:
        self.name = name
        self._parser = parser

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value  # a default that is already converted
        try:
            return self._parser(value)
        except InvalidArgument as exc:
            self.fail(str(exc), param, ctx)


SIZE = Parsed("size", parse_size)
DURATION = Parsed("duration", parse_duration)
LABEL = Parsed("key=value", partial(parse_pair, what="label", value_required=False))
ENV = Parsed("key=value", partial(parse_pair, what="environment variable", value_required=True))
SCALE = Parsed("service=replicas", parse_scale)
COMMAND = Parsed("command", parse_command)
SIGNAL = Parsed("signal", parse_signal)
HTTP_PROBE = Parsed("port/path", parse_http_probe)
REGISTRY = Parsed("host:port", parse_registry_host)
TAIL = Parsed("lines", parse_tail)
PUBLISH = Parsed("port", parse_publish)
CPUS = click.FloatRange(min=0, max=MAX_CPUS)


def model_range(model: type[Any], name: str) -> click.IntRange:
    """The click type of an integer option that sets ``model.name``: its bounds
    are the model's, so an out-of-range value is a usage error, not a refusal
    from the manager."""
    fld = next(f for f in dataclasses.fields(model) if f.name == name)
    bounds = field_limits(fld.metadata, typing.get_type_hints(model)[name])
    return click.IntRange(int(bounds["minimum"]), int(bounds["maximum"]))
