"""``warren node ...``: list, inspect, update, promote, demote and remove nodes."""

from __future__ import annotations

import time
from collections.abc import Callable

import click

from warren.cli.client import WarrenClient
from warren.cli.context import CliContext, output_option, pass_cli
from warren.cli.output import document, table
from warren.cli.parsing import DURATION, LABEL, format_seconds
from warren.core.models import Availability, Node, NodeRole

AVAILABILITIES = [a.value for a in Availability]
POLL_INTERVAL = 0.3


@click.group("node")
def node_group() -> None:
    """Manage nodes."""


@node_group.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only print IDs.")
@output_option
@pass_cli
def list_nodes(cli: CliContext, quiet: bool) -> None:
    """List nodes, managers first."""
    nodes = cli.client().list_nodes()
    fmt = cli.output_format()
    if quiet or fmt != "table":
        click.echo("\n".join(n.id for n in nodes) if quiet else document(nodes, fmt))
        return
    rows = [
        [
            n.id,
            n.hostname,
            str(n.role),
            str(n.status),
            str(n.availability),
            n.manager_status,
            n.address,
        ]
        for n in nodes
    ]
    headers = ["ID", "HOSTNAME", "ROLE", "STATUS", "AVAILABILITY", "MANAGER STATUS", "ADDRESS"]
    click.echo(table(headers, rows))


@node_group.command("inspect")
@click.argument("nodes", nargs=-1, required=True, metavar="NODE...")
@output_option
@pass_cli
def inspect(cli: CliContext, nodes: tuple[str, ...]) -> None:
    """Show nodes in full (JSON unless -o yaml)."""
    client = cli.client()
    found = [client.get_node(ref) for ref in nodes]
    fmt = cli.output_format("json")
    click.echo(document(found, "yaml" if fmt == "yaml" else "json"))


@node_group.command("update")
@click.argument("node")
@click.option(
    "--availability",
    type=click.Choice(AVAILABILITIES),
    help="pause: no new tasks; drain: move tasks away.",
)
@click.option("--label-add", type=LABEL, multiple=True, help="Add or set a node label.")
@click.option("--label-rm", multiple=True, metavar="KEY", help="Remove a node label.")
@pass_cli
def update(
    cli: CliContext,
    node: str,
    availability: str | None,
    label_add: tuple[tuple[str, str], ...],
    label_rm: tuple[str, ...],
) -> None:
    """Change a node's availability or labels."""
    cli.client().update_node(
        node,
        availability=Availability(availability) if availability else None,
        label_add=dict(label_add),
        label_rm=list(label_rm),
    )
    click.echo(node)


@node_group.command("rm")
@click.argument("nodes", nargs=-1, required=True, metavar="NODE...")
@click.option("-f", "--force", is_flag=True, help="Remove a node even if it still looks up.")
@pass_cli
def remove(cli: CliContext, nodes: tuple[str, ...], force: bool) -> None:
    """Remove worker nodes from the cluster; their tasks are rescheduled."""
    client = cli.client()
    for ref in nodes:
        client.remove_node(ref, force=force)
        click.echo(ref)


def _role_wait_options(command: Callable[..., None]) -> Callable[..., None]:
    detach = click.option(
        "-d", "--detach", is_flag=True, help="Return at once instead of waiting for the change."
    )
    timeout = click.option(
        "--timeout",
        type=DURATION,
        default="60s",
        metavar="DURATION",
        show_default=True,
        help="How long to wait for the node to take up its new role.",
    )
    return detach(timeout(command))


def _wait_until(
    client: WarrenClient, node_id: str, done: Callable[[Node], bool], timeout: float, what: str
) -> None:
    deadline = time.monotonic() + timeout
    while not done(client.get_node(node_id)):
        if time.monotonic() >= deadline:
            raise click.ClickException(
                f"{what} after {format_seconds(timeout)}; see 'warren node ls'"
            )
        time.sleep(POLL_INTERVAL)


def _reachable_manager(node: Node) -> bool:
    return node.role == NodeRole.MANAGER and node.manager_status in ("leader", "reachable")


@node_group.command("promote")
@click.argument("nodes", nargs=-1, required=True, metavar="NODE...")
@_role_wait_options
@pass_cli
def promote(cli: CliContext, nodes: tuple[str, ...], detach: bool, timeout: float) -> None:
    """Make workers managers: each joins Raft and serves the API.

    The node starts its manager itself, on the ports its 'worker join'
    command was given (--api-port, --raft-port, ...).
    """
    client = cli.client()
    for ref in nodes:
        if client.get_node(ref).role == NodeRole.MANAGER:
            click.echo(f"Node {ref} is already a manager.")
            continue
        node = client.promote_node(ref)
        click.echo(f"Node {ref} promoted to a manager in the cluster.")
        if not detach:
            what = f"{ref} is not a reachable manager yet"
            _wait_until(client, node.id, _reachable_manager, timeout, what)


@node_group.command("demote")
@click.argument("nodes", nargs=-1, required=True, metavar="NODE...")
@click.option(
    "-f", "--force", is_flag=True, help="Demote even if the managers left lose their quorum."
)
@_role_wait_options
@pass_cli
def demote(
    cli: CliContext, nodes: tuple[str, ...], force: bool, detach: bool, timeout: float
) -> None:
    """Make managers workers: each leaves Raft and stops serving the API."""
    client = cli.client()
    for ref in nodes:
        before = client.get_node(ref)
        if before.role == NodeRole.WORKER and before.desired_role is None:
            click.echo(f"Node {ref} is already a worker.")
            continue
        node = client.demote_node(ref, force=force)
        if before.role == NodeRole.WORKER:
            click.echo(f"Promotion of node {ref} cancelled.")
            continue
        click.echo(f"Manager {ref} demoted in the cluster.")
        if not detach:
            what = f"{ref} still shows as a manager"
            _wait_until(client, node.id, lambda n: n.role == NodeRole.WORKER, timeout, what)
