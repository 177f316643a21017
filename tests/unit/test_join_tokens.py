"""Join-token secrets are kept hashed and sealed, never in plain text (issue #7)."""

from __future__ import annotations

import gzip
import json
import socket
import time
from dataclasses import replace
from pathlib import Path

import pytest
from support import eventually

from warren.core.codec import to_dict
from warren.core.errors import InvalidArgument
from warren.core.models import Cluster
from warren.manager import join_tokens
from warren.manager.backup import Backup, BackupState, prepare_restore
from warren.manager.consensus import LocalConsensus
from warren.manager.control import ControlService
from warren.manager.raft import RaftConsensus
from warren.manager.store import MUST_NOT_EXIST, Store, put, raise_for_result, txn
from warren.node.options import ManagerOptions
from warren.security.ca import CertificateAuthority
from warren.security.tokens import (
    JoinToken,
    hash_secret,
    new_secret,
    parse,
    seal_secret,
    sealing_key,
    secret_matches,
    unseal_secret,
)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("cluster-tokens")


def _legacy_cluster(ca: CertificateAuthority) -> Cluster:
    """A cluster object as versions before the hashes wrote it."""
    return Cluster(
        id=ca.cluster_id,
        worker_token_secret=new_secret(),
        manager_token_secret=new_secret(),
        ca_fingerprint=ca.fingerprint,
    )


def _plaintext_in(data: bytes, *secrets: str) -> list[str]:
    return [s for s in secrets if s.encode() in data]


# --- hashing and sealing ------------------------------------------------------------


def test_a_hash_verifies_its_secret_only() -> None:
    secret = new_secret()
    stored = hash_secret(secret)
    assert secret not in stored and len(stored) == 64
    assert secret_matches(secret, stored)
    assert not secret_matches(new_secret(), stored)
    assert not secret_matches(secret[:-1], stored)
    assert not secret_matches("", stored)
    assert not secret_matches(secret, "")


def test_a_sealed_secret_opens_with_its_key_and_context_only(ca: CertificateAuthority) -> None:
    secret = new_secret()
    key = sealing_key(ca)
    sealed = seal_secret(secret, key, "c/worker")
    assert secret not in sealed
    assert seal_secret(secret, key, "c/worker") != sealed  # a fresh nonce each time
    assert unseal_secret(sealed, key, "c/worker") == secret
    assert unseal_secret(sealed, sealing_key(ca), "c/worker") == secret  # the key is derived
    with pytest.raises(InvalidArgument):
        unseal_secret(sealed, key, "c/manager")
    with pytest.raises(InvalidArgument):
        unseal_secret(sealed, sealing_key(CertificateAuthority.create("other")), "c/worker")
    tampered = sealed[:-4] + ("AAAA" if sealed[-4:] != "AAAA" else "BBBB")
    for bad in (tampered, "v1:not base64!", "v9:" + sealed[3:], ""):
        with pytest.raises(InvalidArgument):
            unseal_secret(bad, key, "c/worker")


# --- the cluster object -------------------------------------------------------------


def test_a_new_cluster_holds_no_secret_in_plain_text(ca: CertificateAuthority) -> None:
    cluster = join_tokens.new_cluster(ca, 1.0)
    worker = join_tokens.token_secret(cluster, "worker", ca)
    manager = join_tokens.token_secret(cluster, "manager", ca)
    assert worker != manager
    encoded = json.dumps(to_dict(cluster)).encode()
    assert _plaintext_in(encoded, worker, manager) == []
    assert not join_tokens.has_plaintext(cluster)
    assert join_tokens.secret_accepted(cluster, "worker", worker)
    assert join_tokens.secret_accepted(cluster, "manager", manager)
    # A token is for its own role only.
    assert not join_tokens.secret_accepted(cluster, "worker", manager)
    assert not join_tokens.secret_accepted(cluster, "manager", worker)
    assert not join_tokens.secret_accepted(cluster, "worker", new_secret())


def test_sealed_secrets_cannot_be_swapped_between_roles(ca: CertificateAuthority) -> None:
    cluster = join_tokens.new_cluster(ca, 1.0)
    swapped = replace(cluster, manager_token_sealed=cluster.worker_token_sealed)
    with pytest.raises(InvalidArgument):
        join_tokens.token_secret(swapped, "manager", ca)


