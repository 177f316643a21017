"""TLS plumbing: CA pinning on join, peer identities, and identity files on disk."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import os
import socket
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from warren.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from warren.security.ca import fingerprint, manager_server_name
from warren.security.join import join_role_of_issuer

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _chain_der(tls: ssl.SSLSocket) -> list[bytes]:
    # Python 3.11 only has the private form; 3.13 made it public.
    sslobj: Any = getattr(tls, "_sslobj", None)
    getter = getattr(sslobj, "get_unverified_chain", None)
    if getter is None:
        return []
    chain = getter() or []
    der_encoding = ssl._ssl.ENCODING_DER  # type: ignore[attr-defined]
    return [c if isinstance(c, bytes) else bytes(c.public_bytes(der_encoding)) for c in chain]


def fetch_ca_chain(host: str, port: int, timeout: float = 5.0) -> list[bytes]:
    """The server's certificate chain (DER), read without verifying anything.

    Nothing here is trusted: the caller must pin the result against a join
    token's fingerprint with ``pin_ca``.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    where = f"{host}:{port}"
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, do_handshake_on_connect=False) as tls,
        ):
            try:
                tls.do_handshake()
            except OSError as exc:
                # The server may abort because we sent no client certificate;
                # by then its certificates have already arrived.
                chain = _chain_der(tls)
                if chain:
                    return chain
                raise Unavailable(f"cannot reach manager at {where}: {_reason(exc)}") from None
            chain = _chain_der(tls)
    except OSError as exc:
        raise Unavailable(f"cannot reach manager at {where}: {_reason(exc)}") from None
    if not chain:
        raise Unavailable(f"cannot reach manager at {where}: server sent no certificate")
    return chain


