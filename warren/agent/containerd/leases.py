"""Leases: they keep content and snapshots alive until something references them.

containerd's garbage collector removes any blob or snapshot that nothing
references; a resource created under a lease (``containerd-lease`` header)
is safe until the lease goes.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncIterator

from warren.agent.containerd.client import ContainerdClient
from warren.agent.containerd.proto import leases_pb2
from warren.core.errors import AlreadyExists, NotFound

# A lease left behind by a crash expires by itself after this long.
_EXPIRE_AFTER = 3600.0


async def create_lease(client: ContainerdClient, lease_id: str, expires: bool) -> None:
    """Create the lease; an existing one with that ID is reused."""
    labels = {}
    if expires:
        deadline = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + _EXPIRE_AFTER))
        labels["containerd.io/gc.expire"] = deadline
    request = leases_pb2.CreateRequest(id=lease_id, labels=labels)
    with contextlib.suppress(AlreadyExists):
        await client.call(client.api.leases.Create, request)


async def delete_lease(client: ContainerdClient, lease_id: str) -> None:
    """Delete the lease; an unknown ID is not an error."""
    with contextlib.suppress(NotFound):
        await client.call(client.api.leases.Delete, leases_pb2.DeleteRequest(id=lease_id))


@contextlib.asynccontextmanager
async def temporary_lease(client: ContainerdClient, purpose: str) -> AsyncIterator[str]:
    """A self-expiring lease for the duration of one operation (a pull, an unpack)."""
    lease_id = f"warren-{purpose}-{secrets.token_hex(6)}"
    await create_lease(client, lease_id, expires=True)
    try:
        yield lease_id
    finally:
        await delete_lease(client, lease_id)
