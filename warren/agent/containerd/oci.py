"""The parts of the OCI image format Warren reads: manifests, configs, chain IDs."""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from typing import Any

from warren.core.errors import RuntimeFailure
from warren.registry.client import Descriptor, ImageManifest

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
# Go's architecture names, as image indexes spell them.
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}
HOST_ARCH = _GOARCH.get(platform.machine(), platform.machine())


@dataclass(frozen=True)
class ImageConfig:
    """What a container inherits from its image (the config's ``config`` object)."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""
    diff_ids: tuple[str, ...] = ()

    @classmethod
    def parse(cls, raw: bytes) -> ImageConfig:
        document = _json_object(raw, "image config")
        config = document.get("config") or {}
        rootfs = document.get("rootfs") or {}
        return cls(
            entrypoint=tuple(config.get("Entrypoint") or ()),
            cmd=tuple(config.get("Cmd") or ()),
            env=tuple(config.get("Env") or ()),
            workdir=config.get("WorkingDir") or "",
            user=config.get("User") or "",
            diff_ids=tuple(rootfs.get("diff_ids") or ()),
        )


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chain_ids(diff_ids: tuple[str, ...]) -> list[str]:
    """The snapshot name of each layer stack: chain(n) = sha256(chain(n-1) + " " + diff(n))."""
    chains: list[str] = []
    for diff_id in diff_ids:
        chains.append(diff_id if not chains else sha256_digest(f"{chains[-1]} {diff_id}".encode()))
    return chains


def parse_manifest(digest: str, media_type: str, raw: bytes) -> ImageManifest:
    document = _json_object(raw, f"manifest {digest}")
    try:
        config = _descriptor(document["config"])
        layers = tuple(_descriptor(layer) for layer in document.get("layers") or ())
    except (KeyError, TypeError, ValueError) as exc:
        raise RuntimeFailure(f"manifest {digest} is malformed: {exc}") from None
    media_type = media_type or document.get("mediaType") or OCI_MANIFEST
    return ImageManifest(digest, media_type, raw, config, layers)


def select_manifest(index: bytes, what: str) -> dict[str, Any]:
    """The entry of an image index for this host (else its only entry)."""
    manifests = _json_object(index, what).get("manifests") or []
    for entry in manifests:
        wanted = entry.get("platform") or {}
        if wanted.get("os") == "linux" and wanted.get("architecture") == HOST_ARCH:
            return dict(entry)
    if len(manifests) == 1:
        return dict(manifests[0])
    raise RuntimeFailure(f"{what} has no linux/{HOST_ARCH} image")


def _descriptor(entry: dict[str, Any]) -> Descriptor:
    return Descriptor(str(entry["mediaType"]), str(entry["digest"]), int(entry["size"]))


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise RuntimeFailure(f"{what} is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise RuntimeFailure(f"{what} is not a JSON object")
    return document
