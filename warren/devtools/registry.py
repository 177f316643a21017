"""A throwaway OCI registry: Debian's ``docker-registry`` on 127.0.0.1, plain HTTP, no auth."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from warren.devtools._proc import (
    DaemonError,
    free_port,
    log_tail,
    one_line,
    start_daemon,
    stop_group,
    wait_until,
)

REGISTRY_BIN = "docker-registry"
SKOPEO_BIN = "skopeo"


class LocalRegistry:
    """``docker-registry serve`` with its own config, storage dir and port.

    ``storage`` holds the blobs plus ``registry.yml`` and ``registry.log``; without
    one, a temporary directory is used and removed by :meth:`stop`. ``port=0`` picks
    a free port.
    """

    def __init__(self, storage: Path | None = None, port: int = 0) -> None:
        self._own_storage = storage is None
        self._storage = storage
        self._requested_port = port
        self._port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        if self._proc is None:
            raise DaemonError("registry not started")
        return f"127.0.0.1:{self._port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def storage(self) -> Path:
        if self._storage is None:
            raise DaemonError("registry not started")
        return self._storage

    @property
    def log(self) -> Path:
        return self.storage / "registry.log"

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> LocalRegistry:
        if self._proc is not None:
            return self
        if shutil.which(REGISTRY_BIN) is None:
            raise DaemonError(f"{REGISTRY_BIN} not found: install the docker-registry package")
        if self._storage is None:
            self._storage = Path(tempfile.mkdtemp(prefix="warren-registry-"))
        self._storage.mkdir(parents=True, exist_ok=True)
        try:
            self._start_on_some_port()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_on_some_port(self) -> None:
        # A free port can be taken between our probe and the daemon's bind: retry.
        attempts = 1 if self._requested_port else 3
        for attempt in range(attempts):
            self._port = self._requested_port or free_port()
            config = self.storage / "registry.yml"
            config.write_text(_config_yaml(self.storage, self._port))
            self._proc = start_daemon([REGISTRY_BIN, "serve", str(config)], self.log)
            try:
                wait_until(self._answers, self._proc, self.log, "docker-registry")
                return
            except DaemonError:
                stop_group(self._proc)
                self._proc = None
                if attempt == attempts - 1 or "address already in use" not in log_tail(self.log):
                    raise

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self._port}/v2/", timeout=1) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self._proc is not None:
            stop_group(self._proc)
            self._proc = None
        if self._own_storage and self._storage is not None:
            shutil.rmtree(self._storage, ignore_errors=True)
            self._storage = None

    def push_archive(self, archive: Path, ref: str) -> str:
        """Push an OCI archive as ``ref`` (e.g. ``busybox:latest``); return the full reference."""
        if shutil.which(SKOPEO_BIN) is None:
            raise DaemonError(f"{SKOPEO_BIN} not found: install the skopeo package")
        target = f"{self.address}/{ref}"
        # --insecure-policy: no dependency on the host's /etc/containers/policy.json.
        argv = [
            SKOPEO_BIN,
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            f"oci-archive:{archive}",
            f"docker://{target}",
        ]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise DaemonError(f"skopeo copy to {target} failed: {one_line(result.stderr)}")
        return target

    def __enter__(self) -> LocalRegistry:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _config_yaml(storage: Path, port: int) -> str:
    """The registry's config; JSON is valid YAML, so no YAML writer is needed."""
    config = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
            # Upload purging runs a background walk of the storage: not wanted in tests.
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {
            "addr": f"127.0.0.1:{port}",
            # Signs upload state; set so the registry does not warn about a random one.
            "secret": secrets.token_hex(16),
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        },
    }
    return json.dumps(config, indent=2) + "\n"
