"""``warren task ...``: look at single tasks."""

from __future__ import annotations

import click

from warren.cli.context import CliContext, output_option, pass_cli
from warren.cli.logs import logs_options, print_logs
from warren.cli.output import document


@click.group("task")
def task_group() -> None:
    """Look at tasks (a service's replicas)."""


@task_group.command("inspect")
@click.argument("tasks", nargs=-1, required=True, metavar="TASK...")
@output_option
@pass_cli
def inspect(cli: CliContext, tasks: tuple[str, ...]) -> None:
    """Show tasks in full (JSON unless -o yaml)."""
    client = cli.client()
    found = [client.get_task(ref) for ref in tasks]
    fmt = cli.output_format("json")
    click.echo(document(found, "yaml" if fmt == "yaml" else "json"))


@task_group.command("logs")
@click.argument("task")
@logs_options
@pass_cli
def logs(cli: CliContext, task: str, follow: bool, tail: int, timestamps: bool) -> None:
    """Print a task's output (stdout and stderr)."""
    client = cli.client()
    print_logs(client, client.logs(task=task, follow=follow, tail=tail), timestamps)
