"""Printing task output like ``docker service logs``: ``web.2@node-1    | line``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from warren.cli.client import LogLine, WarrenClient
from warren.cli.output import short_id
from warren.cli.parsing import TAIL

F = TypeVar("F", bound=Callable[..., Any])


def logs_options(function: F) -> F:
    """``-f/--follow``, ``--tail`` and ``-t/--timestamps``."""
    options = [
        click.option("-f", "--follow", is_flag=True, help="Keep printing new output."),
        click.option(
            "--tail",
            type=TAIL,
            default="all",
            show_default=True,
            metavar="N",
            help="Only the last N lines of each task.",
        ),
        click.option("-t", "--timestamps", is_flag=True, help="Show when each line was written."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def rfc3339(timestamp: float) -> str:
    """UTC with microseconds, e.g. ``2025-01-02T03:04:05.123456Z``."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_line(line: LogLine, node: str, timestamps: bool) -> str:
    text = line.line.decode("utf-8", errors="replace")
    stamp = f"{rfc3339(line.timestamp)} " if timestamps else ""
    return f"{line.task_name}@{node}    | {stamp}{text}"


class _NodeNames:
    """Node IDs to hostnames, listed once, on the first line (no lines: no call)."""

    def __init__(self, client: WarrenClient) -> None:
        self._client = client
        self._names: dict[str, str] | None = None

    def __call__(self, node_id: str) -> str:
        if self._names is None:
            self._names = {node.id: node.hostname for node in self._client.list_nodes()}
        return self._names.get(node_id) or short_id(node_id)


def print_logs(client: WarrenClient, lines: Iterator[LogLine], timestamps: bool) -> None:
    """Print lines until the stream ends, or until Ctrl-C, which is not an error.

    Both streams go to stdout, as with ``docker service logs``.
    """
    node_name = _NodeNames(client)
    try:
        for line in lines:
            click.echo(format_line(line, node_name(line.node_id), timestamps))
    except KeyboardInterrupt:
        pass
    finally:
        close = getattr(lines, "close", None)
        if close is not None:
            close()  # cancels the stream at once
