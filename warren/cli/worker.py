"""``warren worker join``: run this host as a worker node."""

from __future__ import annotations

import socket
from pathlib import Path

import click

from warren.cli.config import split_managers
from warren.cli.context import CliContext, pass_cli
from warren.cli.options import (
    RuntimeOptions,
    data_dir_option,
    node_labels_option,
    node_name_option,
    runtime_options,
)


@click.group("worker")
def worker_group() -> None:
    """Run this host as a worker."""


@worker_group.command("join")
@click.option(
    "--token",
    help="Join token from 'warren cluster join-token worker'; "
    "not needed to restart a node whose data dir already holds its identity.",
)
@click.option(
    "--manager",
    "managers",
    multiple=True,
    metavar="HOST:PORT[,HOST:PORT...]",
    help="Manager API address(es)  [default: the global --manager]",
)
@data_dir_option
@runtime_options
@node_name_option
@node_labels_option
@pass_cli
def join(
    cli: CliContext,
    token: str | None,
    managers: tuple[str, ...],
    data_dir: Path,
    runtime: RuntimeOptions,
    node_name: str | None,
    labels: tuple[tuple[str, str], ...],
) -> None:
    """Join a cluster (or resume this node) and run its tasks until stopped."""
    # Imported here: admin commands should not pay for loading the agent.
    from warren.agent.daemon import WorkerOptions, run_worker

    options = WorkerOptions(
        data_dir=data_dir,
        token=token,
        managers=split_managers(managers) or cli.manager_override,
        node_name=node_name or socket.gethostname(),
        labels=dict(labels),
        **runtime.daemon_fields(),
    )
    click.get_current_context().exit(run_worker(options))
