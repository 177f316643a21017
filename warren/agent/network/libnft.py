"""libnftables.so.1 through ctypes: JSON commands in, Warren errors out.

Debian's python3-nftables is this same thin wrapper; Warren carries its own so
the node needs only the C library (package libnftables1). libnftables acts in
the network namespace its netlink socket was opened in. With ``netns`` (a path
such as /run/netns/NAME) every call runs on one thread of its own that entered
that namespace first, so the rest of the process stays where it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from warren.core.errors import FailedPrecondition, WarrenError, safe_message

LIBRARY = "libnftables.so.1"
# NFT_CTX_OUTPUT_JSON: also makes the context read JSON first, then nft's syntax
# for a buffer that is not JSON.
_OUTPUT_JSON = 1 << 4
_CLONE_NEWNET = 0x40000000

T = TypeVar("T")


class NftablesError(WarrenError):
    """nftables refused a transaction (an internal failure of the node); the message
    is nft's own."""


def _load() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(LIBRARY)
    except OSError as err:
        raise FailedPrecondition(
            f"nftables is not usable on this node ({err}); install libnftables1"
        ) from None
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
        getattr(lib, name).argtypes = [ctypes.c_void_p]
        getattr(lib, name).restype = ctypes.c_int
    for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
        getattr(lib, name).argtypes = [ctypes.c_void_p]
        getattr(lib, name).restype = ctypes.c_char_p
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
    return lib


def _enter_netns(path: Path) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise FailedPrecondition(f"cannot enter network namespace {path}: {os.strerror(errno)}")
    finally:
        os.close(fd)


class LibNftables:
    """One libnftables context; run() takes a list of JSON commands as one transaction."""

    def __init__(self, netns: Path | None = None) -> None:
        self._netns = netns
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        if netns is not None:
            if not netns.exists():
                raise FailedPrecondition(f"network namespace {netns} does not exist")
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="nft")
        self._lib = _load()
        self._ctx: int | None = self._call(self._new_context)

    def _new_context(self) -> int:
        if self._netns is not None:
            _enter_netns(self._netns)
        ctx = self._lib.nft_ctx_new(0)
        if not ctx:
            raise FailedPrecondition("libnftables could not create a context")
        self._lib.nft_ctx_output_set_flags(ctx, _OUTPUT_JSON)
        self._lib.nft_ctx_buffer_output(ctx)
        self._lib.nft_ctx_buffer_error(ctx)
        return int(ctx)

    def _call(self, function: Callable[[], T]) -> T:
        if self._executor is None:
            with self._lock:
                return function()
        return self._executor.submit(function).result()

    def run(self, commands: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Run commands as one transaction; returns nft's JSON output ({} if none)."""
        if not commands:
            return {}
        text = json.dumps({"nftables": list(commands)})
        return self._call(lambda: self._run(text))

    def run_script(self, script: str) -> None:
        """Run commands in nft's own syntax (one a line) as one transaction."""
        if script.strip():
            self._call(lambda: self._run(script))

    def _run(self, text: str) -> dict[str, Any]:
        if self._ctx is None:
            raise FailedPrecondition("the nftables context is closed")
        status = self._lib.nft_run_cmd_from_buffer(self._ctx, text.encode())
        output = self._lib.nft_ctx_get_output_buffer(self._ctx) or b""
        errors = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
        if status != 0:
            message = errors.decode(errors="replace").strip() or f"status {status}"
            raise NftablesError(safe_message(f"nftables refused the transaction: {message}"))
        if not output.strip():
            return {}
        parsed: dict[str, Any] = json.loads(output)
        return parsed

    def close(self) -> None:
        if self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            self._call(lambda: self._lib.nft_ctx_free(ctx))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
