"""Join tokens: ``WRN-1-<ca-fingerprint>-<secret>``.

The fingerprint lets a joiner pin the manager's CA before trusting anything it
says; the secret proves to the manager that the joiner was invited.

The replicated state (and so the Raft journal, snapshots and backups on disk)
never holds a secret in plain text: a SHA-256 hash is all a manager needs to
check a joiner's secret, and the secret itself is kept sealed (AES-256-GCM)
under a key derived from the CA key, which only managers hold, so that
``warren cluster join-token`` can show a token again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from warren.core.errors import InvalidArgument
from warren.security.ca import FINGERPRINT_LENGTH, CertificateAuthority

PREFIX = "WRN"
VERSION = "1"
SECRET_LENGTH = 25
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_FINGERPRINT_RE = re.compile(rf"[0-9a-z]{{{FINGERPRINT_LENGTH}}}", re.ASCII)
_SECRET_RE = re.compile(rf"[0-9a-z]{{{SECRET_LENGTH}}}", re.ASCII)
# A 50-digit base-36 string can exceed any SHA-256 value; such a token is garbage.
_MAX_DIGEST = 2**256


def _invalid() -> InvalidArgument:
    return InvalidArgument("invalid join token")


@dataclass(frozen=True)
class JoinToken:
    ca_fingerprint: str
    # Kept out of repr so a token logged by accident does not leak its secret.
    secret: str = field(repr=False)

    def __post_init__(self) -> None:
        if not _FINGERPRINT_RE.fullmatch(self.ca_fingerprint) or (
            int(self.ca_fingerprint, 36) >= _MAX_DIGEST
        ):
            raise _invalid()
        if not _SECRET_RE.fullmatch(self.secret):
            raise _invalid()

    def format(self) -> str:
        return f"{PREFIX}-{VERSION}-{self.ca_fingerprint}-{self.secret}"

    @classmethod
    def parse(cls, text: str) -> JoinToken:
        return parse(text)


def parse(text: str) -> JoinToken:
    """Parse a token; surrounding whitespace from copy-paste is tolerated."""
    if not isinstance(text, str):
        raise _invalid()
    parts = text.strip().split("-")
    if len(parts) != 4 or parts[0] != PREFIX or parts[1] != VERSION:
        raise _invalid()
    return JoinToken(ca_fingerprint=parts[2], secret=parts[3])


def new_secret() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(SECRET_LENGTH))


def secrets_equal(a: str, b: str) -> bool:
    """Constant-time comparison, so response timing reveals nothing about the secret."""
    return hmac.compare_digest(a.encode(), b.encode())


# -- what the cluster state keeps of a secret ------------------------------------

_HASH_PREFIX = b"warren-join-token\0"
_SEALED_VERSION = "v1"
_SEAL_SALT = b"warren-join-token-seal"
_NONCE_BYTES = 12


def hash_secret(secret: str) -> str:
    """SHA-256 of a secret (hex). The secrets are 129 random bits, so a
    plain hash cannot be brute-forced and needs no salt or slow KDF."""
    return hashlib.sha256(_HASH_PREFIX + secret.encode()).hexdigest()


def secret_matches(secret: str, secret_hash: str) -> bool:
    """Whether ``secret`` hashes to ``secret_hash``, in constant time."""
    return secrets_equal(hash_secret(secret), secret_hash)


def sealing_key(ca: CertificateAuthority) -> bytes:
    """The AES-256 key that seals a cluster's secrets: derived from the CA key,
    so only managers (and a backup's holder, who has the CA key anyway) can
    open them."""
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=_SEAL_SALT, info=ca.cluster_id.encode()
    ).derive(ca.key_pem)


def seal_secret(secret: str, key: bytes, context: str) -> str:
    """``secret`` encrypted and authenticated; ``context`` (cluster and role)
    is bound in, so a sealed worker secret cannot pass for a manager's."""
    nonce = os.urandom(_NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, secret.encode(), context.encode())
    return f"{_SEALED_VERSION}:{base64.b64encode(nonce + sealed).decode('ascii')}"


def unseal_secret(sealed: str, key: bytes, context: str) -> str:
    """The secret ``seal_secret`` sealed; InvalidArgument if it was sealed under
    another key or context, or was altered."""
    version, _, payload = sealed.partition(":")
    if version != _SEALED_VERSION:
        raise InvalidArgument("unreadable sealed join token")
    try:
        raw = base64.b64decode(payload, validate=True)
        plain = AESGCM(key).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], context.encode())
        return plain.decode()
    except (binascii.Error, InvalidTag, ValueError):
        raise InvalidArgument("unreadable sealed join token (sealed by another CA?)") from None
