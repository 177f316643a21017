from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from impostor import legacy_leaf

from warren.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
)
from warren.security.ca import (
    CertificateAuthority,
    cert_pem,
    fingerprint,
    generate_key,
    key_pem,
    load_cert,
    load_key,
    make_csr,
    manager_server_name,
)
from warren.security.join import join_role_of_issuer, join_root_cert, joiner_credentials
from warren.security.tls import (
    IdentityFiles,
    PeerIdentity,
    identity_from_pem,
    pin_ca,
    write_private,
)
from warren.security.tokens import new_secret


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("cluster-abc")


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    return str(name.get_attributes_for_oid(oid)[0].value)


def _der(pem: bytes) -> bytes:
    return load_cert(pem).public_bytes(serialization.Encoding.DER)


def test_ca_certificate(ca: CertificateAuthority) -> None:
    cert = ca.cert
    assert _attr(cert.subject, NameOID.COMMON_NAME) == "warren-ca"
    assert ca.cluster_id == "cluster-abc"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    cert.verify_directly_issued_by(cert)


def test_ca_round_trips_through_pem(ca: CertificateAuthority) -> None:
    again = CertificateAuthority.from_pem(ca.cert_pem, ca.key_pem)
    assert again.fingerprint == ca.fingerprint
    assert again.cluster_id == ca.cluster_id


def test_ca_refuses_mismatched_key(ca: CertificateAuthority) -> None:
    with pytest.raises(InvalidArgument):
        CertificateAuthority.from_pem(ca.cert_pem, key_pem(generate_key()))


def test_issue_from_csr(ca: CertificateAuthority) -> None:
    key = generate_key()
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, "i-want-to-be-admin"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "admin"),
            ]
        )
    )
    csr_pem = csr.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    cert = load_cert(ca.issue(csr_pem, "node-1", "manager", ["node1.example", "10.0.0.5"]))

    # The CA sets the subject; the CSR's requested one is ignored.
    assert _attr(cert.subject, NameOID.COMMON_NAME) == "node-1"
    assert _attr(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME) == "manager"
    assert _attr(cert.subject, NameOID.ORGANIZATION_NAME) == "cluster-abc"
    assert cert.public_key() == key.public_key()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # Each address as itself and bound to the manager role of this cluster;
    # nothing else (no localhost, no 127.0.0.1 the cluster was not given).
    assert set(san.get_values_for_type(x509.DNSName)) == {
        "node1.example",
        "node1.example.manager.cluster-abc.warren",
        "10.0.0.5.manager.cluster-abc.warren",
    }
    assert set(san.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("10.0.0.5")}
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.not_valid_after_utc > ca.cert.not_valid_before_utc
    cert.verify_directly_issued_by(ca.cert)


def test_issue_adds_no_default_names(ca: CertificateAuthority) -> None:
    cert = load_cert(ca.issue(make_csr(generate_key()), "n", "manager", ["::1", "[::1]"]))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("::1")]
    assert san.get_values_for_type(x509.DNSName) == [
        "0000-0000-0000-0000-0000-0000-0000-0001.manager.cluster-abc.warren"
    ]


@pytest.mark.parametrize("role", ["worker", "admin"])
def test_only_manager_certificates_are_server_certificates(
    ca: CertificateAuthority, role: str
) -> None:
    cert = load_cert(ca.issue(make_csr(generate_key()), "node-1", role))
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    # No address at all: not even localhost.
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    with pytest.raises(InvalidArgument, match="names no server addresses"):
        ca.issue(make_csr(generate_key()), "node-1", role, ["10.0.0.5"])


def test_manager_server_name_binds_address_role_and_cluster() -> None:
    assert manager_server_name("10.0.0.5", "c1") == "10.0.0.5.manager.c1.warren"
    assert manager_server_name("[::1]", "c1") == (
        "0000-0000-0000-0000-0000-0000-0000-0001.manager.c1.warren"
    )
    assert manager_server_name("Mgr.Example", "c1") == "mgr.example.manager.c1.warren"
    for bad in ("", "a b", "x" * 250):
        with pytest.raises(InvalidArgument):
            manager_server_name(bad, "c1")


