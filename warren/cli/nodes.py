"""``warren node ...``: list, inspect, update and remove nodes."""

from __future__ import annotations

import click

from warren.cli.context import CliContext, output_option, pass_cli
from warren.cli.output import document, table
from warren.cli.parsing import LABEL
from warren.core.models import Availability

AVAILABILITIES = [a.value for a in Availability]


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
