"""Option groups shared by several commands, each handed to the command as one object."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import click

from warren.cli.parsing import (
    COMMAND,
    CPUS,
    DURATION,
    HTTP_PROBE,
    LABEL,
    PUBLISH,
    REGISTRY,
    SIGNAL,
    SIZE,
    model_range,
)
from warren.cli.specs import (
    ContainerOptions,
    HealthOptions,
    NetworkOptions,
    ResourceOptions,
    RestartOptions,
)
from warren.core.errors import InvalidArgument
from warren.core.models import HealthCheck, NetworkMode, RestartCondition, RestartPolicy
from warren.core.networks import EndpointMode

F = TypeVar("F", bound=Callable[..., Any])
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

DEFAULT_TIMEOUT = 120.0


@dataclass(frozen=True)
class WaitOptions:
    detach: bool = False
    timeout: float = DEFAULT_TIMEOUT


def option_group(argument: str, factory: type[Any], *options: Decorator) -> Callable[[F], F]:
    """Add ``options`` to a command and pass their values as ``argument=factory(...)``.

    Each option's parameter name must be a field of the ``factory`` dataclass.
    """
    names = [f.name for f in dataclasses.fields(factory)]

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in names}
            return function(*args, **kwargs, **{argument: factory(**values)})

        decorated: Callable[..., Any] = wrapper
        for option in reversed(options):
            decorated = option(decorated)
        return cast(F, decorated)

    return decorate


resource_options = option_group(
    "resources",
    ResourceOptions,
    click.option(
        "--reserve-cpu", type=CPUS, metavar="CPUS", help="CPUs to reserve per task, e.g. 0.5."
    ),
    click.option(
        "--reserve-memory", type=SIZE, metavar="SIZE", help="Memory to reserve, e.g. 64m."
    ),
    click.option("--limit-cpu", type=CPUS, metavar="CPUS", help="CPU limit per task."),
    click.option("--limit-memory", type=SIZE, metavar="SIZE", help="Memory limit, e.g. 1g."),
)

restart_options = option_group(
    "restart",
    RestartOptions,
    click.option(
        "--restart-condition",
        type=click.Choice([c.value for c in RestartCondition]),
        help="When to restart a task that stopped.",
    ),
    click.option(
        "--restart-max-attempts",
        type=model_range(RestartPolicy, "max_attempts"),
        metavar="N",
        help="Restarts before giving up (0: unlimited).",
    ),
    click.option(
        "--restart-delay", type=DURATION, metavar="DURATION", help="Wait between restarts."
    ),
    click.option(
        "--restart-window",
        type=DURATION,
        metavar="DURATION",
        help="Window over which attempts are counted.",
    ),
)

container_options = option_group(
    "container",
    ContainerOptions,
    click.option(
        "--entrypoint",
        type=COMMAND,
        metavar='"CMD ARG..."',
        help="Override the image's entrypoint, shell-quoted (\"\": the image's own).",
    ),
    click.option(
        "--workdir", metavar="DIR", help='Working directory (absolute; "": the image\'s).'
    ),
    click.option("--user", metavar="USER[:GROUP]", help='User to run as ("": the image\'s).'),
    click.option(
        "--read-only/--no-read-only",
        default=None,
        help="Mount the container's root filesystem read-only.",
    ),
    click.option(
        "--init/--no-init",
        default=None,
        help="Run an init as PID 1 that forwards signals and reaps zombies.",
    ),
    click.option(
        "--stop-signal",
        type=SIGNAL,
        metavar="SIGNAL",
        help="Signal that stops the container  [default: SIGTERM]",
    ),
    click.option(
        "--stop-grace-period",
        type=DURATION,
        metavar="DURATION",
        help="Wait after the stop signal before killing  [default: 10s]",
    ),
)

_ENDPOINT_MODES = click.Choice([m.value for m in EndpointMode])

network_options = option_group(
    "networks",
    NetworkOptions,
    click.option(
        "--network",
        multiple=True,
        metavar="NETWORK",
        help="Join a network (repeatable; default: the 'default' network); "
        "host: use the node's network namespace.",
    ),
    click.option(
        "-p",
        "--publish",
        type=PUBLISH,
        multiple=True,
        help="Publish a port: [PUBLISHED:]TARGET[/udp] or published=N,target=N,mode=host.",
    ),
    click.option(
        "--endpoint-mode",
        type=_ENDPOINT_MODES,
        help="vip (default): one virtual IP per network; dnsrr: DNS lists the tasks.",
    ),
)

network_update_options: Decorator = functools.reduce(
    lambda f, g: lambda fn: f(g(fn)),
    [
        click.option("--network-add", multiple=True, metavar="NETWORK", help="Join a network."),
        click.option("--network-rm", multiple=True, metavar="NETWORK", help="Leave a network."),
        click.option("--publish-add", type=PUBLISH, multiple=True, help="Publish a port."),
        click.option(
            "--publish-rm",
            type=PUBLISH,
            multiple=True,
            help="Stop publishing: TARGET[/udp], or PUBLISHED:TARGET for one pair.",
        ),
        click.option("--endpoint-mode", type=_ENDPOINT_MODES, help="vip or dnsrr."),
        click.option(
            "--network",
            "network_mode",
            type=click.Choice([m.value for m in NetworkMode]),
            help="host: use the node's network namespace; private: the task's own.",
        ),
    ],
)

health_options = option_group(
    "health",
    HealthOptions,
    click.option(
        "--health-cmd",
        metavar='"CMD"',
        help="Health probe: a command run with /bin/sh -c in the container; exit 0 is healthy.",
    ),
    click.option(
        "--health-http",
        type=HTTP_PROBE,
        metavar="PORT/PATH",
        help="Health probe: HTTP GET on a container port; 2xx or 3xx is healthy.",
    ),
    click.option(
        "--health-tcp",
        type=click.IntRange(1, 65535),
        metavar="PORT",
        help="Health probe: healthy when the container port accepts a connection.",
    ),
    click.option(
        "--health-interval",
        type=DURATION,
        metavar="DURATION",
        help="Time between checks  [default: 30s]",
    ),
    click.option(
        "--health-timeout",
        type=DURATION,
        metavar="DURATION",
        help="Time a check may take  [default: 30s]",
    ),
    click.option(
        "--health-retries",
        type=model_range(HealthCheck, "retries"),
        metavar="N",
        help="Consecutive failures that make a task unhealthy  [default: 3]",
    ),
    click.option(
        "--health-start-period",
        type=DURATION,
        metavar="DURATION",
        help="Time after start during which failures don't count  [default: 0s]",
    ),
)

wait_options = option_group(
    "wait",
    WaitOptions,
    click.option(
        "-d", "--detach", is_flag=True, help="Return at once instead of waiting to converge."
    ),
    click.option(
        "--timeout",
        type=DURATION,
        default=f"{DEFAULT_TIMEOUT:g}s",
        metavar="DURATION",
        show_default=True,
        help="How long to wait for the service to converge.",
    ),
)

# -- options of the daemon commands (cluster init, worker join) -----------------

DEFAULT_DATA_DIR = Path("/var/lib/warren")
RUNTIMES = ("sim", "containerd")
DEFAULT_RUNTIME = "containerd"
DEFAULT_CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
DEFAULT_CONTAINERD_NAMESPACE = "warren"
DEFAULT_WIREGUARD_PORT = 51820  # WireGuard's own
NETWORK_PLANES = ("kernel", "sim")


@dataclass(frozen=True)
class RuntimeOptions:
    """The container runtime a daemon drives, the registries it pulls from, and
    the port its WireGuard mesh listens on."""

    runtime: str = DEFAULT_RUNTIME
    containerd_socket: str = DEFAULT_CONTAINERD_SOCKET
    containerd_namespace: str = DEFAULT_CONTAINERD_NAMESPACE
    insecure_registries: tuple[str, ...] = ()
    registry_config: Path | None = None
    wireguard_port: int = DEFAULT_WIREGUARD_PORT
    network_plane: str | None = None  # None: by the runtime

    def daemon_fields(self) -> dict[str, Any]:
        """As the keyword arguments of ``ManagerOptions`` and ``WorkerOptions``."""
        return {
            "runtime": self.runtime,
            "containerd_socket": self.containerd_socket,
            "containerd_namespace": self.containerd_namespace,
            "insecure_registries": list(self.insecure_registries),
            "registry_config": self.registry_config,
            "wireguard_port": self.wireguard_port,
            "network_plane": self.network_plane or "",
        }


data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DATA_DIR,
    show_default=True,
    help="Where this node keeps its state.",
)
containerd_socket_option = click.option(
    "--containerd-socket",
    default=DEFAULT_CONTAINERD_SOCKET,
    show_default=True,
    metavar="PATH",
    help="containerd's gRPC socket.",
)
containerd_namespace_option = click.option(
    "--containerd-namespace",
    default=DEFAULT_CONTAINERD_NAMESPACE,
    show_default=True,
    metavar="NAME",
    help="containerd namespace for Warren's images and containers; one live node per namespace.",
)
runtime_options = option_group(
    "runtime",
    RuntimeOptions,
    click.option(
        "--runtime",
        type=click.Choice(RUNTIMES),
        default=DEFAULT_RUNTIME,
        show_default=True,
        help="Container runtime (sim: simulated containers, for tests and demos).",
    ),
    containerd_socket_option,
    containerd_namespace_option,
    click.option(
        "--insecure-registry",
        "insecure_registries",
        type=REGISTRY,
        multiple=True,
        metavar="HOST:PORT",
        help="Registry reached over plain HTTP (repeatable).",
    ),
    click.option(
        "--registry-config",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        metavar="FILE",
        help='Registry credentials: JSON like Docker\'s config.json, {"auths": {...}}.',
    ),
    click.option(
        "--wireguard-port",
        type=click.IntRange(1, 65535),
        default=DEFAULT_WIREGUARD_PORT,
        show_default=True,
        metavar="PORT",
        help="UDP port of the node's WireGuard mesh (other nodes must reach it).",
    ),
    click.option(
        "--network-plane",
        type=click.Choice(NETWORK_PLANES),
        metavar="[kernel|sim]",
        help="How the node serves networks: kernel (bridges, nftables, DNS, WireGuard) or "
        "sim (simulated, for several test nodes on one machine)  [default: kernel with "
        "containerd, sim with the sim runtime]",
    ),
)
node_name_option = click.option(
    "--node-name", help="Name to register this node under  [default: this host's name]"
)
node_labels_option = click.option(
    "-l", "--label", "labels", type=LABEL, multiple=True, help="Node label KEY=VALUE."
)


class EnvironmentUsageError(click.ClickException):
    """A bad environment variable: a usage error (exit 2) on one ``Error:`` line."""

    exit_code = 2


def check_log_level() -> None:
    """A daemon's WARREN_LOG_LEVEL, checked before it starts anything."""
    from warren import logs

    try:
        logs.level_from_env()
    except InvalidArgument as exc:
        raise EnvironmentUsageError(str(exc)) from None
