"""State shared by every command: where the managers are, output format, the client."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click

from warren.cli.client import WarrenClient
from warren.cli.config import admin_identity, load_managers
from warren.cli.output import FORMATS
from warren.node.launch import Daemons
from warren.security.tls import IdentityFiles

ClientFactory = Callable[..., WarrenClient]
F = TypeVar("F", bound=Callable[..., Any])


def make_client(
    managers: list[str], identity: IdentityFiles, linearizable: bool = False
) -> WarrenClient:
    """The real client every command uses."""
    return WarrenClient(managers, identity, linearizable=linearizable)


@dataclass(frozen=True)
class Wiring:
    """What the commands talk to and start, handed to the root command as click's
    ``obj`` (``main()`` hands the real ones; a test hands fakes through
    ``CliRunner.invoke(cli, ..., obj=Wiring(...))`` instead of replacing functions)."""

    client_factory: ClientFactory = make_client
    daemons: Daemons = field(default_factory=Daemons)


@dataclass
class CliContext:
    config_dir: Path
    # From --manager / WARREN_MANAGER; empty means config.json decides.
    manager_override: list[str]
    client_factory: ClientFactory
    output: str | None = None
    linearizable: bool = False
    # What the daemon commands (cluster init, worker join, ...) start.
    daemons: Daemons = field(default_factory=Daemons)
    _client: WarrenClient | None = field(default=None, repr=False)

    def managers(self) -> list[str]:
        return self.manager_override or load_managers(self.config_dir)

    def client(self) -> WarrenClient:
        # Built on first use, so commands that never call a manager need no credentials.
        if self._client is None:
            identity = admin_identity(self.config_dir)
            if self.linearizable:
                self._client = self.client_factory(self.managers(), identity, linearizable=True)
            else:
                self._client = self.client_factory(self.managers(), identity)
        return self._client

    def output_format(self, default: str = "table") -> str:
        return self.output or default

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


pass_cli = click.make_pass_decorator(CliContext)


def _remember_output(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    cli = ctx.find_object(CliContext)
    if value is not None and cli is not None:
        cli.output = value


def output_option(function: F) -> F:
    """``-o/--output``, accepted on the root group and on every read command."""
    decorator = click.option(
        "-o",
        "--output",
        type=click.Choice(FORMATS),
        expose_value=False,
        callback=_remember_output,
        help="Output format (default: table; inspect: json).",
    )
    return decorator(function)
