"""The local image, registry and containerd that the containerd suite and quick start use."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from warren.devtools.containerd import LocalContainerd
from warren.devtools.image import build_busybox_image, manifest_digest
from warren.devtools.registry import LocalRegistry

NS = "warren-test"
OCI_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="warren-devtools-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.usefixtures("containerd_tools")
def test_image_build_is_deterministic(workdir: Path) -> None:
    first = build_busybox_image(workdir / "a.tar")
    second = build_busybox_image(workdir / "b.tar")
    assert manifest_digest(first) == manifest_digest(second)
    assert first.read_bytes() == second.read_bytes()


def test_image_archive_is_valid(busybox_archive: Path) -> None:
    inspect = subprocess.run(
        ["skopeo", "--insecure-policy", "inspect", f"oci-archive:{busybox_archive}"],
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(inspect.stdout)
    assert (info["Os"], info["Architecture"], len(info["Layers"])) == ("linux", "amd64", 1)
    assert info["Digest"] == manifest_digest(busybox_archive)
    assert info["Env"] == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]


def test_image_layer_content(busybox_archive: Path) -> None:
    config, layer = _config_and_layer(busybox_archive)
    assert config["config"]["Cmd"] == ["sh"]
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        passwd = _read(tar, "etc/passwd").decode()
        index = _read(tar, "var/www/index.html").decode()
    for applet in ("sh", "httpd", "sleep", "nc", "wget", "kill", "hostname", "date"):
        assert members[f"bin/{applet}"].linkname == "busybox"
    assert members["tmp"].mode == 0o1777
    assert "root:x:0:0" in passwd and "nobody:x:65534:65534" in passwd
    assert index == "hello from warren\n"


def test_registry_serves_pushed_manifest(registry: LocalRegistry, busybox_archive: Path) -> None:
    request = urllib.request.Request(
        f"{registry.url}/v2/busybox/manifests/latest", headers={"Accept": OCI_ACCEPT}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
        assert response.headers["Docker-Content-Digest"] == manifest_digest(busybox_archive)


def test_registry_push_failure_is_one_line(registry: LocalRegistry, workdir: Path) -> None:
    with pytest.raises(RuntimeError, match="skopeo copy") as excinfo:
        registry.push_archive(workdir / "missing.tar", "nothing:here")
    assert "\n" not in str(excinfo.value)


def test_containerd_answers_on_its_socket(containerd: LocalContainerd) -> None:
    result = containerd.ctr("images", "ls", namespace=NS)
    assert result.returncode == 0, result.stderr
    assert containerd.socket.is_socket()
    assert not containerd.socket.is_relative_to("/run/containerd")


def test_containerd_pulls_and_runs_busybox(containerd: LocalContainerd, busybox_ref: str) -> None:
    _pull(containerd, busybox_ref)
    result = _ctr_run(containerd, busybox_ref, "hello", ["--rm"], ["cat", "/var/www/index.html"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from warren\n"


def test_stop_leaves_no_process_mount_or_dir(busybox_ref: str) -> None:
    """Containers mid-flight, a shim and the daemon SIGKILLed, a container's runc state
    lost: stop() still removes everything, and spares a bystander mount namespace."""
    ctd = LocalContainerd().start()
    bystander: subprocess.Popen[bytes] | None = None
    try:
        _pull(ctd, busybox_ref)
        for name in ("c0", "c1"):
            result = _ctr_run(ctd, busybox_ref, name, ["-d"], ["sleep", "1000"])
            assert result.returncode == 0, result.stderr
        tasks, shim_sockets = _task_pids(ctd), _shim_sockets(ctd)
        assert len(tasks) == 2 and len(shim_sockets) == 2
        assert _mounts_under(ctd.dir) and _cgroups("c0") and _cgroups("c1")
        # Holds copies of the rootfs mounts, as `ip netns exec` would; not a container.
        bystander = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "slave", "sleep", "60"]
        )
        _wait_for_exec(bystander.pid, "sleep")
        assert str(ctd.dir) in Path(f"/proc/{bystander.pid}/mountinfo").read_text()
        os.kill(_ppid(tasks["c0"]), signal.SIGKILL)  # c0's shim: c0 is orphaned
        shutil.rmtree(ctd.runc_root / NS / "c1")  # only its rootfs mount can find c1 now
        os.kill(ctd.pid, signal.SIGKILL)
        directory = ctd.dir
    finally:
        ctd.stop()
        bystander_survived = bystander is not None and bystander.poll() is None
        if bystander is not None:
            bystander.kill()
            bystander.wait()
    assert bystander_survived
    assert not any(_alive(pid) for pid in tasks.values())
    assert not _processes_naming(directory)
    assert not _mounts_under(directory)
    assert not any(path.exists() for path in shim_sockets)
    assert not _cgroups("c0") and not _cgroups("c1")
    assert not directory.exists()


def _pull(ctd: LocalContainerd, ref: str) -> None:
    result = ctd.ctr("images", "pull", "--plain-http", ref, namespace=NS)
    assert result.returncode == 0, result.stderr


def _ctr_run(
    ctd: LocalContainerd, ref: str, name: str, options: list[str], command: list[str]
) -> subprocess.CompletedProcess[str]:
    # Keep runc's state and ctr's FIFOs inside the instance, not in /run/containerd, and
    # use a one-level cgroup: runc removes only the leaf of ctr's default /<ns>/<id>.
    flags = [
        "--runc-root", str(ctd.runc_root), "--fifo-dir", str(ctd.dir / "fifo"),
        "--cgroup", f"/{NS}-{name}",
    ]  # fmt: skip
    return ctd.ctr("run", *flags, *options, ref, name, *command, namespace=NS)


def _task_pids(ctd: LocalContainerd) -> dict[str, int]:
    result = ctd.ctr("tasks", "ls", namespace=NS)
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    return {row[0]: int(row[1]) for row in rows}


def _shim_sockets(ctd: LocalContainerd) -> list[Path]:
    addresses = ctd.state.glob("io.containerd.runtime.v2.task/*/*/address")
    return [Path(a.read_text().strip().removeprefix("unix://")) for a in addresses]


def _wait_for_exec(pid: int, comm: str) -> None:
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}/comm").read_text().strip() != comm:
        assert time.monotonic() < deadline, f"{pid} never ran {comm}"
        time.sleep(0.01)


def _cgroups(name: str) -> list[Path]:
    return list(Path("/sys/fs/cgroup").glob(f"*/{NS}-{name}"))


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    """Exists and is not a zombie (this sandbox's PID 1 may not reap orphans)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _processes_naming(directory: Path) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(directory) in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def _mounts_under(directory: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(f"{directory}/")]


def _config_and_layer(archive: Path) -> tuple[dict[str, Any], bytes]:
    with tarfile.open(archive) as tar:
        index = json.loads(_read(tar, "index.json"))
        manifest = json.loads(_read_blob(tar, index["manifests"][0]["digest"]))
        config = json.loads(_read_blob(tar, manifest["config"]["digest"]))
        layer = gzip.decompress(_read_blob(tar, manifest["layers"][0]["digest"]))
    return config, layer


def _read_blob(tar: tarfile.TarFile, digest: str) -> bytes:
    return _read(tar, "blobs/sha256/" + digest.removeprefix("sha256:"))


def _read(tar: tarfile.TarFile, name: str) -> bytes:
    member = tar.extractfile(name)
    assert member is not None, name
    return member.read()
