"""``warren cluster ...``: start the first manager, hand out join tokens, show cluster info."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import click

from warren.cli.context import CliContext, output_option, pass_cli
from warren.cli.options import (
    RuntimeOptions,
    check_log_level,
    data_dir_option,
    node_labels_option,
    node_name_option,
    runtime_options,
)
from warren.cli.output import document, key_values
from warren.cli.parsing import DURATION
from warren.core.errors import InvalidArgument
from warren.core.models import Availability
from warren.core.networks import parse_subnet
from warren.node.options import ManagerOptions

PORT = click.IntRange(1, 65535)
ROLES = ("worker", "manager")
_INFO_LABELS = {
    "cluster_id": "Cluster ID",
    "ca_fingerprint": "CA fingerprint",
    "leader": "Leader",
    "is_leader": "Is leader",
    "raft_last_log_index": "Raft log index",
    "managers": "Managers",
    "nodes": "Nodes",
    "services": "Services",
    "tasks": "Tasks",
    "revision": "Applied revision",
    "state_hash": "State hash",
}


@click.group("cluster")
def cluster_group() -> None:
    """Create a cluster and manage its membership."""


def manager_daemon_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options of a manager process: `cluster init` and `manager join`."""
    decorators = [
        data_dir_option,
        click.option(
            "--advertise-addr",
            default="127.0.0.1",
            show_default=True,
            help="Address nodes and the CLI use to reach this manager.",
        ),
        click.option(
            "--listen-addr", default="0.0.0.0", show_default=True, help="Address to bind."
        ),
        click.option(
            "--api-port", type=PORT, default=2377, show_default=True, help="gRPC API port."
        ),
        click.option(
            "--rest-port", type=PORT, default=2378, show_default=True, help="REST API port."
        ),
        click.option("--metrics-port", type=PORT, default=9090, show_default=True),
        click.option("--raft-port", type=PORT, default=2379, show_default=True),
        runtime_options,
        click.option(
            "--availability",
            type=click.Choice([a.value for a in Availability]),
            default=Availability.ACTIVE.value,
            show_default=True,
            help="Whether this manager also runs tasks.",
        ),
        click.option(
            "--node-down-timeout",
            type=DURATION,
            default="15s",
            show_default=True,
            metavar="DURATION",
            help="Silence after which a node is marked down.",
        ),
        node_name_option,
        node_labels_option,
    ]
    for decorate in reversed(decorators):
        command = decorate(command)
    return command


def _check_subnet(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value:
        try:
            parse_subnet(value)
        except InvalidArgument as exc:
            raise click.BadParameter(exc.message) from None
    return value


def manager_options(cli: CliContext, **fields: Any) -> ManagerOptions:
    """A manager process's options, from its command line."""
    runtime: RuntimeOptions = fields.pop("runtime")
    return ManagerOptions(
        availability=Availability(fields.pop("availability")),
        config_dir=cli.config_dir,
        node_name=fields.pop("node_name") or socket.gethostname(),
        labels=dict(fields.pop("labels")),
        **fields,
        **runtime.daemon_fields(),
    )


def run_manager_process(cli: CliContext, **fields: Any) -> None:
    """Build the manager's options from the command line and run it until stopped."""
    check_log_level()
    options = manager_options(cli, **fields)
    click.get_current_context().exit(cli.daemons.run_manager(options))


@cluster_group.command("init")
@manager_daemon_options
@click.option(
    "--force",
    is_flag=True,
    help="Replace the admin credentials another cluster left in the config dir.",
)
@click.option(
    "--default-subnet",
    default="",
    callback=_check_subnet,
    help="Subnet of the 'default' network services join (default: a free /16 of 10.32.0.0/11).",
)
@pass_cli
def init(cli: CliContext, /, force: bool, **fields: Any) -> None:
    """Start a new cluster with this host as its manager, and run it until stopped.

    Run again with the same data dir to restart the manager. The manager writes
    admin credentials and config.json to the config dir, so later commands on
    this host need no flags; it refuses to replace ones already there unless
    --force is given.
    """
    run_manager_process(cli, replace_admin_credentials=force, **fields)


@cluster_group.command("join-token")
@click.argument("role", type=click.Choice(ROLES))
@click.option("-q", "--quiet", is_flag=True, help="Only print the token.")
@click.option("--rotate", is_flag=True, help="Replace the token; the old one stops working.")
@pass_cli
def join_token(cli: CliContext, role: str, quiet: bool, rotate: bool) -> None:
    """Show (or rotate) the token that lets a node join as ROLE."""
    client = cli.client()
    token = client.join_token(role, rotate=rotate)
    if quiet:
        click.echo(token)
        return
    if rotate:
        click.echo(f"Successfully rotated {role} join token.\n")
    if role == "manager":
        click.echo(f"Manager join token for this cluster:\n\n    {token}\n")
        return
    managers = ",".join(client.cluster_info().get("managers") or [client.manager])
    click.echo(
        "To add a worker to this cluster, run:\n\n"
        f"    warren worker join --token {token} --manager {managers}\n"
    )


def _info_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


@cluster_group.command("info")
@output_option
@pass_cli
def info(cli: CliContext) -> None:
    """Show the cluster's identity, leader and size."""
    details = cli.client().cluster_info()
    fmt = cli.output_format()
    if fmt != "table":
        click.echo(document(details, fmt))
        return
    pairs = [(_INFO_LABELS.get(key, key), _info_value(value)) for key, value in details.items()]
    click.echo(key_values(pairs))