def test_rotation_replaces_one_role_only(ca: CertificateAuthority) -> None:
    cluster = join_tokens.new_cluster(ca, 1.0)
    old_worker = join_tokens.token_secret(cluster, "worker", ca)
    manager = join_tokens.token_secret(cluster, "manager", ca)
    rotated = join_tokens.rotated(cluster, "worker", ca)
    new_worker = join_tokens.token_secret(rotated, "worker", ca)
    assert new_worker != old_worker
    assert not join_tokens.secret_accepted(rotated, "worker", old_worker)
    assert join_tokens.secret_accepted(rotated, "worker", new_worker)
    assert join_tokens.token_secret(rotated, "manager", ca) == manager
    assert join_tokens.verification_key(rotated) != join_tokens.verification_key(cluster)


def test_unknown_roles_are_refused(ca: CertificateAuthority) -> None:
    cluster = join_tokens.new_cluster(ca, 1.0)
    for call in (
        lambda: join_tokens.token_secret(cluster, "admin", ca),
        lambda: join_tokens.secret_accepted(cluster, "admin", "x"),
        lambda: join_tokens.rotated(cluster, "admin", ca),
    ):
        with pytest.raises(InvalidArgument, match="worker or manager"):
            call()


def test_plain_text_secrets_of_an_older_version_are_sealed_unchanged(
    ca: CertificateAuthority,
) -> None:
    legacy = _legacy_cluster(ca)
    worker, manager = legacy.worker_token_secret, legacy.manager_token_secret
    # Before sealing, the old secrets still work.
    assert join_tokens.has_plaintext(legacy)
    assert join_tokens.secret_accepted(legacy, "worker", worker)
    assert not join_tokens.secret_accepted(legacy, "worker", manager)
    assert join_tokens.token_secret(legacy, "manager", ca) == manager

    sealed = join_tokens.sealed_legacy(legacy, ca)
    assert not join_tokens.has_plaintext(sealed)
    assert _plaintext_in(json.dumps(to_dict(sealed)).encode(), worker, manager) == []
    # The same tokens: nobody has to hand out new ones.
    assert join_tokens.token_secret(sealed, "worker", ca) == worker
    assert join_tokens.token_secret(sealed, "manager", ca) == manager
    assert join_tokens.secret_accepted(sealed, "manager", manager)
    # The join roots the manager trusts do not change either.
    assert join_tokens.verification_key(sealed) == join_tokens.verification_key(legacy)


def test_rotating_an_old_cluster_seals_the_other_role_too(ca: CertificateAuthority) -> None:
    legacy = _legacy_cluster(ca)
    rotated = join_tokens.rotated(legacy, "worker", ca)
    assert not join_tokens.has_plaintext(rotated)
    assert join_tokens.secret_accepted(rotated, "manager", legacy.manager_token_secret)
    assert not join_tokens.secret_accepted(rotated, "worker", legacy.worker_token_secret)


# --- the control service ------------------------------------------------------------


async def _control(ca: CertificateAuthority, cluster: Cluster) -> ControlService:
    store = Store()
    store.load([cluster])
    consensus = LocalConsensus(store)
    await consensus.start()
    return ControlService(consensus, ca)


def _accepted(control: ControlService, token: str, role: str) -> bool:
    """What ``ControlService.join`` checks a joiner's secret with."""
    return join_tokens.secret_accepted(control.cluster(), role, parse(token).secret)


async def test_control_shows_checks_and_rotates_tokens(ca: CertificateAuthority) -> None:
    control = await _control(ca, join_tokens.new_cluster(ca, 1.0))
    token = control.join_token("worker")
    assert parse(token).ca_fingerprint == ca.fingerprint
    assert control.join_token("worker") == token  # shown again, the same
    assert _accepted(control, token, "worker")
    assert not _accepted(control, token, "manager")

    rotated = await control.rotate_join_token("worker")
    assert rotated != token and control.join_token("worker") == rotated
    assert not _accepted(control, token, "worker")
    assert _accepted(control, rotated, "worker")
    assert not _accepted(control, JoinToken(ca.fingerprint, new_secret()).format(), "worker")


async def test_control_seals_an_old_cluster_and_its_tokens_keep_working(
    ca: CertificateAuthority,
) -> None:
    legacy = _legacy_cluster(ca)
    control = await _control(ca, legacy)
    before = control.join_token("worker")
    assert await control.seal_legacy_join_tokens()
    assert not join_tokens.has_plaintext(control.cluster())
    assert not await control.seal_legacy_join_tokens()  # nothing left to do
    assert control.join_token("worker") == before
    assert _accepted(control, before, "worker")


