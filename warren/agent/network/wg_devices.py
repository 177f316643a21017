"""Picking the WireGuard device at run time, and the ``wireguard-go`` one.

The kernel module (``wg_kernel``) where the ``wireguard`` link kind works, else
Debian's ``wireguard-go``: one process per interface, configured over its UAPI
socket. Both act in the caller's network namespace; ``missing_requirements``
says what a node lacks for either."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from warren.agent.network import wg_link
from warren.agent.network.wg_kernel import KernelDevice, kernel_wireguard_works
from warren.agent.network.wg_uapi import SOCKET_DIR, UapiClient, encode_set, socket_path
from warren.agent.network.wireguard import (
    DeviceState,
    InterfaceConfig,
    MeshPlan,
    WireGuardDevice,
)
from warren.core.errors import (
    AlreadyExists,
    FailedPrecondition,
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
        wg_link.delete_link(name)
        if pid is not None and not _same_netns(pid):
            return  # the name is another namespace's: its wireguard-go and socket stay
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
