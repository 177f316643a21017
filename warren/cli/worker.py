"""``warren worker join``: run this host as a worker node."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from warren.cli.cluster import manager_daemon_options
from warren.cli.config import split_managers
from warren.cli.context import CliContext, pass_cli
from warren.cli.options import (
    RuntimeOptions,
    check_log_level,
    data_dir_option,
    node_labels_option,
    node_name_option,
    runtime_options,
)
from warren.node.options import WorkerOptions

# The options of the manager a worker runs once promoted (node promote).
_PROMOTION_OPTIONS = frozenset(
    {
        "advertise_addr",
        "listen_addr",
        "api_port",
        "rest_port",
        "metrics_port",
        "raft_port",
        "node_down_timeout",
    }
)


def promotion_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the manager process's own options, taken from `cluster init` so that
    names, defaults and help stay the same."""
    probe = manager_daemon_options(lambda **_: None)
    # click keeps a function's options in reverse order until the command is built.
    params: list[click.Parameter] = getattr(probe, "__click_params__", [])
    chosen = [p for p in params if p.name in _PROMOTION_OPTIONS]
    if not hasattr(command, "__click_params__"):
        command.__click_params__ = []  # type: ignore[attr-defined]
    command.__click_params__.extend(chosen)  # type: ignore[attr-defined]
    return command


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
@promotion_options
@pass_cli
def join(
    cli: CliContext,
    /,
    token: str | None,
    managers: tuple[str, ...],
    data_dir: Path,
    runtime: RuntimeOptions,
    node_name: str | None,
    labels: tuple[tuple[str, str], ...],
    **promotion: Any,
) -> None:
    """Join a cluster (or resume this node) and run its tasks until stopped.

    The manager options (--api-port, --raft-port, ...) are for when the node
    is promoted: it then also runs a manager, and does again when restarted.
    """
    check_log_level()
    options = WorkerOptions(
        data_dir=data_dir,
        token=token,
        managers=split_managers(managers) or cli.manager_override,
        node_name=node_name or socket.gethostname(),
        labels=dict(labels),
        **runtime.daemon_fields(),
        **promotion,
    )
    click.get_current_context().exit(cli.daemons.run_worker(options))
