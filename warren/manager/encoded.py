"""JSON of stored objects, encoded once per version.

Store objects are immutable and every write stamps a new version (the store
revision, the same on every manager), so an object's ID and version name one
encoding. Listings join cached encodings instead of encoding every object on
every read: a task listing is mostly specs that rarely change.

The JSON leaves out fields equal to their default (``to_sparse_json``): a task
of a plain service is about 420 bytes instead of about 985. The whole body of
the last unfiltered listing is kept too, until a write of its kind: polling an
unchanged cluster then costs neither the listing's sort nor its join.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from warren.core.codec import to_sparse_json
from warren.manager.compression import KEPT_LEVEL, gzip_bytes

# Entries of objects no longer listed are dropped when the cache grows past
# this many times the last full listing (plus a floor for small clusters).
_SLACK = 2
_FLOOR = 1024


class EncodedObjects:
    """Per-kind cache: object ID -> (version, JSON bytes)."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[int, bytes]] = {}
        self._limit = _FLOOR
        # Writes of this kind seen (store listener; another thread), and the
        # last complete listing with the (writes, store revision) it was made at.
        self._writes = 0
        self._listing: tuple[tuple[int, int], bytes] | None = None
        # The kept listing gzipped (compression.py), made when first asked for.
        self._gzipped: tuple[bytes, bytes] | None = None  # (listing, its gzip)

    def written(self) -> None:
        """An object of this kind changed: the kept listing is stale."""
        self._writes += 1

    def complete(self, revision: int, objects: Callable[[], Sequence[Any]]) -> bytes:
        """The listing of every object (``objects()``, in listing order), kept
        until ``written`` or a new ``revision`` (a state image loaded
        replaces the store without events).

        The key is read before listing, so a write that lands meanwhile makes
        the next read list again rather than keep what this one saw."""
        key = (self._writes, revision)
        kept = self._listing
        if kept is not None and kept[0] == key:
            return kept[1]
        body = self.array(objects(), complete=True)
        self._listing = (key, body)
        return body

    def gzipped(self, body: bytes) -> bytes:
        """``body`` (a listing ``complete`` returned) gzipped, compressed once
        for as long as that listing is the one kept."""
        kept = self._gzipped
        if kept is not None and kept[0] is body:
            return kept[1]
        compressed = gzip_bytes(body, KEPT_LEVEL)
        if self._listing is not None and self._listing[1] is body:
            self._gzipped = (body, compressed)
        return compressed

    def one(self, obj: Any) -> bytes:
        entry = self._entries.get(obj.id)
        if entry is not None and entry[0] == obj.version:
            return entry[1]
        encoded = to_sparse_json(obj)
        self._entries[obj.id] = (obj.version, encoded)
        return encoded

    def array(self, objects: Sequence[Any], complete: bool = False) -> bytes:
        """A JSON array of ``objects``; ``complete``: they are every object of the kind."""
        parts = [b"["]
        add = parts.append
        entries = self._entries
        for obj in objects:
            # one() inlined: this loop runs for every object of every listing
            entry = entries.get(obj.id)
            if entry is None or entry[0] != obj.version:
                entry = entries[obj.id] = (obj.version, to_sparse_json(obj))
            add(entry[1])
            add(b",")
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
