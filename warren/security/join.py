"""Client certificates for nodes that are still joining.

The manager's gRPC port requires a client certificate, which a joiner does not
have yet. So each live join token gets a "join root" in the manager's trusted
client roots, whose private key is derived from the token secret. A joiner
derives the same key from its token and signs a throwaway leaf with it; chain
verification only matches the issuer name and signature, so the joiner never
needs the root certificate itself. Rotating a token removes its root from the
trust store, and leaves signed for the old secret stop handshaking at once.
"""

from __future__ import annotations

import datetime
import hashlib
import re

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from warren.core.errors import InvalidArgument
from warren.security.ca import (
    CLOCK_SKEW,
    LEAF_KEY_USAGE,
    cert_pem,
    generate_key,
    key_pem,
    self_signed_root,
)

JOIN_ROLES = ("manager", "worker")
JOINER_COMMON_NAME = "warren-joiner"
ROOT_VALIDITY = datetime.timedelta(days=3650)
# Long enough for a slow join, short enough that a leaked leaf soon goes stale.
LEAF_VALIDITY = datetime.timedelta(hours=1)
_HKDF_SALT = b"warren-join"
# Order of the P-256 group.
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_ISSUER_RE = re.compile(r"warren-join-(manager|worker)-[0-9a-f]{16}", re.ASCII)


def _check_role(role: str) -> None:
    if role not in JOIN_ROLES:
        raise InvalidArgument(f"invalid join role '{role}'")


def _root_key(secret: str, role: str) -> ec.EllipticCurvePrivateKey:
    # 48 bytes (128 more bits than the order) keep the modular reduction unbiased.
    material = HKDF(
        algorithm=hashes.SHA256(), length=48, salt=_HKDF_SALT, info=role.encode()
    ).derive(secret.encode())
    scalar = int.from_bytes(material, "big") % (_P256_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


def _root_name(secret: str, role: str) -> x509.Name:
    tag = hashlib.sha256(secret.encode()).hexdigest()[:16]
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"warren-join-{role}-{tag}")])


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def join_root_cert(secret: str, role: str) -> bytes:
    """The manager-side trust root (PEM) for tokens carrying ``secret``."""
    _check_role(role)
    key = _root_key(secret, role)
    name = _root_name(secret, role)
    cert = self_signed_root(key, name, ROOT_VALIDITY, crl_sign=False)
    return cert_pem(cert)


def joiner_credentials(secret: str, role: str) -> tuple[bytes, bytes]:
    """A fresh key and a short-lived leaf signed by the derived root: (key PEM, cert PEM)."""
    _check_role(role)
    root_key = _root_key(secret, role)
    leaf_key = generate_key()
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, JOINER_COMMON_NAME)]))
        .issuer_name(_root_name(secret, role))
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + LEAF_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(LEAF_KEY_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), False
        )
        .sign(root_key, hashes.SHA256())
    )
    return key_pem(leaf_key), cert_pem(cert)


def join_role_of_issuer(issuer_cn: str) -> str | None:
    """The role a join-root leaf was issued for, or None if ``issuer_cn`` is no join root."""
    match = _ISSUER_RE.fullmatch(issuer_cn)
    return match.group(1) if match else None
