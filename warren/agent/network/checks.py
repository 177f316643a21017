"""What a node needs for service networking, checked at start.

A ``Prober`` gathers ``NodeFacts`` (I/O: loading libnftables, running ``nft``,
making and deleting test interfaces, reading a sysctl); ``problems`` turns
facts into one-line messages with a hint (pure). So the node says what is
missing instead of failing later on the first task.
"""

from __future__ import annotations

import asyncio
import ctypes
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from warren.agent.network.netlink import error_reason, open_rtnl, run_in_netns
from warren.core.errors import RuntimeFailure

LIBNFTABLES = "libnftables.so.1"
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
_COMMAND_TIMEOUT = 10.0


@dataclass(frozen=True)
class NodeFacts:
    """What a probe saw. An ``*_error`` is None when that part works, otherwise
    what failed, as the system said it."""

    libnftables_error: str | None = None
    nft_error: str | None = None
    wireguard_module_error: str | None = None
    wireguard_go_path: str | None = None
    ip_forwarding: bool = True
    bridge_error: str | None = None
    veth_error: str | None = None

    @property
    def wireguard(self) -> str | None:
        """How this node will run WireGuard: the kernel module, wireguard-go, or not at all."""
        if self.wireguard_module_error is None:
            return "kernel"
        return "wireguard-go" if self.wireguard_go_path else None


@dataclass(frozen=True)
class Problem:
    what: str
    hint: str

    def line(self) -> str:
        return f"{self.what}; {self.hint}"


def problems(facts: NodeFacts) -> list[Problem]:
    """Everything missing, in the order to fix it (empty: the node is ready)."""
    found = []
    if facts.bridge_error is not None:
        found.append(
            Problem(
                f"no bridge support ({facts.bridge_error})",
                "load the module: modprobe bridge",
            )
        )
    if facts.veth_error is not None:
        found.append(
            Problem(f"no veth support ({facts.veth_error})", "load the module: modprobe veth")
        )
    if facts.libnftables_error is not None:
        found.append(
            Problem(
                f"libnftables does not work ({facts.libnftables_error})",
                "install it: apt install libnftables1",
            )
        )
    if facts.nft_error is not None:
        found.append(
            Problem(f"nft does not work ({facts.nft_error})", "install it: apt install nftables")
        )
    if facts.wireguard is None:
        found.append(
            Problem(
                "no WireGuard: no kernel module "
                f"({facts.wireguard_module_error}) and no wireguard-go on PATH",
                "install wireguard-go: apt install wireguard-go",
            )
        )
    if not facts.ip_forwarding:
        found.append(
            Problem(
                "IPv4 forwarding is off (tasks cannot reach other nodes or services)",
                "enable it: sysctl -w net.ipv4.ip_forward=1",
            )
        )
    return found


def format_problems(found: list[Problem]) -> str:
    """One line per problem, for the log or the terminal."""
    return "\n".join(problem.line() for problem in found)


class Prober(Protocol):
    async def probe(self) -> NodeFacts: ...


class FakeProber:
    """Gives the facts it was made with."""

    def __init__(self, facts: NodeFacts) -> None:
        self.facts = facts

    async def probe(self) -> NodeFacts:
        return self.facts


async def check_node(prober: Prober) -> list[Problem]:
    return problems(await prober.probe())


class SystemProber:
    """Probes the namespace ``netns`` (None: this process's own).

    Test interfaces get random names and are deleted right away."""

    def __init__(self, netns: Path | None = None, search_path: str | None = None) -> None:
        self._netns = netns
        self._search_path = search_path  # PATH for finding programs (None: ours)

    async def probe(self) -> NodeFacts:
        return NodeFacts(
            libnftables_error=await self._in_netns(_libnftables_error),
            nft_error=await self._in_netns(self._nft_error),
            wireguard_module_error=await self._link_error("wireguard", {}),
            wireguard_go_path=shutil.which("wireguard-go", path=self._search_path),
            ip_forwarding=await self._in_netns(_read_ip_forwarding),
            bridge_error=await self._link_error("bridge", {}),
            veth_error=await self._link_error("veth", {"peer": _probe_name("p")}),
        )

    async def _in_netns(self, action: Any) -> Any:
        if self._netns is None:
            return await asyncio.to_thread(action)
        return await asyncio.to_thread(run_in_netns, self._netns, action)

    def _nft_error(self) -> str | None:
        nft = shutil.which("nft", path=self._search_path)
        if nft is None:
            return "not on PATH"
        try:
            # Forked from the thread in the namespace: nft runs there too.
            done = subprocess.run(
                [nft, "list", "tables"], capture_output=True, text=True, timeout=_COMMAND_TIMEOUT
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
        if done.returncode != 0:
            return done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
        return None

    async def _link_error(self, kind: str, extra: dict[str, Any]) -> str | None:
        """Make a test interface of ``kind`` and delete it; None if that works."""
        name = _probe_name(kind[0])
        ipr = await open_rtnl(self._netns)
        try:
            try:
                await ipr.link("add", ifname=name, kind=kind, **extra)
            except Exception as exc:
                return f"ip link add type {kind}: {error_reason(exc)}"
            await ipr.link("del", ifname=name)
            return None
        finally:
            ipr.close()


def _probe_name(tag: str) -> str:
    return f"wchk{tag}{secrets.token_hex(4)}"  # 13 characters


def _libnftables_error() -> str | None:
    try:
        lib = ctypes.CDLL(LIBNFTABLES)
    except OSError as exc:
        return str(exc)
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    ctx = lib.nft_ctx_new(0)
    if not ctx:
        return "nft_ctx_new failed"
    try:
        # Buffered: nothing printed on the agent's stdout or stderr.
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        if lib.nft_run_cmd_from_buffer(ctx, b"list tables") != 0:
            error = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace").strip()
            return error.splitlines()[-1] if error else "'list tables' failed"
        return None
    finally:
        lib.nft_ctx_free(ctx)


def _read_ip_forwarding() -> bool:
    return IP_FORWARD.read_text().strip() == "1"


def _write_ip_forwarding() -> None:
    try:
        IP_FORWARD.write_text("1\n")
    except OSError as exc:
        raise RuntimeFailure(
            f"cannot enable IPv4 forwarding: {exc.strerror or exc}; "
            "run the agent as root or: sysctl -w net.ipv4.ip_forward=1"
        ) from exc


async def enable_ip_forwarding(netns: Path | None = None) -> None:
    """Turn IPv4 forwarding on in ``netns`` (None: this process's namespace)."""
    if netns is None:
        await asyncio.to_thread(_write_ip_forwarding)
    else:
        await asyncio.to_thread(run_in_netns, netns, _write_ip_forwarding)
