"""Waiting for a service to converge, printing a line per change like ``docker service``."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import click

from warren.cli.client import WarrenClient
from warren.cli.parsing import format_seconds
from warren.core.constraints import parse_constraint
from warren.core.models import Node, Service, ServiceMode, Task
from warren.core.states import TaskState

POLL_INTERVAL = 0.3


@dataclass(frozen=True)
class Progress:
    running: int
    desired: int
    converged: bool
    # Why it has not converged yet, e.g. "1 task pending: no suitable node (...)".
    waiting: str = ""


def _is_running(task: Task) -> bool:
    return task.status.state == TaskState.RUNNING


def _reason(task: Task) -> str:
    return task.status.err or task.status.message


def _describe(stuck: Sequence[Task], surplus: int, missing: int) -> str:
    parts: list[str] = []
    states = Counter(task.status.state for task in stuck)
    for state, count in states.items():
        reasons = [_reason(t) for t in stuck if t.status.state == state and _reason(t)]
        noun = "task" if count == 1 else "tasks"
        parts.append(f"{count} {noun} {state}" + (f": {reasons[0]}" if reasons else ""))
    if missing:
        parts.append(f"{missing} {'task' if missing == 1 else 'tasks'} not created yet")
    if surplus:
        parts.append(f"{surplus} old {'task' if surplus == 1 else 'tasks'} still running")
    return "; ".join(parts)


def measure(service: Service, tasks: Sequence[Task], eligible_nodes: Callable[[], int]) -> Progress:
    """How far ``service`` is from running its current spec everywhere it should."""
    current = [
        t
        for t in tasks
        if t.desired_state == TaskState.RUNNING and t.spec_version == service.spec_version
    ]
    running = sum(1 for t in current if _is_running(t))
    # Old or replaced tasks still running: the service has not settled until they stop.
    surplus = sum(1 for t in tasks if _is_running(t)) - running
    stuck = [t for t in current if not _is_running(t)]
    if service.spec.mode == ServiceMode.GLOBAL:
        # Before the first task exists, the eligible nodes say how many to expect.
        desired = len(current) or eligible_nodes()
        missing = desired - len(current)
    else:
        desired = service.spec.replicas
        missing = max(0, desired - len(current))
    converged = running == desired and not stuck and not missing and not surplus
    return Progress(running, desired, converged, _describe(stuck, surplus, missing))


def eligible_count(service: Service, nodes: Sequence[Node]) -> int:
    """Nodes a global service would place a task on right now."""
    constraints = [parse_constraint(expr) for expr in service.spec.placement.constraints]
    return sum(1 for n in nodes if n.schedulable and all(c.matches(n) for c in constraints))


def wait_for_convergence(client: WarrenClient, service: Service, timeout: float) -> None:
    """Poll the service's tasks until it converges; raise a one-line error on timeout."""
    name = service.spec.name
    deadline = time.monotonic() + timeout
    last_line = ""
    try:
        while True:
            tasks = client.list_tasks(service=service.id)
            progress = measure(service, tasks, lambda: eligible_count(service, client.list_nodes()))
            line = f"{name}: {progress.running}/{progress.desired} running"
            if line != last_line:
                click.echo(line)
                last_line = line
            if progress.converged:
                click.echo(f"{name}: converged")
                return
            if time.monotonic() >= deadline:
                detail = f": {progress.waiting}" if progress.waiting else ""
                raise click.ClickException(
                    f"{name} did not converge within {format_seconds(timeout)}{detail}"
                )
            time.sleep(POLL_INTERVAL)
    except KeyboardInterrupt:
        # Like Docker: interrupting the wait does not undo the change.
        click.echo(
            f"\nOperation continuing in background; check it with 'warren service ps {name}'.",
            err=True,
        )
        raise click.exceptions.Exit(130) from None
