"""/etc/hosts, /etc/resolv.conf and /etc/hostname for a container.

Written into the container's state directory and bind-mounted over the
image's, as Docker does: the image cannot know its container's name or DNS.
They are the one exception to Warren's 0600 files: a container may run as any
user and must read them (0644). They hold nothing secret, and their 0700
directory keeps other users of the host out.
"""

from __future__ import annotations

import socket
from ipaddress import IPv4Address
from pathlib import Path

from warren.agent.containerd.spec import HostFiles
from warren.agent.network.resolv import hosts_content, resolv_conf_content
from warren.agent.runtime import ContainerNames

HOST_RESOLV_CONF = Path("/etc/resolv.conf")
HOST_HOSTS = Path("/etc/hosts")
# Docker's fallback when the host only lists resolvers on its own loopback,
# which a container in its own network namespace cannot reach.
FALLBACK_NAMESERVERS = ("8.8.8.8", "8.8.4.4")
HOST_FILE_NAMES = frozenset({"hosts", "resolv.conf", "hostname"})
HOST_FILE_MODE = 0o644


def is_host_file(path: Path) -> bool:
    """Whether ``path`` is one of these files in a container's state directory
    (``containers/<id>/``), which must stay readable to the container."""
    return path.name in HOST_FILE_NAMES and path.parent.parent.name == "containers"


def container_hostname(container_id: str, host_network: bool) -> str:
    return socket.gethostname() if host_network else container_id[:12]


def write_host_files(
    directory: Path, hostname: str, host_network: bool, names: ContainerNames | None = None
) -> HostFiles:
    """The three files; ``names`` (a container on Warren's networks) points
    resolv.conf at Warren's DNS and maps the hostname to the container's address."""
    directory.mkdir(parents=True, exist_ok=True)
    files = HostFiles(directory / "hosts", directory / "resolv.conf", directory / "hostname")
    files.hostname.write_text(hostname + "\n")
    if names is not None:
        files.hosts.write_text(hosts_content(hostname, IPv4Address(names.address)))
        files.resolv_conf.write_text(resolv_conf_content(IPv4Address(names.nameserver)))
    elif host_network:
        files.hosts.write_text(_read(HOST_HOSTS))
        files.resolv_conf.write_text(_read(HOST_RESOLV_CONF))
    else:
        files.hosts.write_text(
            "127.0.0.1\tlocalhost\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n"
            f"127.0.1.1\t{hostname}\n"
        )
        files.resolv_conf.write_text(_without_loopback(_read(HOST_RESOLV_CONF)))
    for path in (files.hosts, files.resolv_conf, files.hostname):
        # The daemon's umask made them 0600: a non-root container could not read them.
        path.chmod(HOST_FILE_MODE)
    return files


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _without_loopback(resolv_conf: str) -> str:
    kept = []
    for line in resolv_conf.splitlines():
        fields = line.split()
        if fields[:1] == ["nameserver"] and len(fields) > 1 and _loopback(fields[1]):
            continue
        kept.append(line)
    if not any(line.split()[:1] == ["nameserver"] for line in kept):
        kept.extend(f"nameserver {server}" for server in FALLBACK_NAMESERVERS)
    return "\n".join(kept) + "\n"


def _loopback(address: str) -> bool:
    return address.startswith("127.") or address == "::1"
