"""``warren image ...``: images in this node's containerd (no manager involved)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import click

from warren.cli.options import (
    containerd_namespace_option,
    containerd_socket_option,
    data_dir_option,
)

if TYPE_CHECKING:
    from warren.agent.containerd.runtime import ContainerdRuntime


@click.group("image")
def image_group() -> None:
    """Manage the images of this node."""


@image_group.command("import")
@click.argument(
    "archive", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="FILE.tar"
)
@containerd_socket_option
@containerd_namespace_option
@data_dir_option
def import_image(
    archive: Path, containerd_socket: str, containerd_namespace: str, data_dir: Path
) -> None:
    """Load an OCI image archive into this node's containerd, and print the images' names.

    Run it on each node that should have the image: tasks there can then use it
    without a registry. Docker 25+ ("docker save") and skopeo ("oci-archive:")
    write such archives.
    """
    # Imported here: the other commands should not pay for loading the runtime.
    from warren.agent.containerd.runtime import ContainerdRuntime
    from warren.registry.client import RegistryConfig

    runtime = ContainerdRuntime(
        socket=containerd_socket,
        namespace=containerd_namespace,
        state_dir=data_dir / "containerd",
        registry=RegistryConfig(),
    )
    for name in asyncio.run(_import(runtime, archive)):
        click.echo(name)


async def _import(runtime: ContainerdRuntime, archive: Path) -> list[str]:
    try:
        return await runtime.import_archive(archive)
    finally:
        await runtime.close()
