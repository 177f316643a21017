"""JSON of stored objects, encoded once per version.

Store objects are immutable and every write stamps a new version (the store
revision, the same on every manager), so an object's ID and version name one
encoding. Listings join cached encodings instead of encoding every object on
every read: a task listing is mostly specs that rarely change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from warren.core.codec import to_json

# Entries of objects no longer listed are dropped when the cache grows past
# this many times the last full listing (plus a floor for small clusters).
_SLACK = 2
_FLOOR = 1024


class EncodedObjects:
    """Per-kind cache: object ID -> (version, JSON bytes)."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[int, bytes]] = {}
        self._limit = _FLOOR

    def one(self, obj: Any) -> bytes:
        entry = self._entries.get(obj.id)
        if entry is not None and entry[0] == obj.version:
            return entry[1]
        encoded = to_json(obj)
        self._entries[obj.id] = (obj.version, encoded)
        return encoded

    def array(self, objects: Sequence[Any], complete: bool = False) -> bytes:
        """A JSON array of ``objects``; ``complete``: they are every object of the kind."""
        parts = [b"["]
        for obj in objects:
            parts += (self.one(obj), b",")
        if objects:
            parts.pop()  # the last comma
        parts.append(b"]")
        body = b"".join(parts)  # one copy: large bytes concatenations cost page faults
        if complete:
            self._limit = max(_FLOOR, _SLACK * len(objects))
            if len(self._entries) > len(objects):
                listed = {obj.id for obj in objects}
                self._entries = {k: v for k, v in self._entries.items() if k in listed}
        elif len(self._entries) > self._limit:
            self._entries.clear()
        return body
