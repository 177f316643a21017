"""Resolving a container's user (``name``, ``uid``, ``uid:gid``...) in its image.

The image's /etc/passwd and /etc/group are read straight from the snapshot's
overlay layer directories (top first, honouring whiteouts): no mount to make
and undo, and nothing copied out of the content store.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from warren.agent.containerd.proto import types_pb2
from warren.core.errors import InvalidArgument

_OPAQUE_XATTR = "trusted.overlay.opaque"


@dataclass(frozen=True)
class User:
    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    home: str = "/"


def layer_dirs(mounts: Sequence[types_pb2.Mount]) -> list[Path]:
    """The directories that make up a rootfs, top layer first."""
    dirs: list[Path] = []
    for mount in mounts:
        if mount.type == "bind":
            dirs.append(Path(mount.source))
            continue
        options = dict(o.split("=", 1) for o in mount.options if "=" in o)
        if "upperdir" in options:
            dirs.append(Path(options["upperdir"]))
        dirs.extend(Path(d) for d in options.get("lowerdir", "").split(":") if d)
    return dirs


def read_image_file(dirs: Sequence[Path], relative: str) -> str | None:
    """A file's text as the merged rootfs would show it; None if absent."""
    parent = str(Path(relative).parent)
    for layer in dirs:
        path = layer / relative
        try:
            info = path.lstat()
        except (FileNotFoundError, NotADirectoryError):
            if _is_opaque(layer / parent):
                return None  # the directory hides everything below this layer
            continue
        if stat.S_ISREG(info.st_mode):
            return path.read_text(errors="replace")
        return None  # a whiteout (0:0 device), a directory or a symlink
    return None


def resolve_user(spec: str, passwd: str | None, group: str | None) -> User:
    """Docker's rules: names come from the image, a bare uid takes its passwd gid."""
    user_part, _, group_part = (spec or "0").partition(":")
    users = _entries(passwd)
    entry = _find(users, user_part, id_field=2)
    if entry is None and not user_part.isdigit():
        raise InvalidArgument(f"user {user_part!r} not found in the image's /etc/passwd")
    uid = int(entry[2]) if entry else int(user_part)
    gid = int(entry[3]) if entry and len(entry) > 3 else 0
    home = entry[5] if entry and len(entry) > 5 and entry[5] else "/"
    groups = _entries(group)
    if group_part:
        found = _find(groups, group_part, id_field=2)
        if found is None and not group_part.isdigit():
            raise InvalidArgument(f"group {group_part!r} not found in the image's /etc/group")
        gid = int(found[2]) if found else int(group_part)
    name = entry[0] if entry else ""
    extra = tuple(
        int(g[2])
        for g in groups
        if name and len(g) > 3 and name in g[3].split(",") and int(g[2]) != gid
    )
    return User(uid, gid, extra, home)


def _entries(text: str | None) -> list[list[str]]:
    rows = []
    for line in (text or "").splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and not line.startswith("#") and fields[2].isdigit():
            rows.append(fields)
    return rows


def _find(rows: list[list[str]], key: str, id_field: int) -> list[str] | None:
    for row in rows:
        if row[0] == key:
            return row
    for row in rows:
        if row[id_field] == key:
            return row
    return None


def _is_opaque(directory: Path) -> bool:
    try:
        return os.getxattr(directory, _OPAQUE_XATTR) == b"y"
    except OSError:
        return False
