"""A two-layer test image on top of the busybox archive, for the runtime tests.

The second layer (uncompressed, 3 MiB of random data so content writes span
several messages) replaces /etc/passwd and /etc/group, deletes a file of the
first layer with a whiteout, and the config sets ENTRYPOINT, CMD, WORKDIR and
USER, so one run shows that layers, whiteouts and image defaults all apply.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
REF_NAME = "org.opencontainers.image.ref.name"
BIG_FILE_SIZE = 3 * 2**20
SCRIPT = "id -u; id -G; pwd; cat /hello; ls -A /var/www; wc -c < /big"
EXPECTED_OUTPUT = ["1000", "1000 2000", "/var", "hello", str(BIG_FILE_SIZE)]

_FILES = {
    "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    "etc/group": b"root:x:0:\napp:x:1000:\nextra:x:2000:app\n",
    "hello": b"hello\n",
    "var/www/.wh.index.html": b"",  # deletes the first layer's index.html
}


def layered_archive(base: Path, dest: Path, ref_name: str) -> Path:
    """Write the two-layer image to ``dest`` (an OCI archive named ``ref_name``)."""
    with tarfile.open(base) as tar:
        blobs = {m.name: _read(tar, m) for m in tar.getmembers() if m.isfile()}
    index = json.loads(blobs["index.json"])
    manifest = json.loads(blobs[_path(index["manifests"][0]["digest"])])
    config = json.loads(blobs[_path(manifest["config"]["digest"])])

    layer = _layer()
    layer_digest = _digest(layer)
    config["rootfs"]["diff_ids"].append(layer_digest)  # uncompressed: diff ID == digest
    config["config"].update(
        {"Entrypoint": ["sh", "-c"], "Cmd": [SCRIPT], "WorkingDir": "/var", "User": "app"}
    )
    config_raw = json.dumps(config).encode()
    manifest["layers"].append(_descriptor(LAYER_TAR, layer))
    manifest["config"] = _descriptor(manifest["config"]["mediaType"], config_raw)
    manifest_raw = json.dumps(manifest).encode()
    top = _descriptor(manifest["mediaType"], manifest_raw)
    top["annotations"] = {REF_NAME: ref_name}
    index["manifests"] = [top]
    for data in (layer, config_raw, manifest_raw):
        blobs[_path(_digest(data))] = data
    blobs["index.json"] = json.dumps(index).encode()
    with tarfile.open(dest, "w") as tar:
        for name, data in blobs.items():
            _add(tar, name, data)
    return dest


def _layer() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in _FILES.items():
            _add(tar, name, data)
        _add(tar, "big", os.urandom(BIG_FILE_SIZE))
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    file = tar.extractfile(member)
    assert file is not None
    return file.read()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _path(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def _descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": _digest(data), "size": len(data)}
