"""Cluster backups: a consistent copy of the state plus the CA, and restoring one.

Taking a backup (a manager, for the ``Backup`` RPC): a barrier write first, so
the copy holds every write acknowledged before the call, then one point-in-time
read of the store.

The backup file (written and read by the CLI, so the passphrase never travels)
is a JSON envelope::

    {"format": "warren-backup", "version": 1,
     "kdf": {"name": "scrypt", "n": 32768, "r": 8, "p": 1, "salt": B64},
     "cipher": "aes-256-gcm", "nonce": B64, "ciphertext": B64}

The key is scrypt(passphrase); AES-256-GCM encrypts the payload and
authenticates the rest of the envelope as associated data, so any change to the
file fails like a wrong passphrase. The payload is JSON: the CA (certificate
and key, PEM) and the state (cluster, nodes, services, tasks).

Restoring prepares an empty data dir so that the normal manager start-up
resumes it: the same CA (worker certificates and join tokens stay valid), a new
manager identity, and a Raft log whose one write holds the cluster, the
services and the workers (down until they reconnect). Tasks are not restored:
the orchestrator creates them afresh, and a worker that reconnects stops what it
ran before. The old managers are left out; the new cluster has one manager.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import shutil
import time
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from warren.core.codec import from_dict, to_dict
from warren.core.errors import Conflict, FailedPrecondition, InvalidArgument
from warren.core.models import Cluster, Node, NodeRole, NodeStatus, Service, Task, new_id
from warren.manager import join_tokens
from warren.manager.consensus import Consensus
from warren.manager.store import MUST_NOT_EXIST, Store, barrier, put, raise_for_result, txn
from warren.security.ca import CertificateAuthority, generate_key, key_pem
from warren.security.private_files import restrict_new_files
from warren.security.tls import write_private

if TYPE_CHECKING:
    from warren.manager.daemon import ManagerOptions

log = logging.getLogger(__name__)

FORMAT = "warren-backup"
VERSION = 1
CIPHER = "aes-256-gcm"
# scrypt cost of new backups: 32 MiB of memory, a fraction of a second.
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
# The most a backup file may ask of the KDF (a tampered file could ask for more).
_MAX_SCRYPT_MEMORY = 256 * 1024**2
SALT_BYTES = 16
NONCE_BYTES = 12
DAMAGED = "wrong passphrase or damaged backup"
RESTORED_MESSAGE = "restored from a backup; waiting for the node to reconnect"
# Reads of the store retried while the cluster object changes under them.
_CAPTURE_ATTEMPTS = 5


@dataclass(frozen=True)
class BackupState:
    """The replicated state at one revision."""

    revision: int
    cluster: Cluster
    nodes: tuple[Node, ...] = ()
    services: tuple[Service, ...] = ()
    tasks: tuple[Task, ...] = ()


@dataclass(frozen=True)
class Backup:
    """What a backup holds: the state and the cluster CA (PEM certificate and key)."""

    state: BackupState
    ca_cert: bytes
    ca_key: bytes

    def authority(self) -> CertificateAuthority:
        """The CA, checked to be the one the state's cluster trusts."""
        ca = CertificateAuthority.from_pem(self.ca_cert, self.ca_key)
        cluster = self.state.cluster
        if ca.cluster_id != cluster.id or ca.fingerprint != cluster.ca_fingerprint:
            raise InvalidArgument("the backup's CA is not the CA of its cluster")
        return ca


# -- the state ---------------------------------------------------------------------


def capture_state(store: Store) -> BackupState:
    """One point-in-time copy of the store (the snapshot plus the cluster object)."""
    for _ in range(_CAPTURE_ATTEMPTS):
        snapshot = store.snapshot()
        cluster = store.cluster()
        if cluster is None:
            raise FailedPrecondition("the cluster is not initialised yet")
        # A cluster written after the snapshot would carry a later version.
        if cluster.version <= snapshot.revision:
            return BackupState(
                revision=snapshot.revision,
                cluster=cluster,
                nodes=tuple(sorted(snapshot.nodes.values(), key=lambda n: n.id)),
                services=tuple(sorted(snapshot.services.values(), key=lambda s: s.id)),
                tasks=tuple(sorted(snapshot.tasks.values(), key=lambda t: t.id)),
            )
    raise Conflict("the cluster kept changing during the backup; try again")


async def take_backup(consensus: Consensus, ca: CertificateAuthority) -> Backup:
    """A backup holding every write acknowledged before the call."""
    await consensus.propose(barrier())
    state = capture_state(consensus.store)
    return Backup(state, ca.cert_pem, ca.key_pem)


def state_to_dict(state: BackupState) -> dict[str, Any]:
    return {
        "revision": state.revision,
        "cluster": to_dict(state.cluster),
        "nodes": [to_dict(n) for n in state.nodes],
        "services": [to_dict(s) for s in state.services],
        "tasks": [to_dict(t) for t in state.tasks],
    }


