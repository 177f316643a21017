"""A one-layer busybox image as an OCI archive, built from the host's busybox-static.

The build is deterministic (fixed owners and mtimes, sorted entries, gzip mtime 0),
so the manifest digest is the same on every run with the same busybox binary.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUSYBOX = Path("/bin/busybox")
ENV_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
REF_NAME = "org.opencontainers.image.ref.name"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
EPOCH = 946684800  # 2000-01-01: some tools treat mtime 0 as "unset"
CREATED = "2000-01-01T00:00:00Z"

APPLETS = (
    "[", "awk", "basename", "cat", "chmod", "cp", "cut", "date", "dd", "df", "dirname",
    "du", "echo", "env", "false", "find", "free", "grep", "head", "hostname", "httpd",
    "id", "ip", "kill", "killall", "ln", "ls", "md5sum", "mkdir", "mkfifo", "mount",
    "mv", "nc", "netstat", "nproc", "nslookup", "pidof", "ping", "printenv", "printf",
    "ps", "pwd", "readlink", "rm", "rmdir", "sed", "seq", "sh", "sha256sum", "sleep",
    "sort", "stat", "tail", "tee", "test", "timeout", "top", "touch", "tr", "true",
    "umount", "uname", "uniq", "uptime", "usleep", "wc", "wget", "which", "whoami",
    "xargs", "yes",
)  # fmt: skip

DIRS = {"bin": 0o755, "dev": 0o755, "etc": 0o755, "proc": 0o555, "root": 0o700, "sys": 0o555}
DIRS |= {"tmp": 0o1777, "var": 0o755, "var/www": 0o755}

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
FILES = {
    "etc/passwd": PASSWD,
    "etc/group": "root:x:0:\nnobody:x:65534:\n",
    "var/www/index.html": "hello from warren\n",
}

# Go's names for the architectures busybox-static ships on.
GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": len(self.data),
            **extra,
        }


def build_busybox_image(dest: Path, tag: str = "busybox:latest", busybox: Path = BUSYBOX) -> Path:
    """Write an OCI image archive to ``dest`` (a file, or a directory to put one in)."""
    if dest.is_dir():
        dest = dest / "busybox-oci.tar"
    dest.parent.mkdir(parents=True, exist_ok=True)
    layer_tar = _layer_tar(_read_static_busybox(busybox))
    layer = Blob(MT_LAYER, gzip.compress(layer_tar, compresslevel=6, mtime=0))
    config = Blob(MT_CONFIG, _json(_config(layer_tar)))
    manifest = Blob(MT_MANIFEST, _json(_manifest(config, layer)))
    index = {
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [manifest.descriptor(annotations={REF_NAME: tag})],
    }
    entries = {
        "oci-layout": _json({"imageLayoutVersion": "1.0.0"}),
        "index.json": _json(index),
        **{_blob_path(b): b.data for b in (layer, config, manifest)},
    }
    tmp = dest.with_name(dest.name + ".part")
    tmp.write_bytes(_archive_tar(entries))
    tmp.replace(dest)  # readers never see a half-written archive
    return dest


def _read_static_busybox(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: install busybox-static") from None
    if _has_interpreter(data):
        raise ValueError(f"{path} is dynamically linked: install busybox-static")
    return data


def _has_interpreter(elf: bytes) -> bool:
    """True if the ELF binary names a dynamic loader (PT_INTERP): it would not run alone."""
    if elf[:4] != b"\x7fELF":
        raise ValueError("busybox is not an ELF binary")
    is64, order = elf[4] == 2, "<" if elf[5] == 1 else ">"
    if is64:
        (phoff,) = struct.unpack_from(order + "Q", elf, 0x20)
        phentsize, phnum = struct.unpack_from(order + "HH", elf, 0x36)
    else:
        (phoff,) = struct.unpack_from(order + "I", elf, 0x1C)
        phentsize, phnum = struct.unpack_from(order + "HH", elf, 0x2A)
    pt_interp = 3
    return any(
        struct.unpack_from(order + "I", elf, phoff + i * phentsize)[0] == pt_interp
        for i in range(phnum)
    )


def _layer_tar(busybox: bytes) -> bytes:
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for name, mode in DIRS.items():
        members.append((_info(name, tarfile.DIRTYPE, mode), None))
    members.append((_info("bin/busybox", tarfile.REGTYPE, 0o755, len(busybox)), busybox))
    for applet in APPLETS:
        link = _info(f"bin/{applet}", tarfile.SYMTYPE, 0o777)
        link.linkname = "busybox"
        members.append((link, None))
    for name, text in FILES.items():
        data = text.encode()
        members.append((_info(name, tarfile.REGTYPE, 0o644, len(data)), data))
    return _tar(members)


def _archive_tar(entries: dict[str, bytes]) -> bytes:
    dirs = {str(parent) for name in entries for parent in Path(name).parents} - {"."}
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (_info(name, tarfile.DIRTYPE, 0o755), None) for name in dirs
    ]
    for name, data in entries.items():
        members.append((_info(name, tarfile.REGTYPE, 0o644, len(data)), data))
    return _tar(members)


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        # Sorted by path, so a directory always precedes what it holds.
        for info, data in sorted(members, key=lambda m: m[0].name):
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _info(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, EPOCH
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _config(layer_tar: bytes) -> dict[str, Any]:
    return {
        "created": CREATED,
        "architecture": GOARCH.get(platform.machine(), "amd64"),
        "os": "linux",
        "config": {"Env": [ENV_PATH], "Cmd": ["sh"]},
        "rootfs": {
            "type": "layers",
            "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()],
        },
        "history": [{"created": CREATED, "created_by": "warren.devtools.image"}],
    }


def _manifest(config: Blob, layer: Blob) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer.descriptor()],
    }


def _blob_path(blob: Blob) -> str:
    return "blobs/sha256/" + blob.digest.removeprefix("sha256:")


def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def manifest_digest(archive: Path) -> str:
    """The digest of the (single) manifest an archive's index.json points at."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        if member is None:
            raise ValueError(f"{archive}: index.json is not a regular file")
        index = json.load(member)
    return str(index["manifests"][0]["digest"])
