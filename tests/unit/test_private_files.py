"""Warren's files are its owner's alone: 0700 directories, 0600 files (issue #7)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import make_task

from warren.agent.cache import TaskCache
from warren.agent.containerd.hostfiles import is_host_file, write_host_files
from warren.agent.logfile import RotatingLog
from warren.agent.runtime import LogEntry, LogStream
from warren.security.private_files import make_private, restrict_new_files


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The usual 022: what a file gets without an explicit mode."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def private_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        restrict_new_files()
        yield
    finally:
        os.umask(old)


def test_make_private_tightens_an_old_tree(tmp_path: Path, loose_umask: None) -> None:
    root = tmp_path / "data"
    (root / "raft").mkdir(parents=True)
    (root / "raft" / "journal").write_text("secret")
    (root / "agent").mkdir(mode=0o755)
    (root / "agent" / "tasks.json").write_text("{}")
    (root / "agent" / "tasks.json").chmod(0o666)
    outside = tmp_path / "outside.txt"
    outside.write_text("not ours")
    (root / "link").symlink_to(outside)
    root.chmod(0o755)

    make_private(root)

    assert _mode(root) == 0o700
    assert _mode(root / "raft") == _mode(root / "agent") == 0o700
    assert _mode(root / "raft" / "journal") == _mode(root / "agent" / "tasks.json") == 0o600
    # A symbolic link is not followed: what it points to is not Warren's.
    assert _mode(outside) == 0o644


def test_make_private_creates_the_directory_0700(tmp_path: Path, loose_umask: None) -> None:
    root = tmp_path / "new" / "data"
    make_private(root)
    assert _mode(root) == 0o700


def test_make_private_keeps_container_host_files_readable(
    tmp_path: Path, private_umask: None
) -> None:
    directory = tmp_path / "data" / "containerd" / "containers" / "c1"
    files = write_host_files(directory, "c1", host_network=False)
    (directory / "container.log").write_text("output")
    (directory / "container.log").chmod(0o644)
    for path in (files.hosts, files.resolv_conf, files.hostname):
        # Bind-mounted into a container that may run as any user.
        assert _mode(path) == 0o644
        assert is_host_file(path)

    make_private(tmp_path / "data", shared=is_host_file)

    assert _mode(files.resolv_conf) == 0o644
    assert _mode(directory / "container.log") == 0o600
    assert _mode(directory) == 0o700  # which keeps the host's other users out
    assert not is_host_file(tmp_path / "data" / "hosts")


def test_make_private_of_a_config_dir_leaves_its_subtrees_alone(
    tmp_path: Path, loose_umask: None
) -> None:
    config = tmp_path / "config"
    (config / "other").mkdir(parents=True)
    (config / "key.pem").write_text("key")
    (config / "other" / "file").write_text("x")
    make_private(config, recursive=False)
    assert _mode(config) == 0o700
    assert _mode(config / "key.pem") == 0o600
    assert _mode(config / "other" / "file") == 0o644


def test_restricted_umask_makes_new_files_private(tmp_path: Path, private_umask: None) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    assert _mode(tmp_path / "dir") == 0o700
    assert _mode(tmp_path / "file") == 0o600


def test_container_logs_are_private_whatever_the_umask(tmp_path: Path, loose_umask: None) -> None:
    log = RotatingLog(tmp_path / "logs" / "container.log", max_bytes=64, max_files=3)
    for _ in range(10):
        log.write(LogEntry(1.0, LogStream.STDOUT, b"a line of output that fills the file"))
    log.close()
    files = sorted((tmp_path / "logs").iterdir())
    assert len(files) == 3  # rotated: the current file and two older ones
    assert [_mode(f) for f in files] == [0o600] * 3


def test_task_cache_is_private_whatever_the_umask(tmp_path: Path, loose_umask: None) -> None:
    cache = TaskCache(tmp_path / "agent" / "tasks.json")
    task = make_task()
    cache.save({task.id: task})
    assert _mode(cache.path) == 0o600
    assert [p.name for p in cache.path.parent.iterdir()] == ["tasks.json"]
    assert TaskCache(cache.path).load() == {task.id: task}
