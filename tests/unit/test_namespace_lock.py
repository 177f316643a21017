"""One live node per containerd namespace: a flock that dies with its process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from warren.agent.containerd.namespace_lock import NamespaceLock, lock_path
from warren.core.errors import FailedPrecondition, InvalidArgument


@pytest.fixture
def socket(tmp_path: Path) -> str:
    path = tmp_path / "containerd.sock"
    path.touch()
    return str(path)


def test_a_second_node_is_refused_and_told_who_holds_the_namespace(socket: str) -> None:
    first = NamespaceLock.acquire(socket, "warren", "pid 1, state in /a")
    try:
        with pytest.raises(FailedPrecondition) as refused:
            NamespaceLock.acquire(socket, "warren", "pid 2, state in /b")
        assert str(refused.value) == (
            "containerd namespace 'warren' is in use by another live Warren node "
            "(pid 1, state in /a); give each node on this containerd its own "
            "--containerd-namespace"
        )
        # Another namespace of the same containerd is free.
        NamespaceLock.acquire(socket, "warren-2", "pid 2, state in /b").release()
    finally:
        first.release()
    # Released: the namespace can be taken again.
    NamespaceLock.acquire(socket, "warren", "pid 3, state in /c").release()


def test_the_lock_follows_the_socket_through_symlinks(socket: str, tmp_path: Path) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(Path(socket).parent)
    assert lock_path(str(alias / "containerd.sock"), "ns") == lock_path(socket, "ns")
    held = NamespaceLock.acquire(socket, "ns", "pid 1")
    try:
        with pytest.raises(FailedPrecondition):
            NamespaceLock.acquire(str(alias / "containerd.sock"), "ns", "pid 2")
    finally:
        held.release()


def test_a_killed_node_leaves_no_stale_lock(socket: str) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from warren.agent.containerd.namespace_lock import NamespaceLock\n"
            f"NamespaceLock.acquire({socket!r}, 'warren', 'pid child')\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(FailedPrecondition, match=r"\(pid child\)"):
            NamespaceLock.acquire(socket, "warren", "pid parent")
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    NamespaceLock.acquire(socket, "warren", "pid parent").release()


@pytest.mark.parametrize("namespace", ["", "../etc", "a/b", "-x", "x-", "a b"])
def test_a_namespace_containerd_would_refuse_is_refused_first(socket: str, namespace: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid containerd namespace"):
        NamespaceLock.acquire(socket, namespace, "pid 1")
    assert [p.name for p in Path(socket).parent.iterdir()] == ["containerd.sock"]


def test_an_unwritable_socket_directory_is_one_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "gone" / "containerd.sock"
    with pytest.raises(FailedPrecondition, match=r"cannot open .*gone/containerd\.sock\.warren-"):
        NamespaceLock.acquire(str(missing), "warren", "pid 1")
