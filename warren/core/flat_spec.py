"""The flat ``ServiceSpec`` of command format 1, and the nested one since format 2.

Format 1 kept every setting at the top of the spec; format 2 groups them as
the features that come need (``container``, ``resources``, ``placement``,
``restart``). The values themselves did not change, so either way is a move
of keys: ``nest`` for what older versions wrote (Raft journals and snapshots,
backups, REST clients), ``flatten`` for managers that read only format 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from warren.core.errors import InvalidArgument

# Nested group -> the flat keys it holds (same names inside the group).
GROUPS: Mapping[str, tuple[str, ...]] = {
    "container": (
        "image",
        "args",
        "env",
        "entrypoint",
        "workdir",
        "user",
        "read_only",
        "init",
        "network_mode",
        "stop_signal",
        "stop_grace_period",
        "health",
    ),
    "resources": ("reservations", "limits"),
    "placement": ("constraints", "max_replicas_per_node"),
}
# Flat key -> nested key whose whole value it is.
RENAMED: Mapping[str, str] = {"restart_policy": "restart"}

_GROUP_OF = {key: group for group, keys in GROUPS.items() for key in keys}
_FLAT_ONLY = frozenset(_GROUP_OF) | frozenset(RENAMED)
_NESTED_ONLY = frozenset(GROUPS) | frozenset(RENAMED.values())


def is_flat(data: Mapping[str, Any]) -> bool:
    return not _FLAT_ONLY.isdisjoint(data)


def nest(data: Mapping[str, Any], path: str = "spec") -> dict[str, Any]:
    """A flat spec's keys moved into their groups; other keys stay where they
    are (so an unknown one is still refused when decoded)."""
    mixed = sorted(_NESTED_ONLY.intersection(data))
    if mixed:
        flat = sorted(_FLAT_ONLY.intersection(data))[0]
        raise InvalidArgument(
            f"{path}: '{flat}' is the flat form of older versions and '{mixed[0]}' the "
            f"nested one: use one (e.g. '{_nested_name(flat)}')"
        )
    out: dict[str, Any] = {}
    for key, value in data.items():
        group = _GROUP_OF.get(key)
        if group is not None:
            out.setdefault(group, {})[key] = value
        else:
            out[RENAMED.get(key, key)] = value
    return out


def flatten(data: Mapping[str, Any]) -> dict[str, Any]:
    """A nested spec as format 1 wrote it."""
    back = {nested: flat for flat, nested in RENAMED.items()}
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in GROUPS:
            out.update(value)
        else:
            out[back.get(key, key)] = value
    return out


def _nested_name(flat: str) -> str:
    group = _GROUP_OF.get(flat)
    return f"{group}.{flat}" if group else RENAMED[flat]
