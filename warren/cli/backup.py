"""``warren cluster backup`` and ``warren cluster restore``.

The passphrase stays on this host: the manager hands out the state and the CA,
and this command encrypts them (see ``warren.security.backup_file`` for the format).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from warren.cli.cluster import manager_daemon_options, manager_options
from warren.cli.context import CliContext, pass_cli
from warren.cli.options import check_log_level
from warren.core.errors import InvalidArgument
from warren.security.tls import write_private

PASSPHRASE_ENV = "WARREN_BACKUP_PASSPHRASE"
MIN_PASSPHRASE_LENGTH = 8

passphrase_file_option = click.option(
    "--passphrase-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    metavar="FILE",
    help=f"Read the passphrase from FILE  [default: env {PASSPHRASE_ENV}, else a prompt]",
)


def read_passphrase(passphrase_file: Path | None, new: bool) -> str:
    """From the file, else the environment, else a prompt (twice for a ``new`` one)."""
    if passphrase_file is not None:
        passphrase = passphrase_file.read_text(encoding="utf-8").rstrip("\r\n")
    elif PASSPHRASE_ENV in os.environ:
        passphrase = os.environ[PASSPHRASE_ENV]
    else:
        passphrase = click.prompt(
            "Backup passphrase",
            hide_input=True,
            confirmation_prompt="Repeat the backup passphrase" if new else False,
            err=True,
        )
    if not passphrase:
        raise InvalidArgument("the backup passphrase is empty")
    if new and len(passphrase) < MIN_PASSPHRASE_LENGTH:
        raise InvalidArgument(
            f"the backup passphrase must be at least {MIN_PASSPHRASE_LENGTH} characters: "
            "the backup holds the cluster's CA key"
        )
    return passphrase


@click.command("backup")
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    metavar="FILE",
    help="File to write the encrypted backup to (mode 0600).",
)
@passphrase_file_option
@pass_cli
def backup(cli: CliContext, output: Path, passphrase_file: Path | None) -> None:
    """Save the cluster's state and CA to FILE, encrypted with a passphrase.

    The backup is consistent: it holds every change acknowledged before the
    command ran. Keep it safe and keep the passphrase apart from it: it holds
    the CA key, which can sign certificates for the whole cluster.
    """
    from warren.security.backup_file import encrypt_backup

    passphrase = read_passphrase(passphrase_file, new=True)
    data = cli.client().backup()
    write_private(output, encrypt_backup(data, passphrase))
    state = data.state
    click.echo(
        f"Backed up cluster {state.cluster.id} at revision {state.revision} "
        f"({state.count('services')} services, {state.count('nodes')} nodes) to {output}."
    )


@click.command("restore")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@passphrase_file_option
@manager_daemon_options
@pass_cli
def restore(cli: CliContext, /, file: Path, passphrase_file: Path | None, **fields: Any) -> None:
    """Start a new one-manager cluster from the backup FILE, and run it until stopped.

    The data dir must be new or empty. The cluster keeps its CA, join tokens,
    services and workers; this host becomes its only manager. Services get new
    tasks. Workers show as down until they reconnect: restart each with its old
    data dir and 'warren worker join --manager THIS-MANAGER'. As after 'cluster
    init', admin credentials go to the config dir, and 'warren cluster init'
    with the same data dir restarts this manager.
    """
    from warren.security.backup_file import decrypt_backup

    # Checked before anything is asked or written.
    check_log_level()
    cli.daemons.check_restore_target(fields["data_dir"])
    sealed = file.read_bytes()
    data = decrypt_backup(sealed, read_passphrase(passphrase_file, new=False))
    click.get_current_context().exit(
        cli.daemons.restore_manager(manager_options(cli, **fields), data)
    )
