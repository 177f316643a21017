"""Container output: FIFOs the shim writes, pumped into the container's log file."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from warren.agent.logfile import RotatingLog, make_fifo, pump_fifo
from warren.agent.runtime import LogStream

LOG_NAME = "container.log"
EXEC_OUTPUT_LIMIT = 4096


def fifo_path(directory: Path, stream: LogStream) -> Path:
    return directory / f"{stream}.fifo"


class OutputCapture:
    """Copies a container's stdout and stderr into ``<dir>/container.log``."""

    def __init__(self, directory: Path, max_bytes: int, max_files: int) -> None:
        self.directory = directory
        self._max_bytes = max_bytes
        self._max_files = max_files
        self._log: RotatingLog | None = None
        self._pumps: list[asyncio.Task[None]] = []

    @property
    def log_path(self) -> Path:
        return self.directory / LOG_NAME

    def start(self) -> None:
        """Create the FIFOs (or reuse them, after a restart) and start pumping."""
        if self._pumps:
            return
        self._log = RotatingLog(self.log_path, self._max_bytes, self._max_files)
        for stream in LogStream:
            path = fifo_path(self.directory, stream)
            make_fifo(path)
            pump = pump_fifo(path, stream, self._log)
            self._pumps.append(asyncio.create_task(pump, name=f"log-{path}"))

    async def stop(self) -> None:
        """Stop pumping; what is in the FIFOs now is still written to the log."""
        pumps, self._pumps = self._pumps, []
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        if self._log is not None:
            self._log.close()
            self._log = None


class ExecOutput:
    """Collects an exec'd process's output from a FIFO, keeping the first 4 KiB."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._data = bytearray()
        self._fd = -1

    def open(self) -> None:
        make_fifo(self.path)
        # O_RDWR: opening never waits for the writer and reads never see EOF.
        self._fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        asyncio.get_running_loop().add_reader(self._fd, self._drain)

    def close(self) -> bytes:
        """Read what is left, release the FIFO and return the output (also if never opened)."""
        if self._fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fd)
            self._drain()
            os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        return bytes(self._data)

    def _drain(self) -> None:
        # Keeps reading past the limit (discarding) so the writer never blocks.
        while True:
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                return
            if not chunk:
                return
            room = EXEC_OUTPUT_LIMIT - len(self._data)
            if room > 0:
                self._data += chunk[:room]