def state_from_dict(data: Any) -> BackupState:
    if not isinstance(data, dict):
        raise InvalidArgument("invalid backup state: expected an object")
    try:
        revision = data["revision"]
        if isinstance(revision, bool) or not isinstance(revision, int):
            raise InvalidArgument("revision: expected an integer")
        return BackupState(
            revision=revision,
            cluster=from_dict(Cluster, data["cluster"]),
            nodes=tuple(from_dict(Node, n) for n in _list(data, "nodes")),
            services=tuple(from_dict(Service, s) for s in _list(data, "services")),
            tasks=tuple(from_dict(Task, t) for t in _list(data, "tasks")),
        )
    except KeyError as exc:
        raise InvalidArgument(f"invalid backup state: {exc.args[0]} is missing") from None
    except InvalidArgument as exc:
        raise InvalidArgument(f"invalid backup state: {exc}") from None


def _list(data: dict[str, Any], key: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise InvalidArgument(f"{key}: expected a list")
    return value


def encode_state(state: BackupState) -> bytes:
    return json.dumps(state_to_dict(state), separators=(",", ":")).encode()


def decode_state(data: bytes) -> BackupState:
    try:
        raw = json.loads(data)
    except ValueError:
        raise InvalidArgument("invalid backup state: not JSON") from None
    return state_from_dict(raw)


# -- the file ----------------------------------------------------------------------


def encode_payload(backup: Backup) -> bytes:
    """The plaintext of a backup file."""
    payload = {
        "version": VERSION,
        "created_at": time.time(),
        "ca_cert": backup.ca_cert.decode(),
        "ca_key": backup.ca_key.decode(),
        "state": state_to_dict(backup.state),
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def decode_payload(data: bytes) -> Backup:
    try:
        payload = json.loads(data)
        if payload["version"] != VERSION:
            raise ValueError("unknown payload version")
        backup = Backup(
            state=state_from_dict(payload["state"]),
            ca_cert=payload["ca_cert"].encode(),
            ca_key=payload["ca_key"].encode(),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        raise InvalidArgument(DAMAGED) from None
    backup.authority()
    return backup


def _kdf(salt: bytes, n: int, r: int, p: int) -> Scrypt:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p)


def _passphrase_bytes(passphrase: str) -> bytes:
    # The same passphrase typed on another system may arrive differently composed.
    return unicodedata.normalize("NFC", passphrase).encode()


def _associated_data(header: dict[str, Any]) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def seal(plaintext: bytes, passphrase: str) -> bytes:
    """Encrypt ``plaintext`` into a backup envelope."""
    salt = os.urandom(SALT_BYTES)
    nonce = os.urandom(NONCE_BYTES)
    header: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "kdf": {"name": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P, "salt": _b64(salt)},
        "cipher": CIPHER,
        "nonce": _b64(nonce),
    }
    key = _kdf(salt, SCRYPT_N, SCRYPT_R, SCRYPT_P).derive(_passphrase_bytes(passphrase))
    ciphertext = AESGCM(key).encrypt(nonce, plaintext, _associated_data(header))
    envelope = {**header, "ciphertext": _b64(ciphertext)}
    return json.dumps(envelope, indent=1).encode() + b"\n"


def unseal(data: bytes, passphrase: str) -> bytes:
    """The plaintext of a backup envelope; ``InvalidArgument`` if anything is wrong."""
    try:
        envelope = json.loads(data)
        if not isinstance(envelope, dict) or envelope.get("format") != FORMAT:
            raise InvalidArgument("not a warren backup file")
        if envelope.get("version") != VERSION:
            raise InvalidArgument(
                f"backup format version {envelope.get('version')!r} is not supported "
                f"(this warren reads version {VERSION})"
            )
        kdf = envelope["kdf"]
        n, r, p = kdf["n"], kdf["r"], kdf["p"]
        if kdf["name"] != "scrypt" or envelope["cipher"] != CIPHER or not _sane_scrypt(n, r, p):
            raise InvalidArgument(DAMAGED)
        salt = _unb64(kdf["salt"])
        nonce = _unb64(envelope["nonce"])
        ciphertext = _unb64(envelope["ciphertext"])
        header = {k: v for k, v in envelope.items() if k != "ciphertext"}
        key = _kdf(salt, n, r, p).derive(_passphrase_bytes(passphrase))
        return AESGCM(key).decrypt(nonce, ciphertext, _associated_data(header))
    except InvalidArgument:
        raise
    except (InvalidTag, ValueError, KeyError, TypeError, binascii.Error):
        # ValueError covers bad JSON, a bad salt or nonce size and bad base64.
        raise InvalidArgument(DAMAGED) from None


def _sane_scrypt(n: Any, r: Any, p: Any) -> bool:
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n, r, p)):
        return False
    power_of_two = n > 1 and n & (n - 1) == 0
    return bool(
        power_of_two and 1 <= r <= 32 and 1 <= p <= 16 and 128 * n * r <= _MAX_SCRYPT_MEMORY
    )


