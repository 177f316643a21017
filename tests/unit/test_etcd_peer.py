"""The etcd member certificate: one name etcd admits, both usages, the right addresses."""

from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from warren.core.errors import InvalidArgument
from warren.security.ca import CERT_ROLES, CertificateAuthority, generate_key
from warren.security.etcd_peer import ETCD_PEER_COMMON_NAME, issue_etcd_peer_certificate
from warren.security.tls import identity_from_pem


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("cluster-1")


def _names(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return ips, set(san.get_values_for_type(x509.DNSName))


def test_the_certificate_is_named_for_etcd_and_signed_by_the_cluster_ca(
    ca: CertificateAuthority,
) -> None:
    key = generate_key()
    cert = x509.load_pem_x509_certificate(issue_etcd_peer_certificate(ca, key, "10.0.0.5"))

    cert.verify_directly_issued_by(ca.cert)
    assert cert.public_key() == key.public_key()
    assert ETCD_PEER_COMMON_NAME == "warren-etcd-peer"
    common_names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in common_names] == ["warren-etcd-peer"]
    organisations = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert [a.value for a in organisations] == ["cluster-1"]
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca is False
    assert cert.not_valid_after_utc <= ca.cert.not_valid_after_utc


def test_it_serves_and_dials(ca: CertificateAuthority) -> None:
    pem = issue_etcd_peer_certificate(ca, generate_key(), "10.0.0.5")
    usage = (
        x509.load_pem_x509_certificate(pem)
        .extensions.get_extension_for_class(x509.ExtendedKeyUsage)
        .value
    )
    assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


def test_it_names_the_advertise_address_and_loopback(ca: CertificateAuthority) -> None:
    pem = issue_etcd_peer_certificate(ca, generate_key(), "10.0.0.5")
    ips, dns = _names(x509.load_pem_x509_certificate(pem))
    assert ips == {"10.0.0.5", "127.0.0.1"}
    # The client port admits only certificates with this name (--client-cert-allowed-hostname).
    assert dns == {"warren-etcd-peer"}


def test_a_host_name_is_a_dns_name(ca: CertificateAuthority) -> None:
    pem = issue_etcd_peer_certificate(ca, generate_key(), "manager-1.example")
    ips, dns = _names(x509.load_pem_x509_certificate(pem))
    assert ips == {"127.0.0.1"}
    assert dns == {"manager-1.example", "warren-etcd-peer"}


def test_a_bracketed_ipv6_address_is_an_ip_address(ca: CertificateAuthority) -> None:
    pem = issue_etcd_peer_certificate(ca, generate_key(), "[fd00::5]")
    ips, _dns = _names(x509.load_pem_x509_certificate(pem))
    assert {ipaddress.ip_address(ip) for ip in ips} == {
        ipaddress.ip_address("fd00::5"),
        ipaddress.ip_address("127.0.0.1"),
    }


def test_loopback_as_the_advertise_address_is_named_once(ca: CertificateAuthority) -> None:
    pem = issue_etcd_peer_certificate(ca, generate_key(), "127.0.0.1")
    san = (
        x509.load_pem_x509_certificate(pem)
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]


def test_an_invalid_address_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(InvalidArgument):
        issue_etcd_peer_certificate(ca, generate_key(), "bad host")


def test_no_node_certificate_can_take_the_etcd_name(ca: CertificateAuthority) -> None:
    for role in CERT_ROLES:
        with pytest.raises(InvalidArgument, match="reserved"):
            ca.issue_for_key(generate_key().public_key(), ETCD_PEER_COMMON_NAME, role)


def test_it_is_no_identity_the_warren_apis_accept(ca: CertificateAuthority) -> None:
    identity = identity_from_pem(issue_etcd_peer_certificate(ca, generate_key(), "10.0.0.5"))
    assert identity.role == "etcd"
    assert identity.role not in CERT_ROLES
