"""Pinning image tags to digests at service create/update, so every replica
runs the same image even if the tag moves later."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from warren.core.errors import WarrenError
from warren.registry.client import RegistryClient, RegistryConfig
from warren.registry.reference import parse_reference

log = logging.getLogger(__name__)


class ImageResolver(Protocol):
    async def pin(self, image: str) -> str:
        """``image`` with the digest its tag points to now, or unchanged if unknown."""
        ...


class RegistryImageResolver:
    def __init__(self, config: RegistryConfig, timeout: float = 5.0) -> None:
        self.config = config
        self.timeout = timeout

    async def pin(self, image: str) -> str:
        reference = parse_reference(image)
        if reference.digest:
            return image
        client = RegistryClient(self.config)
        try:
            async with asyncio.timeout(self.timeout):
                digest = await client.resolve(reference)
        except (WarrenError, TimeoutError) as exc:
            # Like Swarm: go on unpinned; a node that cannot pull it says why.
            log.warning("image %s not pinned to a digest: %s", image, exc or "timed out")
            return image
        finally:
            await client.close()
        return str(reference.with_digest(digest))
