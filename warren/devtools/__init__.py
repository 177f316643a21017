"""Local stand-ins for a node's dependencies: a busybox image, a registry, a containerd.

Used by the containerd test suite and by the README's quick start; each piece runs
with its own directories, sockets and ports and leaves nothing behind when stopped.
"""

from warren.devtools.containerd import LocalContainerd
from warren.devtools.image import build_busybox_image
from warren.devtools.registry import LocalRegistry

__all__ = ["LocalContainerd", "LocalRegistry", "build_busybox_image"]