def encrypt_backup(backup: Backup, passphrase: str) -> bytes:
    """The bytes of a backup file."""
    return seal(encode_payload(backup), passphrase)


def decrypt_backup(data: bytes, passphrase: str) -> Backup:
    return decode_payload(unseal(data, passphrase))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise TypeError("expected base64 text")
    return base64.b64decode(text, validate=True)


# -- restore -----------------------------------------------------------------------


def check_restore_target(data_dir: Path) -> None:
    """A restore only goes into a data dir that does not exist or is empty."""
    if not data_dir.exists():
        return
    if not data_dir.is_dir():
        raise FailedPrecondition(f"{data_dir} is not a directory")
    if any(data_dir.iterdir()):
        raise FailedPrecondition(
            f"{data_dir} is not empty; restore into a new data dir "
            "(to restart an existing manager, run 'warren cluster init' with its data dir)"
        )


def restore_ops(state: BackupState, manager: Node) -> list[dict[str, Any]]:
    """The one write that seeds a new cluster: cluster, new manager, workers, services."""
    now = manager.created_at
    ops = [put(replace(state.cluster, version=0), MUST_NOT_EXIST)]
    ops.append(put(manager, MUST_NOT_EXIST))
    for node in state.nodes:
        if node.role != NodeRole.WORKER:
            continue  # the old managers are gone; the new cluster has one
        down = replace(
            node, status=NodeStatus.DOWN, status_message=RESTORED_MESSAGE, updated_at=now, version=0
        )
        ops.append(put(down, MUST_NOT_EXIST))
    ops.extend(put(replace(s, version=0), MUST_NOT_EXIST) for s in state.services)
    return ops


def _manager_node(options: ManagerOptions, node_id: str, now: float) -> Node:
    return Node(
        id=node_id,
        role=NodeRole.MANAGER,
        hostname=options.node_name,
        address=options.advertise_addr,
        labels=dict(options.labels),
        availability=options.availability,
        status=NodeStatus.UNKNOWN,
        api_address=options.api_address,
        raft_address=options.raft_address,
        created_at=now,
        updated_at=now,
    )


async def prepare_restore(options: ManagerOptions, backup: Backup) -> str:
    """Turn an empty data dir into a stopped manager of the backed-up cluster.

    Returns the new manager's node ID. On failure the data dir is left as empty
    as it was found.
    """
    from warren.manager.daemon import Manager, ManagerState, raft_password
    from warren.manager.raft import RaftConsensus

    ca = backup.authority()
    data_dir = options.data_dir
    check_restore_target(data_dir)
    created = not data_dir.exists()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        manager = Manager(options)
        node_id = new_id()
        key = generate_key()
        cert = ca.issue_for_key(key.public_key(), node_id, "manager", [options.advertise_addr])
        write_private(data_dir / "certs" / "ca-key.pem", ca.key_pem)
        manager.identity.save(ca.cert_pem, cert, key_pem(key))
        # The Raft member the manager's start-up resumes (alone: no peers).
        manager.consensus = RaftConsensus(
            manager.store,
            options.raft_address,
            data_dir / "raft",
            bind_address=f"{options.listen_addr}:{options.raft_port}",
            password=raft_password(ca),
        )
        await manager.consensus.start()
        try:
            await manager._wait_ready()
            now = time.time()
            # A backup of an older version holds plain-text secrets: never journal them.
            cluster = join_tokens.sealed_legacy(backup.state.cluster, ca)
            state = replace(backup.state, cluster=cluster)
            ops = restore_ops(state, _manager_node(options, node_id, now))
            raise_for_result(await manager.consensus.propose(txn(ops, at=now)))
        finally:
            await manager.consensus.stop()
        manager._write_admin_identity(ca)
        # Written last: from here on, start-up resumes this manager.
        ManagerState(node_id, ca.cluster_id).save(data_dir)
    except BaseException:
        _empty(data_dir, remove=created)
        raise
    return node_id


def _empty(data_dir: Path, remove: bool) -> None:
    """Undo a failed restore (best effort: the original error is what matters)."""
    with contextlib.suppress(OSError):
        if remove:
            shutil.rmtree(data_dir)
            return
        for entry in data_dir.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def restore_manager(options: ManagerOptions, backup: Backup) -> int:
    """``warren cluster restore``: prepare the data dir, then run the manager on it."""
    from warren import logs
    from warren.manager.daemon import run_manager

    # Before the data dir is made: PySyncObj creates its files with no mode of its own.
    restrict_new_files()
    logs.setup("manager")
    state = backup.state
    node_id = asyncio.run(prepare_restore(options, backup))
    log.info(
        "cluster restored from a backup",
        extra={
            "cluster_id": state.cluster.id,
            "node_id": node_id,
            "backup_revision": state.revision,
            "services": len(state.services),
            "workers": sum(1 for n in state.nodes if n.role == NodeRole.WORKER),
        },
    )
    return run_manager(options)
