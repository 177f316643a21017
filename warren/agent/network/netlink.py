"""Netlink sockets inside named network namespaces, and pyroute2's errors as Warren's.

pyroute2 opens a socket in another namespace by forking a child that enters it;
forking an agent that runs gRPC threads is asking for trouble, so a short-lived
thread enters the namespace instead (``setns`` changes only the calling
thread) and hands the socket back. A socket stays in the namespace it was
made in.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from warren.core.errors import FailedPrecondition, RuntimeFailure

CLONE_NEWNET = 0x40000000
MAX_IFNAME = 15  # IFNAMSIZ minus the terminating NUL

_libc = ctypes.CDLL(None, use_errno=True)

T = TypeVar("T")

_HINTS = {
    errno.EPERM: "the agent needs CAP_NET_ADMIN (run it as root)",
    errno.EOPNOTSUPP: "the kernel lacks this interface type (see the node checks)",
}


def run_in_netns(netns: Path, action: Callable[[], T]) -> T:
    """Run ``action`` in a fresh thread that has entered ``netns``; return its result."""
    outcome: dict[str, Any] = {}

    def enter_and_run() -> None:
        try:
            _enter(netns)
            outcome["value"] = action()
        except BaseException as exc:
            outcome["error"] = exc

    # The thread ends with the namespace switch: nothing else ever runs in it.
    thread = threading.Thread(target=enter_and_run, name=f"netns {netns.name}")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


def _enter(netns: Path) -> None:
    try:
        fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FailedPrecondition(f"network namespace {netns} does not exist") from None
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise RuntimeFailure(f"cannot enter network namespace {netns}: {os.strerror(code)}")
    finally:
        os.close(fd)


def _rtnl_socket() -> int:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE)
    return sock.detach()


async def open_rtnl(netns: Path | None) -> Any:
    """An ``AsyncIPRoute`` in ``netns`` (None: this process's own namespace).

    The caller closes it (``.close()``)."""
    fileno = None
    if netns is not None:
        # Off the event loop: starting and joining the thread blocks for a moment.
        fileno = await asyncio.to_thread(run_in_netns, netns, _rtnl_socket)
    try:
        ipr = AsyncIPRoute(fileno=fileno)
        await ipr.setup_endpoint()
    except OSError as exc:
        if fileno is not None:
            os.close(fileno)
        raise RuntimeFailure(f"cannot open a netlink socket: {exc}") from exc
    return ipr


def error_reason(exc: Exception) -> str:
    """Why a netlink request failed, as the system says it (``File exists``)."""
    code = _code(exc)
    return os.strerror(code) if code is not None and code > 0 else str(exc)


def netlink_failure(action: str, exc: Exception) -> RuntimeFailure:
    """``action`` failed with a pyroute2/OS error: one line saying what and why."""
    code = _code(exc)
    hint = _HINTS.get(code) if code is not None else None
    return RuntimeFailure(f"{action}: {error_reason(exc)}" + (f" ({hint})" if hint else ""))


def _code(exc: Exception) -> int | None:
    code = exc.code if isinstance(exc, NetlinkError) else getattr(exc, "errno", None)
    return code if isinstance(code, int) else None


def is_missing(exc: Exception) -> bool:
    """True for the netlink error of a link, address or route that is not there."""
    return isinstance(exc, NetlinkError) and exc.code in (errno.ENODEV, errno.ESRCH, errno.ENOENT)
