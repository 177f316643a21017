"""Models whose JSON shape changed: how to read the shape older versions wrote,
and how to write it for managers that read only that one.

Fields added later say so with ``since`` (``warren.core.formats``). A change of
shape, such as ``ServiceSpec`` moving its flat fields into ``container``,
``resources``, ``placement`` and ``restart`` in command format 2, is a
``Reshape``: the codec reads the older shape wherever it decodes (Raft journal,
backups, the REST API), and the command encoder writes it while the cluster's
format is older than ``since``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reshape:
    # The command format that brought the current shape.
    since: int
    # Whether a JSON object is in the older shape.
    is_old: Callable[[dict[str, Any]], bool]
    # Older shape -> current shape, and back (JSON objects; ``path`` names the
    # object in error messages).
    upgrade: Callable[[dict[str, Any], str], dict[str, Any]]
    downgrade: Callable[[dict[str, Any]], dict[str, Any]]


_RESHAPES: dict[type[Any], Reshape] = {}


def register(cls: type[Any], reshape: Reshape) -> None:
    _RESHAPES[cls] = reshape


def reshape_of(cls: type[Any]) -> Reshape | None:
    return _RESHAPES.get(cls)


def current_shape(cls: type[Any], data: Any, path: str) -> Any:
    """``data`` in ``cls``'s current shape (unchanged when it already is)."""
    reshape = _RESHAPES.get(cls)
    if reshape is not None and isinstance(data, dict) and reshape.is_old(data):
        return reshape.upgrade(data, path)
    return data
