"""``warren network ...``: create, list, inspect and remove networks; the doctor."""

from __future__ import annotations

import click

from warren.cli.context import CliContext, output_option, pass_cli
from warren.cli.output import document, table
from warren.cli.parsing import LABEL
from warren.core.doctor import MAX_TIMEOUT, DoctorReport
from warren.core.networks import Network, NetworkSpec


@click.group("network")
def network_group() -> None:
    """Manage networks: services on a network reach each other by name."""


@network_group.command("create")
@click.argument("name")
@click.option("--subnet", default="", help="IPv4 CIDR, a /8 to a /24 (default: a free /16).")
@click.option("--label", "labels", multiple=True, type=LABEL, help="KEY=VALUE (repeatable).")
@pass_cli
def create(cli: CliContext, name: str, subnet: str, labels: tuple[tuple[str, str], ...]) -> None:
    """Create a network and print its ID."""
    spec = NetworkSpec(name=name, subnet=subnet, labels=dict(labels))
    click.echo(cli.client().create_network(spec).id)


@network_group.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only print IDs.")
@click.option("--no-trunc", is_flag=True, help="Show full IDs.")
@output_option
@pass_cli
def list_networks(cli: CliContext, quiet: bool, no_trunc: bool) -> None:
    """List networks."""
    networks = cli.client().list_networks()
    fmt = cli.output_format()
    if quiet or fmt != "table":
        click.echo("\n".join(n.id for n in networks) if quiet else document(networks, fmt))
        return
    rows = [[_short(n, no_trunc), n.spec.name, n.subnet, str(len(n.blocks))] for n in networks]
    click.echo(table(["ID", "NAME", "SUBNET", "NODES"], rows))


def _short(network: Network, no_trunc: bool) -> str:
    return network.id if no_trunc else network.id[:12]


@network_group.command("inspect")
@click.argument("networks", nargs=-1, required=True, metavar="NETWORK...")
@output_option
@pass_cli
def inspect(cli: CliContext, networks: tuple[str, ...]) -> None:
    """Show networks in full (JSON unless -o yaml): subnet and node blocks."""
    client = cli.client()
    found = [client.get_network(ref) for ref in networks]
    fmt = cli.output_format("json")
    click.echo(document(found, "yaml" if fmt == "yaml" else "json"))


@network_group.command("rm")
@click.argument("networks", nargs=-1, required=True, metavar="NETWORK...")
@pass_cli
def remove(cli: CliContext, networks: tuple[str, ...]) -> None:
    """Remove networks no service uses."""
    client = cli.client()
    for ref in networks:
        client.remove_network(ref)
        click.echo(ref)


@network_group.command("doctor")
@click.option("--service", default="", help="Check only this service (ID, prefix or name).")
@click.option(
    "--timeout",
    type=click.FloatRange(0, MAX_TIMEOUT, min_open=True),
    default=None,
    help="Seconds to wait for the nodes' answers (default: 8).",
)
@output_option
@pass_cli
def doctor(cli: CliContext, service: str, timeout: float | None) -> None:
    """Check the networks from every node: WireGuard handshakes, round trips and path
    MTU to each peer, service names from a container, VIPs and published ports.

    Exits 1 when any check fails (each failure is followed by a hint).
    """
    reports = cli.client().network_doctor(service, timeout or 0.0)
    fmt = cli.output_format()
    if fmt != "table":
        click.echo(document(reports, fmt))
    else:
        click.echo(doctor_table(reports))
        hints = doctor_hints(reports)
        if hints:
            click.echo("\n" + hints)
    if any(report.failed for report in reports):
        raise click.exceptions.Exit(1)


def _node_name(report: DoctorReport) -> str:
    return report.hostname or report.node_id


def doctor_table(reports: list[DoctorReport]) -> str:
    """NODE, CHECK, TARGET, RESULT (OK, FAIL or SKIP), DETAIL: a row per check."""
    rows = [
        [_node_name(r), str(c.kind), c.target, str(c.result).upper(), c.detail]
        for r in reports
        for c in r.checks
    ]
    return table(["NODE", "CHECK", "TARGET", "RESULT", "DETAIL"], rows)


def doctor_hints(reports: list[DoctorReport]) -> str:
    """Each failure with its hint, below the table ("" when nothing failed)."""
    lines = []
    for report in reports:
        for check in report.checks:
            if check.failed:
                lines.append(
                    f"FAIL {_node_name(report)} {check.kind} {check.target}: {check.detail}"
                )
                if check.hint:
                    lines.append(f"  hint: {check.hint}")
    return "\n".join(lines)
