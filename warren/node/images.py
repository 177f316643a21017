"""Images in this node's containerd, loaded without a manager (``warren image import``)."""

from __future__ import annotations

from pathlib import Path


async def import_archive(
    archive: Path, containerd_socket: str, containerd_namespace: str, data_dir: Path
) -> list[str]:
    """Load an OCI image archive into the node's containerd; returns the images' names."""
    # Imported here: loading the runtime is for this command alone.
    from warren.agent.containerd.runtime import ContainerdRuntime
    from warren.registry.client import RegistryConfig

    runtime = ContainerdRuntime(
        socket=containerd_socket,
        namespace=containerd_namespace,
        state_dir=data_dir / "containerd",
        registry=RegistryConfig(),
    )
    try:
        return await runtime.import_archive(archive)
    finally:
        await runtime.close()
