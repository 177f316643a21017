"""A private containerd: its own root, state, sockets and config, cleaned up to the last mount.

containerd's shims outlive the daemon by design (they run in process groups of their
own), and a shim killed mid-flight leaves its container, its rootfs mount and its
socket behind. :meth:`LocalContainerd.stop` therefore does more than stop the daemon:
see :func:`cleanup_instance`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from warren.devtools._proc import DaemonError, log_tail, start_daemon, stop_group, wait_until

REQUIRED_BINS = {
    "containerd": "containerd",
    "ctr": "containerd",
    "containerd-shim-runc-v2": "containerd",
    "runc": "runc",
}
# Plugins that would bind global paths (/opt/containerd, CNI dirs, a streaming port)
# or probe filesystems this instance never uses.
DISABLED_PLUGINS = (
    "io.containerd.grpc.v1.cri",
    "io.containerd.internal.v1.opt",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
)
# containerd 1.6 puts shim sockets here whatever its state dir is (hash-named per instance).
SHIM_SOCKET_DIR = Path("/run/containerd/s")
# runc's default root when a client passes no runtime options (namespace dirs below it).
DEFAULT_RUNC_ROOT = Path("/run/containerd/runc")
# Processes matched by their command line naming this instance (``containerd publish``
# is what a dying shim runs to report its exit).
CONTAINERD_TOOLS = frozenset({"containerd", "ctr", "runc"})
CGROUP_ROOT = Path("/sys/fs/cgroup")
SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes with the trailing NUL


def missing_binaries() -> list[str]:
    """``"binary (package)"`` for each tool this module needs that is not on PATH."""
    return [f"{b} ({pkg})" for b, pkg in REQUIRED_BINS.items() if shutil.which(b) is None]


class LocalContainerd:
    """``containerd --config DIR/config.toml`` with everything under ``DIR``.

    Without ``dir``, a temporary directory (short, for the socket path limit) is
    created and removed entirely by :meth:`stop`; a given ``dir`` keeps only the log.
    """

    def __init__(self, dir: Path | None = None) -> None:
        self._own_dir = dir is None
        self._dir = dir.resolve() if dir is not None else None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def dir(self) -> Path:
        if self._dir is None:
            raise DaemonError("containerd not started")
        return self._dir

    @property
    def socket(self) -> Path:
        return self.dir / "containerd.sock"

    @property
    def ttrpc_socket(self) -> Path:
        return self.dir / "containerd.sock.ttrpc"

    @property
    def root(self) -> Path:
        return self.dir / "root"

    @property
    def state(self) -> Path:
        return self.dir / "state"

    @property
    def config(self) -> Path:
        return self.dir / "config.toml"

    @property
    def log(self) -> Path:
        return self.dir / "containerd.log"

    @property
    def pid(self) -> int:
        """The daemon's pid (tests kill it to simulate a crash)."""
        if self._proc is None:
            raise DaemonError("containerd not started")
        return self._proc.pid

    @property
    def runc_root(self) -> Path:
        """A runc root private to this instance, for clients' runc options (``Root``)."""
        return self.state / "runc"

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> LocalContainerd:
        if self._proc is not None:
            return self
        missing = missing_binaries()
        if missing:
            raise DaemonError("containerd needs: " + ", ".join(missing))
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="wrn-ctd-")).resolve()
        if len(str(self.ttrpc_socket)) > SUN_PATH_MAX:
            raise DaemonError(f"socket path too long for a unix socket: {self.ttrpc_socket}")
        try:
            self._launch()
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self) -> None:
        for path in (self.root, self.state, self.dir / "tmp"):
            path.mkdir(parents=True, exist_ok=True)
        self.config.write_text(self._config_toml())
        self._proc = start_daemon(["containerd", "--config", str(self.config)], self.log)
        wait_until(self._accepts, self._proc, self.log, "containerd")
        version = self.ctr("version")
        if version.returncode != 0:
            raise DaemonError(f"ctr version failed: {version.stderr.strip()}")

    def _config_toml(self) -> str:
        disabled = ", ".join(f'"{name}"' for name in DISABLED_PLUGINS)
        return "\n".join(
            [
                "version = 2",
                f'root = "{self.root}"',
                f'state = "{self.state}"',
                f'temp = "{self.dir / "tmp"}"',
                f"disabled_plugins = [{disabled}]",
                "[grpc]",
                f'  address = "{self.socket}"',
                "[ttrpc]",
                f'  address = "{self.ttrpc_socket}"',
                "[debug]",
                '  address = ""',
                '  level = "warn"',
                "[metrics]",
                '  address = ""',
                "",
            ]
        )

    def _accepts(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            try:
                sock.connect(str(self.socket))
            except OSError:
                return False
            return True

    def ctr(self, *args: str, namespace: str = "default") -> subprocess.CompletedProcess[str]:
        """Run ``ctr`` against this instance (output captured, never raises on failure)."""
        argv = ["ctr", "--address", str(self.socket), "--namespace", namespace, *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log, lines)

    def stop(self) -> None:
        """Stop the daemon, then remove every shim, container, mount and dir it left."""
        if self._proc is not None:
            stop_group(self._proc)
            self._proc = None
        if self._dir is None:
            return
        try:
            cleanup_instance(self.root, self.state, self.socket, self.config)
        finally:
            self._remove_files()

    def _remove_files(self) -> None:
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self._dir = None
            return
        for path in (self.root, self.state, self.dir / "tmp"):
            shutil.rmtree(path, ignore_errors=True)
        for path in (self.socket, self.ttrpc_socket, self.config):
            path.unlink(missing_ok=True)

    def __enter__(self) -> LocalContainerd:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def cleanup_instance(root: Path, state: Path, socket: Path, config: Path) -> None:
    """Remove what a stopped containerd's shims and containers left behind.

    Order matters: runc kills each container through its cgroup while its state
    is still there; then shims and any stray process go; then mounts can be
    detached; shim sockets are found through the bundles' ``address`` files,
    which are read before anything is deleted.
    """
    shim_sockets = list(_shim_sockets(state))
    _delete_runc_containers(state)
    markers = [str(root), str(state), str(socket), str(config)]
    for _ in range(3):  # a dying shim may still fork a `containerd publish`
        tools, containers = _stray_processes(markers)
        # Containers found here had no runc state left to delete them by: their
        # cgroups are read before the kill and removed after it.
        cgroups = [cgroup for pid in containers for cgroup in _cgroups_of(pid)]
        if not _kill(tools + containers):
            break
        _remove_cgroups(cgroups)
    _unmount_under([root, state])
    for path in shim_sockets:
        path.unlink(missing_ok=True)
    tools, containers = _stray_processes(markers)
    leftovers = [*map(str, tools + containers), *_mounts_under([root, state])]
    if leftovers:
        raise DaemonError(f"containerd cleanup left processes/mounts behind: {leftovers}")


def _shim_sockets(state: Path) -> Iterator[Path]:
    for address in state.glob("io.containerd.runtime.v2.task/*/*/address"):
        path = Path(address.read_text().strip().removeprefix("unix://"))
        if path.parent == SHIM_SOCKET_DIR:  # never delete anything else on a file's say-so
            yield path


def _delete_runc_containers(state: Path) -> None:
    """``runc delete --force`` every container whose bundle lives in ``state``."""
    for root in (state / "runc", DEFAULT_RUNC_ROOT):
        for state_json in root.glob("*/*/state.json"):
            info = _read_json(state_json)
            if not _bundle_of(info).is_relative_to(state):
                continue
            namespace_root, container_id = state_json.parent.parent, state_json.parent.name
            subprocess.run(
                ["runc", "--root", str(namespace_root), "delete", "--force", container_id],
                capture_output=True,
                timeout=30,
                check=False,
            )
            _remove_cgroups(map(Path, (info.get("cgroup_paths") or {}).values()))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _bundle_of(info: dict[str, Any]) -> Path:
    config = info.get("config") or {}
    for label in config.get("labels") or []:
        if label.startswith("bundle="):
            return Path(label.removeprefix("bundle="))
    return Path(config.get("rootfs") or "/nonexistent")


def _remove_cgroups(paths: Iterable[Path]) -> None:
    """Remove the container's cgroups and their parent if now empty (e.g. /<namespace>).

    rmdir only succeeds on a cgroup without children or processes, so a parent
    another container still uses is left alone.
    """
    for path in set(paths):
        if not path.is_relative_to(CGROUP_ROOT):
            continue
        for cgroup in (path, path.parent):
            if cgroup.parent != CGROUP_ROOT:  # never a controller's own mount
                with contextlib.suppress(OSError):
                    cgroup.rmdir()


def _stray_processes(markers: list[str]) -> tuple[list[int], list[int]]:
    """Live processes of this instance, as (tools, containers).

    Tools: containerd tools naming its paths, or anything working in its dirs.
    Containers: processes whose root filesystem is one of its snapshots.
    """
    spared = _self_and_ancestors()
    own_mnt_ns = _mnt_ns(os.getpid())
    rooted_in_instance: dict[str, bool] = {}  # per mount namespace
    tools, containers = [], []
    for pid in _pids():
        if pid in spared or _is_zombie(pid):
            continue
        if _names_instance(pid, markers):
            tools.append(pid)
            continue
        mnt_ns = _mnt_ns(pid)
        if mnt_ns is None or mnt_ns == own_mnt_ns:
            continue
        if mnt_ns not in rooted_in_instance:
            rooted_in_instance[mnt_ns] = _root_mount_mentions(pid, markers)
        if rooted_in_instance[mnt_ns]:
            containers.append(pid)
    return tools, containers


def _pids() -> Iterator[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def _self_and_ancestors() -> set[int]:
    spared, pid = set(), os.getpid()
    while pid > 1 and pid not in spared:
        spared.add(pid)
        pid = _ppid(pid)
    return spared


def _ppid(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])  # the comm field may hold spaces


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # gone
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _names_instance(pid: int, markers: list[str]) -> bool:
    """A shim, runc, ctr or containerd naming this instance, or any process working in it.

    Other programs that merely name the socket (an agent under test) are not ours to kill.
    """
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    # A shim's cwd is its bundle under the state dir; its -address names the socket.
    if _under(cwd, markers):
        return True
    tool = os.path.basename(args[0])
    is_tool = tool in CONTAINERD_TOOLS or tool.startswith("containerd-shim")
    return is_tool and any(m in arg for m in markers for arg in args[1:])


def _mnt_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _root_mount_mentions(pid: int, markers: list[str]) -> bool:
    """True if the mount at "/" (the container's rootfs) comes from this instance.

    Only "/" counts: a namespace made by e.g. ``ip netns exec`` holds copies of the
    host's mounts, this instance's rootfs mounts included, without being a container.
    """
    try:
        lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    except OSError:
        return False
    return any(line.split()[4] == "/" and any(m in line for m in markers) for line in lines)


def _cgroups_of(pid: int) -> list[Path]:
    """The cgroup dirs ``pid`` is in, from /proc/PID/cgroup and this namespace's mounts."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return []
    hierarchies = _cgroup_mounts()
    found = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        wanted = set(controllers.split(",")) - {""}
        for options, mount_point in hierarchies:
            # v1: the mount's options name its controllers; v2 (no controllers): empty set.
            if path != "/" and (wanted <= options if wanted else not options):
                found.append(mount_point / path.lstrip("/"))
                break
    return found


def _cgroup_mounts() -> list[tuple[set[str], Path]]:
    """(super options, mount point) per cgroup hierarchy; cgroup2 gets an empty set."""
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields, rest = line.split(" - ", 1)
            fstype, _source, options = rest.split()[:3]
            if fstype in ("cgroup", "cgroup2"):
                opts = set(options.split(",")) if fstype == "cgroup" else set()
                mounts.append((opts, Path(_unescape(fields.split()[4]))))
    return mounts


def _kill(pids: list[int], timeout: float = 5.0) -> bool:
    """SIGKILL ``pids`` and wait until they are gone (or zombies); False if there were none."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(not _is_zombie(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(pids)


def _mounts_under(dirs: Iterable[Path]) -> list[str]:
    markers = [str(d) for d in dirs]
    with open("/proc/self/mountinfo") as f:
        points = [_unescape(line.split()[4]) for line in f]
    return [p for p in points if _under(p, markers)]


def _unmount_under(dirs: list[Path]) -> None:
    """Lazily unmount everything below ``dirs``, deepest first, until nothing is left."""
    for _ in range(5):  # an unmount can uncover a mount stacked below it
        points = _mounts_under(dirs)
        if not points:
            return
        for point in sorted(set(points), key=lambda p: p.count("/"), reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _under(path: str, markers: list[str]) -> bool:
    return any(path == m or path.startswith(m + "/") for m in markers)
