"""Real containerd, registry and busybox image for the containerd suite (session-scoped).

Missing tools FAIL the fixtures (CI installs them through scripts/setup, and a silent
skip would hide a broken CI); set WARREN_SKIP_CONTAINERD=1 to skip instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from warren.devtools.containerd import LocalContainerd, missing_binaries
from warren.devtools.image import build_busybox_image
from warren.devtools.registry import REGISTRY_BIN, SKOPEO_BIN, LocalRegistry

BUSYBOX_TAG = "busybox:latest"


@pytest.fixture(scope="session")
def containerd_tools() -> None:
    """Fail (or skip, with WARREN_SKIP_CONTAINERD=1) unless this machine can run the suite."""
    problems = missing_binaries()
    problems += [f"{b} ({b})" for b in (REGISTRY_BIN, SKOPEO_BIN) if shutil.which(b) is None]
    if not Path("/bin/busybox").exists():
        problems.append("/bin/busybox (busybox-static)")
    if os.geteuid() != 0:
        problems.append("root privileges")
    if not problems:
        return
    message = "containerd suite needs: " + ", ".join(problems) + " (run scripts/setup as root)"
    if os.environ.get("WARREN_SKIP_CONTAINERD") == "1":
        pytest.skip(message)
    pytest.fail(message + "; set WARREN_SKIP_CONTAINERD=1 to skip", pytrace=False)


@pytest.fixture(scope="session")
def busybox_archive(containerd_tools: None) -> Iterator[Path]:
    """An OCI archive of the busybox image (tag busybox:latest)."""
    workdir = Path(tempfile.mkdtemp(prefix="warren-image-"))
    try:
        yield build_busybox_image(workdir / "busybox-oci.tar", BUSYBOX_TAG)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def registry(busybox_archive: Path) -> Iterator[LocalRegistry]:
    """A registry on 127.0.0.1 (plain HTTP, no auth) holding busybox:latest."""
    with LocalRegistry() as reg:
        reg.push_archive(busybox_archive, BUSYBOX_TAG)
        yield reg


@pytest.fixture(scope="session")
def busybox_ref(registry: LocalRegistry) -> str:
    """``127.0.0.1:PORT/busybox:latest``."""
    return f"{registry.address}/{BUSYBOX_TAG}"


@pytest.fixture(scope="session")
def containerd(containerd_tools: None) -> Iterator[LocalContainerd]:
    """A private containerd in a temporary dir; everything it leaves is removed at the end."""
    with LocalContainerd() as ctd:
        yield ctd
    _remove_empty_warren_cgroups()


def _remove_empty_warren_cgroups() -> None:
    """Containers live under /warren/<id> in every controller; runc removes the
    leaves, the tests remove the parent they caused (if nothing else uses it)."""
    for parent in Path("/sys/fs/cgroup").glob("*/warren"):
        with contextlib.suppress(OSError):
            parent.rmdir()
