"""Snapshots: layer stacks unpacked from images, and containers' root filesystems."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Sequence

from warren.agent.containerd.client import ContainerdClient
from warren.agent.containerd.oci import chain_ids
from warren.agent.containerd.proto import diff_pb2, snapshots_pb2, types_pb2
from warren.core.errors import AlreadyExists, NotFound, RuntimeFailure
from warren.registry.client import Descriptor

SNAPSHOTTER = "overlayfs"


class Snapshots:
    def __init__(self, client: ContainerdClient) -> None:
        self._client = client

    async def exists(self, key: str) -> bool:
        request = snapshots_pb2.StatSnapshotRequest(snapshotter=SNAPSHOTTER, key=key)
        try:
            await self._client.call(self._client.api.snapshots.Stat, request)
        except NotFound:
            return False
        return True

    async def prepare(self, key: str, parent: str, lease: str) -> list[types_pb2.Mount]:
        """A writable snapshot on ``parent``; returns its mounts."""
        request = snapshots_pb2.PrepareSnapshotRequest(
            snapshotter=SNAPSHOTTER, key=key, parent=parent
        )
        response = await self._client.call(self._client.api.snapshots.Prepare, request, lease=lease)
        return list(response.mounts)

    async def mounts(self, key: str) -> list[types_pb2.Mount]:
        request = snapshots_pb2.MountsRequest(snapshotter=SNAPSHOTTER, key=key)
        response = await self._client.call(self._client.api.snapshots.Mounts, request)
        return list(response.mounts)

    async def remove(self, key: str) -> None:
        """Remove the snapshot; an unknown key is not an error."""
        request = snapshots_pb2.RemoveSnapshotRequest(snapshotter=SNAPSHOTTER, key=key)
        with contextlib.suppress(NotFound):
            await self._client.call(self._client.api.snapshots.Remove, request)

    async def unpack(
        self, layers: Sequence[Descriptor], diff_ids: tuple[str, ...], lease: str
    ) -> str:
        """Apply the image's layers as committed snapshots; return the top chain ID.

        Stacks already unpacked (by an earlier pull or another image sharing
        the base layers) are reused: only the layers above them are applied.
        """
        chains = chain_ids(diff_ids)
        if not chains or len(chains) != len(layers):
            raise RuntimeFailure(
                f"image has {len(layers)} layers but {len(diff_ids)} diff IDs in its config"
            )
        start = len(chains)
        while start > 0 and not await self.exists(chains[start - 1]):
            start -= 1
        for index in range(start, len(chains)):
            parent = chains[index - 1] if index else ""
            await self._apply(layers[index], diff_ids[index], chains[index], parent, lease)
        return chains[-1]

    async def _apply(
        self, layer: Descriptor, diff_id: str, chain: str, parent: str, lease: str
    ) -> None:
        key = f"extract-{secrets.token_hex(6)}-{chain}"
        mounts = await self.prepare(key, parent, lease)
        try:
            request = diff_pb2.ApplyRequest(diff=descriptor_pb(layer), mounts=mounts)
            response = await self._client.call(self._client.api.diff.Apply, request, lease=lease)
            if response.applied.digest != diff_id:
                raise RuntimeFailure(
                    f"layer {layer.digest} unpacked to {response.applied.digest}, "
                    f"but the image config says {diff_id}"
                )
            commit = snapshots_pb2.CommitSnapshotRequest(
                snapshotter=SNAPSHOTTER, name=chain, key=key
            )
            await self._client.call(self._client.api.snapshots.Commit, commit, lease=lease)
        except AlreadyExists:
            pass  # unpacked concurrently by someone else: theirs is as good
        finally:
            # After a commit the key is gone already; otherwise drop the scratch.
            await self.remove(key)


def descriptor_pb(descriptor: Descriptor) -> types_pb2.Descriptor:
    return types_pb2.Descriptor(
        media_type=descriptor.media_type, digest=descriptor.digest, size=descriptor.size
    )
