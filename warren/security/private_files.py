"""Keeping Warren's files to their owner: 0700 directories, 0600 files.

Data dirs hold the CA key, the etcd member's data (the log and state images:
service env values), the worker's task cache and container logs. Some of these
files are created by other processes (etcd) or libraries with no mode argument
of Warren's, so a daemon sets a private umask first thing (its children inherit
it); files written before that (or by an older version) are tightened once at
start. Single files are written with ``tls.write_private``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

# Takes the group and other bits off whatever the process creates.
PRIVATE_UMASK = 0o077
_GROUP_AND_OTHER = 0o077


def restrict_new_files() -> None:
    """From now on this process creates directories 0700 and files 0600, also
    the ones libraries create without asking for a mode."""
    os.umask(PRIVATE_UMASK)


def _never(_path: Path) -> bool:
    return False


def make_private(
    root: Path, *, recursive: bool = True, shared: Callable[[Path], bool] = _never
) -> None:
    """Create ``root`` (0700) if needed, and take the group and other bits off it
    and everything under it (with ``recursive=False``, off its direct files only).

    ``shared(path)`` names files that must stay readable (files bind-mounted
    into containers that may run as another user); they are safe behind their
    0700 directory. Symbolic links are neither followed nor changed.
    """
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    _tighten(root)
    if not recursive:
        for entry in root.iterdir():
            if entry.is_file() and not entry.is_symlink() and not shared(entry):
                _tighten(entry)
        return
    for directory, subdirs, files in os.walk(root):
        base = Path(directory)
        for name in subdirs:
            _tighten(base / name)
        for name in files:
            path = base / name
            if not shared(path):
                _tighten(path)


def _tighten(path: Path) -> None:
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode) or not mode & _GROUP_AND_OTHER:
            return
        os.chmod(path, stat.S_IMODE(mode) & ~_GROUP_AND_OTHER)
    except FileNotFoundError:
        return  # removed meanwhile (a container's files, a rotated log)
