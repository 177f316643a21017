"""Nothing a local user can read holds a secret (issue #7): Warren's files are
0600 in 0700 directories, and no join-token secret is on disk in plain text."""

from __future__ import annotations

import gzip
import os
import stat
import subprocess
from pathlib import Path

import pytest
from harness import WARREN, Cluster, wait_for

from warren.security.tokens import parse

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


def _files_holding(roots: list[Path], needles: list[str]) -> list[str]:
    """Files whose bytes (gzip-compressed ones also decompressed) hold a needle."""
    hits = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_symlink() or not path.is_file():
                continue
            data = path.read_bytes()
            if data[:2] == b"\x1f\x8b":
                data += gzip.decompress(data)  # PySyncObj's snapshots
            hits += [f"{path}: {n}" for n in needles if n.encode() in data]
    return hits


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

    for root in (manager_dir, worker_dir, c.config_dir):
        assert _loose(root) == [], root
    assert (manager_dir / "raft" / "journal").is_file()
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
        manager_dir / "raft",
        manager_dir / "raft" / "journal",
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


def _write_legacy_cluster(c: Cluster) -> tuple[str, str]:
    """Put the cluster object back as an older version wrote it (plain-text
    secrets), through the stopped manager's own Raft journal."""
    import asyncio
    import time

    from warren.core.models import Cluster as ClusterObject
    from warren.manager.manager import raft_password
    from warren.manager.raft import RaftConsensus
    from warren.manager.store import Store, put, raise_for_result, txn
    from warren.security.ca import CertificateAuthority
    from warren.security.tokens import new_secret

    certs = c.root / "manager" / "certs"
    ca = CertificateAuthority.from_pem(
        (certs / "ca.pem").read_bytes(), (certs / "ca-key.pem").read_bytes()
    )
    secrets = (new_secret(), new_secret())
    address = f"127.0.0.1:{c.ports['raft']}"

    async def write() -> None:
        store = Store()
        raft = RaftConsensus(
            store, address, c.root / "manager" / "raft", password=raft_password(ca)
        )
        await raft.start()
        try:
            while not raft.is_leader or store.cluster() is None:
                await asyncio.sleep(0.05)
            current = store.cluster()
            assert current is not None
            legacy = ClusterObject(
                id=current.id,
                ca_fingerprint=current.ca_fingerprint,
                worker_token_secret=secrets[0],
                manager_token_secret=secrets[1],
                created_at=current.created_at,
            )
            ops = [put(legacy, current.version)]
            raise_for_result(await raft.propose(txn(ops, at=time.time())))
        finally:
            await raft.stop()

    asyncio.run(write())
    return secrets


def test_plain_text_secrets_of_an_older_version_are_sealed_at_start(cluster: Cluster) -> None:
    c = cluster
    c.init_manager()
    c.stop_all()
    worker_secret, manager_secret = _write_legacy_cluster(c)
    manager_dir = c.root / "manager"
    assert _files_holding([manager_dir], [worker_secret])  # what an older version left

    c.restart_manager()
    # The same tokens, now kept hashed and sealed; the old entries are scrubbed.
    assert _secrets(c) == [worker_secret, manager_secret]
    wait_for(
        lambda: _files_holding([manager_dir], [worker_secret, manager_secret]) == [],
        20,
        "the plain-text secrets to leave the Raft files",
    )
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
    assert (c.root / "m2" / "raft" / "journal").is_file()
    assert _files_holding(dirs, _secrets(c)) == []
    for root in dirs:
        assert _loose(root) == [], root
