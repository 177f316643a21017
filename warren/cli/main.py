"""The root ``warren`` command (also installed as ``wrn``)."""

from __future__ import annotations

from typing import Any

import click
import grpc

from warren.cli.backup import backup, restore
from warren.cli.cluster import cluster_group
from warren.cli.config import DEFAULT_CONFIG_DIR, expand, split_managers
from warren.cli.context import CliContext, Wiring
from warren.cli.images import image_group
from warren.cli.manager import manager_group
from warren.cli.networks import network_group
from warren.cli.nodes import node_group
from warren.cli.output import FORMATS
from warren.cli.services import service_group
from warren.cli.tasks import task_group
from warren.cli.worker import worker_group
from warren.core.errors import WarrenError
from warren.proto.errors import error_from_rpc


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


class WarrenGroup(click.Group):
    """Turns Warren, gRPC and OS errors into one ``Error:`` line and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except WarrenError as exc:
            raise click.ClickException(_one_line(str(exc))) from None
        except grpc.RpcError as exc:
            raise click.ClickException(_one_line(str(error_from_rpc(exc)))) from None
        except BrokenPipeError:
            raise  # click already exits quietly when stdout goes away
        except OSError as exc:
            raise click.ClickException(_one_line(str(exc))) from None


@click.group(
    cls=WarrenGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--manager",
    envvar="WARREN_MANAGER",
    metavar="HOST:PORT[,HOST:PORT...]",
    help="Manager API address(es), tried in order  [default: from the config dir]",
)
@click.option(
    "--config-dir",
    envvar="WARREN_CONFIG_DIR",
    default=DEFAULT_CONFIG_DIR,
    show_default=True,
    type=click.Path(file_okay=False),
    help="Admin credentials and config.json (env WARREN_CONFIG_DIR).",
)
@click.option("-o", "--output", type=click.Choice(FORMATS), help="Output format of read commands.")
@click.option(
    "--consistent",
    is_flag=True,
    help="Linearizable reads: see every write committed before the command, on any manager.",
)
@click.version_option(package_name="warren", prog_name="warren")
@click.pass_context
def cli(
    ctx: click.Context, manager: str | None, config_dir: str, output: str | None, consistent: bool
) -> None:
    """Warren: run containers across a cluster, with Docker Swarm habits."""
    # main() hands the real wiring, a test its fakes; a bare ``cli()`` gets the real one.
    wiring = Wiring() if ctx.obj is None else ctx.obj
    if not isinstance(wiring, Wiring):
        raise TypeError(f"the warren command takes a Wiring as its obj, not {wiring!r}")
    context = CliContext(
        config_dir=expand(config_dir),
        manager_override=split_managers(manager or ""),
        client_factory=wiring.client_factory,
        output=output,
        linearizable=consistent,
        daemons=wiring.daemons,
    )
    ctx.obj = context
    ctx.call_on_close(context.close)


cluster_group.add_command(backup)
cluster_group.add_command(restore)
cli.add_command(cluster_group)
cli.add_command(worker_group)
cli.add_command(manager_group)
cli.add_command(node_group)
cli.add_command(network_group)
cli.add_command(service_group)
cli.add_command(task_group)
cli.add_command(image_group)


def main() -> None:
    cli(obj=Wiring())
