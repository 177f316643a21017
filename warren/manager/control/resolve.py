"""Finding an object the way users name it: ID, name, or ID prefix."""

from __future__ import annotations

from typing import Any, TypeVar

from warren.core.errors import InvalidArgument, NotFound
from warren.core.validation import show

T = TypeVar("T")

# Removing (or demoting) by ID prefix takes at least this many characters: a
# stray digit must not delete a node. Six base-36 characters are 2 billion
# possibilities (no accidental match), yet short to type; the CLI shows 12.
DESTRUCTIVE_MIN_PREFIX = 6

# A name several objects share: it names none of them.
AMBIGUOUS: Any = object()


def resolve(
    ref: str, by_id: dict[str, T], by_name: dict[str, T], what: str, min_prefix: int = 1
) -> T:
    """Find an object by exact ID, then name, then unique ID prefix (like Docker)
    of at least ``min_prefix`` characters."""
    if not ref:
        raise InvalidArgument(f"a {what} ID or name is required")
    if ref in by_id:
        return by_id[ref]
    found = by_name.get(ref)
    if found is AMBIGUOUS:
        raise InvalidArgument(f"{what} name {show(ref)} is ambiguous; use its ID")
    if found is not None:
        return found
    matches = [obj for object_id, obj in by_id.items() if object_id.startswith(ref)]
    if len(matches) > 1:
        raise InvalidArgument(f"{what} ID prefix {show(ref)} is ambiguous")
    if matches and len(ref) < min_prefix:
        raise InvalidArgument(
            f"{what} ID prefix {show(ref)} is too short for this: give at least "
            f"{min_prefix} characters of the ID, the whole ID or the name"
        )
    if matches:
        return matches[0]
    raise NotFound(f"{what} {show(ref)} not found")
