"""A simulated runtime: containers are records that "run" until stopped.

It is the `--runtime sim` of the CLI (control-plane tests and benchmarks with
hundreds of workers in a few processes) and the fake runtime of unit tests.
Its state lives in memory, so a restarted sim worker finds no containers.

Images: any name pulls, except one containing ``notfound`` (ImageNotFound).
Args ``["exit", CODE, AFTER_SECONDS]`` make a container exit by itself.
Exec: ``["false"]`` fails (exit 1), ``["cat", "/etc/resolv.conf"]`` (or
``/etc/hosts``) prints what the container's name files hold, anything else
succeeds. Namespaces: a container on Warren's networks (given ``names``)
reports ``netns_dir/ID`` as its namespace, which the sim never makes: the sim
network plane's fakes need none, and tests make it when theirs do. Any other
container shares the host's (None).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

from warren.agent.network.resolv import hosts_content, resolv_conf_content
from warren.agent.runtime import (
    ContainerConfig,
    ContainerInfo,
    ContainerState,
    ExecResult,
    ExitStatus,
    LogEntry,
    LogStream,
    RuntimeEvent,
)
from warren.core.errors import FailedPrecondition, ImageNotFound, NotFound

# Where sim containers on Warren's networks say their namespaces are (never made).
SIM_NETNS_DIR = Path("/run/warren-sim/netns")
# Exit code of a process killed by SIGKILL (128 + 9), as a shell reports it.
_KILLED = 137


@dataclass
class _Container:
    config: ContainerConfig
    state: ContainerState = ContainerState.CREATED
    exit: ExitStatus | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    timer: asyncio.TimerHandle | None = None
    logs: list[LogEntry] = field(default_factory=list)


class SimRuntime:
    name = "sim"

    def __init__(self, netns_dir: Path = SIM_NETNS_DIR) -> None:
        self._netns_dir = netns_dir
        self._containers: dict[str, _Container] = {}
        self._events: asyncio.Queue[RuntimeEvent] = asyncio.Queue()

    async def pull(self, image: str) -> str:
        if "notfound" in image:
            raise ImageNotFound(f"image not found: {image}")
        return "sha256:" + hashlib.sha256(image.encode()).hexdigest()

    async def create(self, config: ContainerConfig) -> None:
        if config.container_id in self._containers:
            raise FailedPrecondition(f"container {config.container_id} already exists")
        self._containers[config.container_id] = _Container(config)

    async def start(self, container_id: str) -> None:
        container = self._get(container_id)
        if container.state != ContainerState.CREATED:
            raise FailedPrecondition(f"container {container_id} is {container.state}")
        container.state = ContainerState.RUNNING
        line = f"started {container.config.image}".encode()
        container.logs.append(LogEntry(time.time(), LogStream.STDOUT, line))
        args = container.config.args
        if len(args) == 3 and args[0] == "exit":
            loop = asyncio.get_running_loop()
            code = int(args[1])
            container.timer = loop.call_later(float(args[2]), self._exit, container_id, code)

    def _exit(self, container_id: str, code: int) -> None:
        container = self._containers.get(container_id)
        if container is None or container.state != ContainerState.RUNNING:
            return
        container.state = ContainerState.STOPPED
        container.exit = ExitStatus(code, finished_at=time.time())
        if container.timer is not None:
            container.timer.cancel()
        container.exited.set()
        self._events.put_nowait(RuntimeEvent(container_id, container.exit))

    async def stop(self, container_id: str, grace_period: float) -> ExitStatus:
        container = self._get(container_id)
        if container.state == ContainerState.RUNNING:
            self._exit(container_id, 0)
        elif container.state == ContainerState.CREATED:
            container.state = ContainerState.STOPPED
            container.exit = ExitStatus(0, finished_at=time.time())
            container.exited.set()
        assert container.exit is not None
        return container.exit

    def kill(self, container_id: str) -> None:
        """Simulate the container's process dying (tests)."""
        self._exit(container_id, _KILLED)

    async def wait(self, container_id: str) -> ExitStatus:
        container = self._get(container_id)
        await container.exited.wait()
        assert container.exit is not None
        return container.exit

    async def inspect(self, container_id: str) -> ContainerInfo:
        return self._info(self._get(container_id))

    async def list(self) -> list[ContainerInfo]:
        return [self._info(c) for c in self._containers.values()]

    async def reattach(self, container_id: str) -> None:
        self._get(container_id)

    async def remove(self, container_id: str) -> None:
        container = self._containers.pop(container_id, None)
        if container is not None and container.timer is not None:
            container.timer.cancel()

    async def exec(self, container_id: str, args: Sequence[str], timeout: float) -> ExecResult:
        container = self._get(container_id)
        if container.state != ContainerState.RUNNING:
            raise FailedPrecondition(f"container {container_id} is not running")
        if len(args) == 2 and args[0] == "cat":
            files = name_files(container.config)
            if args[1] in files:
                return ExecResult(0, files[args[1]].encode())
        return ExecResult(1 if list(args) == ["false"] else 0, b"")

    def network_namespace(self, container_id: str) -> str | None:
        container = self._get(container_id)
        if container.config.names is None:
            return None
        return str(self._netns_dir / container_id)

    async def logs(
        self, container_id: str, follow: bool = False, tail: int | None = None
    ) -> AsyncIterator[LogEntry]:
        entries = list(self._get(container_id).logs)
        for entry in entries[-tail:] if tail else entries:
            yield entry

    async def events(self) -> AsyncIterator[RuntimeEvent]:
        while True:
            yield await self._events.get()

    async def close(self) -> None:
        for container in self._containers.values():
            if container.timer is not None:
                container.timer.cancel()

    def _get(self, container_id: str) -> _Container:
        container = self._containers.get(container_id)
        if container is None:
            raise NotFound(f"container {container_id} not found")
        return container

    @staticmethod
    def _info(container: _Container) -> ContainerInfo:
        return ContainerInfo(
            container_id=container.config.container_id,
            image=container.config.image,
            state=container.state,
            labels=dict(container.config.labels),
            exit=container.exit,
        )


def name_files(config: ContainerConfig) -> dict[str, str]:
    """/etc/hosts and /etc/resolv.conf of a sim container on Warren's networks
    (as the containerd runtime writes them); none without ``names``."""
    if config.names is None:
        return {}
    hostname = config.container_id[:12]
    return {
        "/etc/hosts": hosts_content(hostname, IPv4Address(config.names.address)),
        "/etc/resolv.conf": resolv_conf_content(IPv4Address(config.names.nameserver)),
    }
