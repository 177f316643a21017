"""``warren image ...``: images in this node's containerd (no manager involved)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from warren.cli.options import (
    containerd_namespace_option,
    containerd_socket_option,
    data_dir_option,
)
from warren.node.images import import_archive


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
    names = asyncio.run(import_archive(archive, containerd_socket, containerd_namespace, data_dir))
    for name in names:
        click.echo(name)
