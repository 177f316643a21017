"""The OCI runtime spec (config.json for runc) of a container, Docker's defaults."""

from __future__ import annotations

import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warren.agent.containerd.oci import ImageConfig
from warren.agent.containerd.users import User
from warren.agent.runtime import ContainerConfig
from warren.core.errors import InvalidArgument, RuntimeFailure

SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
PROCESS_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TINI = Path("/usr/bin/tini-static")
INIT_PATH = "/sbin/warren-init"
CPU_PERIOD = 100_000  # microseconds; the quota is cpus * period
NOFILE_MAX = 1 << 20
CGROUP_V2_MARKER = Path("/sys/fs/cgroup/cgroup.controllers")
CGROUP_V1_MEMSW = Path("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes")

# Docker's default capability set.
CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
    "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)  # fmt: skip
# Kernel interfaces that leak host information or allow host changes (Docker's lists).
MASKED_PATHS = (
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware",
)  # fmt: skip
DEVPTS_OPTIONS = ("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5")
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


@dataclass(frozen=True)
class HostFiles:
    """Files Warren writes per container and binds over the image's."""

    hosts: Path
    resolv_conf: Path
    hostname: Path


def command(config: ContainerConfig, image: ImageConfig) -> list[str]:
    """Docker's rule: an overridden entrypoint drops the image's CMD too."""
    if config.entrypoint:
        args = [*config.entrypoint, *config.args]
    else:
        args = [*image.entrypoint, *(config.args or image.cmd)]
    if not args:
        raise InvalidArgument(f"container {config.container_id} has no command to run")
    return args


def environment(config: ContainerConfig, image: ImageConfig, user: User, host: str) -> list[str]:
    merged: dict[str, str] = {}
    for item in (DEFAULT_PATH, f"HOSTNAME={host}", f"HOME={user.home}", *image.env):
        key, _, value = item.partition("=")
        merged[key] = value
    merged.update(config.env)
    return [f"{key}={value}" for key, value in merged.items()]


def build_spec(
    config: ContainerConfig,
    image: ImageConfig,
    user: User,
    hostname: str,
    netns: str | None,
    files: HostFiles,
) -> dict[str, Any]:
    args = command(config, image)
    # Raising a hard limit can be refused even to root (in some VMs and user
    # namespaces): give containers the agent's own, as Docker gives dockerd's.
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], NOFILE_MAX)
    mounts = _default_mounts() + _file_mounts(files)
    if config.init:
        mounts.append(_init_mount())
        args = [INIT_PATH, "--", *args]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": _user(user),
            "args": args,
            "env": environment(config, image, user, hostname),
            "cwd": config.workdir or image.workdir or "/",
            "capabilities": {
                key: list(CAPABILITIES) for key in ("bounding", "effective", "permitted")
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
            "noNewPrivileges": False,
        },
        "root": {"path": "rootfs", "readonly": config.read_only},
        "hostname": hostname,
        "mounts": mounts,
        "linux": {
            "resources": _resources(config),
            "cgroupsPath": f"/warren/{config.container_id}",
            "namespaces": _namespaces(netns, config.host_network),
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


def exec_process(spec: dict[str, Any], args: list[str]) -> dict[str, Any]:
    """The container's process settings (user, env, cwd...) running ``args``."""
    process = dict(spec["process"])
    process["args"] = list(args)
    process["terminal"] = False
    return process


def _user(user: User) -> dict[str, Any]:
    result: dict[str, Any] = {"uid": user.uid, "gid": user.gid}
    if user.additional_gids:
        result["additionalGids"] = list(user.additional_gids)
    return result


def _resources(config: ContainerConfig) -> dict[str, Any]:
    # Deny every device node but the defaults runc itself allows.
    resources: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    if config.memory_limit_bytes > 0:
        limit = config.memory_limit_bytes
        resources["memory"] = {"limit": limit}
        if _swap_accounting():
            # swap == limit: no swap on top, so the limit really bounds the process.
            resources["memory"]["swap"] = limit
    if config.cpu_limit > 0:
        resources["cpu"] = {"quota": round(config.cpu_limit * CPU_PERIOD), "period": CPU_PERIOD}
    return resources


def _swap_accounting() -> bool:
    """Whether runc can limit swap: cgroup v2, or v1 with memsw (runc fails without)."""
    return CGROUP_V2_MARKER.exists() or CGROUP_V1_MEMSW.exists()


def _namespaces(netns: str | None, host_network: bool) -> list[dict[str, str]]:
    namespaces = [{"type": kind} for kind in ("pid", "ipc", "uts", "mount")]
    if not host_network:
        network: dict[str, str] = {"type": "network"}
        if netns:
            network["path"] = netns
        namespaces.append(network)
    return namespaces


def _mount(destination: str, kind: str, source: str, *options: str) -> dict[str, Any]:
    return {"destination": destination, "type": kind, "source": source, "options": list(options)}


def _default_mounts() -> list[dict[str, Any]]:
    return [
        _mount("/proc", "proc", "proc", "nosuid", "noexec", "nodev"),
        _mount("/dev", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"),
        _mount("/dev/pts", "devpts", "devpts", *DEVPTS_OPTIONS),
        _mount("/dev/shm", "tmpfs", "shm", "nosuid", "noexec", "nodev", "mode=1777", "size=65536k"),
        _mount("/dev/mqueue", "mqueue", "mqueue", "nosuid", "noexec", "nodev"),
        _mount("/sys", "sysfs", "sysfs", "nosuid", "noexec", "nodev", "ro"),
        _mount("/sys/fs/cgroup", "cgroup", "cgroup", "nosuid", "noexec", "nodev", "relatime", "ro"),
    ]


def _file_mounts(files: HostFiles) -> list[dict[str, Any]]:
    return [
        _mount(target, "bind", str(source), "rbind", "rprivate")
        for target, source in (
            ("/etc/hosts", files.hosts),
            ("/etc/resolv.conf", files.resolv_conf),
            ("/etc/hostname", files.hostname),
        )
    ]


def _init_mount() -> dict[str, Any]:
    if not TINI.is_file():
        raise RuntimeFailure(
            f"init=True needs {TINI} (Debian package 'tini'), which is not installed"
        )
    return _mount(INIT_PATH, "bind", str(TINI), "rbind", "rprivate", "ro")
