"""Join-token secrets are kept hashed and sealed, never in plain text (issue #7)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from warren.core.codec import to_dict
from warren.core.errors import InvalidArgument
from warren.core.models import Cluster
from warren.manager import join_tokens
from warren.manager.backup import Backup, BackupState, prepare_restore
from warren.manager.command_format import CommandEncoder
from warren.manager.consensus import LocalConsensus
from warren.manager.control import ControlService
from warren.manager.etcd.log_entry import apply_entry, command_entry
from warren.manager.etcd.state_image import Fence
from warren.manager.store import Store
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


# --- a restored backup: what reaches the log -----------------------------------------


class _RecordingLog(LocalConsensus):
    """Stands in for the etcd consensus in prepare_restore: each proposal goes
    through the log entry format as the etcd log would hold it."""

    def __init__(self, store: Store, *args: Any, **kwargs: Any) -> None:
        super().__init__(store)
        self.entries: list[bytes] = []

    async def propose(self, command: dict[str, Any], timeout: float = 10.0) -> Any:
        entry = command_entry(CommandEncoder(self.store).encode(command))
        self.entries.append(entry)
        result, _ = apply_entry(self.store, Fence(), entry)
        return result


async def test_restoring_an_old_backup_logs_no_plain_text(
    tmp_path: Path, ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    import warren.manager.etcd.setup

    logs: list[_RecordingLog] = []

    def new_consensus(store: Store, *args: Any, **kwargs: Any) -> _RecordingLog:
        logs.append(_RecordingLog(store))
        return logs[-1]

    monkeypatch.setattr(warren.manager.etcd.setup, "new_consensus", new_consensus)
    legacy = _legacy_cluster(ca)
    old = (legacy.worker_token_secret, legacy.manager_token_secret)
    backup = Backup(BackupState(revision=5, cluster=legacy), ca.cert_pem, ca.key_pem)
    options = ManagerOptions(
        data_dir=tmp_path / "data",
        listen_addr="127.0.0.1",
        config_dir=tmp_path / "config",
        node_name="restored",
    )
    await prepare_restore(options, backup)

    (log,) = logs
    cluster = log.store.cluster()
    assert cluster is not None and not join_tokens.has_plaintext(cluster)
    # The cluster went into the log sealed, its plain-text secrets nowhere.
    logged = b"".join(log.entries)
    assert cluster.worker_token_sealed.encode() in logged
    assert _plaintext_in(logged, *old) == []
    # The backed-up tokens still work after the restore.
    assert join_tokens.token_secret(cluster, "worker", ca) == old[0]
    assert join_tokens.secret_accepted(cluster, "manager", old[1])
