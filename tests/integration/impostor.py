"""A server posing as a manager with a certificate the cluster issued to someone
else, and certificates of the form issued before managers alone could serve."""

from __future__ import annotations

import datetime
import ipaddress
import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from warren.security.ca import (
    LEAF_KEY_USAGE,
    CertificateAuthority,
    cert_pem,
    generate_key,
    key_pem,
    load_key,
)


def legacy_leaf(
    ca: CertificateAuthority, node_id: str, role: str, key_pem_: bytes | None = None
) -> bytes:
    """A certificate as ``issue_for_key`` made it before: serverAuth for every
    role, and ``localhost`` and ``127.0.0.1`` in every certificate."""
    key = load_key(key_pem_) if key_pem_ else generate_key()
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, node_id),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ca.cluster_id),
        ]
    )
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(LEAF_KEY_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(load_key(ca.key_pem), hashes.SHA256())
    )
    return cert_pem(cert)


def new_identity(
    ca: CertificateAuthority, node_id: str, role: str, sans: list[str] | None = None
) -> tuple[bytes, bytes]:
    """(key PEM, certificate PEM) issued by ``ca`` the way the cluster does today."""
    key = generate_key()
    return key_pem(key), ca.issue_for_key(key.public_key(), node_id, role, sans or [])


@dataclass
class Impostor:
    """What reached the fake manager: every method called, in order."""

    port: int = 0
    calls: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def record(self, method: str) -> None:
        with self._lock:
            self.calls.append(method)


class _AnswerEverything(grpc.GenericRpcHandler):
    """Answers every unary call with an empty message, as a manager with an
    empty cluster would (a valid encoding of every reply type)."""

    def __init__(self, impostor: Impostor) -> None:
        self._impostor = impostor

    def service(self, details: grpc.HandlerCallDetails) -> Any:
        method = str(details.method)

        def answer(request: bytes, context: grpc.ServicerContext) -> bytes:
            self._impostor.record(method)
            return b""

        return grpc.unary_unary_rpc_method_handler(
            answer, request_deserializer=None, response_serializer=None
        )


@contextmanager
def impostor_server(ca_pem: bytes, key: bytes, cert: bytes) -> Iterator[Impostor]:
    """A gRPC server on 127.0.0.1 presenting ``cert`` (with ``key``) as its own
    and asking clients for a certificate of ``ca_pem``, as a manager does."""
    impostor = Impostor()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((_AnswerEverything(impostor),))
    credentials = grpc.ssl_server_credentials(
        [(key, cert + ca_pem)], root_certificates=ca_pem, require_client_auth=False
    )
    impostor.port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield impostor
    finally:
        server.stop(None).wait()
