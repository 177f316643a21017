"""Images in containerd: pull from a registry or import an archive, then unpack.

containerd's API has no "pull": like its Go client, this writes the layers,
config and manifest into the content store, records the image, labels the
blobs so the garbage collector sees what refers to what, and unpacks the
layers into snapshots. Work already done (blobs present, snapshots unpacked)
is skipped, and an image already in the store is used without a registry.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from warren.agent.containerd.archive import OciArchive
from warren.agent.containerd.client import ContainerdClient
from warren.agent.containerd.content import ContentStore, single
from warren.agent.containerd.leases import temporary_lease
from warren.agent.containerd.oci import ImageConfig, chain_ids, parse_manifest
from warren.agent.containerd.proto import images_pb2
from warren.agent.containerd.snapshots import SNAPSHOTTER, Snapshots, descriptor_pb
from warren.core.errors import AlreadyExists, NotFound, RuntimeFailure
from warren.registry.client import Descriptor, ImageManifest, RegistryClient, RegistryConfig
from warren.registry.reference import Reference, parse_reference

# Labels that tell containerd's garbage collector what a blob refers to.
GC_CONFIG = "containerd.io/gc.ref.content.config"
GC_LAYER = "containerd.io/gc.ref.content.l.{}"
GC_SNAPSHOT = f"containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"

Fetch = Callable[[Descriptor], AsyncIterator[bytes]]


@dataclass(frozen=True)
class LocalImage:
    """An image ready to run: recorded, in the content store and unpacked."""

    name: str  # full reference, e.g. "docker.io/library/busybox:latest"
    digest: str  # of the manifest
    config: ImageConfig
    chain_id: str  # the snapshot holding the unpacked layers


class ImageStore:
    def __init__(self, client: ContainerdClient, registry: RegistryConfig) -> None:
        self._client = client
        self._content = ContentStore(client)
        self._snapshots = Snapshots(client)
        self._registry_config = registry
        self._registry: RegistryClient | None = None
        # One pull per image at a time: concurrent tasks of a service share it.
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, image: str) -> LocalImage:
        """The image, from the store if it is there, else pulled from its registry."""
        ref = parse_reference(image)
        lock = self._locks.setdefault(str(ref), asyncio.Lock())
        async with lock:
            local = await self._local(ref)
            return local if local is not None else await self._pull(ref)

    async def import_archive(self, path: Path) -> list[str]:
        """Import every named image of an OCI layout tar; return their names."""
        archive = await asyncio.to_thread(OciArchive.open, path)
        try:
            names = []
            for name, manifest in archive.images():
                ref = parse_reference(name)
                await self._store(str(ref), manifest, archive.blob)
                names.append(str(ref))
            return names
        finally:
            archive.close()

    async def close(self) -> None:
        if self._registry is not None:
            await self._registry.close()
            self._registry = None

    # -- the local store ------------------------------------------------------

    async def _local(self, ref: Reference) -> LocalImage | None:
        record = await self._record(ref)
        if record is None:
            return None
        target = record.target
        try:
            raw = await self._content.read(target.digest)
            manifest = parse_manifest(target.digest, target.media_type, raw)
            config = ImageConfig.parse(await self._content.read(manifest.config.digest))
            chain = chain_ids(config.diff_ids)[-1] if config.diff_ids else ""
            if not await self._snapshots.exists(chain):
                async with temporary_lease(self._client, "unpack") as lease:
                    chain = await self._snapshots.unpack(manifest.layers, config.diff_ids, lease)
        except NotFound:
            return None  # blobs garbage-collected: pull again
        return LocalImage(record.name, target.digest, config, chain)

    async def _record(self, ref: Reference) -> images_pb2.Image | None:
        """The image record named ``ref``, or one whose target is ``ref``'s digest."""
        try:
            by_name = images_pb2.GetImageRequest(name=str(ref))
            return (await self._client.call(self._client.api.images.Get, by_name)).image
        except NotFound:
            if ref.digest is None:
                return None
        by_digest = images_pb2.ListImagesRequest(filters=[f"target.digest=={ref.digest}"])
        images = (await self._client.call(self._client.api.images.List, by_digest)).images
        return images[0] if images else None

    # -- pulling and storing --------------------------------------------------

    async def _pull(self, ref: Reference) -> LocalImage:
        if self._registry is None:
            self._registry = RegistryClient(self._registry_config)
        registry = self._registry
        manifest = await registry.manifest(ref)

        def fetch(descriptor: Descriptor) -> AsyncIterator[bytes]:
            return registry.blob(ref, descriptor.digest)

        return await self._store(str(ref), manifest, fetch)

    async def _store(self, name: str, manifest: ImageManifest, fetch: Fetch) -> LocalImage:
        async with temporary_lease(self._client, "pull") as lease:
            config_raw = b"".join([chunk async for chunk in fetch(manifest.config)])
            config = ImageConfig.parse(config_raw)
            chains = chain_ids(config.diff_ids)
            if not chains:
                raise RuntimeFailure(f"image {name} has no layers")
            for layer in manifest.layers:
                await self._content.ensure(layer.digest, layer.size, fetch(layer), {}, lease)
            await self._content.ensure(
                manifest.config.digest,
                manifest.config.size,
                single(config_raw),
                {GC_SNAPSHOT: chains[-1]},
                lease,
            )
            await self._content.ensure(
                manifest.digest, len(manifest.raw), single(manifest.raw), _gc_refs(manifest), lease
            )
            await self._save_record(name, manifest)
            chain = await self._snapshots.unpack(manifest.layers, config.diff_ids, lease)
        return LocalImage(name, manifest.digest, config, chain)

    async def _save_record(self, name: str, manifest: ImageManifest) -> None:
        target = descriptor_pb(Descriptor(manifest.media_type, manifest.digest, len(manifest.raw)))
        image = images_pb2.Image(name=name, target=target)
        try:
            request = images_pb2.CreateImageRequest(image=image)
            await self._client.call(self._client.api.images.Create, request)
        except AlreadyExists:
            # The name pointed elsewhere (an import over an older image): move it.
            update = images_pb2.UpdateImageRequest(image=image)
            await self._client.call(self._client.api.images.Update, update)


def _gc_refs(manifest: ImageManifest) -> dict[str, str]:
    labels = {GC_CONFIG: manifest.config.digest}
    for index, layer in enumerate(manifest.layers):
        labels[GC_LAYER.format(index)] = layer.digest
    return labels