def _reason(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    return exc.strerror or str(exc) or type(exc).__name__


def pin_ca(chain_der: list[bytes], expected_fingerprint: str) -> bytes:
    """The CA certificate (PEM) in ``chain_der`` whose fingerprint the token names."""
    for der in chain_der:
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            continue
        if fingerprint(cert) != expected_fingerprint:
            continue
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if is_ca:
            return cert.public_bytes(serialization.Encoding.PEM)
    raise PermissionDenied(
        "the manager's CA does not match the join token (possible man-in-the-middle)"
    )


def check_manager_leaf(chain_der: list[bytes], ca_pem: bytes, host: str) -> None:
    """Refuse a server whose certificate is not a manager's of the pinned CA's
    cluster for ``host``: a joiner sends its token only to such a server."""
    ca = x509.load_pem_x509_certificate(ca_pem)
    refused = PermissionDenied(
        f"the server at {host} is not a manager of this cluster (possible man-in-the-middle)"
    )
    if not chain_der:
        raise refused
    try:
        leaf = x509.load_der_x509_certificate(chain_der[0])
        leaf.verify_directly_issued_by(ca)
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        raise refused from None
    cluster_id = cluster_id_of(ca_pem)
    if (
        _attr(leaf.subject, NameOID.ORGANIZATIONAL_UNIT_NAME) != "manager"
        or _attr(leaf.subject, NameOID.ORGANIZATION_NAME) != cluster_id
        or ExtendedKeyUsageOID.SERVER_AUTH not in usage
        or manager_server_name(host, cluster_id) not in names.get_values_for_type(x509.DNSName)
    ):
        raise refused


@dataclass(frozen=True)
class PeerIdentity:
    node_id: str
    role: str
    cluster_id: str
    # Set only for a joiner's throwaway certificate: the role its token grants.
    joining_role: str | None


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    values = name.get_attributes_for_oid(oid)
    return str(values[0].value) if values else ""


@functools.lru_cache(maxsize=1024)
def identity_from_pem(pem: bytes) -> PeerIdentity:
    """Who a TLS-verified peer certificate names. Cached: it runs on every RPC."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise Unauthenticated("invalid peer certificate") from None
    joining_role = join_role_of_issuer(_attr(cert.issuer, NameOID.COMMON_NAME))
    if joining_role is not None:
        # A joiner chose its own subject, so none of it means anything.
        return PeerIdentity(node_id="", role="", cluster_id="", joining_role=joining_role)
    node_id = _attr(cert.subject, NameOID.COMMON_NAME)
    if not node_id:
        raise Unauthenticated("peer certificate has no node ID")
    return PeerIdentity(
        node_id=node_id,
        role=_attr(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME),
        cluster_id=_attr(cert.subject, NameOID.ORGANIZATION_NAME),
        joining_role=None,
    )


def write_private(path: Path | str, data: bytes) -> None:
    """Write atomically with mode 0600, so a crash never leaves a torn key behind."""
    target = Path(path)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkstemp creates the file 0600 from the start: no window where it is readable.
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@dataclass
class IdentityFiles:
    """A node's CA certificate, certificate and key in one directory."""

    directory: Path

    @property
    def ca_path(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def cert_path(self) -> Path:
        return self.directory / "cert.pem"

    @property
    def key_path(self) -> Path:
        return self.directory / "key.pem"

    def save(self, ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> None:
        write_private(self.ca_path, ca_pem)
        write_private(self.key_path, key_pem)
        # Written last: exists() is only true once the whole set is on disk.
        write_private(self.cert_path, cert_pem)

    def load(self) -> tuple[bytes, bytes, bytes]:
        """(ca PEM, cert PEM, key PEM)."""
        try:
            return (
                self.ca_path.read_bytes(),
                self.cert_path.read_bytes(),
                self.key_path.read_bytes(),
            )
        except FileNotFoundError:
            raise FailedPrecondition(
                f"no node identity in {self.directory} (initialise or join a cluster first)"
            ) from None

    def exists(self) -> bool:
        return self.ca_path.is_file() and self.cert_path.is_file() and self.key_path.is_file()


def cluster_id_of(ca_pem: bytes) -> str:
    """The cluster a CA certificate belongs to (its organisation name)."""
    try:
        cert = x509.load_pem_x509_certificate(ca_pem)
    except ValueError:
        raise FailedPrecondition("the cluster CA certificate is not valid PEM") from None
    cluster_id = _attr(cert.subject, NameOID.ORGANIZATION_NAME)
    if not cluster_id:
        raise FailedPrecondition("the cluster CA certificate names no cluster")
    return cluster_id


def manager_channel_options(address: str, ca_pem: bytes) -> list[tuple[str, str]]:
    """gRPC options that make the handshake accept only a manager of the CA's
    cluster whose certificate names the host in ``address`` (HOST:PORT).

    Chain verification alone would accept any certificate the CA signed, a
    worker's included (and certificates issued before managers alone served
    carry serverAuth and ``127.0.0.1``). A Python gRPC client cannot look at the
    server's certificate, so the check is made by gRPC's hostname check against
    the name only a manager certificate carries.
    """
    host = address.rpartition(":")[0] or address
    return [("grpc.ssl_target_name_override", manager_server_name(host, cluster_id_of(ca_pem)))]


async def verified_manager_host(api_address: str, source: str) -> str:
    """The host of a manager's advertised ``api_address`` (HOST:PORT), once the
    cluster has checked that the request came from it (``source``: the peer's
    IP address): the only name the manager's certificate may carry.

    A hostname must resolve to ``source``. A node reaching the managers from
    another address than it advertises is refused rather than given a name
    nobody verified.
    """
    host = api_address.rpartition(":")[0].strip("[]")
    if not host:
        raise InvalidArgument(f"invalid API address '{api_address}': expected HOST:PORT")
    try:
        peer = _unmapped(ipaddress.ip_address(source))
    except ValueError:
        raise PermissionDenied("cannot tell which address the request came from") from None
    try:
        advertised = {_unmapped(ipaddress.ip_address(host))}
    except ValueError:
        advertised = await _resolve(host)
    if peer not in advertised:
        raise PermissionDenied(
            f"the advertised address {host} is not the address this request came from "
            f"({peer}): advertise the address this node reaches the managers from"
        )
    return host


def _unmapped(address: IPAddress) -> IPAddress:
    # A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


async def _resolve(host: str) -> set[IPAddress]:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None)
    except (OSError, UnicodeError):
        raise InvalidArgument(f"cannot resolve the advertised address '{host}'") from None
    return {_unmapped(ipaddress.ip_address(str(info[4][0]).partition("%")[0])) for info in infos}
