"""Named network namespaces (``ip netns``), one per container without host networking.

The agent's networking code plugs interfaces into the namespace; the runtime
only creates it (with loopback up), hands its path to runc, and deletes it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from warren.core.errors import RuntimeFailure

NETNS_DIR = Path("/run/netns")


def netns_name(container_id: str) -> str:
    # A namespace name is a file name (interfaces have the 15-byte limit, not
    # namespaces), so the full ID fits and never collides.
    return f"warren-{container_id}"


def netns_path(container_id: str) -> Path:
    return NETNS_DIR / netns_name(container_id)


async def create_netns(container_id: str) -> Path:
    """Create the namespace (reusing one left over) with loopback up."""
    name = netns_name(container_id)
    if not netns_path(container_id).exists():
        await _ip("netns", "add", name)
    await _ip("-n", name, "link", "set", "lo", "up")
    return netns_path(container_id)


async def delete_netns(container_id: str) -> None:
    if netns_path(container_id).exists():
        await _ip("netns", "delete", netns_name(container_id))


async def _ip(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "ip", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await process.communicate()
    if process.returncode != 0:
        message = stderr.decode(errors="replace").strip()
        raise RuntimeFailure(f"ip {' '.join(args)} failed: {message}")
