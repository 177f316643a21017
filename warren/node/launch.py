"""What the daemon commands of the CLI start, given the options they built.

The CLI takes a ``Daemons`` inside the ``Wiring`` it gets as click's ``obj``
(``warren.cli.context``), so a test hands it fakes instead of replacing modules.
The real ones load the daemon only when called: admin commands do not pay for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from warren.node.options import ManagerOptions, WorkerOptions
    from warren.security.backup_file import Backup


def _run_manager(options: ManagerOptions) -> int:
    from warren.node import daemon

    return daemon.run_manager(options)


def _run_worker(options: WorkerOptions) -> int:
    from warren.node import daemon

    return daemon.run_worker(options)


def _check_restore_target(data_dir: Path) -> None:
    from warren.manager.backup import check_restore_target

    check_restore_target(data_dir)


def _restore_manager(options: ManagerOptions, backup: Backup) -> int:
    from warren.node import daemon

    return daemon.restore_manager(options, backup)


@dataclass(frozen=True)
class Daemons:
    """Each daemon command's entry point; the defaults run the real daemon in this process."""

    run_manager: Callable[[ManagerOptions], int] = _run_manager
    run_worker: Callable[[WorkerOptions], int] = _run_worker
    # A restore refuses a used data dir before it asks for the passphrase.
    check_restore_target: Callable[[Path], None] = _check_restore_target
    restore_manager: Callable[[ManagerOptions, Backup], int] = _restore_manager