def test_is_current_tells_old_certificates_from_new(ca: CertificateAuthority) -> None:
    key = generate_key()
    cert = ca.issue_for_key(key.public_key(), "m1", "manager", ["10.0.0.5"])
    assert ca.is_current(cert, "m1", "manager", ["10.0.0.5"])
    assert not ca.is_current(cert, "m1", "manager", ["10.0.0.6"])
    assert not ca.is_current(cert, "m1", "worker")
    assert not ca.is_current(legacy_leaf(ca, "m1", "manager"), "m1", "manager", ["127.0.0.1"])
    other = CertificateAuthority.create("cluster-abc")
    assert not other.is_current(cert, "m1", "manager", ["10.0.0.5"])


def test_issued_cert_does_not_verify_against_another_ca(ca: CertificateAuthority) -> None:
    cert = load_cert(ca.issue(make_csr(generate_key()), "node-1", "worker"))
    # Same subject as ``ca`` (same cluster ID), so only the signature can tell them apart.
    impostor = CertificateAuthority.create("cluster-abc").cert
    assert impostor.subject == ca.cert.subject
    with pytest.raises(InvalidSignature):
        cert.verify_directly_issued_by(impostor)


def test_csr_with_bad_signature_refused(ca: CertificateAuthority) -> None:
    csr_der = bytearray(
        x509.load_pem_x509_csr(make_csr(generate_key())).public_bytes(serialization.Encoding.DER)
    )
    # Flip a bit inside the signature at the end of the DER.
    csr_der[-3] ^= 0x01
    tampered_csr = x509.load_der_x509_csr(bytes(csr_der))
    assert not tampered_csr.is_signature_valid
    tampered = tampered_csr.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(InvalidArgument, match="invalid certificate signing request"):
        ca.issue(tampered, "node-1", "worker")


def test_garbage_csr_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(InvalidArgument, match="invalid certificate signing request"):
        ca.issue(b"not a csr", "node-1", "worker")


def test_unknown_role_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(InvalidArgument):
        ca.issue(make_csr(generate_key()), "node-1", "root")


def test_fingerprint_stable_and_50_chars(ca: CertificateAuthority) -> None:
    fp = fingerprint(ca.cert)
    assert fp == ca.fingerprint == fingerprint(load_cert(ca.cert_pem))
    assert len(fp) == 50
    assert set(fp) <= set("0123456789abcdefghijklmnopqrstuvwxyz")
    assert fp != CertificateAuthority.create("cluster-abc").fingerprint


def test_key_pem_round_trip() -> None:
    key = generate_key()
    assert load_key(key_pem(key)).private_numbers() == key.private_numbers()
    assert b"BEGIN PRIVATE KEY" in key_pem(key)
    with pytest.raises(InvalidArgument):
        load_key(b"garbage")
    with pytest.raises(InvalidArgument):
        load_cert(b"garbage")


def test_join_root_derived_identically() -> None:
    secret = new_secret()
    first = load_cert(join_root_cert(secret, "worker"))
    second = load_cert(join_root_cert(secret, "worker"))
    assert first.public_key() == second.public_key()
    assert first.subject == second.subject
    assert first.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert join_role_of_issuer(_attr(first.subject, NameOID.COMMON_NAME)) == "worker"
    other_role = load_cert(join_root_cert(secret, "manager"))
    assert other_role.public_key() != first.public_key()
    assert other_role.subject != first.subject


def test_joiner_leaf_verifies_against_join_root() -> None:
    secret = new_secret()
    key, cert = joiner_credentials(secret, "manager")
    leaf = load_cert(cert)
    leaf.verify_directly_issued_by(load_cert(join_root_cert(secret, "manager")))
    assert leaf.public_key() == load_key(key).public_key()
    assert _attr(leaf.subject, NameOID.COMMON_NAME) == "warren-joiner"


