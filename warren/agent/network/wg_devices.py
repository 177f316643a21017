"""The two real WireGuard devices, picked at run time: the kernel module (pyroute2)
where the ``wireguard`` link kind works, else Debian's ``wireguard-go``, one process
per interface, configured over its UAPI socket. Both act in the caller's network
namespace; ``missing_requirements`` says what a node lacks for either."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, WireGuard
from pyroute2.netlink.exceptions import NetlinkError

from warren.agent.network import wg_link
from warren.agent.network.wg_uapi import SOCKET_DIR, UapiClient, encode_set, socket_path
from warren.agent.network.wireguard import (
    AddPeer,
    DeviceState,
    InterfaceConfig,
    MeshPlan,
    PeerChange,
    PeerState,
    RemovePeer,
    WireGuardDevice,
)
from warren.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    RuntimeFailure,
    Unavailable,
    WarrenError,
)

WIREGUARD_GO = "wireguard-go"
TUN_DEVICE = Path("/dev/net/tun")
START_TIMEOUT = 5.0
STOP_TIMEOUT = 3.0
_POLL = 0.02


# -- choosing ----------------------------------------------------------------------------


def kernel_wireguard_works() -> bool:
    """Whether this namespace can make a ``wireguard`` link (module present or loadable):
    tried for real with a throwaway link, since /sys/module misses autoloadable ones."""
    probe = f"wgprobe{secrets.token_hex(3)}"
    try:
        with IPRoute() as ip:
            ip.link("add", ifname=probe, kind="wireguard")
            ip.link("del", index=ip.link_lookup(ifname=probe)[0])
    except NetlinkError:
        return False
    return True


def missing_requirements() -> str | None:
    """None if this node can run the mesh, else one line saying what to install."""
    if kernel_wireguard_works():
        return None
    if shutil.which(WIREGUARD_GO) is None:
        return (
            "WireGuard is missing: the kernel has no wireguard module and wireguard-go is "
            "not installed (load the wireguard module, or install the wireguard-go package)"
        )
    if not TUN_DEVICE.exists():
        return f"WireGuard is missing: wireguard-go needs {TUN_DEVICE} (load the tun module)"
    return None


def select_device(log_dir: Path | None = None) -> WireGuardDevice:
    """The kernel device where it works, else wireguard-go; FailedPrecondition if neither."""
    if kernel_wireguard_works():
        return KernelDevice()
    problem = missing_requirements()
    if problem is not None:
        raise FailedPrecondition(problem)
    return GoDevice(log_dir=log_dir)


# -- wireguard-go ------------------------------------------------------------------------


def _same_netns(pid: int) -> bool:
    try:
        theirs = os.stat(f"/proc/{pid}/ns/net")
    except OSError:
        return False
    mine = os.stat("/proc/self/ns/net")
    return (theirs.st_dev, theirs.st_ino) == (mine.st_dev, mine.st_ino)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        # A zombie has exited: it only waits for its parent to reap it.
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


class GoDevice:
    """wireguard-go, one process per interface (``-f``: it stays our child, no daemon
    fork). The process outlives the agent, so a restart does not cut traffic; the next
    agent finds it again by its socket. Socket names are global, so interface names
    must be unique across the node's network namespaces."""

    def __init__(
        self,
        binary: str = WIREGUARD_GO,
        socket_dir: Path = SOCKET_DIR,
        log_dir: Path | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self.binary = binary
        self.socket_dir = socket_dir
        self.log_dir = log_dir
        self.start_timeout = start_timeout
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def _client(self, name: str) -> UapiClient:
        return UapiClient(name, self.socket_dir)

    def exists(self, name: str) -> bool:
        return wg_link.link_exists(name) and socket_path(name, self.socket_dir).exists()

    def create(self, config: InterfaceConfig) -> None:
        name = config.name
        if wg_link.link_exists(name):
            raise AlreadyExists(f"interface {name} exists already")
        self._claim_socket(name)
        self._spawn(name)
        try:
            request = encode_set(
                MeshPlan(private_key=config.private_key, listen_port=config.listen_port)
            )
            assert request is not None
            self._client(name).set(request)
            wg_link.bring_up(name, config.address, config.mtu)
        except BaseException:
            with contextlib.suppress(WarrenError):  # the first error is the one to report
                self.delete(name)
            raise

    def _claim_socket(self, name: str) -> None:
        path = socket_path(name, self.socket_dir)
        if not path.exists():
            return
        try:
            pid = self._client(name).server_pid()
        except Unavailable:
            path.unlink(missing_ok=True)  # left by a killed wireguard-go
            return
        raise AlreadyExists(
            f"wireguard-go pid {pid} already serves {name} (in another network namespace?): "
            "interface names must be unique across namespaces"
        )

    def _spawn(self, name: str) -> None:
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "LOG_LEVEL": "error",
            "WG_PROCESS_FOREGROUND": "1",  # also skips its "use the kernel" banner
        }
        log = self._log_path(name)
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(open(log, "ab")) if log else subprocess.DEVNULL
            try:
                child = subprocess.Popen(
                    [self.binary, "-f", name],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # not killed with the agent's process group
                )
            except OSError as err:
                raise FailedPrecondition(f"cannot start {self.binary}: {err}") from None
        self._children[name] = child
        self._wait_for_socket(name, child)

    def _log_path(self, name: str) -> Path | None:
        if self.log_dir is None:
            return None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return self.log_dir / f"wireguard-go-{name}.log"

    def _wait_for_socket(self, name: str, child: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            code = child.poll()
            if code is not None:
                self._children.pop(name, None)
                log = self._log_path(name)
                hint = f"; see {log}" if log else ""
                raise RuntimeFailure(f"wireguard-go for {name} exited with {code} at start{hint}")
            with contextlib.suppress(Unavailable):
                if self._client(name).server_pid() == child.pid:
                    return
            time.sleep(_POLL)
        self.delete(name)
        raise RuntimeFailure(
            f"wireguard-go for {name} did not open its socket within {self.start_timeout:g} s"
        )

    def apply(self, name: str, plan: MeshPlan) -> None:
        request = encode_set(plan)
        if request is not None:
            self._client(name).set(request)
        if plan.mtu is not None:
            wg_link.set_mtu(name, plan.mtu)
        if plan.routes_to_add or plan.routes_to_remove:
            wg_link.change_routes(name, plan.routes_to_add, plan.routes_to_remove)

    def state(self, name: str) -> DeviceState:
        device = self._client(name).get()
        return DeviceState(
            name=name,
            public_key=device.public_key,
            listen_port=device.listen_port,
            mtu=wg_link.mtu_of(name),
            peers=device.peers,
            routes=wg_link.routes_via(name),
        )

    def delete(self, name: str) -> None:
        """Delete the link (wireguard-go then exits by itself), make sure the process
        is gone (TERM, then KILL) and its socket too. Only a process in this network
        namespace is ever signalled: another namespace may use the same name."""
        pid: int | None = None
        with contextlib.suppress(Unavailable):
            pid = self._client(name).server_pid()
        child = self._children.pop(name, None)
        if pid is None and child is not None and child.poll() is None:
            pid = child.pid
        if pid is not None and not _same_netns(pid):
            raise FailedPrecondition(
                f"wireguard-go pid {pid} serving {name} runs in another network namespace"
            )
        wg_link.delete_link(name)
        if pid is not None:
            self._stop(pid)
        if child is not None:
            child.wait(timeout=STOP_TIMEOUT)
        # A killed wireguard-go leaves its socket; a stale one would block the name.
        socket_path(name, self.socket_dir).unlink(missing_ok=True)

    def _stop(self, pid: int) -> None:
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + STOP_TIMEOUT
            while time.monotonic() < deadline:
                if not _alive(pid):
                    return
                time.sleep(_POLL)
        raise RuntimeFailure(f"wireguard-go pid {pid} survives SIGKILL")


# -- the kernel module -------------------------------------------------------------------


@contextlib.contextmanager
def _genetlink(action: str) -> Iterator[WireGuard]:
    try:
        with WireGuard() as wg:
            yield wg
    except NetlinkError as err:
        raise RuntimeFailure(f"{action}: {err.args[-1]} (netlink error {err.code})") from None
    except ValueError as err:  # pyroute2's own key checks
        raise InvalidArgument(f"{action}: {err}") from None


def kernel_peer_request(change: PeerChange) -> dict[str, Any]:
    """pyroute2's ``peer`` argument for one change (its names, base64 keys)."""
    if isinstance(change, RemovePeer):
        return {"public_key": change.public_key, "remove": True}
    if isinstance(change, AddPeer):
        peer = change.peer
        host, port = peer.endpoint.rsplit(":", 1)
        return {
            "public_key": peer.public_key,
            "endpoint_addr": host.strip("[]"),
            "endpoint_port": int(port),
            "persistent_keepalive": peer.persistent_keepalive,
            "replace_allowed_ips": True,
            "allowed_ips": list(peer.allowed_ips),
        }
    request: dict[str, Any] = {"public_key": change.public_key, "update_only": True}
    if change.endpoint is not None:
        host, port = change.endpoint.rsplit(":", 1)
        request |= {"endpoint_addr": host.strip("[]"), "endpoint_port": int(port)}
    if change.persistent_keepalive is not None:
        request["persistent_keepalive"] = change.persistent_keepalive
    if change.allowed_ips is not None:
        request |= {"replace_allowed_ips": True, "allowed_ips": list(change.allowed_ips)}
    return request


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_kernel_info(messages: Sequence[Any]) -> tuple[str, int, tuple[PeerState, ...]]:
    """(public key, listen port, peers) from WG_CMD_GET_DEVICE replies; the kernel
    splits a long peer list over several messages, repeating no peer header."""
    public_key, listen_port = "", 0
    peers: dict[str, dict[str, Any]] = {}
    for msg in messages:
        public_key = _text(msg.get_attr("WGDEVICE_A_PUBLIC_KEY") or public_key)
        listen_port = int(msg.get_attr("WGDEVICE_A_LISTEN_PORT") or listen_port)
        for peer in msg.get_attr("WGDEVICE_A_PEERS") or ():
            key = _text(peer.get_attr("WGPEER_A_PUBLIC_KEY"))
            entry = peers.setdefault(key, {"allowed": []})
            for name in ("WGPEER_A_ENDPOINT", "WGPEER_A_LAST_HANDSHAKE_TIME"):
                if peer.get_attr(name) is not None:
                    entry[name] = peer.get_attr(name)
            for name in (
                "WGPEER_A_RX_BYTES",
                "WGPEER_A_TX_BYTES",
                "WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL",
            ):
                entry[name] = int(peer.get_attr(name) or entry.get(name, 0))
            entry["allowed"] += [a.get("addr") for a in peer.get_attr("WGPEER_A_ALLOWEDIPS") or ()]
    return public_key, listen_port, tuple(_kernel_peer(k, e) for k, e in peers.items())


def _kernel_peer(key: str, entry: dict[str, Any]) -> PeerState:
    endpoint = entry.get("WGPEER_A_ENDPOINT")
    shown = None
    if endpoint and endpoint.get("port"):
        addr = endpoint["addr"]
        shown = f"[{addr}]:{endpoint['port']}" if ":" in addr else f"{addr}:{endpoint['port']}"
    handshake = entry.get("WGPEER_A_LAST_HANDSHAKE_TIME") or {}
    return PeerState(
        public_key=key,
        endpoint=shown,
        allowed_ips=tuple(sorted(str(a) for a in entry["allowed"] if a)),
        persistent_keepalive=entry["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL"],
        last_handshake=handshake.get("tv_sec", 0) + handshake.get("tv_nsec", 0) / 1e9,
        rx_bytes=entry["WGPEER_A_RX_BYTES"],
        tx_bytes=entry["WGPEER_A_TX_BYTES"],
    )


class KernelDevice:
    """The in-kernel WireGuard, configured over generic netlink with pyroute2."""

    def exists(self, name: str) -> bool:
        return wg_link.link_exists(name)

    def create(self, config: InterfaceConfig) -> None:
        name = config.name
        if wg_link.link_exists(name):
            raise AlreadyExists(f"interface {name} exists already")
        try:
            with IPRoute() as ip:
                ip.link("add", ifname=name, kind="wireguard")
        except NetlinkError as err:
            raise RuntimeFailure(f"creating {name}: {err.args[-1]}") from None
        try:
            with _genetlink(f"configuring {name}") as wg:
                wg.set(name, private_key=config.private_key, listen_port=config.listen_port)
            wg_link.bring_up(name, config.address, config.mtu)
        except BaseException:
            wg_link.delete_link(name)
            raise

    def apply(self, name: str, plan: MeshPlan) -> None:
        with _genetlink(f"configuring {name}") as wg:
            if plan.private_key or plan.listen_port is not None:
                wg.set(name, private_key=plan.private_key, listen_port=plan.listen_port)
            for change in plan.peer_changes:
                wg.set(name, peer=kernel_peer_request(change))
        if plan.mtu is not None:
            wg_link.set_mtu(name, plan.mtu)
        if plan.routes_to_add or plan.routes_to_remove:
            wg_link.change_routes(name, plan.routes_to_add, plan.routes_to_remove)

    def state(self, name: str) -> DeviceState:
        with _genetlink(f"reading {name}") as wg:
            public_key, port, peers = parse_kernel_info(list(wg.info(name)))
        return DeviceState(
            name, public_key, port, wg_link.mtu_of(name), peers, wg_link.routes_via(name)
        )

    def delete(self, name: str) -> None:
        wg_link.delete_link(name)
