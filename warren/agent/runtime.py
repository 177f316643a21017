"""The container runtime boundary, shaped after containerd's API.

containerd has no "run": a client pulls, creates a container, creates and
starts its task, waits for the exit, and deletes both. The protocol keeps
those steps apart so the executor can report each state as it happens.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from warren.core.errors import InvalidArgument


def _ipv4(value: str, what: str) -> None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise InvalidArgument(f"{what} {value!r} is not an IPv4 address") from None


@dataclass(frozen=True)
class ContainerNames:
    """Names inside a container on Warren's networks: its /etc/resolv.conf asks only
    ``nameserver`` (Warren's DNS, on the gateway of the task's first network) and
    its /etc/hosts gives its hostname ``address`` (its first network address)."""

    nameserver: str
    address: str

    def __post_init__(self) -> None:
        _ipv4(self.nameserver, "name server")
        _ipv4(self.address, "container address")


@dataclass(frozen=True)
class ContainerConfig:
    """What to run: derived from a task's spec by the executor.

    ``entrypoint`` and ``args`` override the image's ENTRYPOINT and CMD when
    non-empty; ``env`` is merged over the image's environment; an empty
    ``workdir`` or ``user`` keeps the image's.
    """

    container_id: str
    image: str
    entrypoint: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    workdir: str = ""
    user: str = ""  # uid[:gid] or a name from the image's /etc/passwd
    cpu_limit: float = 0.0  # CPUs (cgroup quota); 0: unlimited
    memory_limit_bytes: int = 0  # 0: unlimited
    read_only: bool = False  # read-only root filesystem
    init: bool = False  # run a tiny init as PID 1 that forwards signals and reaps
    host_network: bool = False  # share the node's network namespace
    stop_signal: str = "SIGTERM"
    # None: the node's resolvers (loopback ones left out), the hostname on 127.0.1.1.
    names: ContainerNames | None = None

    def __post_init__(self) -> None:
        if self.names is not None and self.host_network:
            raise InvalidArgument(
                f"container {self.container_id}: host networking uses the node's own "
                "name files, not Warren's DNS"
            )


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    output: bytes  # stdout and stderr together, truncated to a few KiB


class LogStream(StrEnum):
    STDOUT = "stdout"
    STDERR = "stderr"


@dataclass(frozen=True)
class LogEntry:
    timestamp: float
    stream: LogStream
    line: bytes  # without the trailing newline


@dataclass(frozen=True)
class ExitStatus:
    exit_code: int
    oom_killed: bool = False
    finished_at: float = 0.0


class ContainerState(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass(frozen=True)
class ContainerInfo:
    container_id: str
    image: str
    state: ContainerState
    labels: dict[str, str] = field(default_factory=dict)
    pid: int = 0
    exit: ExitStatus | None = None


@dataclass(frozen=True)
class RuntimeEvent:
    """A container exited (the only event the executor needs to react to)."""

    container_id: str
    exit: ExitStatus


class Runtime(Protocol):
    name: str

    async def pull(self, image: str) -> str:
        """Make ``image`` available locally; return its resolved digest.

        Raises ``ImageNotFound`` or ``RuntimeFailure``.
        """
        ...

    async def create(self, config: ContainerConfig) -> None: ...

    async def start(self, container_id: str) -> None: ...

    async def stop(self, container_id: str, grace_period: float) -> ExitStatus:
        """Send the stop signal, SIGKILL after ``grace_period``; return the exit."""
        ...

    async def wait(self, container_id: str) -> ExitStatus:
        """Block until the container exits."""
        ...

    async def inspect(self, container_id: str) -> ContainerInfo:
        """Raises ``NotFound`` for an unknown container."""
        ...

    async def list(self) -> list[ContainerInfo]:
        """Every container this runtime manages (for re-attaching after a restart)."""
        ...

    async def reattach(self, container_id: str) -> None:
        """Resume what follows a container found running after an agent restart
        (its output capture), without touching the container."""
        ...

    async def remove(self, container_id: str) -> None:
        """Delete a stopped container and its resources; unknown IDs are ignored."""
        ...

    async def exec(self, container_id: str, args: Sequence[str], timeout: float) -> ExecResult:
        """Run ``args`` inside the running container (health checks).

        Raises ``RuntimeFailure`` if it cannot start, ``TimeoutError`` when it
        outlives ``timeout`` (it is killed then).
        """
        ...

    def network_namespace(self, container_id: str) -> str | None:
        """Path of the container's network namespace; None when it shares the host's."""
        ...

    def logs(
        self, container_id: str, follow: bool = False, tail: int | None = None
    ) -> AsyncIterator[LogEntry]:
        """The container's output, oldest first; ``tail`` keeps the last N lines.

        With ``follow``, keeps yielding new lines until the container is removed
        or the caller stops iterating. Works after the container exited, until
        it is removed.
        """
        ...

    def events(self) -> AsyncIterator[RuntimeEvent]: ...

    async def close(self) -> None: ...
