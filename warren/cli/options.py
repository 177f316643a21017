"""Option groups shared by several commands, each handed to the command as one object."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import click

from warren.cli.parsing import CPUS, DURATION, LABEL, SIZE
from warren.cli.specs import ResourceOptions, RestartOptions
from warren.core.models import RestartCondition

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
        type=click.IntRange(min=0),
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

data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DATA_DIR,
    show_default=True,
    help="Where this node keeps its state.",
)
runtime_option = click.option(
    "--runtime",
    type=click.Choice(RUNTIMES),
    default="sim",
    show_default=True,
    help="Container runtime.",
)
node_name_option = click.option(
    "--node-name", help="Name to register this node under  [default: this host's name]"
)
node_labels_option = click.option(
    "-l", "--label", "labels", type=LABEL, multiple=True, help="Node label KEY=VALUE."
)
