"""The backup file: its format and its encryption (no I/O, nothing of the manager).

The CLI writes and reads backup files (so the passphrase never travels); a
manager hands out the state and the CA, and takes them back to restore. The
file is a JSON envelope::

    {"format": "warren-backup", "version": 1,
     "kdf": {"name": "scrypt", "n": 32768, "r": 8, "p": 1, "salt": B64},
     "cipher": "aes-256-gcm", "nonce": B64, "ciphertext": B64}

The key is scrypt(passphrase); AES-256-GCM encrypts the payload and
authenticates the rest of the envelope as associated data, so any change to the
file fails like a wrong passphrase. The payload is JSON: the CA (certificate
and key, PEM) and the state: the revision, the cluster object, and one table
(a list of objects) per kind a backup keeps ("nodes", "services", "tasks").
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from warren.core.codec import from_dict, to_dict
from warren.core.errors import InvalidArgument
from warren.core.models import Cluster
from warren.security.ca import CertificateAuthority

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


@dataclass(frozen=True)
class BackupState:
    """The replicated state at one revision: the cluster object, and each other
    kind's objects as JSON objects, by table name.

    Only the cluster is decoded here (the CA is checked against it). The
    managers own the kinds: they encode the tables when they take a backup and
    decode them strictly when they restore one, so a new kind needs no change
    here (nor in the CLI, which only carries the state)."""

    revision: int
    cluster: Cluster
    tables: Mapping[str, tuple[dict[str, Any], ...]] = field(default_factory=dict)

    def count(self, table: str) -> int:
        return len(self.tables.get(table, ()))


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


# -- the state ----------------------------------------------------------------------


def state_to_dict(state: BackupState) -> dict[str, Any]:
    return {
        "revision": state.revision,
        "cluster": to_dict(state.cluster),
        **{table: list(objects) for table, objects in state.tables.items()},
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
            tables={
                table: _objects(data, table)
                for table in data
                if table not in ("revision", "cluster")
            },
        )
    except KeyError as exc:
        raise InvalidArgument(f"invalid backup state: {exc.args[0]} is missing") from None
    except InvalidArgument as exc:
        raise InvalidArgument(f"invalid backup state: {exc}") from None


def _objects(data: dict[str, Any], table: str) -> tuple[dict[str, Any], ...]:
    value = data[table]
    if not isinstance(value, list):
        raise InvalidArgument(f"{table}: expected a list")
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise InvalidArgument(f"{table}[{index}]: expected an object")
    return tuple(value)


def encode_state(state: BackupState) -> bytes:
    return json.dumps(state_to_dict(state), separators=(",", ":")).encode()


def decode_state(data: bytes) -> BackupState:
    try:
        raw = json.loads(data)
    except ValueError:
        raise InvalidArgument("invalid backup state: not JSON") from None
    return state_from_dict(raw)


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