# --- on disk: the Raft journal, snapshot and a restored backup ----------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _raft_bytes(raft_dir: Path) -> bytes:
    """Everything in the Raft dir, snapshots decompressed (PySyncObj gzips them)."""
    data = b""
    for path in raft_dir.iterdir():
        raw = path.read_bytes()
        data += raw
        if raw[:2] == b"\x1f\x8b":
            data += gzip.decompress(raw)
    return data


async def test_sealing_scrubs_old_secrets_from_the_journal(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    raft_dir = tmp_path / "raft"
    consensus = RaftConsensus(Store(), f"127.0.0.1:{_free_port()}", raft_dir)
    await consensus.start()
    try:
        await eventually(lambda: consensus.is_leader, 10.0, "consensus.is_leader", interval=0.05)
        legacy = _legacy_cluster(ca)
        old = (legacy.worker_token_secret, legacy.manager_token_secret)
        ops = [put(legacy, MUST_NOT_EXIST)]
        raise_for_result(await consensus.propose(txn(ops, at=time.time())))
        assert _plaintext_in(_raft_bytes(raft_dir), *old) == list(old)  # what an old version left

        control = ControlService(consensus, ca)
        assert await control.seal_legacy_join_tokens()
        # A compaction follows the sealing write and zeroes the entries it drops.
        await eventually(
            lambda: _plaintext_in(_raft_bytes(raft_dir), *old) == [],
            10.0,
            "_plaintext_in(_raft_bytes(raft_dir), *old) == []",
            interval=0.05,
        )
        assert control.join_token("worker").endswith(old[0])
    finally:
        await consensus.stop()


async def test_restoring_an_old_backup_journals_no_plain_text(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    legacy = _legacy_cluster(ca)
    old = (legacy.worker_token_secret, legacy.manager_token_secret)
    backup = Backup(BackupState(revision=5, cluster=legacy), ca.cert_pem, ca.key_pem)
    options = ManagerOptions(
        data_dir=tmp_path / "data",
        listen_addr="127.0.0.1",
        raft_port=_free_port(),
        config_dir=tmp_path / "config",
        node_name="restored",
    )
    await prepare_restore(options, backup)

    assert _plaintext_in(_raft_bytes(options.data_dir / "raft"), *old) == []
    store = Store()
    consensus = RaftConsensus(store, options.raft_address, options.data_dir / "raft")
    await consensus.start()
    try:
        await eventually(
            lambda: store.cluster() is not None, 10.0, "store.cluster() is not None", interval=0.05
        )
        cluster = store.cluster()
        assert cluster is not None and not join_tokens.has_plaintext(cluster)
        # The backed-up tokens still work after the restore.
        assert join_tokens.token_secret(cluster, "worker", ca) == old[0]
        assert join_tokens.secret_accepted(cluster, "manager", old[1])
    finally:
        await consensus.stop()


def test_the_journal_zeroes_what_dropped_entries_held(tmp_path: Path) -> None:
    from warren.manager.raft import _DurableJournal

    path = tmp_path / "journal"
    journal = _DurableJournal(str(path))
    for index, command in enumerate([b"keep-1", b"drop-secret-1", b"drop-secret-2"], start=1):
        journal.add(command, index, 1)
    journal.deleteEntriesFrom(1)  # a follower truncating its log
    assert b"drop-secret" not in path.read_bytes()
    assert b"keep-1" in path.read_bytes()
    journal.add(b"after", 2, 1)
    journal.deleteEntriesTo(1)  # compaction: clear, then add the kept entries again
    assert b"keep-1" not in path.read_bytes()
    assert [journal[i][0] for i in range(len(journal))] == [b"after"]
    journal._destroy()

    # Reopened, the entries are there; tail bytes an older version left are zeroed
    # at the first compaction.
    raw = bytearray(path.read_bytes())
    raw[-64 : -64 + len(b"old-secret")] = b"old-secret"
    path.write_bytes(bytes(raw))
    journal = _DurableJournal(str(path))
    assert [journal[i][0] for i in range(len(journal))] == [b"after"]
    journal.deleteEntriesTo(0)
    assert b"old-secret" not in path.read_bytes()
    journal._destroy()
