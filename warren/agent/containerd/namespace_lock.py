"""One live Warren node per containerd namespace.

At start a node's agent removes every container of its namespace that none of
its tasks explains (what a crash left behind). Two nodes in one namespace would
remove each other's containers, so a node holds an exclusive ``flock`` on a file
named after the namespace, beside containerd's socket, for as long as its
process runs. The kernel drops the lock when the process ends, however it ends:
there is never a stale lock to clean up, and a restarted node takes it again at
once. (A mark in containerd itself, such as a lease, has no such tie to the
process: it would need renewing, and a crashed node's would block its restart
until it expired.)

The file is keyed by the socket's real path, so every process that reaches one
containerd through the same directory sees the same lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from pathlib import Path

from warren.core.errors import FailedPrecondition, InvalidArgument

# containerd's own rule for namespace names; it also keeps the lock file's name
# inside the socket's directory.
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")
_HOLDER_MAX = 512


def lock_path(socket: str, namespace: str) -> Path:
    if _NAMESPACE_RE.fullmatch(namespace) is None:
        raise InvalidArgument(
            f"invalid containerd namespace {namespace!r}: letters, digits and . _ - between them"
        )
    real = Path(os.path.realpath(socket))
    return real.parent / f"{real.name}.warren-{namespace}.lock"


class NamespaceLock:
    """Held from ``acquire`` until ``release`` or the end of the process."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    @classmethod
    def acquire(cls, socket: str, namespace: str, holder: str) -> NamespaceLock:
        """Take the namespace, or refuse naming the live node that holds it.
        ``holder`` says who this node is, for the message another one gets."""
        path = lock_path(socket, namespace)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise FailedPrecondition(
                f"cannot open {path}, the lock that keeps one node per containerd "
                f"namespace: {exc.strerror or exc}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, _HOLDER_MAX, 0).decode(errors="replace").strip()
            os.close(fd)
            raise FailedPrecondition(
                f"containerd namespace '{namespace}' is in use by another live Warren node "
                f"({other or 'unknown'}); give each node on this containerd its own "
                "--containerd-namespace"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        return cls(fd, path)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None
