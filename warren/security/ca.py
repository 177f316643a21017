"""The cluster certificate authority: keys, CSRs, node certificates, fingerprints.

The CA decides every identity itself: a CSR only contributes its public key, so
a node cannot ask for a name or role it was not given.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from warren.core.errors import InvalidArgument

CA_COMMON_NAME = "warren-ca"
CERT_ROLES = ("manager", "worker", "admin")
# etcd admits on its peer port only certificates with this common name
# (``--peer-cert-allowed-cn``); issue_for_key refuses it as a node ID.
ETCD_PEER_COMMON_NAME = "warren-etcd-peer"
ETCD_ROLE = "etcd"
CA_VALIDITY = datetime.timedelta(days=3650)
NODE_VALIDITY = datetime.timedelta(days=365)
# Backdating tolerates peers whose clocks run a little behind ours.
CLOCK_SKEW = datetime.timedelta(minutes=5)
FINGERPRINT_LENGTH = 50
# Manager certificates name ``<address>.manager.<cluster ID>.warren`` (see manager_server_name).
SERVER_NAME_DOMAIN = "warren"
_MAX_DNS_NAME = 253
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def generate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise InvalidArgument("invalid certificate") from None


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise InvalidArgument("invalid private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidArgument("private key is not an elliptic-curve key")
    return key


def base36(data: bytes, width: int) -> str:
    """Big-endian ``data`` as lowercase base 36, zero-padded to ``width``."""
    value = int.from_bytes(data, "big")
    digits = []
    while value:
        value, rem = divmod(value, 36)
        digits.append(_BASE36[rem])
    return "".join(reversed(digits)).rjust(width, "0")


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER encoding in base 36 (the form join tokens carry)."""
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
    return base36(digest, FINGERPRINT_LENGTH)


def make_csr(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A PEM CSR; its subject is a placeholder because the CA sets the real one."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "warren-node")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def manager_server_name(host: str, cluster_id: str) -> str:
    """The DNS name binding ``host`` to the manager role of ``cluster_id``.

    A manager certificate carries it for every address the cluster verified,
    and Warren's clients check the peer against it (gRPC's hostname check is
    the only check of the server certificate a Python gRPC client can make):
    the handshake then proves the peer is a manager of this cluster reachable
    at the address dialled.
    """
    name = host.strip().strip("[]").lower()
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        if not name or not name.isascii() or any(c.isspace() or c in ":/" for c in name):
            raise InvalidArgument(f"invalid manager address '{host}'") from None
    else:
        name = address.exploded.replace(":", "-")
    server_name = f"{name}.manager.{cluster_id}.{SERVER_NAME_DOMAIN}"
    if len(server_name) > _MAX_DNS_NAME:
        raise InvalidArgument(f"manager address '{host}' is too long")
    return server_name


def _san_entries(sans: Sequence[str], cluster_id: str) -> list[x509.GeneralName]:
    """Each address as itself (for generic clients such as curl) and bound to
    the manager role of ``cluster_id`` (for Warren's own clients)."""
    entries: list[x509.GeneralName] = []
    for name, entry in _unique_names(sans):
        entries.append(entry)
        entries.append(x509.DNSName(manager_server_name(name, cluster_id)))
    return entries


def _plain_san_entries(sans: Sequence[str]) -> list[x509.GeneralName]:
    """Each address as itself: an IP address, or else a DNS name."""
    return [entry for _name, entry in _unique_names(sans)]


def _unique_names(sans: Sequence[str]) -> list[tuple[str, x509.GeneralName]]:
    found: list[tuple[str, x509.GeneralName]] = []
    seen: set[str] = set()
    for raw in sans:
        name = raw.strip().strip("[]")
        if not name or name.lower() in seen:
            continue
        seen.add(name.lower())
        try:
            found.append((name, x509.IPAddress(ipaddress.ip_address(name))))
        except ValueError:
            if not name.isascii() or any(c.isspace() for c in name):
                raise InvalidArgument(f"invalid subject alternative name '{name}'") from None
            found.append((name, x509.DNSName(name)))
    return found


def extended_key_usage(role: str) -> x509.ExtendedKeyUsage:
    """Only managers serve; workers and admins are clients only, so their
    certificates cannot stand in for a manager's."""
    if role == "manager":
        return x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        )
    return x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])


# What a node, admin or joiner certificate may do: sign TLS handshakes only.
LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def self_signed_root(
    key: ec.EllipticCurvePrivateKey, name: x509.Name, validity: datetime.timedelta, crl_sign: bool
) -> x509.Certificate:
    """A CA certificate signed by its own key (the cluster CA, a join root)."""
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=crl_sign,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )


