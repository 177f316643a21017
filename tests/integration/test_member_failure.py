"""A manager whose etcd member cannot be kept running ends its node's process
(a supervisor restarts it) instead of serving from a dead member."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest
from harness import Cluster
from support import wait_for

pytestmark = pytest.mark.integration


def _member_pid(data_dir: Path) -> int | None:
    """The etcd process whose data is under ``data_dir``, if one runs."""
    needle = str(data_dir / "etcd" / "data").encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if argv and argv[0].endswith(b"etcd") and needle in argv:
                return int(entry.name)
    return None


def test_a_member_that_keeps_dying_ends_the_node_with_an_error(cluster: Cluster) -> None:
    manager = cluster.init_manager()
    data_dir = cluster.root / "manager"
    kills = 0
    while manager.alive and kills < 10:
        pid = wait_for(lambda: _member_pid(data_dir) or not manager.alive, 30, "the member")
        if pid is True:
            break
        os.kill(pid, signal.SIGKILL)
        kills += 1
        wait_for(
            lambda p=pid: _member_pid(data_dir) not in (p,) or not manager.alive,
            30,
            "the member restarted, or the node ended",
        )
    wait_for(lambda: not manager.alive, 30, "the node to end")
    assert manager.popen is not None and manager.popen.returncode != 0
    # Restarted as long as the supervisor's budget lasted (5 a minute), then given up.
    assert kills == 6, kills
    assert "etcd member failed and could not be restarted" in manager.tail(60)
    assert _member_pid(data_dir) is None
