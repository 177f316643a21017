"""containerd's container records: the spec, runtime and rootfs of a container."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from google.protobuf import any_pb2

from warren.agent.containerd.client import ContainerdClient
from warren.agent.containerd.proto import containers_pb2, runc_pb2
from warren.agent.containerd.snapshots import SNAPSHOTTER
from warren.agent.containerd.spec import SPEC_TYPE_URL
from warren.core.errors import NotFound, RuntimeFailure

RUNTIME = "io.containerd.runc.v2"
RUNC_OPTIONS_TYPE_URL = "containerd.runc.v1.Options"
MANAGED_LABEL = "warren.managed"
# containerd's Go client records an image's stop signal under this label too.
STOP_SIGNAL_LABEL = "io.containerd.image.config.stop-signal"
_INTERNAL_LABELS = frozenset({MANAGED_LABEL, STOP_SIGNAL_LABEL})


class Containers:
    def __init__(self, client: ContainerdClient) -> None:
        self._client = client

    async def create(
        self,
        container_id: str,
        image: str,
        labels: dict[str, str],
        spec: dict[str, Any],
        runc_root: Path,
        lease: str,
    ) -> None:
        options = runc_pb2.Options(root=str(runc_root))
        container = containers_pb2.Container(
            id=container_id,
            labels=labels,
            image=image,
            runtime=containers_pb2.Container.Runtime(
                name=RUNTIME,
                options=any_pb2.Any(
                    type_url=RUNC_OPTIONS_TYPE_URL, value=options.SerializeToString()
                ),
            ),
            spec=any_pb2.Any(type_url=SPEC_TYPE_URL, value=json.dumps(spec).encode()),
            snapshotter=SNAPSHOTTER,
            snapshot_key=container_id,
        )
        request = containers_pb2.CreateContainerRequest(container=container)
        await self._client.call(self._client.api.containers.Create, request, lease=lease)

    async def get(self, container_id: str) -> containers_pb2.Container:
        request = containers_pb2.GetContainerRequest(id=container_id)
        try:
            return (await self._client.call(self._client.api.containers.Get, request)).container
        except NotFound:
            raise NotFound(f"container {container_id} not found") from None

    async def list_managed(self) -> list[containers_pb2.Container]:
        request = containers_pb2.ListContainersRequest(filters=[f'labels."{MANAGED_LABEL}"==true'])
        response = await self._client.call(self._client.api.containers.List, request)
        return list(response.containers)

    async def delete(self, container_id: str) -> None:
        request = containers_pb2.DeleteContainerRequest(id=container_id)
        with contextlib.suppress(NotFound):
            await self._client.call(self._client.api.containers.Delete, request)


def container_labels(user_labels: dict[str, str], stop_signal: str) -> dict[str, str]:
    return {**user_labels, MANAGED_LABEL: "true", STOP_SIGNAL_LABEL: stop_signal}


def user_labels(container: containers_pb2.Container) -> dict[str, str]:
    """The labels the container was created with, without Warren's own."""
    return {k: v for k, v in container.labels.items() if k not in _INTERNAL_LABELS}


def stored_spec(container: containers_pb2.Container) -> dict[str, Any]:
    try:
        spec = json.loads(container.spec.value)
    except ValueError:
        spec = None
    if not isinstance(spec, dict) or not isinstance(spec.get("process"), dict):
        raise RuntimeFailure(f"container {container.id} has no usable OCI spec")
    return spec
