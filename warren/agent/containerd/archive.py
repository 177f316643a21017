"""Reading an OCI image layout tar (``skopeo copy ... oci-archive:FILE.tar``)."""

from __future__ import annotations

import asyncio
import json
import tarfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO, Any

from warren.agent.containerd.oci import INDEX_TYPES, parse_manifest, select_manifest
from warren.core.errors import InvalidArgument, RuntimeFailure
from warren.registry.client import Descriptor, ImageManifest

# containerd's own export names images with the first; the OCI spec's is the second.
NAME_ANNOTATIONS = ("io.containerd.image.name", "org.opencontainers.image.ref.name")
_CHUNK = 1 << 20
_MAX_INDEX_DEPTH = 4


class OciArchive:
    def __init__(self, tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo]) -> None:
        self._tar = tar
        self._members = members

    @classmethod
    def open(cls, path: Path) -> OciArchive:
        try:
            tar = tarfile.open(path, "r:*")  # noqa: SIM115 (kept open by the instance)
        except (OSError, tarfile.TarError) as exc:
            raise InvalidArgument(f"cannot read image archive {path}: {exc}") from None
        members = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}
        if "index.json" not in members:
            tar.close()
            raise InvalidArgument(f"{path} is not an OCI image archive (no index.json)")
        return cls(tar, members)

    def images(self) -> Iterator[tuple[str, ImageManifest]]:
        """(name, platform manifest) for each named entry of index.json."""
        for entry in self._index("index.json").get("manifests") or []:
            annotations = entry.get("annotations") or {}
            name = next((annotations[k] for k in NAME_ANNOTATIONS if k in annotations), None)
            if name is None:
                raise InvalidArgument(f"image {entry.get('digest')} in the archive has no name")
            yield name, self._platform_manifest(entry)

    async def blob(self, descriptor: Descriptor) -> AsyncIterator[bytes]:
        """The blob's bytes in chunks, read off the event loop."""
        file = self._open_blob(descriptor.digest)
        try:
            while chunk := await asyncio.to_thread(file.read, _CHUNK):
                yield chunk
        finally:
            file.close()

    def close(self) -> None:
        self._tar.close()

    def _platform_manifest(self, entry: dict[str, Any]) -> ImageManifest:
        for _ in range(_MAX_INDEX_DEPTH):
            digest = str(entry["digest"])
            raw = self._read(digest)
            if entry.get("mediaType") not in INDEX_TYPES:
                return parse_manifest(digest, str(entry.get("mediaType") or ""), raw)
            entry = select_manifest(raw, f"image index {digest}")
        raise RuntimeFailure("image index in the archive is nested too deeply")

    def _index(self, name: str) -> dict[str, Any]:
        file = self._tar.extractfile(self._members[name])
        assert file is not None  # a regular file
        document = json.loads(file.read())
        if not isinstance(document, dict):
            raise InvalidArgument(f"{name} in the archive is not a JSON object")
        return document

    def _read(self, digest: str) -> bytes:
        with self._open_blob(digest) as file:
            return file.read()

    def _open_blob(self, digest: str) -> IO[bytes]:
        algorithm, _, hexdigest = digest.partition(":")
        member = self._members.get(f"blobs/{algorithm}/{hexdigest}")
        if member is None:
            raise RuntimeFailure(f"blob {digest} is missing from the archive")
        file = self._tar.extractfile(member)
        assert file is not None  # a regular file
        return file