class CertificateAuthority:
    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        if cert.public_key() != key.public_key():
            raise InvalidArgument("CA key does not match CA certificate")
        orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        if not orgs:
            raise InvalidArgument("CA certificate has no cluster ID")
        self._cert = cert
        self._key = key
        self._cluster_id = str(orgs[0].value)

    @classmethod
    def create(cls, cluster_id: str) -> CertificateAuthority:
        if not cluster_id:
            raise InvalidArgument("cluster ID must not be empty")
        key = generate_key()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id),
            ]
        )
        cert = self_signed_root(key, name, CA_VALIDITY, crl_sign=True)
        return cls(cert, key)

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes) -> CertificateAuthority:
        return cls(load_cert(cert_pem), load_key(key_pem))

    @property
    def cert(self) -> x509.Certificate:
        return self._cert

    @property
    def cert_pem(self) -> bytes:
        return cert_pem(self._cert)

    @property
    def key_pem(self) -> bytes:
        return key_pem(self._key)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self._cert)

    @property
    def cluster_id(self) -> str:
        return self._cluster_id

    def issue(self, csr_pem: bytes, node_id: str, role: str, sans: Sequence[str] = ()) -> bytes:
        """Sign the CSR's key into a node certificate (PEM) for ``node_id``/``role``."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
            valid = csr.is_signature_valid
            public_key = csr.public_key()
        except (ValueError, InvalidSignature, UnsupportedAlgorithm):
            raise InvalidArgument("invalid certificate signing request") from None
        if not valid:
            raise InvalidArgument("invalid certificate signing request")
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise InvalidArgument("certificate signing request must use an elliptic-curve key")
        return self.issue_for_key(public_key, node_id, role, sans)

    def issue_for_key(
        self,
        public_key: ec.EllipticCurvePublicKey,
        node_id: str,
        role: str,
        sans: Sequence[str] = (),
    ) -> bytes:
        if not node_id:
            raise InvalidArgument("node ID must not be empty")
        if node_id == ETCD_PEER_COMMON_NAME:
            raise InvalidArgument(f"'{node_id}' is reserved for etcd members")
        if role not in CERT_ROLES:
            raise InvalidArgument(f"invalid certificate role '{role}'")
        if sans and role != "manager":
            raise InvalidArgument(f"a {role} certificate names no server addresses")
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, node_id),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, self._cluster_id),
            ]
        )
        entries = _san_entries(sans, self._cluster_id)
        return self._sign_leaf(public_key, subject, extended_key_usage(role), entries)

    def issue_etcd_peer(self, public_key: ec.EllipticCurvePublicKey, advertise_host: str) -> bytes:
        """The certificate a manager's etcd member serves and dials with (PEM).

        Its common name is the one etcd's ``--peer-cert-allowed-cn`` admits, so
        a node certificate from this CA (named by its node ID) is refused on the
        peer port; its role (``etcd``) is none the Warren APIs accept. It names
        ``advertise_host`` (where peers dial it, and the source address etcd
        checks on a peer's connection) and 127.0.0.1 (the client endpoint),
        plus ``ETCD_PEER_COMMON_NAME`` as a DNS name: the client port admits
        only certificates that carry it (``--client-cert-allowed-hostname``).
        """
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, ETCD_PEER_COMMON_NAME),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ETCD_ROLE),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, self._cluster_id),
            ]
        )
        usage = x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        )
        entries = _plain_san_entries([advertise_host, "127.0.0.1", ETCD_PEER_COMMON_NAME])
        return self._sign_leaf(public_key, subject, usage, entries)

    def _sign_leaf(
        self,
        public_key: ec.EllipticCurvePublicKey,
        subject: x509.Name,
        usage: x509.ExtendedKeyUsage,
        entries: list[x509.GeneralName],
    ) -> bytes:
        now = _now()
        # A leaf outliving its CA would only fail later and more confusingly.
        not_after = min(now + NODE_VALIDITY, self._cert.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(LEAF_KEY_USAGE, critical=True)
            .add_extension(usage, critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                False,
            )
        )
        if entries:
            builder = builder.add_extension(x509.SubjectAlternativeName(entries), critical=False)
        return cert_pem(builder.sign(self._key, hashes.SHA256()))

    def is_current(self, pem: bytes, node_id: str, role: str, sans: Sequence[str] = ()) -> bool:
        """Whether ``pem`` is what ``issue_for_key`` gives today for this
        identity (certificates issued before a change of the rules are not)."""
        try:
            cert = x509.load_pem_x509_certificate(pem)
            cert.verify_directly_issued_by(self._cert)
            usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
            return False
        try:
            names = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            names = set()
        subject = cert.subject
        return (
            _attr(subject, NameOID.COMMON_NAME) == node_id
            and _attr(subject, NameOID.ORGANIZATIONAL_UNIT_NAME) == role
            and _attr(subject, NameOID.ORGANIZATION_NAME) == self._cluster_id
            and set(usage) == set(extended_key_usage(role))
            and names == set(_san_entries(sans, self._cluster_id))
        )


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    values = name.get_attributes_for_oid(oid)
    return str(values[0].value) if values else ""
