"""``warren service ...``: create, list, inspect, scale, update, remove services; logs."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

import click

from warren.cli.context import CliContext, output_option, pass_cli
from warren.cli.logs import logs_options, print_logs
from warren.cli.options import (
    WaitOptions,
    container_options,
    health_options,
    network_options,
    network_update_options,
    resource_options,
    restart_options,
    wait_options,
)
from warren.cli.output import ago, document, short_id, short_image, table
from warren.cli.parsing import COMMAND, ENV, LABEL, SCALE, model_range
from warren.cli.progress import wait_for_convergence
from warren.cli.specs import (
    ContainerOptions,
    CreateOptions,
    HealthOptions,
    NetworkChanges,
    NetworkOptions,
    ResourceOptions,
    RestartOptions,
    SpecChanges,
    apply_changes,
    build_spec,
)
from warren.core.models import Placement, Service, ServiceMode, ServiceSpec, Task
from warren.core.networks import PortConfig
from warren.core.states import TaskState


@click.group("service")
def service_group() -> None:
    """Manage services."""


def _wait(cli: CliContext, services: Sequence[Service], wait: WaitOptions) -> None:
    if wait.detach:
        return
    for service in services:
        wait_for_convergence(cli.client(), service, wait.timeout)


@service_group.command("create")
@click.argument("name")
@click.option("--image", required=True, help="Container image to run.")
@click.option(
    "--replicas",
    type=model_range(ServiceSpec, "replicas"),
    metavar="N",
    help="Number of tasks [default: 1].",
)
@click.option(
    "--mode",
    type=click.Choice([m.value for m in ServiceMode]),
    default=ServiceMode.REPLICATED.value,
    show_default=True,
    help="global: one task on every eligible node.",
)
@click.option("-e", "--env", type=ENV, multiple=True, help="Set an environment variable.")
@click.option("-l", "--label", type=LABEL, multiple=True, help="Set a service label.")
@click.option(
    "--constraint",
    multiple=True,
    metavar="EXPR",
    help="Placement constraint, e.g. node.labels.zone==a.",
)
@resource_options
@restart_options
@click.option(
    "--max-replicas-per-node",
    type=model_range(Placement, "max_replicas_per_node"),
    metavar="N",
    help="0 (default): unlimited.",
)
@container_options
@health_options
@network_options
@wait_options
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_cli
def create(
    cli: CliContext,
    name: str,
    image: str,
    replicas: int | None,
    mode: str,
    env: tuple[tuple[str, str], ...],
    label: tuple[tuple[str, str], ...],
    constraint: tuple[str, ...],
    resources: ResourceOptions,
    restart: RestartOptions,
    max_replicas_per_node: int | None,
    container: ContainerOptions,
    health: HealthOptions,
    networks: NetworkOptions,
    wait: WaitOptions,
    command: tuple[str, ...],
) -> None:
    """Create a service. Put the container's command after "--", as in

    warren service create web --image nginx:1.27 -- nginx -g "daemon off;"
    """
    spec = build_spec(
        CreateOptions(
            name=name,
            image=image,
            mode=mode,
            replicas=replicas,
            args=command,
            env=dict(env),
            labels=dict(label),
            constraints=constraint,
            resources=resources,
            restart=restart,
            max_replicas_per_node=max_replicas_per_node,
            container=container,
            health=health,
            networks=networks,
        )
    )
    service = cli.client().create_service(spec)
    click.echo(service.id)
    _wait(cli, [service], wait)


def _replicas(service: Service, tasks: Sequence[Task]) -> str:
    current = [t for t in tasks if t.desired_state == TaskState.RUNNING]
    running = sum(1 for t in current if t.status.state == TaskState.RUNNING)
    desired = len(current) if service.spec.mode == ServiceMode.GLOBAL else service.spec.replicas
    return f"{running}/{desired}"


no_trunc_option = click.option(
    "--no-trunc", is_flag=True, help="Show whole IDs and image references (with the full digest)."
)


@service_group.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only print IDs.")
@no_trunc_option
@output_option
@pass_cli
def list_services(cli: CliContext, quiet: bool, no_trunc: bool) -> None:
    """List services."""
    client = cli.client()
    services = client.list_services()
    fmt = cli.output_format()
    if quiet or fmt != "table":
        click.echo("\n".join(s.id for s in services) if quiet else document(services, fmt))
        return
    by_service: dict[str, list[Task]] = {}
    for task in client.list_tasks():
        by_service.setdefault(task.service_id, []).append(task)
    rows = [
        [
            s.id if no_trunc else short_id(s.id),
            s.spec.name,
            str(s.spec.mode),
            _replicas(s, by_service.get(s.id, [])),
            s.spec.container.image if no_trunc else short_image(s.spec.container.image),
        ]
        for s in services
    ]
    click.echo(table(["ID", "NAME", "MODE", "REPLICAS", "IMAGE"], rows))


def _slot_order(task: Task) -> tuple[str, int, str, float]:
    # Newest first within a slot, so older attempts read as its history.
    return (task.service_name, task.slot, "" if task.slot else task.node_id, -task.created_at)


def _current_state(task: Task, now: float) -> str:
    state = str(task.status.state)
    if task.status.health:
        state = f"{state} ({task.status.health})"
    return f"{state} {ago(task.status.timestamp, now)}" if task.status.timestamp else state


def _message(task: Task) -> str:
    # A pending task's message is the scheduler's reason; a running one's is noise.
    if task.status.err:
        return task.status.err
    return "" if task.status.state == TaskState.RUNNING else task.status.message


def task_rows(
    tasks: Sequence[Task], hostnames: dict[str, str], now: float, no_trunc: bool = False
) -> list[list[str]]:
    cut_id = (lambda text: text) if no_trunc else short_id
    cut_image = (lambda text: text) if no_trunc else short_image
    rows: list[list[str]] = []
    seen: set[tuple[str, int, str]] = set()
    for task in sorted(tasks, key=_slot_order):
        slot = (task.service_id, task.slot, "" if task.slot else task.node_id)
        rows.append(
            [
                cut_id(task.id),
                task.name if slot not in seen else f" \\_ {task.name}",
                cut_image(task.spec.container.image),
                hostnames.get(task.node_id, cut_id(task.node_id)),
                str(task.desired_state),
                _current_state(task, now),
                _message(task),
            ]
        )
        seen.add(slot)
    return rows


@service_group.command("ps")
@click.argument("services", nargs=-1, required=True, metavar="SERVICE...")
@click.option("-q", "--quiet", is_flag=True, help="Only print task IDs.")
@no_trunc_option
@output_option
@pass_cli
def list_service_tasks(
    cli: CliContext, services: tuple[str, ...], quiet: bool, no_trunc: bool
) -> None:
    """List the tasks of one or more services, with their history."""
    client = cli.client()
    tasks = [task for ref in services for task in client.list_tasks(service=ref)]
    fmt = cli.output_format()
    if quiet or fmt != "table":
        click.echo("\n".join(t.id for t in tasks) if quiet else document(tasks, fmt))
        return
    hostnames = {node.id: node.hostname for node in client.list_nodes()}
    headers = ["ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR/MESSAGE"]
    click.echo(table(headers, task_rows(tasks, hostnames, time.time(), no_trunc)))


@service_group.command("inspect")
@click.argument("services", nargs=-1, required=True, metavar="SERVICE...")
@output_option
@pass_cli
def inspect(cli: CliContext, services: tuple[str, ...]) -> None:
    """Show services in full (JSON unless -o yaml)."""
    client = cli.client()
    found = [client.get_service(ref) for ref in services]
    fmt = cli.output_format("json")
    click.echo(document(found, "yaml" if fmt == "yaml" else "json"))


@service_group.command("scale")
@click.argument("scales", nargs=-1, required=True, type=SCALE, metavar="SERVICE=REPLICAS...")
@wait_options
@pass_cli
def scale(cli: CliContext, scales: tuple[tuple[str, int], ...], wait: WaitOptions) -> None:
    """Set the replica count of one or more replicated services."""
    client = cli.client()
    scaled: list[Service] = []
    for ref, replicas in scales:
        scaled.append(client.scale_service(ref, replicas))
        click.echo(f"{ref} scaled to {replicas}")
    _wait(cli, scaled, wait)


@service_group.command("update")
@click.argument("service")
@click.option("--image", help="New image.")
@click.option(
    "--replicas",
    type=model_range(ServiceSpec, "replicas"),
    metavar="N",
    help="New number of tasks.",
)
@click.option("--args", type=COMMAND, metavar='"CMD ARG..."', help="New command, shell-quoted.")
@click.option("--env-add", type=ENV, multiple=True, help="Add or set a variable.")
@click.option("--env-rm", multiple=True, metavar="KEY", help="Remove a variable.")
@click.option("--label-add", type=LABEL, multiple=True, help="Add or set a label.")
@click.option("--label-rm", multiple=True, metavar="KEY", help="Remove a label.")
@click.option("--constraint-add", multiple=True, metavar="EXPR", help="Add a constraint.")
@click.option("--constraint-rm", multiple=True, metavar="EXPR", help="Remove a constraint.")
@resource_options
@restart_options
@click.option(
    "--max-replicas-per-node",
    type=model_range(Placement, "max_replicas_per_node"),
    metavar="N",
    help="0: unlimited.",
)
@container_options
@health_options
@click.option("--no-healthcheck", is_flag=True, help="Remove the health check.")
@network_update_options
@wait_options
@pass_cli
def update(
    cli: CliContext,
    service: str,
    image: str | None,
    replicas: int | None,
    args: tuple[str, ...] | None,
    env_add: tuple[tuple[str, str], ...],
    env_rm: tuple[str, ...],
    label_add: tuple[tuple[str, str], ...],
    label_rm: tuple[str, ...],
    constraint_add: tuple[str, ...],
    constraint_rm: tuple[str, ...],
    resources: ResourceOptions,
    restart: RestartOptions,
    max_replicas_per_node: int | None,
    container: ContainerOptions,
    health: HealthOptions,
    no_healthcheck: bool,
    network_add: tuple[str, ...],
    network_rm: tuple[str, ...],
    publish_add: tuple[PortConfig, ...],
    publish_rm: tuple[PortConfig, ...],
    endpoint_mode: str | None,
    network_mode: str | None,
    wait: WaitOptions,
) -> None:
    """Change a service's spec; its tasks are replaced with the new one.

    Given alone, --health-interval (and the other timings) keep the current probe.
    """
    changes = SpecChanges(
        image=image,
        replicas=replicas,
        args=args,
        env_add=dict(env_add),
        env_rm=env_rm,
        label_add=dict(label_add),
        label_rm=label_rm,
        constraint_add=constraint_add,
        constraint_rm=constraint_rm,
        resources=resources,
        restart=restart,
        max_replicas_per_node=max_replicas_per_node,
        container=container,
        health=health,
        no_healthcheck=no_healthcheck,
    )
    client = cli.client()
    # The spec holds network IDs: names given here are looked up first.
    changes = replace(
        changes,
        networks=NetworkChanges(
            network_add=tuple(client.get_network(ref).id for ref in network_add),
            network_rm=tuple(client.get_network(ref).id for ref in network_rm),
            publish_add=publish_add,
            publish_rm=publish_rm,
            endpoint_mode=endpoint_mode,
            network_mode=network_mode,
        ),
    )
    current = client.get_service(service)
    spec = apply_changes(current.spec, changes)
    # The version read makes this a compare-and-swap: a concurrent edit is not lost.
    updated = client.update_service(current.id, spec, version=current.version)
    click.echo(updated.spec.name)
    _wait(cli, [updated], wait)


@service_group.command("logs")
@click.argument("service")
@logs_options
@pass_cli
def logs(cli: CliContext, service: str, follow: bool, tail: int, timestamps: bool) -> None:
    """Print the output (stdout and stderr) of a service's running tasks."""
    client = cli.client()
    print_logs(client, client.logs(service=service, follow=follow, tail=tail), timestamps)


@service_group.command("rm")
@click.argument("services", nargs=-1, required=True, metavar="SERVICE...")
@pass_cli
def remove(cli: CliContext, services: tuple[str, ...]) -> None:
    """Remove services; their tasks are stopped."""
    client = cli.client()
    for ref in services:
        client.delete_service(ref)
        click.echo(ref)