def test_joiner_leaf_from_other_secret_does_not_verify() -> None:
    _, cert = joiner_credentials(new_secret(), "worker")
    root = load_cert(join_root_cert(new_secret(), "worker"))
    with pytest.raises((ValueError, InvalidSignature)):
        load_cert(cert).verify_directly_issued_by(root)


def test_joiner_leaf_for_other_role_does_not_verify() -> None:
    secret = new_secret()
    _, cert = joiner_credentials(secret, "worker")
    with pytest.raises((ValueError, InvalidSignature)):
        load_cert(cert).verify_directly_issued_by(load_cert(join_root_cert(secret, "manager")))


def test_join_role_validated() -> None:
    with pytest.raises(InvalidArgument):
        joiner_credentials(new_secret(), "admin")
    with pytest.raises(InvalidArgument):
        join_root_cert(new_secret(), "admin")


@pytest.mark.parametrize(
    ("issuer", "role"),
    [
        ("warren-join-worker-0123456789abcdef", "worker"),
        ("warren-join-manager-0123456789abcdef", "manager"),
        ("warren-join-admin-0123456789abcdef", None),
        ("warren-join-worker-0123456789abcde", None),
        ("warren-join-worker-0123456789ABCDEF", None),
        ("warren-ca", None),
        ("", None),
    ],
)
def test_join_role_of_issuer(issuer: str, role: str | None) -> None:
    assert join_role_of_issuer(issuer) == role


def test_identity_from_node_cert(ca: CertificateAuthority) -> None:
    pem = ca.issue(make_csr(generate_key()), "node-9", "manager")
    assert identity_from_pem(pem) == PeerIdentity(
        node_id="node-9", role="manager", cluster_id="cluster-abc", joining_role=None
    )


def test_identity_from_joiner_cert() -> None:
    _, pem = joiner_credentials(new_secret(), "worker")
    assert identity_from_pem(pem) == PeerIdentity(
        node_id="", role="", cluster_id="", joining_role="worker"
    )


def test_identity_from_garbage_refused() -> None:
    with pytest.raises(Unauthenticated):
        identity_from_pem(b"garbage")


def test_pin_ca(ca: CertificateAuthority) -> None:
    leaf = ca.issue(make_csr(generate_key()), "m1", "manager")
    chain = [_der(leaf), _der(ca.cert_pem)]
    assert pin_ca(chain, ca.fingerprint) == ca.cert_pem
    with pytest.raises(PermissionDenied, match="man-in-the-middle"):
        pin_ca(chain, CertificateAuthority.create("x").fingerprint)
    # A leaf whose fingerprint matches is still not a CA.
    with pytest.raises(PermissionDenied):
        pin_ca(chain, fingerprint(load_cert(leaf)))
    with pytest.raises(PermissionDenied):
        pin_ca([b"junk"], ca.fingerprint)


def test_write_private_is_0600(tmp_path: Path) -> None:
    target = tmp_path / "new" / "dir" / "key.pem"
    write_private(target, b"secret")
    assert target.read_bytes() == b"secret"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
    write_private(target, b"replaced")
    assert target.read_bytes() == b"replaced"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["key.pem"]


def test_identity_files(tmp_path: Path, ca: CertificateAuthority) -> None:
    files = IdentityFiles(tmp_path / "identity")
    assert not files.exists()
    with pytest.raises(FailedPrecondition):
        files.load()
    key = generate_key()
    cert = ca.issue(make_csr(key), "n1", "worker")
    files.save(ca.cert_pem, cert, key_pem(key))
    assert files.exists()
    assert files.load() == (ca.cert_pem, cert, key_pem(key))
    assert files.key_path.name == "key.pem"
    assert stat.S_IMODE(files.key_path.stat().st_mode) == 0o600
    assert cert_pem(load_cert(files.cert_path.read_bytes())) == cert
