"""A task's ``/etc/hosts`` and ``/etc/resolv.conf``.

The builders are pure; ``write_name_files`` puts both into a directory the
caller owns (the runtime bind-mounts them into the container). The name server
is the task's first network's gateway, where Warren's DNS listens. No
``search`` line and ``ndots:0``: every name goes to the server once, as
written, instead of once per search domain.
"""

from __future__ import annotations

import os
import re
import tempfile
from ipaddress import IPv4Address
from pathlib import Path

from warren.agent.network.bridge import TaskAttachment
from warren.core.errors import InvalidArgument

HOSTS_FILE = "hosts"
RESOLV_FILE = "resolv.conf"
_LABEL_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_MAX_HOSTNAME = 253


def check_hostname(hostname: str) -> str:
    """``hostname`` if it is a valid DNS name (RFC 1123 labels), else a one-line error."""
    labels = hostname.split(".") if isinstance(hostname, str) else []
    if not labels or len(hostname) > _MAX_HOSTNAME or not all(map(_LABEL_RE.match, labels)):
        raise InvalidArgument(
            f"hostname {hostname!r} is not a valid DNS name "
            "(dot-separated labels of letters, digits and inner '-', at most 63 each)"
        )
    return hostname


def hosts_content(hostname: str, address: IPv4Address) -> str:
    """``/etc/hosts``: the loopback names, and ``hostname`` on the task's first address."""
    check_hostname(hostname)
    return (
        f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{address}\t{hostname}\n"
    )


def resolv_conf_content(nameserver: IPv4Address) -> str:
    """``/etc/resolv.conf`` asking only ``nameserver`` (Warren's DNS)."""
    return f"nameserver {nameserver}\noptions ndots:0\n"


def name_files_for(task: TaskAttachment, hostname: str) -> dict[str, str]:
    """File name to content for a task: its first network gives both addresses."""
    first = task.networks[0]
    return {
        HOSTS_FILE: hosts_content(hostname, first.address.ip),
        RESOLV_FILE: resolv_conf_content(first.gateway.ip),
    }


def write_name_files(directory: Path, files: dict[str, str]) -> dict[str, Path]:
    """Write each file into ``directory`` (which must exist), atomically, mode 0644.

    Returns file name to path. A reader sees the old content or the new, never
    half of it. Write before the bind mount: a mount keeps the file it was made
    with, and the content does not change during a task's life anyway."""
    unknown = sorted(set(files) - {HOSTS_FILE, RESOLV_FILE})
    if unknown:
        raise InvalidArgument(f"not a name file: {', '.join(unknown)}")
    if not directory.is_dir():
        raise InvalidArgument(f"{directory} is not a directory")
    written = {}
    for name, content in files.items():
        target = directory / name
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "w") as out:
                out.write(content)
            os.chmod(temporary, 0o644)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        written[name] = target
    return written
