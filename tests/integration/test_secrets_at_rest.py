"""Nothing a local user can read holds a secret (issue #7): Warren's files are
0600 in 0700 directories, and no join-token secret is on disk in plain text,
the etcd member's log (WAL) and database included."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import zlib
from dataclasses import replace
from pathlib import Path

import pytest
from harness import WARREN, Cluster, wait_for

from warren.security.backup_file import decrypt_backup, encrypt_backup
from warren.security.tokens import new_secret, parse

pytestmark = pytest.mark.integration

ENV_VALUE = "swordfish-7c1e"
ENV_SECRET = f"DB_PASSWORD={ENV_VALUE}"


def _loose(root: Path) -> list[str]:
    """Everything under ``root`` (itself included) that group or others may use."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = os.lstat(path).st_mode
        if not stat.S_ISLNK(mode) and mode & 0o077:
            found.append(f"{path} {stat.filemode(mode)}")
    return found


def _gzip_streams(data: bytes) -> bytes:
    """What every gzip stream in ``data`` decompresses to: a state image is
    gzipped, and etcd keeps it inside its database file."""
    out, start = b"", data.find(b"\x1f\x8b\x08")
    while start != -1:
        with contextlib.suppress(zlib.error):  # bytes that only look like a gzip header
            out += zlib.decompressobj(wbits=31).decompress(data[start:])
        start = data.find(b"\x1f\x8b\x08", start + 1)
    return out


def _contents(path: Path) -> bytes:
    data = path.read_bytes()
    return data + _gzip_streams(data)


def _files_holding(roots: list[Path], needles: list[str]) -> list[str]:
    """Files whose bytes (and what gzip streams in them decompress to) hold a needle."""
    hits = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_symlink() or not path.is_file():
                continue
            data = _contents(path)
            hits += [f"{path}: {n}" for n in needles if n.encode() in data]
    return hits


def _etcd_stores(manager_dir: Path) -> list[Path]:
    """The etcd member's log (its WAL files) and its database (bbolt), last."""
    member = manager_dir / "etcd" / "data" / "member"
    return [*sorted((member / "wal").glob("*.wal")), member / "snap" / "db"]


def _wait_in_etcd_stores(manager_dir: Path, needle: str) -> None:
    """Until ``needle``, written through the log, is in the member's WAL and in
    its database: the files the secrets checks read do hold the log."""

    def held() -> bool:
        *wal, db = _etcd_stores(manager_dir)
        in_wal = any(needle.encode() in _contents(path) for path in wal)
        return in_wal and db.is_file() and needle.encode() in _contents(db)

    wait_for(held, 20, f"{needle} in the etcd WAL and database of {manager_dir}")


def _secrets(c: Cluster) -> list[str]:
    return [parse(c.join_token(role)).secret for role in ("worker", "manager")]


def _try_join(c: Cluster, name: str, token: str) -> subprocess.CompletedProcess[str]:
    args = [*WARREN, "worker", "join", "--token", token, "--manager", c.manager_address,
            "--data-dir", str(c.root / name), "--runtime", "sim", "--node-name", name]  # fmt: skip
    return subprocess.run(args, capture_output=True, text=True, env=c.env, timeout=30)


def test_data_dirs_are_private_and_hold_no_join_token_secret(cluster: Cluster) -> None:
    c = cluster
    c.init_manager()
    c.cli("service", "create", "db", "--image", "busybox", "--replicas", "4", "--env", ENV_SECRET)
    c.join_worker("w1")
    c.cli("service", "scale", "db=8")
    wait_for(lambda: c.placement("db").get("w1", 0) > 0, 30, "a task of db on w1")
    manager_dir, worker_dir = c.root / "manager", c.root / "w1"
    # The worker's cache holds the env value: that is why its modes matter.
    wait_for(lambda: _files_holding([worker_dir], [ENV_VALUE]), 10, "w1's task cache")

    _wait_in_etcd_stores(manager_dir, ENV_VALUE)
    for root in (manager_dir, worker_dir, c.config_dir):
        assert _loose(root) == [], root
    assert _files_holding([manager_dir, worker_dir, c.config_dir], _secrets(c)) == []

    # Rotation: the old token is refused at once, the new one works, and
    # neither the old nor the new secret reaches the disk.
    old_token = c.join_token("worker")
    old_worker, old_manager = _secrets(c)
    c.cli("cluster", "join-token", "worker", "--rotate", "-q")
    refused = _try_join(c, "late", old_token)
    # Refused at the TLS handshake: the old token's join root is gone.
    assert refused.returncode != 0
    assert len(refused.stderr.strip().splitlines()) == 1
    assert c.node_status("late") is None
    assert "Traceback" not in refused.stderr
    c.join_worker("w2")
    assert _secrets(c)[1] == old_manager
    everything = [manager_dir, worker_dir, c.root / "w2", c.config_dir]
    assert _files_holding(everything, [old_worker, *_secrets(c)]) == []
    for root in everything:
        assert _loose(root) == [], root


