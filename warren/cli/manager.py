"""``warren manager join``: add this host to a cluster as another manager."""

from __future__ import annotations

from typing import Any

import click

from warren.cli.cluster import manager_daemon_options, run_manager_process
from warren.cli.config import split_managers
from warren.cli.context import CliContext, pass_cli


@click.group("manager")
def manager_group() -> None:
    """Run this host as an additional manager."""


@manager_group.command("join")
@click.option("--token", required=True, help="A manager join token (cluster join-token manager).")
@click.option(
    "--manager",
    "managers",
    multiple=True,
    metavar="HOST:PORT[,HOST:PORT...]",
    help="An existing manager's API address  [default: the global --manager]",
)
@manager_daemon_options
@pass_cli
def join(cli: CliContext, /, token: str, managers: tuple[str, ...], **fields: Any) -> None:
    """Join the cluster as a manager (a Raft member serving the whole API), and
    run until stopped. Run again with the same data dir to restart it."""
    run_manager_process(
        cli,
        join_token=token,
        join_managers=split_managers(managers) or cli.manager_override,
        **fields,
    )