def test_loosened_files_are_tightened_at_restart(cluster: Cluster) -> None:
    c = cluster
    c.init_manager()
    c.cli("service", "create", "db", "--image", "busybox", "--replicas", "2", "--env", ENV_SECRET)
    c.join_worker("w1")
    manager_dir, worker_dir = c.root / "manager", c.root / "w1"
    c.stop_all()
    # As an older version (or a careless admin) left them.
    loosened = [
        manager_dir,
        manager_dir / "etcd",
        manager_dir / "etcd" / "data" / "member" / "wal",
        *_etcd_stores(manager_dir),
        manager_dir / "certs" / "ca-key.pem",
        c.config_dir,
        c.config_dir / "key.pem",
        worker_dir,
        worker_dir / "certs" / "key.pem",
    ]
    for path in loosened:
        path.chmod(0o755 if path.is_dir() else 0o644)
    assert _loose(manager_dir) and _loose(worker_dir)

    c.restart_manager()  # returns once it serves: it tightened its files before
    for root in (manager_dir, c.config_dir):
        assert _loose(root) == [], root
    c.processes["w1"].start()
    # The node may still count as ready from before: wait for the outcome itself.
    wait_for(lambda: _loose(worker_dir) == [], 30, "the restarted w1 to tighten its files")
    wait_for(lambda: c.node_status("w1") == "ready", 30, "w1 to be ready again")
    # The tokens still verify after the restart.
    c.join_worker("w2")
    assert c.node_status("w2") == "ready"


def _backup_of_an_older_version(c: Cluster, passphrase: Path) -> tuple[Path, tuple[str, str]]:
    """A backup of the running cluster, its cluster object then rewritten as a
    version before the hashes wrote it: the token secrets in plain text."""
    taken = c.root / "cluster.wbk"
    c.cli("cluster", "backup", "-o", str(taken), "--passphrase-file", str(passphrase))
    key = passphrase.read_text().strip()
    backup = decrypt_backup(taken.read_bytes(), key)
    secrets = (new_secret(), new_secret())
    legacy = replace(
        backup.state.cluster,
        worker_token_hash="",
        manager_token_hash="",
        worker_token_sealed="",
        manager_token_sealed="",
        worker_token_secret=secrets[0],
        manager_token_secret=secrets[1],
    )
    older = c.root / "older.wbk"
    older.write_bytes(
        encrypt_backup(replace(backup, state=replace(backup.state, cluster=legacy)), key)
    )
    return older, secrets


def test_plain_text_secrets_of_an_older_version_are_sealed_at_restore(cluster: Cluster) -> None:
    c = cluster
    c.init_manager()
    c.cli("service", "create", "db", "--image", "busybox", "--env", ENV_SECRET)
    passphrase = c.root / "passphrase"
    passphrase.write_text("a long backup passphrase\n")
    older, (worker_secret, manager_secret) = _backup_of_an_older_version(c, passphrase)
    c.stop_all()

    # The way over from an older version: restore its backup into a new data dir.
    del c.manager_ports["manager"]
    args = [*WARREN, "cluster", "restore", str(older), "--passphrase-file", str(passphrase),
            *c._manager_args("restored", "manager-2")]  # fmt: skip
    c.ports = c.manager_ports["restored"]
    restored = c._spawn("restored", args)
    wait_for(lambda: c._api_ready(restored, "restored"), 60, "the restored manager's API")

    # The same tokens, now kept hashed and sealed; the plain text never reached
    # the new manager's files (its etcd log holds what the backup held).
    assert _secrets(c) == [worker_secret, manager_secret]
    restored_dir = c.root / "restored"
    _wait_in_etcd_stores(restored_dir, ENV_VALUE)
    assert _files_holding([restored_dir, c.config_dir], [worker_secret, manager_secret]) == []
    assert _loose(restored_dir) == []
    c.join_worker("w1")
    assert c.node_status("w1") == "ready"


def test_a_joined_manager_keeps_no_secret_readable(cluster: Cluster) -> None:
    c = cluster
    c.init_manager()
    c.cli("service", "create", "db", "--image", "busybox", "--env", ENV_SECRET)
    c.join_manager("m2")
    # The new manager holds the state and can show the tokens itself.
    assert c.cli_at("m2", "cluster", "join-token", "worker", "-q").stdout.strip() == (
        c.join_token("worker")
    )
    dirs = [c.root / "manager", c.root / "m2", c.config_dir]
    _wait_in_etcd_stores(c.root / "m2", ENV_VALUE)  # its member holds the log
    assert _files_holding(dirs, _secrets(c)) == []
    for root in dirs:
        assert _loose(root) == [], root
